"""A report over rows run with several training seeds: mean ± std (n - 1) per row, the orderings that lie
within the seeds' spread marked (|mean_a - mean_b| < std_a + std_b) and not counted as findings; and the
context line reads the axes from the identity, never a metric of the same name. Known answers from
hand-made result rows."""

from __future__ import annotations

import math

import pytest

from harness.reports.findings import BASE, NONE, table_findings
from harness.reports.layout import parse_layout
from harness.reports.tables import SPREAD_MARK, build_table, seed_spread, within_spread
from harness.reports.tables import Cell as TableCell
from harness.results import MetricValue, ResultRow, Status, UnitIdentity

LAYOUT = {
    "name": "s",
    "tables": [
        {
            "id": "t",
            "match": {"trial": "tr"},
            "rows": [
                {"label": "A", "match": {"params": {"row": "a"}}},
                {"label": "B", "match": {"params": {"row": "b"}}},
                {"label": "C", "match": {"params": {"row": "c"}}},
                {"label": "D", "match": {"params": {"row": "d"}}},
            ],
            "columns": [{"metric": "miou", "format": ".2f"}, {"metric": "speed", "kind": "ratio", "base": "A"}],
        }
    ],
}


def _row(row: str, seed_index: int, miou: float, ident: int, **metrics: float) -> ResultRow:
    identity = UnitIdentity("tr", params={"row": row}, seed=7 + seed_index, seed_index=seed_index)
    values = {"miou": miou, "speed": 2.0, **metrics}
    return ResultRow(
        identity.key, "s", identity, Status.OK, metrics={k: MetricValue(k, v, "%") for k, v in values.items()}, id=ident
    )


def _results() -> list[ResultRow]:
    rows = []
    for k, value in enumerate((1.0, 2.0, 3.0)):  # A: mean 2, std 1
        rows.append(_row("a", k, value, len(rows) + 1))
    for k in range(3):  # B: mean 2.5, std 0: within A's spread (0.5 < 1 + 0)
        rows.append(_row("b", k, 2.5, len(rows) + 1))
    for k, value in enumerate((10.0, 11.0)):  # C: mean 10.5, std sqrt(0.5): far from both
        rows.append(_row("c", k, value, len(rows) + 1))
    rows.append(_row("d", 0, 3.5, len(rows) + 1))  # D: one seed, std 0: |3.5 - 2| = 1.5 > 1, |3.5 - 2.5| = 1 > 0
    return rows


def test_seed_spread_is_the_mean_and_the_sample_standard_deviation() -> None:
    assert seed_spread([1.0, 2.0, 3.0]) == (2.0, 1.0)
    mean, std = seed_spread([10.0, 11.0])
    assert mean == 10.5 and std == pytest.approx(math.sqrt(0.5), abs=1e-12)
    assert seed_spread([4.0]) == (4.0, None)


def test_within_spread_rule() -> None:
    a = TableCell(2.0, "", std=1.0, seeds=3)
    assert within_spread(a, TableCell(2.5, "", std=0.0, seeds=3))
    assert not within_spread(a, TableCell(3.0, "", std=0.0, seeds=3))  # |diff| = std sum: not within
    assert within_spread(a, TableCell(2.9, ""))  # a single seed counts with std 0
    assert not within_spread(TableCell(2.0, ""), TableCell(2.0, ""))  # no seeds, no spread to speak of


def test_report_cells_show_mean_and_std_and_mark_orderings_within_the_spread() -> None:
    (spec,) = parse_layout(LAYOUT, "s.yaml").tables
    table = build_table(spec, _results())
    cells = {label: line[0] for label, line in zip(table.row_labels, table.cells, strict=True)}
    assert (cells["A"].ours, cells["A"].std, cells["A"].seeds) == (2.0, 1.0, 3)
    assert cells["A"].ours_text == f"2.00 \u00b1 1.00 {SPREAD_MARK}"
    assert (cells["B"].ours, cells["B"].std, cells["B"].ours_text) == (2.5, 0.0, f"2.50 \u00b1 0.00 {SPREAD_MARK}")
    assert cells["C"].ours == 10.5 and cells["C"].ours_text == "10.50 \u00b1 0.71" and not cells["C"].within_spread
    assert (cells["D"].ours, cells["D"].std, cells["D"].seeds, cells["D"].ours_text) == (3.5, None, 1, "3.50")
    assert cells["A"].within_spread == ("B",) and cells["B"].within_spread == ("A",)
    assert not cells["D"].within_spread
    (note,) = [n for n in table.notes if "seeds" in n]
    assert note.endswith(": miou: A ~ B.") and "|mean_a - mean_b| < std_a + std_b" in note
    assert "seeds=2/3 per row (mean \u00b1 std)" in table.context_lines[-1]
    ratio = [line[1] for line in table.cells]  # a derived column reads the means: no spread there
    assert [c.ours for c in ratio] == [1.0, 1.0, 1.0, 1.0] and all("\u00b1" not in c.ours_text for c in ratio)


def test_an_ordering_within_the_spread_is_no_finding() -> None:
    (spec,) = parse_layout(LAYOUT, "s.yaml").tables
    table = build_table(spec, _results())
    for line, paper in zip(table.cells, (2.0, 1.0, 3.0, 3.0), strict=True):  # paper: B < A < C, D
        line[0].paper = paper
    findings = [line[0] for line in table_findings(table)]
    assert findings[0].verdict == BASE
    assert findings[1].verdict == NONE and "within the seeds' spread" in findings[1].why  # B vs A: noise
    assert findings[2].verdict == "holds" and findings[3].verdict == "holds"


def test_the_context_reads_the_axes_from_the_identity_not_a_metric_named_like_one() -> None:
    (spec,) = parse_layout(LAYOUT, "s.yaml").tables
    rows = [_row("a", 0, 1.0, 1, precision=34.05)]  # the selectors record a metric named precision
    table = build_table(spec, rows)
    context = table.context_lines[-1]
    assert "precision=fp32" in context and "34.05" not in context
    assert "batch_size=1" in context and "device=cpu" in context
