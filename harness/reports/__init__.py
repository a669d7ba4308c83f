"""Reports: paper-style tables (ours next to the paper's values), curves and a provenance header,
rendered to PDF (no LaTeX engine), Markdown, LaTeX and one self-contained HTML page (with the
latency distributions; :mod:`harness.reports.html`); the history of a suite's gated metrics across
runs (:mod:`harness.reports.history`); and side-by-side comparison of two runs.

Entry points: :func:`build_report` (``harness report``) and
:func:`harness.reports.compare.compare_runs` (``harness compare``). The layout schema of a suite's
``tables:``/``figures:``/``targets:`` is documented in :mod:`harness.reports.layout`; targets are
judged in :mod:`harness.reports.targets`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt

from harness.errors import UserError, cannot_write
from harness.reports.figures import draw_figure
from harness.reports.layout import ReportLayout, parse_layout
from harness.reports.provenance import build_provenance
from harness.reports.render import Report, save_figure_files, write_latex, write_markdown, write_pdf
from harness.reports.tables import build_table, generic_table, unit_times_table
from harness.reports.targets import evaluate_targets
from harness.results import ResultRow
from harness.store import Run, Store

if TYPE_CHECKING:
    from harness.suite import Suite

FORMATS = ("pdf", "md", "tex", "html")
SUITES_DIR = Path("suites")

__all__ = ["FORMATS", "build_report", "parse_layout", "ReportLayout"]


def parse_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    out = tuple(dict.fromkeys(f.strip().lower().lstrip(".") for f in items if f.strip()))
    bad = [f for f in out if f not in FORMATS]
    if bad or not out:
        raise UserError(f"--format: unknown format {bad[0] if bad else '(empty)'!r} (choose from {', '.join(FORMATS)})")
    return out


def read_suite(path: str | Path, overrides: dict[str, Any] | None = None) -> Suite:
    """A suite file as a report reads it: without the method packages (no units), with the
    ``--set`` overrides a run was made with."""
    from harness.suite import load_suite

    pairs = [f"{key}={json.dumps(value)}" for key, value in (overrides or {}).items()]
    return load_suite(path, pairs, with_units=False)


def _suite_for_run(run: Run, suite: Suite | None) -> Suite | None:
    if suite is not None:
        return suite
    for candidate in (run.suite_path, SUITES_DIR / f"{run.suite}.yaml"):
        if candidate and Path(candidate).is_file():
            return read_suite(candidate, run.overrides)
    return None


@dataclass
class Selection:
    """What a report shows: a suite's newest results per unit, or one run's results."""

    name: str
    suite: Suite | None
    runs: list[Run]
    results: list[ResultRow]


def _select(store: Store, suite: Suite | None, run_id: int | None, with_samples: bool = False) -> Selection:
    if run_id is not None:
        run = store.get_run(run_id)
        if run is None:
            known = ", ".join(str(r.id) for r in store.runs()[-5:]) or "none"
            raise UserError(f"no run with id {run_id} in {store.display_url} (latest runs: {known})")
        results = store.results(run_id=run_id, latest_per_unit=False, with_samples=with_samples)
        return Selection(run.suite, _suite_for_run(run, suite), [run], results)
    assert suite is not None
    results = store.results(suite=suite.name, latest_per_unit=True, with_samples=with_samples)
    latest = store.latest_run(suite.name)
    if latest is not None:
        # a suite run at several scales: report the scale of the newest run only
        results = [r for r in results if r.scale_name == latest.scale] or results
    run_ids = sorted({r.run_id for r in results})
    runs = [run for run in store.runs(suite.name) if run.id in run_ids] or ([latest] if latest else [])
    return Selection(suite.name, suite, runs, results)


def _units_never_run(latest: Run | None, results: list[ResultRow]) -> list[str] | None:
    """Descriptions of the suite's units (as its newest run expanded them) with no stored result;
    None when that run does not list its units (made before the store kept them)."""
    if latest is None or latest.units is None:
        return None
    stored = {r.key for r in results}
    return [unit["describe"] for unit in latest.units if unit["key"] not in stored]


def build_report(
    store: Store,
    suite: Suite | str | Path | None,
    run_id: int | None,
    formats: str | Iterable[str] = ("pdf", "md"),
    out_dir: str | Path = "reports",
) -> list[Path]:
    """Write the report of a suite (its latest results) or of one run; return the files written.

    Output names: ``<out_dir>/<suite>.<fmt>`` (or ``<suite>-run<ID>.<fmt>`` with ``run_id``), with
    figure files for Markdown/LaTeX under ``<out_dir>/<stem>_figures/``.
    """
    if suite is None and run_id is None:
        raise UserError("report: give a suite file or --run ID")
    fmts = parse_formats(formats)
    if isinstance(suite, (str, Path)):
        suite = read_suite(suite)
    chosen = _select(store, suite, run_id, with_samples="html" in fmts)
    name, runs, results = chosen.name, chosen.runs, chosen.results
    layout = chosen.suite.layout if chosen.suite is not None else ReportLayout(paper=None)
    paper = layout.paper
    tables = [build_table(spec, results, paper) for spec in layout.tables]
    if not tables:
        generic = generic_table(results)
        tables = [generic] if generic else []
    figures = [(spec.id, spec.title, draw_figure(spec, results, paper)) for spec in layout.figures]
    stem = name if run_id is None else f"{name}-run{run_id}"
    provenance = build_provenance(name, chosen.suite, runs, results)
    if run_id is None:
        never_run = _units_never_run(store.latest_run(name), results)
        if never_run:
            provenance.status_counts["not run"] = len(never_run)
            provenance.never_run = never_run
    unit_times = unit_times_table(results)
    appendix = [unit_times] if unit_times is not None else []
    report = Report(provenance, tables, figures, stem, appendix, evaluate_targets(layout.targets, results))
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out: cannot create {out}: {exc.strerror}") from None
    written: list[Path] = []
    try:
        figure_formats = tuple(ext for fmt, ext in (("md", "svg"), ("tex", "pdf")) if fmt in fmts)
        figure_files = (
            save_figure_files(report, out / f"{stem}_figures", figure_formats) if figure_formats and figures else {}
        )
        if "pdf" in fmts:
            target = out / f"{stem}.pdf"
            write_pdf(report, target)
            written.append(target)
        if "md" in fmts:
            target = out / f"{stem}.md"
            write_markdown(report, target, figure_files)
            written.append(target)
        if "tex" in fmts:
            target = out / f"{stem}.tex"
            write_latex(report, target, figure_files)
            written.append(target)
        if "html" in fmts:
            from harness.reports.html import write_html

            target = out / f"{stem}.html"
            write_html(report, results, target)
            written.append(target)
        written += [p for files in figure_files.values() for p in files.values()]
    except OSError as exc:  # a report file that is a directory, a figures directory that is a file...
        raise cannot_write(out, exc) from None
    finally:
        for _, _, fig in figures:
            plt.close(fig)
    return written
