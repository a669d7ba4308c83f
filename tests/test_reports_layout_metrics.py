"""Every report layout against the units of its suite: each cell, curve, bar series and target must
select at least one unit the suite runs (at some scale), and read a metric that unit's trial declares
(or a parameter or axis of it), so that no cell or verdict of a rendered report is empty because of
a key typo.

Metrics a trial names at run time are declared as a family (``Metric("iou_{class}", ...)``); a name
of the family is accepted when its ``{class}`` part is a class of a shipped dataset (spaces as
``_``), so ``iou_traffic light`` and ``iou_sidwalk`` are both caught.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import yaml

from harness.registry import Metric, Param, TrialSpec
from harness.reports.layout import FigureSpec, Match, ReportLayout, TableSpec, TargetSpec, parse_layout
from harness.results import UnitIdentity
from harness.suite import Unit, load_suite
from harness.timing import TimingConfig

SUITES_DIR = Path(__file__).resolve().parents[1] / "suites"
FIELDS = ("precision", "batch_size", "device", "label", "section", "trial")


@cache
def _discover() -> None:
    import methods

    methods.discover()


def _class_names() -> set[str]:
    from methods.datasets.embedded import EMBEDDED_CLASSES
    from methods.datasets.real import ADE20K_CLASSES, CITYSCAPES_CLASSES, VOC_CLASSES

    return {c.replace(" ", "_") for c in (*EMBEDDED_CLASSES, *CITYSCAPES_CLASSES, *ADE20K_CLASSES, *VOC_CLASSES)}


def declared(trial: TrialSpec, name: str, classes: set[str]) -> bool:
    """``name`` is a metric ``trial`` declares (a family's member only with a known class name), or
    one of its parameters."""
    metric = trial.declares(name)
    if metric is not None and metric.is_pattern:
        values = metric.matches(name) or {}
        return all(v in classes for k, v in values.items() if k == "class")
    return metric is not None or name in trial.param_names()


def knows(trials: list[TrialSpec], name: str, classes: set[str]) -> bool:
    return name in FIELDS or any(declared(t, name, classes) for t in trials)


def problems(layout: ReportLayout, units: list[Unit], classes: set[str]) -> list[str]:
    """What in ``layout`` selects no unit of ``units`` or reads a name their trials do not declare."""
    results = [(u.identity, u.trial) for u in units]

    def trials_of(match: Match) -> list[TrialSpec]:
        found: dict[str, TrialSpec] = {}
        for result, trial in results:
            if match.accepts(result):
                found[trial.name] = trial
        return list(found.values())

    out: list[str] = []
    for table in layout.tables:
        out.extend(_table_problems(table, trials_of, classes))
    for figure in layout.figures:
        out.extend(_figure_problems(figure, trials_of, classes))
    for target in layout.targets:
        out.extend(_target_problems(target, trials_of, classes))
    return out


def target_matches(target: TargetSpec) -> list[Match]:
    return [target.match.merged(item) for item in target.order] if target.is_ordering else [target.match]


def target_ambiguities(layout: ReportLayout, units: dict[str, list[Unit]]) -> list[str]:
    """Target matches that do not select exactly one configuration (the units of one row, seeds
    aside) at every scale: the report would call such a target missing."""
    out = []
    for target in layout.targets:
        for i, match in enumerate(target_matches(target)):
            for scale, scale_units in units.items():
                rows = {u.identity.row_key for u in scale_units if match.accepts(u.identity)}
                if len(rows) != 1:
                    out.append(f"target {target.label!r} match {i} selects {len(rows)} configurations at {scale}")
    return out


def _target_problems(target: TargetSpec, trials_of, classes: set[str]) -> list[str]:
    """Each match of a target (the threshold's, or every item of an ordering over the target's
    defaults) must select a unit whose trial declares the metric (a metric: targets read no parameter)."""
    out = []
    for i, match in enumerate(target_matches(target)):
        where = f"target {target.label!r}" + (f", order[{i}]" if target.is_ordering else "")
        trials = trials_of(match)
        if not trials:
            out.append(f"{where}: selects no unit of the suite")
        elif not any(t.declares(target.metric) for t in trials):
            out.append(f"{where}: metric {target.metric!r} is not declared by {', '.join(t.name for t in trials)}")
    return out


def _table_problems(table: TableSpec, trials_of, classes: set[str]) -> list[str]:
    out = []
    rows = table.rows or ()
    if table.expand is not None:
        trials = trials_of(table.match)
        if not trials:
            out.append(f"{table.id}: the table's match selects no unit")
        elif not knows(trials, table.expand.param, classes):
            out.append(f"{table.id}: expand param {table.expand.param!r} is not a parameter or axis")
    for column in table.columns:
        for row in rows or (None,):
            where = f"{table.id}: row {row.label if row else '(expanded)'!r}, column {column.label!r}"
            match = table.match.merged(row.match if row else Match()).merged(column.match)
            if column.kind == "matched":
                match = match.without(column.vary)
            metric = row.metric_for(column.metric) if row else column.metric
            if not metric:
                continue  # `metrics: {col: null}`: the column does not apply to this row
            trials = trials_of(match)
            if not trials:
                out.append(f"{where}: selects no unit of the suite")
                continue
            names = [metric, column.lr_metric, column.hr_metric, column.x]
            out.extend(
                f"{where}: {name!r} is not declared by {', '.join(t.name for t in trials)}"
                for name in names
                if name is not None and not knows(trials, name, classes)
            )
    return out


def _figure_problems(figure: FigureSpec, trials_of, classes: set[str]) -> list[str]:
    out = []
    where = f"figure {figure.id}"
    if figure.kind == "curve":
        trials = trials_of(figure.match)
        if not trials:
            return [f"{where}: selects no unit of the suite"]
        names = list(figure.series) if figure.curve_note else [figure.x, figure.y, *figure.series]
        out.extend(
            f"{where}: {name!r} is not declared by {', '.join(t.name for t in trials)}"
            for name in names
            if name is not None and "." not in name and not knows(trials, name, classes)
        )
        return out
    for bar in figure.bars:
        trials = trials_of(figure.match.merged(bar.match))
        if not trials:
            out.append(f"{where}: bar {bar.label!r} selects no unit of the suite")
        elif bar.values_metric_prefix is not None and not any(
            m.name.startswith(bar.values_metric_prefix) for t in trials for m in t.metrics
        ):
            out.append(f"{where}: bar {bar.label!r}: no declared metric starts with {bar.values_metric_prefix!r}")
    return out


def _suites_with_layouts() -> list[Path]:
    return [
        path
        for path in sorted(SUITES_DIR.glob("*.yaml"))
        if any(k in (yaml.safe_load(path.read_text()) or {}) for k in ("layout", "tables", "figures"))
    ]


@pytest.mark.parametrize("path", _suites_with_layouts(), ids=lambda p: p.stem)
def test_every_layout_cell_reads_a_metric_its_suite_declares(path: Path) -> None:
    _discover()
    suite = load_suite(path)
    units = [u for scale in suite.scales for u in suite.units(scale)]
    found = problems(suite.layout, units, _class_names())
    found += target_ambiguities(suite.layout, {scale: suite.units(scale) for scale in suite.scales})
    assert not found, f"{path.name}:\n" + "\n".join(found)


def test_every_layout_file_belongs_to_a_suite() -> None:
    pointed = {
        (path.parent / raw["layout"]).resolve()
        for path in SUITES_DIR.glob("*.yaml")
        if isinstance(raw := yaml.safe_load(path.read_text()) or {}, dict) and raw.get("layout")
    }
    orphans = [p.name for p in sorted((SUITES_DIR / "layouts").glob("*.yaml")) if p.resolve() not in pointed]
    assert not orphans, f"layouts no suite uses: {orphans}"


def test_the_walk_catches_typos_and_accepts_declared_families() -> None:
    """Known answers on a made-up trial and layout: the space typo, a class no dataset has, a column
    no unit can fill and an unknown parameter are each named; the right spellings pass."""
    import dataclasses

    trial = TrialSpec(
        name="t.eval",
        fn=lambda ctx: None,
        doc="",
        params=(Param("kind", str, "lr", choices=("lr", "hr")),),
        metrics=(Metric("miou", "%", "higher"), Metric("iou_{class}", "%", "higher", optional=True)),
        axes=("precision",),
        version="1",
    )
    unit = Unit("s", trial, UnitIdentity("t.eval", section="acc", params={"kind": "lr"}), "smoke", TimingConfig())
    hr = dataclasses.replace(unit, identity=dataclasses.replace(unit.identity, params={"kind": "hr"}), key="")
    raw = {
        "tables": [
            {
                "id": "t",
                "match": {"trial": "t.eval"},
                "rows": [
                    {"label": "LR", "match": {"params": {"kind": "lr"}}},
                    {"label": "HR", "match": {"params": {"kind": "hr"}}},
                    {"label": "SR", "match": {"params": {"kind": "sr"}}},
                ],
                "columns": [
                    {"metric": "iou_traffic_light"},
                    {"metric": "iou_traffic light"},
                    {"metric": "iou_sidwalk"},
                    {"metric": "miou", "match": {"section": "latency"}},
                ],
            }
        ],
        "figures": [{"id": "f", "x": "kind", "y": "miou", "series": ["arch"], "match": {"trial": "t.eval"}}],
        "targets": [
            {"label": "ok", "metric": "miou", "match": {"params": {"kind": "lr"}}, "op": ">", "value": 1},
            {"label": "typo", "metric": "mIoU", "match": {"params": {"kind": "lr"}}, "op": ">", "value": 1},
            {"label": "param", "metric": "kind", "match": {"params": {"kind": "lr"}}, "op": ">", "value": 1},
            {
                "label": "ord",
                "metric": "miou",
                "match": {"trial": "t.eval"},
                "order": [{"params": {"kind": "hr"}}, {"params": {"kind": "sr"}}],
            },
        ],
    }
    found = problems(parse_layout(raw, "x.yaml"), [unit, hr], _class_names())
    assert sum("'SR'" in p and "selects no unit" in p for p in found) == 4
    assert sum("'iou_traffic light' is not declared" in p for p in found) == 2  # LR and HR rows
    assert sum("'iou_sidwalk' is not declared" in p for p in found) == 2
    assert sum("column 'miou'" in p and "selects no unit" in p for p in found) == 3
    assert [p for p in found if p.startswith("figure")] == ["figure f: 'arch' is not declared by t.eval"]
    assert not any("'iou_traffic_light'" in p and "not declared" in p for p in found)
    assert [p for p in found if p.startswith("target")] == [
        "target 'typo': metric 'mIoU' is not declared by t.eval",
        "target 'param': metric 'kind' is not declared by t.eval",
        "target 'ord', order[1]: selects no unit of the suite",
    ]
    assert len(found) == 4 + 2 + 2 + 2 + 1 + 3
    ambiguous = target_ambiguities(parse_layout(raw, "x.yaml"), {"smoke": [unit, hr]})
    assert ambiguous == [
        "target 'ord' match 1 selects 0 configurations at smoke",
    ]
    wide = parse_layout({"targets": [{"label": "w", "metric": "miou", "op": ">", "value": 1}]}, "x.yaml")
    assert target_ambiguities(wide, {"smoke": [unit, hr]}) == ["target 'w' match 0 selects 2 configurations at smoke"]
