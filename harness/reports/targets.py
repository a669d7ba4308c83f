"""Does the run meet the suite's stated targets? One verdict per ``targets:`` item of the layout.

A target names a metric and one configuration (``match``) with a threshold (``op``/``value``), or
several configurations (``order``) the metric should rank in the order given. Each match is read
from the same results the report's tables show:

- the match must select exactly one configuration: the units of one row, which differ only by
  their training seed (``seeds: N``); several configurations (say fp32 and bf16 units when the
  match names no precision) leave the target ``missing`` with what they differ in, as does a
  configuration with no ok result recording the metric (with why: not run, OOM, ...);
- with several seeds the value is their mean; an ordering whose neighbours' means differ by less
  than the seeds' spread (:func:`harness.reports.tables.within_spread`) is ``within spread``: our
  numbers do not establish it either way.

Verdicts: ``holds``, ``does not hold``, ``within spread``, ``missing``; each with the values read.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from harness.reports.layout import ColumnSpec, Match, TableSpec, TargetSpec
from harness.reports.tables import BuiltTable, Cell, failure_reason, pick, seed_spread, within_spread
from harness.results import ResultRow, UnitIdentity

HOLDS, FAILS, SPREAD, MISSING = "holds", "does not hold", "within spread", "missing"
VERDICTS = (HOLDS, FAILS, SPREAD, MISSING)
NEGATED = {">=": "<", "<=": ">", ">": "<=", "<": ">="}  # the relation ours shows when a threshold fails
SHOWN_DIFFERENCES = 3  # how many differing keys a "several configurations" verdict names
SPREAD_NOTE = (
    "x \u00b1 s: mean and standard deviation (n - 1) over a configuration's training seeds. "
    f"{SPREAD}, ~: neighbours of an ordering whose means differ by less than std_a + std_b, so their "
    "order is not established either way"
)


@dataclass(frozen=True)
class Reading:
    """One match resolved: the mean of its configuration's seeds, or why there is none."""

    name: str
    mean: float | None = None
    std: float | None = None  # over the seeds, when there are several
    seeds: int = 0
    reason: str = ""

    def text(self, fmt: str) -> str:
        if self.mean is None:
            return self.reason
        value = format(self.mean, fmt)
        return f"{value} \u00b1 {format(self.std or 0.0, fmt)}" if self.seeds > 1 else value

    def cell(self) -> Cell:
        """As a table cell, for :func:`~harness.reports.tables.within_spread`."""
        return Cell(self.mean, "", std=self.std, seeds=self.seeds)


@dataclass(frozen=True)
class TargetResult:
    spec: TargetSpec
    verdict: str  # one of VERDICTS
    values: str  # what was read, e.g. "95.3 >= 95" or "entropy 84.1 > magnitude 40.2"
    readings: tuple[Reading, ...] = ()

    @property
    def holds(self) -> bool:
        return self.verdict == HOLDS


