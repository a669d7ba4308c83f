"""Build report tables: select results per row/column, pair each with the paper's value, and
compute the normalized comparisons that transfer across hardware (speedups measured in one run,
share of the LR->HR gap closed, y at the paper's x on our curve)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.reports.layout import ColumnSpec, Match, RowSpec, TableSpec
from harness.reports.reference import RefCell, Reference, RefTable, load_reference
from harness.results import ResultRow, Status

AXIS_NAMES = ("precision", "batch_size", "device", "label", "section", "trial")
SHORT_REASON_CHARS = 26
STATUS_WORDS = {Status.OOM: "OOM"}  # how a report cell names a status, where not by its own word


SPREAD_MARK = "\u2020"  # dagger: the value is within the seeds' spread of another row's
SPREAD_RULE = (
    "x \u00b1 s: mean and standard deviation (n - 1) over the row's training seeds (seeds: N). "
    f"{SPREAD_MARK}: this value and another row's in the same column lie within the seeds' spread, "
    "|mean_a - mean_b| < std_a + std_b (a single-seed value counts with std 0), so their ordering is not "
    "established"
)


@dataclass
class Cell:
    ours: float | None  # with several seeds: their mean
    ours_text: str
    paper: float | None = None
    paper_text: str = ""
    reason: str = ""  # why `ours` is missing, in full
    std: float | None = None  # standard deviation (n - 1) over the row's seeds, when there are several
    seeds: int = 1  # how many seeds `ours` is the mean of
    within_spread: tuple[str, ...] = ()  # rows of this column whose value lies within the spread of this one


def seed_spread(values: list[float]) -> tuple[float, float | None]:
    """(mean, sample standard deviation) of one row's per-seed values (std None for a single seed)."""
    mean = float(np.mean(values))
    return mean, (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def within_spread(a: Cell, b: Cell) -> bool:
    """Whether two cells' difference lies within their seeds' spread: |mean_a - mean_b| < std_a +
    std_b, for cells of which at least one has several seeds (a single seed counts with std 0)."""
    if a.ours is None or b.ours is None or (a.seeds < 2 and b.seeds < 2):
        return False
    return abs(a.ours - b.ours) < (a.std or 0.0) + (b.std or 0.0)


@dataclass
class BuiltTable:
    spec: TableSpec
    title: str
    row_labels: list[str]
    headers: list[str]  # one per column, with unit
    cells: list[list[Cell]]
    has_reference: bool
    paper_columns: list[bool] = field(default_factory=list)  # which columns show a paper value
    context_lines: list[str] = field(default_factory=list)
    footnotes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def result_value(result: ResultRow, name: str) -> Any:
    """A metric value, else a parameter, else a field of the result (None if absent).

    A dotted name reaches into a mapping field: ``dataset.name``, ``notes.backend``.
    """
    return result.lookup(name)


def failure_reason(result: ResultRow | None, metric: str | None = None) -> str:
    """Why a result gives no value: 'not run', 'OOM', 'unavailable: no CUDA', ..."""
    if result is None:
        return "not run"
    status = result.status.value
    if status == Status.OK:
        if metric and metric.startswith(("note ", "metrics ")):
            return f"no {metric}"
        return f"no metric {metric!r}" if metric else "no value"
    word = STATUS_WORDS.get(Status(status), status)
    error = (result.error or "").strip().splitlines()
    detail = error[-1].strip() if error else ""
    if status == Status.OOM or not detail:
        return word
    if detail.lower().startswith(word.lower()):
        return detail
    return f"{word}: {detail}"


def axes_of(result: ResultRow) -> tuple[Any, Any, Any]:
    return (result.precision, result.batch_size, result.device)


def dominant_axes(results: list[ResultRow], match: Match) -> tuple[Any, Any, Any] | None:
    """The most common (precision, batch size, device) among the results ``match`` accepts."""
    counts = Counter(axes_of(r) for r in results if match.accepts(r))
    return counts.most_common(1)[0][0] if counts else None


def pick(
    results: list[ResultRow],
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
    found.sort(key=lambda r: (prefer_axes is None or axes_of(r) == prefer_axes, r.id))
    with_metric = [r for r in found if r.ok and (metric is None or metric in r.metrics)]
    if with_metric:
        return with_metric[-1]
    ok = [r for r in found if r.ok]
    return (ok or found)[-1]


def _fmt(value: float | None, spec: str) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    return format(value, spec)


def _expand_rows(spec: TableSpec, results: list[ResultRow]) -> list[RowSpec]:
    rows = list(spec.rows)
    if spec.expand is None:
        return rows
    param = spec.expand.param
    refs = dict(spec.expand.refs)
    values = sorted(
        {_hashable(_expanded_value(r, param)) for r in results if spec.match.accepts(r)} - {None}, key=_sort_key
    )
    for value in values:
        if param in AXIS_NAMES:
            match = Match(fields=((param, value),))
        else:
            match = Match(params=((param, value),))
        rows.append(RowSpec(spec.expand.label.format(value=value), refs.get(str(value)), match))
    return rows


def _expanded_value(result: ResultRow, param: str) -> Any:
    """The value an expanded row matches on: the parameter itself, even where a metric has its name
    (the selector's target ``density`` parameter vs its measured ``density``)."""
    params = result.params
    if param in params:
        return params[param]
    fields = result.identity.fields()  # an axis or field of the identity, never a metric of that name
    return fields[param] if param in fields else result_value(result, param)


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, float(value)) if isinstance(value, (int, float)) else (1, str(value))


class _TableBuilder:
    def __init__(
        self,
        spec: TableSpec,
        results: list[ResultRow],
        ref: RefTable | None,
        reference: Reference | None = None,
    ):
        self.reference = reference
        self.spec = spec
        self.results = results
        self.ref = ref
        self.rows = _expand_rows(spec, results)
        self.by_label = {row.label: row for row in self.rows}
        self.footnotes: list[str] = []
        self.used: list[ResultRow] = []
        self.seeded: set[int] = set()  # seed counts of the cells that averaged several seeds
        self.row_keys = {r.key: r.identity.row_key for r in results}
        self.axes = dominant_axes(results, spec.match)

    def match_for(self, row: RowSpec, column: ColumnSpec) -> Match:
        return self.spec.match.merged(row.match).merged(column.match)

    def ours(self, row: RowSpec, column: ColumnSpec, metric: str) -> tuple[float | None, str]:
        """Our value of ``metric`` in this cell (the mean over the row's seeds), or why there is none."""
        value, _, _, reason = self.ours_spread(row, column, metric)
        return value, reason

    def ours_spread(self, row: RowSpec, column: ColumnSpec, metric: str) -> tuple[float | None, float | None, int, str]:
        """(mean over the row's seeds, their std or None, number of seeds, why there is no value)."""
        metric = row.metric_for(metric)
        if not metric:
            return None, None, 0, "-"
        match = self.match_for(row, column)
        result = pick(self.results, match, metric, self.axes)
        if result is not None:
            self.used.append(result)
        if result is None or not result.ok or metric not in result.metrics:
            return None, None, 0, failure_reason(result, metric)
        values = [self._cell_value(r, metric, column) for r in self.seeds_of(result, match, metric)]
        mean, std = seed_spread(values)
        return mean, std, len(values), ""

    def seeds_of(self, chosen: ResultRow, match: Match, metric: str) -> list[ResultRow]:
        """``chosen`` and its row's other training seeds that ``match`` accepts and that recorded
        ``metric`` (the newest result per seed)."""
        row_key = self.row_keys[chosen.key]
        per_seed: dict[int, ResultRow] = {}
        for r in sorted(self.results, key=lambda r: r.id):
            if r.ok and metric in r.metrics and self.row_keys[r.key] == row_key and match.accepts(r):
                per_seed[r.identity.seed] = r
        if len(per_seed) > 1:
            self.seeded.add(len(per_seed))
            self.used.extend(per_seed.values())
        return list(per_seed.values()) or [chosen]

    @staticmethod
    def _cell_value(result: ResultRow, metric: str, column: ColumnSpec) -> float:
        value = float(result.metrics[metric].value) * column.scale
        return value / max(int(result.batch_size or 1), 1) if column.per_image else value

    def paper(self, row: RowSpec | None, column_key: str | None) -> float | None:
        cell = self.paper_cell(row, column_key)
        return None if cell is None else cell.value

    def paper_cell(self, row: RowSpec | None, column_key: str | None) -> RefCell | None:
        if row is None or row.ref is None or column_key is None:
            return None
        if row.ref_table:
            table = self.reference.table(row.ref_table) if self.reference else None
        else:
            table = self.ref
        return None if table is None else table.cell(row.ref, column_key)

    def cell(self, row: RowSpec, column: ColumnSpec) -> Cell:
        kind = column.kind
        if kind == "value":
            ours, std, seeds, reason = self.ours_spread(row, column, column.metric)
            ref_cell = self.paper_cell(row, column.ref)
            cell = self._cell(
                ours, reason, ref_cell.value if ref_cell else None, ref_cell.text if ref_cell else "", column
            )
            if seeds > 1 and ours is not None:
                cell.std, cell.seeds = std, seeds
                cell.ours_text = f"{_fmt(ours, column.format)} \u00b1 {_fmt(std, column.format)}"
            return cell
        if kind in ("speedup", "ratio", "delta"):
            base_label = row.base or column.base
            base = self.by_label.get(base_label or "")
            ours, reason = self.ours(row, column, column.metric)
            base_ours, base_reason = self.ours(base, column, column.metric) if base else (None, "no base row")
            paper, base_paper = self.paper(row, column.ref), self.paper(base, column.ref)
            derived = _combine(kind, ours, base_ours)
            why = reason or (f"{base_label}: {base_reason}" if base_reason else "")
            return self._cell(derived, why if derived is None else "", _combine(kind, paper, base_paper), "", column)
        if kind == "gap_closed":
            return self._gap_closed_cell(row, column)
        return self._matched(row, column)

    def _gap_closed_cell(self, row: RowSpec, column: ColumnSpec) -> Cell:
        """(row - LR) / (HR - LR) in %, ours and the paper's."""
        if column.lr_metric and column.hr_metric:
            values, reasons = [], []
            for metric in (column.metric, column.lr_metric, column.hr_metric):
                value, why = self.ours(row, column, metric)
                values.append(value)
                if why:
                    reasons.append(why)
            papers = [self.paper(row, column.ref), self.paper_at(column.paper_lr, column.ref),
                      self.paper_at(column.paper_hr, column.ref)]  # fmt: skip
        else:
            values, reasons = [], []
            for label in (row.label, column.lr, column.hr):
                target = self.by_label.get(label or "")
                if target is None:
                    values.append(None)
                    reasons.append(f"no row {label}")
                    continue
                value, why = self.ours(target, column, column.metric)
                values.append(value)
                if why:
                    reasons.append(why if target is row else f"{label}: {why}")
            papers = [self.paper(self.by_label.get(label or ""), column.ref)
                      for label in (row.label, column.lr, column.hr)]  # fmt: skip
        derived = _gap_closed(*values)
        reason = reasons[0] if reasons else "HR equals LR"
        return self._cell(derived, reason if derived is None else "", _gap_closed(*papers), "", column)

    def paper_at(self, address: str | None, column_key: str | None) -> float | None:
        """The paper's value at ``"<table>:<row>"`` (or a row of this table) and ``column_key``."""
        if address is None or column_key is None:
            return None
        table_id, sep, row = address.rpartition(":")
        table = (self.reference.table(table_id) if self.reference else None) if sep else self.ref
        cell = table.cell(row, column_key) if table is not None else None
        return None if cell is None else cell.value

    def _matched(self, row: RowSpec, column: ColumnSpec) -> Cell:
        assert column.x is not None
        paper_x = self.paper(row, column.x)
        paper_y = self.paper(row, column.ref)
        curve_match = self.match_for(row, column).without(column.vary)
        points = sorted(
            (float(r.metrics[column.x].value), float(r.metrics[column.metric].value))
            for r in self.results
            if curve_match.accepts(r) and r.ok and column.x in r.metrics and column.metric in r.metrics
        )
        if paper_x is None:
            return self._cell(None, "paper gives no x", paper_y, "", column)
        if not points:
            _, reason = self.ours(row, column, column.metric)
            return self._cell(None, reason or "no curve", paper_y, "", column)
        xs = np.array([p[0] for p in points])
        ys = np.array([p[1] for p in points])
        if paper_x < xs.min() or paper_x > xs.max():
            return self._cell(
                None,
                f"paper x={paper_x:g} is outside our measured {column.x} range [{xs.min():.3g}, {xs.max():.3g}]",
                paper_y,
                "",
                column,
            )
        return self._cell(float(np.interp(paper_x, xs, ys)), "", paper_y, "", column)

    def _cell(self, ours: float | None, reason: str, paper: float | None, paper_text: str, column: ColumnSpec) -> Cell:
        if ours is None:
            text = short_reason(reason, self.footnotes)
        else:
            text = _fmt(ours, column.format)
        if not paper_text:
            paper_text = _fmt(paper, column.format) if paper is not None else ("" if self.ref is None else "-")
        elif paper is not None:
            paper_text = _fmt(paper, column.format)
        return Cell(ours, text, paper, paper_text, reason if ours is None else "")


def short_reason(reason: str, footnotes: list[str]) -> str:
    """``reason`` itself when short, else its head and a footnote number (the note added to ``footnotes``)."""
    if len(reason) <= SHORT_REASON_CHARS:
        return reason
    if reason not in footnotes:
        footnotes.append(reason)
    head = reason.split(":")[0] if ":" in reason else reason[: SHORT_REASON_CHARS - 6] + "..."
    return f"{head[:SHORT_REASON_CHARS]} [{footnotes.index(reason) + 1}]"


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


def _header(column: ColumnSpec, results: list[ResultRow], ref: RefTable | None) -> str:
    base = column.base or "base row"
    if column.kind == "speedup":
        return f"{column.label} (x vs {base})"
    if column.kind == "ratio":
        return f"{column.label} (/ {base})"
    if column.kind == "gap_closed":
        if column.lr_metric:
            return f"{column.label} gap closed (% of LR->HR)"
        return f"{column.label} gap closed (% of {column.lr}->{column.hr})"
    unit = ""
    for r in results:
        m = r.metrics.get(column.metric)
        if m and m.unit:
            unit = m.unit
            break
    if (not unit or column.scale != 1.0) and ref is not None and column.ref in ref.columns:
        unit = ref.columns[column.ref].unit
    suffix = f" at paper {column.x}" if column.kind == "matched" else ""
    suffix += " per image" if column.per_image else ""
    delta = f" change vs {base}" if column.kind == "delta" else ""
    return f"{column.label}{delta}{suffix}" + (f" ({unit})" if unit else "")


def _describe_context(context: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in context.items())


def _ours_context(used: list[ResultRow], seed_counts: set[int] | None = None) -> str:
    """The settings of the results a table shows. The axes are read from each unit's identity, never
    from its metrics (the selectors record a metric named ``precision``)."""
    if not used:
        return "no results"
    parts = []
    datasets = sorted({_dataset_text(r.dataset) for r in used})
    if any(datasets):
        parts.append("dataset=" + "; ".join(d for d in datasets if d))
    for key in ("device", "precision", "batch_size", "scale"):
        values = sorted({str(r.scale_name if key == "scale" else r.identity.axes[key]) for r in used})
        if values:
            parts.append(f"{key}=" + "/".join(values))
    if seed_counts:
        counts = "/".join(str(n) for n in sorted(seed_counts))
        parts.append(f"seeds={counts} per row (mean \u00b1 std)")
    return ", ".join(parts)


def _dataset_text(dataset: dict[str, Any]) -> str:
    name = dataset.get("name", "")
    if "height" in dataset and "width" in dataset:
        return f"{name} {dataset['height']}x{dataset['width']}"
    return str(name)


def build_table(spec: TableSpec, results: list[ResultRow], default_paper: str | None = None) -> BuiltTable:
    paper = spec.reference_paper or default_paper
    reference = load_reference(paper) if (paper and spec.reference_table) else None
    ref = reference.table(spec.reference_table) if (reference and spec.reference_table) else None
    builder = _TableBuilder(spec, results, ref, reference)
    cells = [[builder.cell(row, column) for column in spec.columns] for row in builder.rows]
    labels = [row.label for row in builder.rows]
    notes = list(spec.notes)
    ties = mark_within_spread(cells, labels, [c.label for c in spec.columns])
    if builder.seeded:
        notes.append(SPREAD_RULE + (": " + "; ".join(ties) if ties else "; no two rows are within it") + ".")
    context_lines = []
    if ref is not None:
        context_lines.append(f"Paper ({paper} {ref.id}): {_describe_context(ref.context)}")
        notes.extend(ref.notes)
    elif spec.reference_table:
        context_lines.append(f"Paper reference {paper}:{spec.reference_table} not found in suites/reference/")
    context_lines.append(f"Ours: {_ours_context(builder.used, builder.seeded)}")
    return BuiltTable(
        spec=spec,
        title=spec.title,
        row_labels=[row.label for row in builder.rows],
        headers=[_header(c, results, ref) for c in spec.columns],
        cells=cells,
        has_reference=ref is not None,
        paper_columns=[ref is not None and c.ref is not None for c in spec.columns],
        context_lines=context_lines,
        footnotes=builder.footnotes,
        notes=notes,
    )


def mark_within_spread(cells: list[list[Cell]], row_labels: list[str], column_labels: list[str]) -> list[str]:
    """Mark every value cell that lies within the seeds' spread of another row's in its column (its
    text gets the mark, ``within_spread`` the other rows); return the pairs as 'column: A ~ B'."""
    pairs = []
    for j, column in enumerate(column_labels):
        for a in range(len(cells)):
            for b in range(a + 1, len(cells)):
                first, second = cells[a][j], cells[b][j]
                if not within_spread(first, second):
                    continue
                pairs.append(f"{column}: {row_labels[a]} ~ {row_labels[b]}")
                for cell, other in ((first, row_labels[b]), (second, row_labels[a])):
                    if not cell.within_spread:
                        cell.ours_text += f" {SPREAD_MARK}"
                    cell.within_spread += (other,)
    return pairs


def generic_table(results: list[ResultRow]) -> BuiltTable | None:
    """All results, one row per unit, for suites without a layout."""
    if not results:
        return None
    metrics: list[str] = []
    for r in results:
        for name in r.metrics:
            if name not in metrics:
                metrics.append(name)
    from harness.reports.layout import ColumnSpec as Col

    columns = tuple(Col(metric=m, label=m, ref=None, format=".4g") for m in metrics[:8])
    varying = _varying_params(results)
    trials = {r.trial for r in results}
    rows = []
    for r in sorted(results, key=lambda r: r.id):
        params = ", ".join(f"{k}={r.params[k]}" for k in varying if k in r.params)
        axes = f"{r.precision}/b{r.batch_size}/{r.device}"
        trial = r.trial if len(trials) > 1 else ""
        label = " ".join(x for x in (trial, r.label or "", params, axes) if x)
        rows.append((label, r))
    spec = TableSpec(
        id="all",
        title="All results",
        reference_paper=None,
        reference_table=None,
        match=Match(),
        rows=(),
        columns=columns or (Col("none", "metrics", None),),
    )
    cells = []
    footnotes: list[str] = []
    for _, r in rows:
        line = []
        for column in spec.columns:
            if r.ok and column.metric in r.metrics:
                value = float(r.metrics[column.metric].value)
                line.append(Cell(value, _fmt(value, column.format)))
            else:
                reason = failure_reason(r, column.metric) if not r.ok else ""
                line.append(Cell(None, short_reason(reason, footnotes), reason=reason))
        cells.append(line)
    headers = [_header(c, results, None) for c in spec.columns]
    labels = [label for label, _ in rows]
    context = [f"Ours: {_ours_context(results)}"]
    if len(trials) == 1:
        context.insert(0, f"Trial: {next(iter(trials))}")
    return BuiltTable(
        spec, spec.title, labels, headers, cells, has_reference=False, context_lines=context, footnotes=footnotes
    )


def unit_times_table(results: list[ResultRow]) -> BuiltTable | None:
    """Every unit the report shows, with how it ended and its wall time (training included), and the
    total: where a run's time went (``harness run --dry-run`` estimates from the same stored times)."""
    if not results:
        return None
    from harness.reports.layout import ColumnSpec as Col

    column = Col(metric="wall_time", label="wall time (s)", ref=None, format=".1f")
    spec = TableSpec("unit_times", "Wall time per unit", None, None, Match(), (), (column,))
    ordered = sorted(results, key=lambda r: r.id)
    labels, cells = [], []
    for r in ordered:
        seconds = r.duration_s
        labels.append(r.describe() + ("" if r.ok else f" ({r.status.value})"))
        cells.append([Cell(seconds, _fmt(seconds, column.format)) if seconds is not None else Cell(None, "-")])
    total = sum(r.duration_s or 0.0 for r in ordered)
    context = [f"{len(ordered)} units, {total:.1f} s in all ({total / 60:.1f} min); runs: "
               + ", ".join(str(i) for i in sorted({r.run_id for r in ordered}))]  # fmt: skip
    return BuiltTable(spec, spec.title, labels, [_header(column, [], None)], cells, has_reference=False,
                      context_lines=context)  # fmt: skip


def _varying_params(results: list[ResultRow]) -> list[str]:
    """Parameter names whose value differs between results (the others would only repeat)."""
    values: dict[str, set[str]] = {}
    for r in results:
        for key, value in r.params.items():
            values.setdefault(key, set()).add(json.dumps(value, sort_keys=True, default=str))
    n_trials = len({r.trial for r in results})
    return sorted(k for k, v in values.items() if len(v) > 1 or n_trials > 1)
