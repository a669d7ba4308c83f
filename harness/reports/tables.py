"""Build report tables: select results per row/column, pair each with the paper's value, and
compute the normalized comparisons that transfer across hardware (speedups measured in one run,
share of the LR->HR gap closed, y at the paper's x on our curve)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.reports.layout import ColumnSpec, Match, RowSpec, TableSpec
from harness.reports.reference import RefTable, load_reference

AXIS_NAMES = ("precision", "batch_size", "device", "label", "section", "trial")
SHORT_REASON_CHARS = 26
STATUS_WORDS = {"oom": "OOM", "timeout": "timeout", "failed": "failed", "unsupported": "unsupported",
                "unavailable": "unavailable"}


@dataclass
class Cell:
    ours: float | None
    ours_text: str
    paper: float | None = None
    paper_text: str = ""
    reason: str = ""  # why `ours` is missing, in full


@dataclass
class BuiltTable:
    spec: TableSpec
    title: str
    row_labels: list[str]
    headers: list[str]  # one per column, with unit
    cells: list[list[Cell]]
    has_reference: bool
    context_lines: list[str] = field(default_factory=list)
    footnotes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def result_value(result: dict[str, Any], name: str) -> Any:
    """A metric value, else a parameter, else an axis/field of the result (None if absent)."""
    metric = result.get("metrics", {}).get(name)
    if metric is not None:
        return metric["value"]
    if name in result.get("params", {}):
        return result["params"][name]
    return result.get(name)


def failure_reason(result: dict[str, Any] | None, metric: str | None = None) -> str:
    """Why a result gives no value: 'not run', 'OOM', 'unavailable: no CUDA', ..."""
    if result is None:
        return "not run"
    status = result.get("status", "")
    if status == "ok":
        return f"no metric {metric!r}" if metric else "no value"
    word = STATUS_WORDS.get(status, status)
    error = (result.get("error") or "").strip().splitlines()
    detail = error[-1].strip() if error else ""
    if status == "oom" or not detail:
        return word
    if detail.lower().startswith(word.lower()):
        return detail
    return f"{word}: {detail}"


def axes_of(result: dict[str, Any]) -> tuple[Any, Any, Any]:
    return (result.get("precision"), result.get("batch_size"), result.get("device"))


def dominant_axes(results: list[dict[str, Any]], match: Match) -> tuple[Any, Any, Any] | None:
    """The most common (precision, batch size, device) among the results ``match`` accepts."""
    counts = Counter(axes_of(r) for r in results if match.accepts(r))
    return counts.most_common(1)[0][0] if counts else None


def pick(
    results: list[dict[str, Any]],
    match: Match,
    metric: str | None = None,
    prefer_axes: tuple[Any, Any, Any] | None = None,
) -> dict[str, Any] | None:
    """The newest matching result with ``metric``; else the newest ok one; else the newest of any status.

    When the match leaves the axes open and several units qualify, those on ``prefer_axes`` (the
    table's usual precision/batch size/device) win.
    """
    found = [r for r in results if match.accepts(r)]
    if not found:
        return None
    found.sort(key=lambda r: (prefer_axes is None or axes_of(r) == prefer_axes, r.get("id", 0)))
    with_metric = [r for r in found if r["status"] == "ok" and (metric is None or metric in r["metrics"])]
    if with_metric:
        return with_metric[-1]
    ok = [r for r in found if r["status"] == "ok"]
    return (ok or found)[-1]


def _fmt(value: float | None, spec: str) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    return format(value, spec)


def _expand_rows(spec: TableSpec, results: list[dict[str, Any]]) -> list[RowSpec]:
    rows = list(spec.rows)
    if spec.expand is None:
        return rows
    param = spec.expand.param
    refs = dict(spec.expand.refs)
    values = sorted({_hashable(result_value(r, param)) for r in results if spec.match.accepts(r)}
                    - {None}, key=_sort_key)
    for value in values:
        if param in AXIS_NAMES:
            match = Match(fields=((param, value),))
        else:
            match = Match(params=((param, value),))
        rows.append(RowSpec(spec.expand.label.format(value=value), refs.get(str(value)), match))
    return rows


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, float(value)) if isinstance(value, (int, float)) else (1, str(value))


class _TableBuilder:
    def __init__(self, spec: TableSpec, results: list[dict[str, Any]], ref: RefTable | None):
        self.spec = spec
        self.results = results
        self.ref = ref
        self.rows = _expand_rows(spec, results)
        self.by_label = {row.label: row for row in self.rows}
        self.footnotes: list[str] = []
        self.used: list[dict[str, Any]] = []
        self.axes = dominant_axes(results, spec.match)

    def match_for(self, row: RowSpec, column: ColumnSpec) -> Match:
        return self.spec.match.merged(row.match).merged(column.match)

    def ours(self, row: RowSpec, column: ColumnSpec, metric: str) -> tuple[float | None, str]:
        result = pick(self.results, self.match_for(row, column), metric, self.axes)
        if result is not None:
            self.used.append(result)
        if result is not None and result["status"] == "ok" and metric in result["metrics"]:
            return float(result["metrics"][metric]["value"]), ""
        return None, failure_reason(result, metric)

    def paper(self, row: RowSpec | None, column_key: str | None) -> float | None:
        cell = self.paper_cell(row, column_key)
        return None if cell is None else cell.value

    def paper_cell(self, row: RowSpec | None, column_key: str | None):
        if self.ref is None or row is None or row.ref is None or column_key is None:
            return None
        return self.ref.cell(row.ref, column_key)

    def cell(self, row: RowSpec, column: ColumnSpec) -> Cell:
        kind = column.kind
        if kind == "value":
            ours, reason = self.ours(row, column, column.metric)
            ref_cell = self.paper_cell(row, column.ref)
            return self._cell(ours, reason, ref_cell.value if ref_cell else None,
                              ref_cell.text if ref_cell else "", column)
        if kind in ("speedup", "ratio", "delta"):
            base = self.by_label.get(column.base or "")
            ours, reason = self.ours(row, column, column.metric)
            base_ours, base_reason = self.ours(base, column, column.metric) if base else (None, "no base row")
            paper, base_paper = self.paper(row, column.ref), self.paper(base, column.ref)
            derived = _combine(kind, ours, base_ours)
            why = reason or (f"{column.base}: {base_reason}" if base_reason else "")
            return self._cell(derived, why if derived is None else "", _combine(kind, paper, base_paper), "", column)
        if kind == "gap_closed":
            lr, hr = self.by_label.get(column.lr or ""), self.by_label.get(column.hr or "")
            values, reasons = [], []
            for label, r in ((row.label, row), (column.lr, lr), (column.hr, hr)):
                if r is None:
                    values.append(None)
                    reasons.append(f"no row {label}")
                    continue
                v, why = self.ours(r, column, column.metric)
                values.append(v)
                if why:
                    reasons.append(why if r is row else f"{label}: {why}")
            papers = [self.paper(r, column.ref) for r in (row, lr, hr)]
            derived = _gap_closed(*values)
            reason = reasons[0] if reasons else "HR equals LR"
            return self._cell(derived, reason if derived is None else "", _gap_closed(*papers), "", column)
        return self._matched(row, column)

    def _matched(self, row: RowSpec, column: ColumnSpec) -> Cell:
        assert column.x is not None
        paper_x = self.paper(row, column.x)
        paper_y = self.paper(row, column.ref)
        curve_match = self.match_for(row, column).without(column.vary)
        points = sorted(
            (float(r["metrics"][column.x]["value"]), float(r["metrics"][column.metric]["value"]))
            for r in self.results
            if curve_match.accepts(r) and r["status"] == "ok"
            and column.x in r["metrics"] and column.metric in r["metrics"]
        )
        if paper_x is None:
            return self._cell(None, "paper gives no x", paper_y, "", column)
        if not points:
            _, reason = self.ours(row, column, column.metric)
            return self._cell(None, reason or "no curve", paper_y, "", column)
        xs = np.array([p[0] for p in points])
        ys = np.array([p[1] for p in points])
        if paper_x < xs.min() or paper_x > xs.max():
            return self._cell(None, f"paper x={paper_x:g} is outside our measured {column.x} range [{xs.min():.3g}, {xs.max():.3g}]", paper_y, "", column)
        return self._cell(float(np.interp(paper_x, xs, ys)), "", paper_y, "", column)

    def _cell(self, ours: float | None, reason: str, paper: float | None, paper_text: str, column: ColumnSpec) -> Cell:
        if ours is None:
            text = reason
            if len(reason) > SHORT_REASON_CHARS:
                self.footnotes.append(reason)
                head = reason.split(":")[0] if ":" in reason else reason[: SHORT_REASON_CHARS - 6] + "..."
                text = f"{head[:SHORT_REASON_CHARS]} [{len(self.footnotes)}]"
        else:
            text = _fmt(ours, column.format)
        if not paper_text:
            paper_text = _fmt(paper, column.format) if paper is not None else ("" if self.ref is None else "-")
        elif paper is not None:
            paper_text = _fmt(paper, column.format)
        return Cell(ours, text, paper, paper_text, reason if ours is None else "")


def _combine(kind: str, value: float | None, base: float | None) -> float | None:
    if value is None or base is None:
        return None
    if kind == "speedup":
        return base / value if value else None
    if kind == "ratio":
        return value / base if base else None
    return value - base


def _gap_closed(value: float | None, lr: float | None, hr: float | None) -> float | None:
    if value is None or lr is None or hr is None or hr == lr:
        return None
    return 100.0 * (value - lr) / (hr - lr)


def _header(column: ColumnSpec, results: list[dict[str, Any]], ref: RefTable | None) -> str:
    if column.kind == "speedup":
        return f"{column.label} (x vs {column.base})"
    if column.kind == "ratio":
        return f"{column.label} (/ {column.base})"
    if column.kind == "gap_closed":
        return f"{column.label} (% of {column.lr}->{column.hr} gap)"
    unit = ""
    for r in results:
        m = r.get("metrics", {}).get(column.metric)
        if m and m.get("unit"):
            unit = m["unit"]
            break
    if not unit and ref is not None and column.ref in ref.columns:
        unit = ref.columns[column.ref].unit
    suffix = f" at paper {column.x}" if column.kind == "matched" else ""
    delta = " delta" if column.kind == "delta" else ""
    return f"{column.label}{delta}{suffix}" + (f" ({unit})" if unit else "")


def _describe_context(context: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in context.items())


def _ours_context(used: list[dict[str, Any]]) -> str:
    if not used:
        return "no results"
    parts = []
    datasets = sorted({_dataset_text(r.get("dataset", {})) for r in used})
    parts.append("dataset=" + "; ".join(d for d in datasets if d))
    for key in ("device", "precision", "batch_size", "scale"):
        values = sorted({str(r.get(key)) for r in used if r.get(key) is not None})
        if values:
            parts.append(f"{key}=" + "/".join(values))
    return ", ".join(parts)


def _dataset_text(dataset: dict[str, Any]) -> str:
    name = dataset.get("name", "")
    if "height" in dataset and "width" in dataset:
        return f"{name} {dataset['height']}x{dataset['width']}"
    return str(name)


def build_table(spec: TableSpec, results: list[dict[str, Any]], default_paper: str | None = None) -> BuiltTable:
    paper = spec.reference_paper or default_paper
    reference = load_reference(paper) if (paper and spec.reference_table) else None
    ref = reference.table(spec.reference_table) if (reference and spec.reference_table) else None
    builder = _TableBuilder(spec, results, ref)
    cells = [[builder.cell(row, column) for column in spec.columns] for row in builder.rows]
    notes = list(spec.notes)
    context_lines = []
    if ref is not None:
        context_lines.append(f"Paper ({paper} {ref.id}): {_describe_context(ref.context)}")
        notes.extend(ref.notes)
    elif spec.reference_table:
        context_lines.append(f"Paper reference {paper}:{spec.reference_table} not found in suites/reference/")
    context_lines.append(f"Ours: {_ours_context(builder.used)}")
    return BuiltTable(
        spec=spec,
        title=spec.title,
        row_labels=[row.label for row in builder.rows],
        headers=[_header(c, results, ref) for c in spec.columns],
        cells=cells,
        has_reference=ref is not None,
        context_lines=context_lines,
        footnotes=builder.footnotes,
        notes=notes,
    )


def generic_table(results: list[dict[str, Any]]) -> BuiltTable | None:
    """All results, one row per unit, for suites without a layout."""
    if not results:
        return None
    metrics: list[str] = []
    for r in results:
        for name in r.get("metrics", {}):
            if name not in metrics:
                metrics.append(name)
    from harness.reports.layout import ColumnSpec as Col

    columns = tuple(Col(metric=m, label=m, ref=None, format=".4g") for m in metrics[:8])
    rows = []
    for r in sorted(results, key=lambda r: r.get("id", 0)):
        params = ", ".join(f"{k}={v}" for k, v in sorted(r.get("params", {}).items()))
        axes = f"{r.get('precision')}/b{r.get('batch_size')}/{r.get('device')}"
        label = " ".join(x for x in (r.get("trial", ""), r.get("label") or "", params, axes) if x)
        rows.append((label, r))
    spec = TableSpec(id="all", title="All results", reference_paper=None, reference_table=None,
                     match=Match(), rows=(), columns=columns or (Col("none", "metrics", None),))
    cells = []
    for _, r in rows:
        line = []
        for column in spec.columns:
            if r["status"] == "ok" and column.metric in r["metrics"]:
                value = float(r["metrics"][column.metric]["value"])
                line.append(Cell(value, _fmt(value, column.format)))
            else:
                reason = failure_reason(r, column.metric) if r["status"] != "ok" else ""
                line.append(Cell(None, reason, reason=reason))
        cells.append(line)
    headers = [_header(c, results, None) for c in spec.columns]
    return BuiltTable(spec, spec.title, [label for label, _ in rows], headers, cells, False,
                      [f"Ours: {_ours_context(results)}"])