def _flat(identity: UnitIdentity) -> dict[str, Any]:
    """What tells configurations apart, as a report names it (the section does not: one unit may
    serve several sections)."""
    fields = {k: v for k, v in identity.fields().items() if k != "section"}
    fields |= {f"params.{k}": v for k, v in identity.params.items()}
    return fields | {f"dataset.{k}": v for k, v in identity.dataset.items()}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _varying(items: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The keys whose values differ across ``items`` (in first-seen order), with their values."""
    keys = dict.fromkeys(k for item in items for k in item)
    values = {k: sorted({_text(item.get(k)) for item in items}) for k in keys}
    return {k: v for k, v in values.items() if len(v) > 1}


def _differences(identities: list[UnitIdentity]) -> str:
    varying = _varying([_flat(i) for i in identities])
    if not varying:
        return "scale settings, timing or trial version"
    shown = [f"{k.removeprefix('params.')} {'/'.join(v)}" for k, v in list(varying.items())[:SHOWN_DIFFERENCES]]
    more = len(varying) - SHOWN_DIFFERENCES
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def read(results: list[ResultRow], match: Match, metric: str, name: str = "") -> Reading:
    """The mean (and spread) of ``metric`` over the seeds of the one configuration ``match`` selects."""
    found = [r for r in results if match.accepts(r)]
    if not found:
        return Reading(name, reason="not run (no result matches)")
    configurations: dict[str, list[ResultRow]] = {}
    for r in sorted(found, key=lambda r: r.id):
        configurations.setdefault(r.identity.row_key, []).append(r)
    if len(configurations) > 1:
        identities = [rows[-1].identity for rows in configurations.values()]
        return Reading(name, reason=f"matches {len(configurations)} configurations ({_differences(identities)})")
    rows = next(iter(configurations.values()))
    per_seed: dict[int, float] = {}
    for r in rows:  # oldest first: the newest ok result of each seed wins
        if r.ok and metric in r.metrics:
            per_seed[r.identity.seed] = float(r.metrics[metric].value)
    if not per_seed:
        return Reading(name, reason=failure_reason(pick(rows, Match(), metric), metric))
    values = list(per_seed.values())
    if not all(math.isfinite(v) for v in values):
        return Reading(name, reason=f"{metric} is not a number")
    mean, std = seed_spread(values)
    return Reading(name, mean, std, len(values))


def _match_items(match: Match) -> dict[str, Any]:
    items = dict(match.fields) | {f"params.{k}": v for k, v in match.params}
    return items | {f"dataset.{k}": v for k, v in match.dataset}


def order_names(order: tuple[Match, ...]) -> list[str]:
    """Short names of an ordering's items: the value of what they differ in when it is a word
    ("entropy", "magnitude"), else ``key=value`` pairs of what they differ in ("density=0.118")."""
    items = [_match_items(m) for m in order]
    varying = list(_varying(items))
    worded = len(varying) == 1 and all(isinstance(item.get(varying[0]), str) for item in items)
    names = []
    for i, item in enumerate(items, 1):
        if worded:
            names.append(item[varying[0]])
        elif varying:
            names.append(", ".join(f"{k.removeprefix('params.')}={_text(item[k])}" for k in varying if k in item))
        else:
            names.append(f"item {i}")
    return names


def _threshold(spec: TargetSpec, results: list[ResultRow]) -> TargetResult:
    assert spec.op is not None
    reading = read(results, spec.match, spec.metric)
    fmt = spec.format
    if reading.mean is None:
        return TargetResult(spec, MISSING, reading.reason, (reading,))
    value, ours = reading.mean, reading.text(fmt)
    if spec.op == "between":
        lo, hi = spec.value
        if lo <= value <= hi:
            return TargetResult(spec, HOLDS, f"{ours} in [{lo:g}, {hi:g}]", (reading,))
        side = f"< {lo:g}" if value < lo else f"> {hi:g}"
        return TargetResult(spec, FAILS, f"{ours} {side} (outside [{lo:g}, {hi:g}])", (reading,))
    (limit,) = spec.value
    held = {">=": value >= limit, "<=": value <= limit, ">": value > limit, "<": value < limit}[spec.op]
    op = spec.op if held else NEGATED[spec.op]
    return TargetResult(spec, HOLDS if held else FAILS, f"{ours} {op} {limit:g}", (reading,))


def _pair(a: Reading, b: Reading, strict: bool) -> tuple[str, str]:
    """(the relation ours shows between neighbours a and b, whether the pair is in the stated order)."""
    assert a.mean is not None and b.mean is not None
    if within_spread(a.cell(), b.cell()):
        return "~", SPREAD
    symbol = ">" if a.mean > b.mean else "<" if a.mean < b.mean else "="
    held = symbol == ">" or (symbol == "=" and not strict)
    return symbol, HOLDS if held else FAILS


def _telling_format(fmt: str, readings: tuple[Reading, ...]) -> str:
    """``fmt``, with up to 4 more decimals where neighbours that differ would print the same."""

    def collides(spec: str) -> bool:
        return any(
            a.mean != b.mean and format(a.mean, spec) == format(b.mean, spec)
            for a, b in zip(readings, readings[1:], strict=False)
        )

    m = re.fullmatch(r"(.*\.)(\d+)([f%])", fmt)
    if m is None or not collides(fmt):
        return fmt
    more = (f"{m[1]}{int(m[2]) + extra}{m[3]}" for extra in range(1, 5))
    return next((spec for spec in more if not collides(spec)), f"{m[1]}{int(m[2]) + 4}{m[3]}")


def _ordering(spec: TargetSpec, results: list[ResultRow]) -> TargetResult:
    names = list(spec.names) or order_names(spec.order)
    readings = tuple(
        read(results, spec.match.merged(item), spec.metric, name) for item, name in zip(spec.order, names, strict=True)
    )
    if any(r.mean is None for r in readings):
        text = "; ".join(f"{r.name} {r.text(spec.format)}" if r.mean is not None else f"{r.name}: {r.reason}"
                         for r in readings)  # fmt: skip
        return TargetResult(spec, MISSING, text, readings)
    fmt = _telling_format(spec.format, readings)
    parts = [f"{readings[0].name} {readings[0].text(fmt)}"]
    verdicts = []
    for a, b in zip(readings, readings[1:], strict=False):
        symbol, verdict = _pair(a, b, spec.strict)
        verdicts.append(verdict)
        parts.append(f"{symbol} {b.name} {b.text(fmt)}")
    verdict = FAILS if FAILS in verdicts else SPREAD if SPREAD in verdicts else HOLDS
    return TargetResult(spec, verdict, " ".join(parts), readings)


def evaluate_target(spec: TargetSpec, results: list[ResultRow]) -> TargetResult:
    return _ordering(spec, results) if spec.is_ordering else _threshold(spec, results)


def evaluate_targets(specs: Iterable[TargetSpec], results: list[ResultRow]) -> list[TargetResult]:
    """One verdict per target of a layout, over the results the report is built from."""
    return [evaluate_target(spec, results) for spec in specs]


def summary_line(results: list[TargetResult]) -> str:
    """'k of n targets hold', with how the others ended."""
    held = sum(r.holds for r in results)
    counts = {v: sum(r.verdict == v for r in results) for v in VERDICTS[1:]}
    others = [f"{n} {'do not hold' if v == FAILS and n > 1 else v}" for v, n in counts.items() if n]
    return f"{held} of {len(results)} targets hold" + (f" ({', '.join(others)})" if others else "")


def targets_table(results: list[TargetResult]) -> BuiltTable | None:
    """The targets as a report table (target | values read | verdict) for the PDF, Markdown and LaTeX
    reports; a verdict other than ``holds`` counts as a missing cell (tinted in the PDF)."""
    if not results:
        return None
    columns = (
        ColumnSpec(metric="values", label="ours", ref=None),
        ColumnSpec(metric="verdict", label="verdict", ref=None),
    )
    spec = TableSpec("targets", "Targets", None, None, Match(), (), columns)
    cells = [
        [Cell(None if r.verdict == MISSING else 1.0, r.values), Cell(1.0 if r.holds else None, r.verdict)]
        for r in results
    ]
    notes = [SPREAD_NOTE] if any(r.verdict == SPREAD for r in results) else []
    return BuiltTable(spec, spec.title, [r.spec.label for r in results], ["ours", "verdict"], cells,
                      has_reference=False, context_lines=[summary_line(results)], notes=notes)  # fmt: skip
