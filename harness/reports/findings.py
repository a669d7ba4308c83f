"""Does the paper's finding hold in our numbers? A cell-by-cell verdict over a built table.

Absolute numbers do not transfer (our CPU and small embedded data vs the paper's GPU and
Cityscapes), but the paper's *findings* do: "magnitude has lower recall than random", "the gated
ensembler beats direct replacement", "SparseRefine is faster than HR". A finding is read as a sign:

- normalized columns (``speedup``, ``ratio``: around 1; ``delta``: around 0) carry it themselves:
  the finding holds when ours and the paper's value lie on the same side of the neutral value;
- every other column (values, gap closed, values at the paper's x) is read against the table's
  baseline row: the finding holds when ours moves from the baseline in the same direction as the
  paper's. The baseline row is the column's ``base``, else the first ``base`` the table declares,
  else the first row where both ours and the paper's value exist.

Values that print the same in the column's format count as equal: a paper difference below the
printed precision is no finding; ours below it does not reproduce one. Nor does an ordering of ours
that lies within the seeds' spread (a row run with ``seeds: N``; see
:func:`harness.reports.tables.within_spread`): such a cell is left without a verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.reports.layout import ColumnSpec
from harness.reports.tables import BuiltTable

NEUTRAL = {"speedup": 1.0, "ratio": 1.0, "delta": 0.0}
HOLDS, DIFFERS, BASE, NONE = "holds", "differs", "base", ""


@dataclass(frozen=True)
class Finding:
    verdict: str  # holds | differs | base | "" (nothing to compare)
    why: str = ""


def resolution(fmt: str) -> float:
    """Half a unit in the last place a format spec prints (``.1f`` -> 0.05); 0 when not fixed-point."""
    m = re.search(r"\.(\d+)[f%]", fmt)
    if not m:
        return 0.0
    scale = 100.0 if fmt.endswith("%") else 1.0
    return 0.5 * 10 ** -int(m.group(1)) / scale


def sign(value: float, base: float, tolerance: float) -> int:
    diff = value - base
    return 0 if abs(diff) <= tolerance else (1 if diff > 0 else -1)


def _relation(s: int) -> str:
    return {1: ">", -1: "<", 0: "="}[s]


def _verdict(paper_sign: int, ours_sign: int) -> str:
    if paper_sign == 0:
        return NONE
    return HOLDS if ours_sign == paper_sign else DIFFERS


def _base_row(table: BuiltTable, j: int) -> int | None:
    labels = table.row_labels
    column = table.spec.columns[j]
    declared = [column.base] + [c.base for c in table.spec.columns] + [r.base for r in table.spec.rows]
    for label in declared:
        if label is not None and label in labels:
            i = labels.index(label)
            if table.cells[i][j].ours is not None and table.cells[i][j].paper is not None:
                return i
    for i, line in enumerate(table.cells):
        if line[j].ours is not None and line[j].paper is not None:
            return i
    return None


def _neutral_finding(value: float, paper: float, column: ColumnSpec, tol: float) -> Finding:
    neutral = NEUTRAL[column.kind]
    p, o = sign(paper, neutral, tol), sign(value, neutral, tol)
    f = column.format
    why = f"paper {format(paper, f)} {_relation(p)} {neutral:g}; ours {format(value, f)} {_relation(o)} {neutral:g}"
    return Finding(_verdict(p, o), why if p else f"paper shows no change ({format(paper, f)}); {why}")


def _column_findings(table: BuiltTable, j: int) -> list[Finding]:
    column = table.spec.columns[j]
    tol = resolution(column.format)
    cells = [line[j] for line in table.cells]
    if column.kind in NEUTRAL:
        return [
            _neutral_finding(c.ours, c.paper, column, tol)
            if c.ours is not None and c.paper is not None
            else Finding(NONE)
            for c in cells
        ]
    b = _base_row(table, j)
    if b is None:
        return [Finding(NONE) for _ in cells]
    base, base_label, f = cells[b], table.row_labels[b], column.format
    assert base.ours is not None and base.paper is not None
    out = []
    for i, c in enumerate(cells):
        if i == b:
            out.append(Finding(BASE, f"baseline row of this column's findings ({base_label})"))
            continue
        if c.ours is None or c.paper is None:
            out.append(Finding(NONE))
            continue
        p, o = sign(c.paper, base.paper, tol), sign(c.ours, base.ours, tol)
        label = table.row_labels[i]
        why = (
            f"paper: {label} {_relation(p)} {base_label} ({format(c.paper, f)} vs {format(base.paper, f)}); "
            f"ours: {_relation(o)} ({format(c.ours, f)} vs {format(base.ours, f)})"
        )
        if base_label in c.within_spread:  # ours could be either way round: no finding either way
            out.append(Finding(NONE, f"{why}; within the seeds' spread (|mean difference| < std + std)"))
            continue
        out.append(Finding(_verdict(p, o), why if p else f"paper shows no difference; {why}"))
    return out


def table_findings(table: BuiltTable) -> list[list[Finding]]:
    """One Finding per cell of ``table`` (rows x columns)."""
    if not table.cells:
        return []
    columns = [_column_findings(table, j) for j in range(len(table.headers))]
    return [[columns[j][i] for j in range(len(columns))] for i in range(len(table.row_labels))]


def summary(findings: list[list[Finding]]) -> tuple[int, int]:
    """(findings that hold, findings compared)."""
    verdicts = [f.verdict for line in findings for f in line]
    held = verdicts.count(HOLDS)
    return held, held + verdicts.count(DIFFERS)
