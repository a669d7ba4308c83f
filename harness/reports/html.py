"""The self-contained HTML report: one file with styles, script and figures inlined (no network
fetch; it works from ``file://`` and as a CI artifact).

Sections: the suite's targets and whether each holds (:mod:`harness.reports.targets`), the paper's
tables (paper | ours per column, normalized comparisons, every ours cell coloured by whether the
paper's finding holds, see :mod:`harness.reports.findings`), a sortable and filterable table of
every unit, the suite's figures and the latency distributions as inline SVG, and the provenance
of the runs. Tables are the ones :func:`harness.reports.tables.build_table` builds for the PDF,
Markdown and LaTeX reports; nothing is matched again here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from harness.reports.distributions import Box, distribution_svg, figure_svg, noise_text, timed_metrics
from harness.reports.findings import Finding, summary, table_findings
from harness.reports.render import EXPLANATION, Report
from harness.reports.tables import BuiltTable, failure_reason
from harness.reports.targets import FAILS, HOLDS, MISSING, SPREAD, SPREAD_NOTE, TargetResult, summary_line
from harness.results import ResultRow
from harness.timing import NOISY_SPREAD, timing_noise

FINDING_LEGEND = (
    ("holds", "the paper's finding holds in ours: same direction vs the baseline row (or same side of 1 / 0)"),
    ("differs", "the paper's finding does not hold in ours"),
    ("base", "the baseline row findings are read against"),
    ("missing", "no value of ours (the cell says why)"),
)


@dataclass
class CellView:
    text: str
    cls: str = ""
    title: str = ""
    sort: str = ""  # the unit table's sort key (a number or lower-case text)


@dataclass
class TableView:
    id: str
    title: str
    head: list[tuple[str, int]]  # (header, colspan)
    sub: list[str]  # second header row: paper / ours under columns with a paper value
    rows: list[tuple[str, list[CellView]]]
    context_lines: list[str]
    footnotes: list[str]
    notes: list[str]
    held: int
    compared: int


@dataclass
class TargetView:
    label: str
    values: str
    verdict: str
    cls: str  # the style of the verdict cell


@dataclass
class TargetsView:
    summary: str
    rows: list[TargetView]
    notes: list[str]


TARGET_CLASSES = {HOLDS: "holds", FAILS: "differs", SPREAD: "spread", MISSING: "missing"}


@dataclass
class UnitTable:
    columns: list[str]
    numeric: list[bool]
    rows: list[tuple[str, list[CellView]]]  # (status, cells)
    statuses: list[str] = field(default_factory=list)


@dataclass
class Distribution:
    metric: str
    svg: Markup
    noisy: list[Box]


# --- paper tables ----------------------------------------------------------------------------------


def _ours_cell(cell: Any, finding: Finding) -> CellView:
    if cell.ours is None:
        return CellView(cell.ours_text, "missing", cell.reason)
    return CellView(cell.ours_text, finding.verdict, finding.why)


def table_view(table: BuiltTable) -> TableView:
    with_paper = table.paper_columns or [table.has_reference] * len(table.headers)
    findings = table_findings(table)
    head = [(h, 2 if p else 1) for h, p in zip(table.headers, with_paper, strict=True)]
    sub = [s for p in with_paper for s in (("paper", "ours") if p else ("ours",))]
    rows = []
    for i, (label, cells) in enumerate(zip(table.row_labels, table.cells, strict=True)):
        line = []
        for j, (cell, p) in enumerate(zip(cells, with_paper, strict=True)):
            if p:
                line.append(CellView(cell.paper_text or "-", "paper"))
            line.append(_ours_cell(cell, findings[i][j]))
        rows.append((label, line))
    held, compared = summary(findings)
    return TableView(table.spec.id, table.title, head, sub, rows, table.context_lines, table.footnotes,
                     table.notes, held, compared)  # fmt: skip


def targets_view(targets: list[TargetResult]) -> TargetsView | None:
    if not targets:
        return None
    rows = [TargetView(t.spec.label, t.values, t.verdict, TARGET_CLASSES[t.verdict]) for t in targets]
    notes = [SPREAD_NOTE] if any(t.verdict == SPREAD for t in targets) else []
    return TargetsView(summary_line(targets), rows, notes)


# --- the unit table --------------------------------------------------------------------------------


def _group(r: ResultRow) -> tuple[str, str]:
    return (r.trial, r.section or "")


def varying_params(results: list[ResultRow]) -> dict[tuple[str, str], list[str]]:
    """Per (trial, section), the parameters whose value differs between its units: what tells the
    units of one ablation apart (the others only repeat)."""
    seen: dict[tuple[str, str], dict[str, set[str]]] = {}
    for r in results:
        group = seen.setdefault(_group(r), {})
        for k, v in r.params.items():
            group.setdefault(k, set()).add(json.dumps(v, sort_keys=True, default=str))
    return {g: sorted(k for k, v in params.items() if len(v) > 1) for g, params in seen.items()}


def unit_what(r: ResultRow, varying: dict[tuple[str, str], list[str]]) -> str:
    """The unit's label, else its parameters that vary within its trial and section."""
    return r.label or ", ".join(f"{k}={r.params[k]}" for k in varying.get(_group(r), []) if k in r.params)


def unit_names(results: list[ResultRow]) -> dict[int, str]:
    """A short display name per result id: section, trial, what sets it apart, and the axes when
    they vary."""
    varying = varying_params(results)
    axes_vary = len({(r.precision, r.batch_size, r.device) for r in results}) > 1
    names = {}
    for r in results:
        section = f"[{r.section}] " if r.section else ""
        axes = f" {r.precision}/b{r.batch_size}/{r.device}" if axes_vary else ""
        names[r.id] = f"{section}{r.trial} {unit_what(r, varying)}".strip() + axes
    return names


