"""Every report layout against the units of its suite: each cell, curve and bar series must select at
least one unit the suite runs (at some scale), and read a metric that unit's trial declares (or a
parameter or axis of it), so that no cell of a rendered report is empty because of a key typo.

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
from harness.reports.layout import FigureSpec, Match, ReportLayout, TableSpec, parse_layout
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
    }
    found = problems(parse_layout(raw, "x.yaml"), [unit, hr], _class_names())
    assert sum("'SR'" in p and "selects no unit" in p for p in found) == 4
    assert sum("'iou_traffic light' is not declared" in p for p in found) == 2  # LR and HR rows
    assert sum("'iou_sidwalk' is not declared" in p for p in found) == 2
    assert sum("column 'miou'" in p and "selects no unit" in p for p in found) == 3
    assert [p for p in found if p.startswith("figure")] == ["figure f: 'arch' is not declared by t.eval"]
    assert not any("'iou_traffic_light'" in p and "not declared" in p for p in found)
    assert len(found) == 4 + 2 + 2 + 2 + 1
