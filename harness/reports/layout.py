"""Report layout of a suite: which tables and figures a report shows and how they map to the paper.

A suite declares its layout inline (``tables:`` / ``figures:`` / ``targets:`` keys) or points to a
layout file with ``layout: layouts/table5.yaml`` (relative to the suite file; the file holds the
same keys). Inline keys and the pointed file may be combined; inline entries come first.

Schema::

    tables:
      - id: t5a                          # unique within the suite
        title: "Table 5a: pixel selector"
        reference: "Table 5a"            # table id in suites/reference/<paper>.yaml, or
                                         # "<paper>:<table id>" for another paper; optional
        match: {trial: sparserefine.selector, section: "5a"}   # defaults for every row
        transpose: false                 # print rows as columns (wide tables)
        rows:
          - label: Entropy               # shown in the table
            ref: Entropy                 # reference row key (default: label; null = none)
            ref_table: "Table 1"         # optional: the row's paper values come from this table
            metrics: {latency: selector_latency}   # optional: read another metric in this row
                                         # (null: the column does not apply to this row, shown "-")
            base: "HRNet-W48 (HR)"       # optional: base row of this row's speedup/ratio/delta
            match: {params: {selector: entropy}}
        expand:                          # optional: one row per distinct value found in the results
          param: alpha                   # a parameter name or an axis (precision, batch_size, device)
          label: "alpha={value}"
          refs: {0.3: "11.8%"}           # value -> reference row key
        columns:
          - metric: recall               # metric name in the results
            ref: recall                  # reference column key (default: metric; null = none)
            label: Recall
            format: ".1f"                # Python format spec for both values
            match: {precision: fp16}     # optional, merged over the row's match
            kind: value                  # value | speedup | ratio | delta | gap_closed | matched
            base: "HR"                   # speedup/ratio/delta: the row label to compare with
            lr: "LR"                     # gap_closed: LR and HR row labels, or instead
            hr: "HR"
            lr_metric: miou_lr           # gap_closed: LR/HR values recorded by this row's own unit
            hr_metric: miou_hr
            paper_lr: "Table 1:HRNet-W48 (LR)"   # with lr_metric: the paper's LR/HR rows
            paper_hr: "Table 1:HRNet-W48 (HR)"   # ("<table>:<row>", or a row of this table)
            x: density                   # matched: the x metric; the y value of this row's
            vary: [alpha, section]       # curve (results matching the row with the `vary`
                                         # params/fields left open) is interpolated at the paper's x
            scale: 0.001                 # multiply our value (unit conversion, e.g. G -> T)
            per_image: true              # divide our value by the unit's batch size (per-image
                                         # latency, as the paper reports it)

    figures:
      - id: fig3b
        title: "Recall vs density per selector"
        kind: curve                      # curve | bars
        match: {trial: sparserefine.selector}
        x: density                       # a metric, a parameter or an axis
        y: recall
        curve_note: curve                # optional: each unit's note `curve` (a list of {x:.., y:..}
                                         # dicts) is one series, instead of one point per unit
        series: [selector]               # parameters/axes/label/section (or dotted fields such as
                                         # dataset.name) whose values split series
        per_image: false                 # divide y by the unit's batch size
        xscale: linear                   # linear | log
        points:                          # paper points overlaid on the curves
          - {table: "Table 5a", rows: [Entropy, Magnitude], x: density, y: recall}
          - {table: "Supp Table 3", row: "HRNet-W48 + SparseRefine",
             columns: [fp16_b1, fp16_b2], x_context: batch_size, series: "paper fp16"}
      - id: t8
        kind: bars                       # grouped bars, one group per category
        reference: "Table 8"
        values: {note: per_class_iou}    # a note holding {category: value} (or a list matched to
                                         # notes `classes`; a dotted path reaches inside a note),
                                         # or {metric_prefix: "iou_"}; a bar may override `values`
        bars:
          - {label: LR, match: {params: {kind: lr}}, ref: "HRNet-W48 (512x1024)"}
          - {label: SR, match: {trial: sr}, values: {note: per_class_iou.refined}, ref: "+ SparseRefine (Ours)"}

    targets:                             # statements the report says hold or not on the run
      - label: "LR baseline errs on <= 5% of the labelled pixels"
        metric: pixel_accuracy_lr
        match: {trial: sparserefine.pipeline, params: {selector: entropy}}
        op: ">="                         # >= | <= | > | < | between
        value: 95                        # a number; for between: [lo, hi] (both included)
      - label: "recall: entropy > magnitude > random"
        metric: recall
        match: {trial: sparserefine.selector, section: "5a"}   # optional: defaults for every item
        order:                           # holds when metric(1st) > metric(2nd) > ...
          - {params: {selector: entropy}}
          - {params: {selector: magnitude}}
          - {params: {selector: random}}
        strict: true                     # false: >= between neighbours
        names: [entropy, magnitude, random]   # optional: how the verdict names the items (default:
                                         # the values they differ in)
        format: ".1f"                    # optional: how the values read are printed

A target's match must select one configuration (its ``seeds: N`` units together): one that
selects several, or none with the metric, leaves the target ``missing`` (see
:mod:`harness.reports.targets`).

A ``match`` may hold ``trial``, ``section``, ``label``, ``precision``, ``batch_size``, ``device``
(each equal), ``params`` (a subset of the result's parameters) and ``dataset`` (a subset of the
unit's dataset settings, e.g. ``dataset: {name: voc}`` in a suite whose entries run on several
datasets). A cell's match is the table's,
then the row's, then the column's, merged in that order. When several units qualify, the newest one
with the metric on the table's most common (precision, batch size, device) wins, and its row's other
training seeds (``seeds: N``) with it: the cell then shows their mean and standard deviation; when none has it,
the cell shows why (``not run``, ``OOM``, ``unavailable: ...``, taken from the unit's error).

Every key is checked here, so a typo fails at validation with the file and key named, not in the
middle of a report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.results import ResultRow, UnitIdentity

MATCH_KEYS = (*UnitIdentity(trial="").fields(), "params", "dataset")  # what identifies a unit (harness.results)
COLUMN_KINDS = ("value", "speedup", "ratio", "delta", "gap_closed", "matched")
FIGURE_KINDS = ("curve", "bars")
TARGET_OPS = (">=", "<=", ">", "<", "between")
LAYOUT_KEYS = ("tables", "figures", "targets")  # what a suite or its layout file declares for its report


@dataclass(frozen=True)
class Match:
    """A filter over results by their :class:`~harness.results.UnitIdentity`; empty fields match anything."""

    fields: tuple[tuple[str, Any], ...] = ()
    params: tuple[tuple[str, Any], ...] = ()
    dataset: tuple[tuple[str, Any], ...] = ()

    def merged(self, other: Match) -> Match:
        fields = dict(self.fields) | dict(other.fields)
        params = dict(self.params) | dict(other.params)
        dataset = dict(self.dataset) | dict(other.dataset)
        return Match(tuple(fields.items()), tuple(params.items()), tuple(dataset.items()))

    def without(self, names: tuple[str, ...]) -> Match:
        """This match with the named parameters and fields left open."""
        return Match(
            tuple((k, v) for k, v in self.fields if k not in names),
            tuple((k, v) for k, v in self.params if k not in names),
            self.dataset,
        )

    def accepts(self, result: ResultRow | UnitIdentity) -> bool:
        identity = result.identity if isinstance(result, ResultRow) else result
        have = identity.fields()
        for key, want in self.fields:
            if not _same(have.get(key), want):
                return False
        if not all(key in identity.dataset and _same(identity.dataset[key], want) for key, want in self.dataset):
            return False
        return all(key in identity.params and _same(identity.params[key], want) for key, want in self.params)


def _same(have: Any, want: Any) -> bool:
    if isinstance(want, (int, float)) and isinstance(have, (int, float)) and not isinstance(want, bool):
        return float(have) == float(want)
    return have == want or str(have) == str(want)


@dataclass(frozen=True)
class ColumnSpec:
    metric: str
    label: str
    ref: str | None
    format: str = ".2f"
    kind: str = "value"
    match: Match = Match()
    base: str | None = None
    lr: str | None = None
    hr: str | None = None
    x: str | None = None
    vary: tuple[str, ...] = ()
    per_image: bool = False
    lr_metric: str | None = None
    hr_metric: str | None = None
    paper_lr: str | None = None
    paper_hr: str | None = None
    scale: float = 1.0


@dataclass(frozen=True)
class RowSpec:
    label: str
    ref: str | None
    match: Match = Match()
    ref_table: str | None = None  # take this row's paper values from another table of the paper
    metrics: tuple[tuple[str, str], ...] = ()  # column metric -> the metric this row reads instead
    base: str | None = None  # speedup/ratio/delta: this row's own base row (overrides the column's)

    def metric_for(self, column_metric: str) -> str:
        return dict(self.metrics).get(column_metric, column_metric)


@dataclass(frozen=True)
class ExpandSpec:
    param: str
    label: str = "{value}"
    refs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TableSpec:
    id: str
    title: str
    reference_paper: str | None
    reference_table: str | None
    match: Match
    rows: tuple[RowSpec, ...]
    columns: tuple[ColumnSpec, ...]
    expand: ExpandSpec | None = None
    transpose: bool = False
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PointSpec:
    paper: str | None
    table: str
    rows: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    x: str | None = None
    y: str | None = None
    x_context: str | None = None
    series: str | None = None


@dataclass(frozen=True)
class BarSpec:
    label: str
    match: Match
    ref: str | None = None
    values_note: str | None = None
    values_metric_prefix: str | None = None


@dataclass(frozen=True)
class FigureSpec:
    id: str
    title: str
    kind: str
    match: Match = Match()
    x: str | None = None
    y: str | None = None
    series: tuple[str, ...] = ()
    xscale: str = "linear"
    points: tuple[PointSpec, ...] = ()
    reference_paper: str | None = None
    reference_table: str | None = None
    values_note: str | None = None
    values_metric_prefix: str | None = None
    bars: tuple[BarSpec, ...] = ()
    ylabel: str | None = None
    xlabel: str | None = None
    per_image: bool = False
    curve_note: str | None = None


@dataclass(frozen=True)
class TargetSpec:
    """A statement the report checks on the run: a threshold on one configuration's metric
    (``op``/``value``), or an ordering of several configurations by it (``order``)."""

    label: str
    metric: str
    match: Match = Match()  # the threshold's configuration; the ordering's defaults for every item
    op: str | None = None  # threshold only
    value: tuple[float, ...] = ()  # threshold only: one number, or (lo, hi) for between
    order: tuple[Match, ...] = ()  # ordering only: the items as written (without ``match``)
    strict: bool = True
    format: str = ".1f"
    names: tuple[str, ...] = ()  # ordering only: display names of the items (default: derived)

    @property
    def is_ordering(self) -> bool:
        return bool(self.order)


@dataclass(frozen=True)
class ReportLayout:
    paper: str | None
    tables: tuple[TableSpec, ...] = ()
    figures: tuple[FigureSpec, ...] = ()
    targets: tuple[TargetSpec, ...] = ()
    sources: tuple[str, ...] = field(default=())


class _Reader:
    """Typed access to one mapping with errors that name the file and the key path."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, message: str) -> UserError:
        return UserError(f"{self.source}: {where}: {message}")

    def mapping(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, got {_kind(value)}")
        return value

    def seq(self, value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(where, f"expected a list, got {_kind(value)}")
        return value

    def text(self, value: Any, where: str) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.fail(where, f"expected a string, got {_kind(value)}")
        return str(value)

    def known(self, data: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
        extra = sorted(set(data) - set(allowed))
        if extra:
            raise self.fail(f"{where}.{extra[0]}", f"unknown key (allowed: {', '.join(allowed)})")

    def flag(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, f"expected true or false, got {_kind(value)}")
        return value

    def match(self, value: Any, where: str) -> Match:
        if value is None:
            return Match()
        data = self.mapping(value, where)
        self.known(data, MATCH_KEYS, where)
        params = self.mapping(data.get("params", {}), f"{where}.params")
        dataset = self.mapping(data.get("dataset", {}), f"{where}.dataset")
        fields = tuple((k, data[k]) for k in MATCH_KEYS if k in data and k not in ("params", "dataset"))
        return Match(fields, tuple(params.items()), tuple(dataset.items()))

    def names(self, value: Any, where: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            return (value,)
        return tuple(self.text(v, f"{where}[{i}]") for i, v in enumerate(self.seq(value, where)))


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _split_reference(value: str | None, paper: str | None) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    if ":" in value:
        ref_paper, table = value.split(":", 1)
        return ref_paper.strip(), table.strip()
    return paper, value


def _parse_column(r: _Reader, raw: Any, where: str) -> ColumnSpec:
    data = r.mapping(raw, where)
    allowed = (
        "metric",
        "ref",
        "label",
        "format",
        "kind",
        "match",
        "base",
        "lr",
        "hr",
        "x",
        "vary",
        "per_image",
        "lr_metric",
        "hr_metric",
        "paper_lr",
        "paper_hr",
        "scale",
    )
    r.known(data, allowed, where)
    if "metric" not in data:
        raise r.fail(where, "missing key 'metric'")
    metric = r.text(data["metric"], f"{where}.metric")
    kind = r.text(data.get("kind", "value"), f"{where}.kind")
    if kind not in COLUMN_KINDS:
        raise r.fail(f"{where}.kind", f"{kind!r} is not one of {', '.join(COLUMN_KINDS)}")
    fmt = r.text(data.get("format", ".2f"), f"{where}.format")
    try:
        format(1.5, fmt)
    except ValueError:
        raise r.fail(f"{where}.format", f"{fmt!r} is not a valid number format") from None
    needs = {
        "gap_closed": ("lr_metric", "hr_metric") if "lr_metric" in data or "hr_metric" in data else ("lr", "hr"),
        "matched": ("x",),
    }
    for key in needs.get(kind, ()):
        if key not in data:
            raise r.fail(where, f"kind {kind} needs key {key!r}")
    ref = data.get("ref", metric)
    return ColumnSpec(
        metric=metric,
        label=r.text(data.get("label", metric), f"{where}.label"),
        ref=None if ref is None else r.text(ref, f"{where}.ref"),
        format=fmt,
        kind=kind,
        match=r.match(data.get("match"), f"{where}.match"),
        base=None if "base" not in data else r.text(data["base"], f"{where}.base"),
        lr=None if "lr" not in data else r.text(data["lr"], f"{where}.lr"),
        hr=None if "hr" not in data else r.text(data["hr"], f"{where}.hr"),
        x=None if "x" not in data else r.text(data["x"], f"{where}.x"),
        vary=r.names(data.get("vary"), f"{where}.vary"),
        per_image=r.flag(data.get("per_image", False), f"{where}.per_image"),
        lr_metric=_opt_text(r, data, "lr_metric", where),
        hr_metric=_opt_text(r, data, "hr_metric", where),
        paper_lr=_opt_text(r, data, "paper_lr", where),
        paper_hr=_opt_text(r, data, "paper_hr", where),
        scale=_number(r, data.get("scale", 1.0), f"{where}.scale"),
    )


def _number(r: _Reader, value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise r.fail(where, f"expected a number, got {_kind(value)}")
    return float(value)


def _opt_text(r: _Reader, data: dict[str, Any], key: str, where: str) -> str | None:
    return None if data.get(key) is None else r.text(data[key], f"{where}.{key}")


def _parse_row(r: _Reader, raw: Any, where: str) -> RowSpec:
    data = r.mapping(raw, where)
    r.known(data, ("label", "ref", "ref_table", "match", "metrics", "base"), where)
    if "label" not in data:
        raise r.fail(where, "missing key 'label'")
    label = r.text(data["label"], f"{where}.label")
    ref = data.get("ref", label)
    ref_table = data.get("ref_table")
    metrics = r.mapping(data.get("metrics") or {}, f"{where}.metrics")
    return RowSpec(
        label,
        None if ref is None else r.text(ref, f"{where}.ref"),
        r.match(data.get("match"), f"{where}.match"),
        None if ref_table is None else r.text(ref_table, f"{where}.ref_table"),
        tuple((str(k), "" if v is None else r.text(v, f"{where}.metrics.{k}")) for k, v in metrics.items()),
        _opt_text(r, data, "base", where),
    )


def _parse_table(r: _Reader, raw: Any, where: str, paper: str | None) -> TableSpec:
    data = r.mapping(raw, where)
    allowed = ("id", "title", "reference", "match", "rows", "expand", "columns", "transpose", "notes")
    r.known(data, allowed, where)
    for key in ("id", "columns"):
        if key not in data:
            raise r.fail(where, f"missing key {key!r}")
    table_id = r.text(data["id"], f"{where}.id")
    ref = data.get("reference")
    ref_paper, ref_table = _split_reference(None if ref is None else r.text(ref, f"{where}.reference"), paper)
    rows = tuple(
        _parse_row(r, row, f"{where}.rows[{i}]") for i, row in enumerate(r.seq(data.get("rows", []), f"{where}.rows"))
    )
    columns_raw = r.seq(data["columns"], f"{where}.columns")
    if not columns_raw:
        raise r.fail(f"{where}.columns", "needs at least one column")
    columns = tuple(_parse_column(r, c, f"{where}.columns[{i}]") for i, c in enumerate(columns_raw))
    expand = None
    if data.get("expand") is not None:
        e = r.mapping(data["expand"], f"{where}.expand")
        r.known(e, ("param", "label", "refs"), f"{where}.expand")
        if "param" not in e:
            raise r.fail(f"{where}.expand", "missing key 'param'")
        refs = r.mapping(e.get("refs", {}), f"{where}.expand.refs")
        expand = ExpandSpec(
            param=r.text(e["param"], f"{where}.expand.param"),
            label=r.text(e.get("label", "{value}"), f"{where}.expand.label"),
            refs=tuple((str(k), r.text(v, f"{where}.expand.refs.{k}")) for k, v in refs.items()),
        )
    if not rows and expand is None:
        raise r.fail(where, "needs 'rows' or 'expand'")
    labels = [row.label for row in rows]
    for column in columns:
        for key in ("base", "lr", "hr"):
            target = getattr(column, key)
            if target is not None and expand is None and target not in labels:
                raise r.fail(f"{where}.columns.{column.metric}.{key}", f"no row labelled {target!r}")
        if column.kind in ("speedup", "ratio", "delta") and column.base is None:
            unbased = [row.label for row in rows if row.base is None]
            if unbased or expand is not None:
                raise r.fail(
                    f"{where}.columns.{column.metric}",
                    f"kind {column.kind} needs key 'base' (or a 'base' on every row)",
                )
    for row in rows:
        if row.base is not None and row.base not in labels:
            raise r.fail(f"{where}.rows.{row.label}.base", f"no row labelled {row.base!r}")
    transpose = data.get("transpose", False)
    if not isinstance(transpose, bool):
        raise r.fail(f"{where}.transpose", "expected true or false")
    return TableSpec(
        id=table_id,
        title=r.text(data.get("title", table_id), f"{where}.title"),
        reference_paper=ref_paper,
        reference_table=ref_table,
        match=r.match(data.get("match"), f"{where}.match"),
        rows=rows,
        columns=columns,
        expand=expand,
        transpose=transpose,
        notes=r.names(data.get("notes"), f"{where}.notes"),
    )


def _parse_point(r: _Reader, raw: Any, where: str, paper: str | None) -> PointSpec:
    data = r.mapping(raw, where)
    r.known(data, ("table", "row", "rows", "columns", "x", "y", "x_context", "series"), where)
    if "table" not in data:
        raise r.fail(where, "missing key 'table'")
    ref_paper, table = _split_reference(r.text(data["table"], f"{where}.table"), paper)
    rows = r.names(data.get("rows", data.get("row")), f"{where}.rows")
    columns = r.names(data.get("columns"), f"{where}.columns")
    if columns and "x_context" not in data:
        raise r.fail(where, "'columns' points need 'x_context' (the column context key giving x)")
    if not columns and not ("x" in data and "y" in data):
        raise r.fail(where, "needs 'x' and 'y' reference columns (or 'columns' with 'x_context')")
    return PointSpec(
        paper=ref_paper,
        table=table or "",
        rows=rows,
        columns=columns,
        x=None if "x" not in data else r.text(data["x"], f"{where}.x"),
        y=None if "y" not in data else r.text(data["y"], f"{where}.y"),
        x_context=None if "x_context" not in data else r.text(data["x_context"], f"{where}.x_context"),
        series=None if "series" not in data else r.text(data["series"], f"{where}.series"),
    )


def _parse_values(r: _Reader, raw: Any, where: str) -> tuple[str | None, str | None]:
    values = r.mapping(raw, where)
    r.known(values, ("note", "metric_prefix"), where)
    if len(values) != 1:
        raise r.fail(where, "give exactly one of 'note' or 'metric_prefix'")
    note = None if "note" not in values else r.text(values["note"], f"{where}.note")
    prefix = None if "metric_prefix" not in values else r.text(values["metric_prefix"], f"{where}.metric_prefix")
    return note, prefix


def _parse_figure(r: _Reader, raw: Any, where: str, paper: str | None) -> FigureSpec:
    data = r.mapping(raw, where)
    allowed = (
        "id",
        "title",
        "kind",
        "match",
        "x",
        "y",
        "series",
        "xscale",
        "points",
        "reference",
        "values",
        "bars",
        "xlabel",
        "ylabel",
        "per_image",
        "curve_note",
    )
    r.known(data, allowed, where)
    if "id" not in data:
        raise r.fail(where, "missing key 'id'")
    kind = r.text(data.get("kind", "curve"), f"{where}.kind")
    if kind not in FIGURE_KINDS:
        raise r.fail(f"{where}.kind", f"{kind!r} is not one of {', '.join(FIGURE_KINDS)}")
    xscale = r.text(data.get("xscale", "linear"), f"{where}.xscale")
    if xscale not in ("linear", "log"):
        raise r.fail(f"{where}.xscale", "expected linear or log")
    ref = data.get("reference")
    ref_paper, ref_table = _split_reference(None if ref is None else r.text(ref, f"{where}.reference"), paper)
    points = tuple(
        _parse_point(r, p, f"{where}.points[{i}]", paper)
        for i, p in enumerate(r.seq(data.get("points", []), f"{where}.points"))
    )
    values_note = values_prefix = None
    bars: tuple[BarSpec, ...] = ()
    if kind == "curve":
        for key in ("x", "y"):
            if key not in data:
                raise r.fail(where, f"curve figures need key {key!r}")
    else:
        values_note = values_prefix = None
        if data.get("values") is not None:
            values_note, values_prefix = _parse_values(r, data["values"], f"{where}.values")
        bar_list = []
        for i, b in enumerate(r.seq(data.get("bars"), f"{where}.bars")):
            bw = f"{where}.bars[{i}]"
            bd = r.mapping(b, bw)
            r.known(bd, ("label", "match", "ref", "values"), bw)
            if "label" not in bd:
                raise r.fail(bw, "missing key 'label'")
            note, prefix = (values_note, values_prefix)
            if bd.get("values") is not None:
                note, prefix = _parse_values(r, bd["values"], f"{bw}.values")
            elif note is None and prefix is None:
                raise r.fail(bw, "missing key 'values' (and the figure gives none)")
            bar_list.append(
                BarSpec(
                    r.text(bd["label"], f"{bw}.label"),
                    r.match(bd.get("match"), f"{bw}.match"),
                    None if bd.get("ref") is None else r.text(bd["ref"], f"{bw}.ref"),
                    note,
                    prefix,
                )
            )
        if not bar_list:
            raise r.fail(f"{where}.bars", "needs at least one bar series")
        bars = tuple(bar_list)
    return FigureSpec(
        id=r.text(data["id"], f"{where}.id"),
        title=r.text(data.get("title", data["id"]), f"{where}.title"),
        kind=kind,
        match=r.match(data.get("match"), f"{where}.match"),
        x=None if "x" not in data else r.text(data["x"], f"{where}.x"),
        y=None if "y" not in data else r.text(data["y"], f"{where}.y"),
        series=r.names(data.get("series"), f"{where}.series"),
        xscale=xscale,
        points=points,
        reference_paper=ref_paper,
        reference_table=ref_table,
        values_note=values_note,
        values_metric_prefix=values_prefix,
        bars=bars,
        xlabel=None if "xlabel" not in data else r.text(data["xlabel"], f"{where}.xlabel"),
        ylabel=None if "ylabel" not in data else r.text(data["ylabel"], f"{where}.ylabel"),
        per_image=r.flag(data.get("per_image", False), f"{where}.per_image"),
        curve_note=_opt_text(r, data, "curve_note", where),
    )


def _parse_target(r: _Reader, raw: Any, where: str) -> TargetSpec:
    data = r.mapping(raw, where)
    r.known(data, ("label", "metric", "match", "op", "value", "order", "strict", "format", "names"), where)
    for key in ("label", "metric"):
        if key not in data:
            raise r.fail(where, f"missing key {key!r}")
    label = r.text(data["label"], f"{where}.label")
    metric = r.text(data["metric"], f"{where}.metric")
    fmt = r.text(data.get("format", ".1f"), f"{where}.format")
    try:
        format(1.5, fmt)
    except ValueError:
        raise r.fail(f"{where}.format", f"{fmt!r} is not a valid number format") from None
    match = r.match(data.get("match"), f"{where}.match")
    if "order" in data:
        for key in ("op", "value"):
            if key in data:
                raise r.fail(f"{where}.{key}", "an ordering target (with 'order') takes no 'op' or 'value'")
        items = r.seq(data["order"], f"{where}.order")
        if len(items) < 2:
            raise r.fail(f"{where}.order", f"needs at least two matches to order, got {len(items)}")
        order = tuple(r.match(item, f"{where}.order[{i}]") for i, item in enumerate(items))
        strict = r.flag(data.get("strict", True), f"{where}.strict")
        names = r.names(data.get("names"), f"{where}.names")
        if names and len(names) != len(order):
            raise r.fail(f"{where}.names", f"gives {len(names)} names for {len(order)} items of 'order'")
        return TargetSpec(label, metric, match, order=order, strict=strict, format=fmt, names=names)
    for key in ("strict", "names"):
        if key in data:
            raise r.fail(f"{where}.{key}", f"only an ordering target (with 'order') takes {key!r}")
    for key in ("op", "value"):
        if key not in data:
            raise r.fail(where, f"missing key {key!r} (or 'order' for an ordering)")
    op = r.text(data["op"], f"{where}.op")
    if op not in TARGET_OPS:
        raise r.fail(f"{where}.op", f"{op!r} is not one of {', '.join(TARGET_OPS)}")
    return TargetSpec(label, metric, match, op=op, value=_target_value(r, data["value"], op, f"{where}.value"),
                      format=fmt)  # fmt: skip


def _target_value(r: _Reader, raw: Any, op: str, where: str) -> tuple[float, ...]:
    if op != "between":
        if isinstance(raw, list):
            raise r.fail(where, f"op {op!r} takes one number, got a list (a range needs op 'between')")
        return (_finite(r, raw, where),)
    if not isinstance(raw, list) or len(raw) != 2:
        raise r.fail(where, f"op 'between' takes [lo, hi], got {raw!r}")
    lo, hi = (_finite(r, v, f"{where}[{i}]") for i, v in enumerate(raw))
    if lo > hi:
        raise r.fail(where, f"empty range [{lo:g}, {hi:g}]: lo is above hi")
    return (lo, hi)


def _finite(r: _Reader, value: Any, where: str) -> float:
    number = _number(r, value, where)
    if number != number or number in (float("inf"), float("-inf")):
        raise r.fail(where, f"expected a finite number, got {value!r}")
    return number


def _load_pointer(raw_suite: dict[str, Any], source: str) -> tuple[dict[str, Any], str] | None:
    pointer = raw_suite.get("layout")
    if pointer is None:
        return None
    if not isinstance(pointer, str):
        raise UserError(f"{source}: layout: expected a path to a layout file, got {_kind(pointer)}")
    base = Path(source).parent if source else Path(".")
    path = (base / pointer) if not Path(pointer).is_absolute() else Path(pointer)
    if not path.is_file():
        raise UserError(f"{source}: layout: file {path} does not exist")
    from harness.suite import read_layout_file  # the one reader of suite YAML (imports this module)

    data = read_layout_file(path)
    if "layout" in data:
        raise UserError(f"{path}: layout: a layout file cannot point to another layout file")
    return data, str(path)


def parse_layout(raw_suite: dict[str, Any], source: str) -> ReportLayout:
    """Parse the ``tables:``/``figures:``/``targets:`` of a suite (inline or via ``layout:``) into a ReportLayout.

    ``source`` is the suite file's path: it names the file in errors and anchors ``layout:``.
    Raises UserError with a one-line message naming the file and key on malformed input.
    """
    if not isinstance(raw_suite, dict):
        raise UserError(f"{source}: expected a mapping at the top level")
    paper = raw_suite.get("paper")
    paper = None if paper in (None, "none") else str(paper)
    parts: list[tuple[dict[str, Any], str]] = [(raw_suite, source)]
    pointed = _load_pointer(raw_suite, source)
    if pointed is not None:
        extra = set(pointed[0]) - {*LAYOUT_KEYS, "paper"}
        if extra:
            allowed = ", ".join((*LAYOUT_KEYS, "paper"))
            raise UserError(f"{pointed[1]}: {sorted(extra)[0]}: unknown key (allowed: {allowed})")
        parts.append(pointed)
    tables: list[TableSpec] = []
    figures: list[FigureSpec] = []
    targets: list[TargetSpec] = []
    for data, src in parts:
        r = _Reader(src)
        part_paper = str(data.get("paper", paper)) if data.get("paper", paper) not in (None, "none") else None
        for i, raw in enumerate(r.seq(data.get("tables", []) or [], "tables")):
            tables.append(_parse_table(r, raw, f"tables[{i}]", part_paper))
        for i, raw in enumerate(r.seq(data.get("figures", []) or [], "figures")):
            figures.append(_parse_figure(r, raw, f"figures[{i}]", part_paper))
        for i, raw in enumerate(r.seq(data.get("targets", []) or [], "targets")):
            targets.append(_parse_target(r, raw, f"targets[{i}]"))
    for kind, ids in (("table", [t.id for t in tables]), ("figure", [f.id for f in figures])):
        seen: set[str] = set()
        for item_id in ids:
            if item_id in seen:
                raise UserError(f"{source}: {kind}s: id {item_id!r} is used twice")
            seen.add(item_id)
    labels = [t.label for t in targets]
    twice = next((label for i, label in enumerate(labels) if label in labels[:i]), None)
    if twice is not None:
        raise UserError(f"{source}: targets: label {twice!r} is used twice")
    return ReportLayout(
        paper=paper,
        tables=tuple(tables),
        figures=tuple(figures),
        targets=tuple(targets),
        sources=tuple(s for _, s in parts),
    )