def _number(value: float) -> CellView:
    if not math.isfinite(value):
        return CellView("n/a", sort="")
    return CellView(f"{value:.4g}", sort=repr(float(value)))


def _metric_columns(results: list[ResultRow]) -> list[tuple[str, str]]:
    columns: dict[str, str] = {}
    for r in results:
        for name, entry in r.metrics.items():
            columns.setdefault(name, entry.unit)
    return list(columns.items())


def _metric_cell(r: ResultRow, name: str) -> CellView:
    entry = r.metrics.get(name)
    if entry is None or not r.ok:
        return CellView("")
    cell = _number(float(entry.value))
    samples = entry.samples
    if samples:
        spread = timing_noise(samples)
        cell.title = f"median of {len(samples)} samples" + (f", {noise_text(spread)}" if spread is not None else "")
        if spread is not None and spread > NOISY_SPREAD:
            cell.cls = "noisy"
    return cell


def _noise_cell(r: ResultRow) -> CellView:
    measured = [(timing_noise(e.samples), name) for name, e in r.metrics.items() if e.samples]
    spreads = [(s, n) for s, n in measured if s is not None]
    if not spreads:
        return CellView("", sort="")
    spread, name = max(spreads)
    text = f"{spread * 100:.0f}%"
    if spread > NOISY_SPREAD:
        return CellView(f"noisy {text}", "noisy", f"{name}: {noise_text(spread)} > {NOISY_SPREAD:.0%}", repr(spread))
    return CellView(text, title=f"{name}: {noise_text(spread)}", sort=repr(spread))


def _reason(r: ResultRow) -> CellView:
    """Why a unit did not end ok, with the last line of its error (hover: the whole error)."""
    if r.ok:
        return CellView("")
    reason = failure_reason(r)
    lines = (r.error or "").strip().splitlines()
    detail = lines[-1].strip() if lines else ""
    if detail and detail not in reason:
        reason = f"{reason}: {detail}"
    return CellView(reason, title=r.error or "", sort=reason.lower())


def _text(value: Any) -> CellView:
    text = "" if value is None else str(value)
    return CellView(text, sort=text.lower())


def unit_table(results: list[ResultRow], never_run: list[str]) -> UnitTable:
    metrics = _metric_columns(results)
    varying = varying_params(results)
    fixed = ["#", "status", "trial", "section", "unit", "precision", "batch", "device"]
    columns = fixed + [f"{m} ({u})" if u else m for m, u in metrics] + ["wall time (s)", "timing noise", "reason"]
    numeric = [c in ("#", "batch") for c in fixed] + [True] * len(metrics) + [True, True, False]
    rows = []
    for r in sorted(results, key=lambda r: r.id):
        what = unit_what(r, varying)
        unit = CellView(what, "wrap", ", ".join(f"{k}={v}" for k, v in r.params.items()), what.lower())
        cells = [_number(r.id), CellView(r.status.value, f"status-{r.status.value}", sort=r.status.value),
                 _text(r.trial), _text(r.section), unit, _text(r.precision),
                 _number(r.batch_size), _text(r.device)]  # fmt: skip
        cells += [_metric_cell(r, m) for m, _ in metrics]
        cells.append(_number(float(r.duration_s or 0.0)))
        cells.append(_noise_cell(r))
        cells.append(_reason(r))
        rows.append((r.status.value, cells))
    for description in never_run:
        cells = [
            CellView(""),
            CellView("not run", "status-notrun", sort="not run"),
            CellView("", sort=""),
            CellView(""),
            CellView(description, "wrap", sort=description.lower()),
        ]
        cells += [CellView("") for _ in columns[5:-1]]
        cells.append(_text("not run"))
        rows.append(("not run", cells))
    statuses = sorted({status for status, _ in rows})
    return UnitTable(columns, numeric, rows, statuses)


# --- the page ----------------------------------------------------------------------------------------


def distributions(results: list[ResultRow]) -> list[Distribution]:
    names = unit_names(results)
    out = []
    for metric, boxes in timed_metrics(results, names).items():
        out.append(Distribution(metric, Markup(distribution_svg(metric, boxes)), [b for b in boxes if b.noisy]))
    return out


def provenance_rows(report: Report) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(the report's provenance fields, package versions of the newest run)."""
    runs = report.provenance.runs
    packages = dict(runs[-1].packages or {}) if runs else {}
    return report.provenance.items(), sorted((str(k), str(v)) for k, v in packages.items())


def environment() -> Environment:
    return Environment(
        loader=PackageLoader("harness.reports", "templates"),
        autoescape=select_autoescape(("html", "j2")),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(report: Report, results: list[ResultRow]) -> str:
    """The whole page. ``results`` are the report's result rows read with their samples."""
    prov, packages = provenance_rows(report)
    figures = [(fig_id, title, Markup(figure_svg(fig))) for fig_id, title, fig in report.figures]
    tables = [table_view(t) for t in report.tables]
    template = environment().get_template("report.html.j2")
    return template.render(
        prov=report.provenance,
        prov_rows=prov,
        packages=packages,
        explanation=EXPLANATION,
        tables=tables,
        targets=targets_view(report.targets),
        with_paper=any("paper" in t.sub for t in tables),
        legend=FINDING_LEGEND,
        units=unit_table(results, report.provenance.never_run),
        figures=figures,
        distributions=distributions(results),
        noisy_spread=NOISY_SPREAD,
    )


def write_html(report: Report, results: list[ResultRow], path: Path) -> None:
    path.write_text(render_html(report, results), encoding="utf-8")
