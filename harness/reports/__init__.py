"""Reports: paper-style tables (ours next to the paper's values), curves and a provenance header,
rendered to PDF (no LaTeX engine), Markdown, LaTeX and one self-contained HTML page (with the
latency distributions; :mod:`harness.reports.html`); the history of a suite's gated metrics across
runs (:mod:`harness.reports.history`); and side-by-side comparison of two runs.

Entry points: :func:`build_report` (``harness report``) and
:func:`harness.reports.compare.compare_runs` (``harness compare``). The layout schema of a suite's
``tables:``/``figures:`` is documented in :mod:`harness.reports.layout`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import yaml

from harness.errors import UserError
from harness.reports.figures import draw_figure
from harness.reports.layout import ReportLayout, parse_layout
from harness.reports.provenance import build_provenance
from harness.reports.render import Report, save_figure_files, write_latex, write_markdown, write_pdf
from harness.reports.tables import build_table, generic_table
from harness.store import Run, Store

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


def _read_suite(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"suite file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserError(f"{path}:{mark.line + 1 if mark else '?'}: invalid YAML") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return data


def _suite_for_run(run: Run, suite_path: str | Path | None) -> Path | None:
    for candidate in (suite_path, run.suite_path, SUITES_DIR / f"{run.suite}.yaml"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _select(
    store: Store, suite_path: Path | None, run_id: int | None, with_samples: bool = False
) -> tuple[str, dict[str, Any], Path | None, list[Run], list[dict[str, Any]]]:
    if run_id is not None:
        run = store.get_run(run_id)
        if run is None:
            known = ", ".join(str(r.id) for r in store.runs()[-5:]) or "none"
            raise UserError(f"no run with id {run_id} in {store.display_url} (latest runs: {known})")
        path = _suite_for_run(run, suite_path)
        raw = _read_suite(path) if path else {"name": run.suite}
        results = store.results(run_id=run_id, latest_per_unit=False, with_samples=with_samples)
        return run.suite, raw, path, [run], results
    assert suite_path is not None
    raw = _read_suite(suite_path)
    name = str(raw.get("name") or suite_path.stem)
    results = store.results(suite=name, latest_per_unit=True, with_samples=with_samples)
    latest = store.latest_run(name)
    if latest is not None:
        # a suite run at several scales: report the scale of the newest run only
        results = [r for r in results if r.get("scale") == latest.scale] or results
    run_ids = sorted({r["run_id"] for r in results})
    runs = [run for run in store.runs(name) if run.id in run_ids] or ([latest] if latest else [])
    return name, raw, suite_path, runs, results


def _units_never_run(path: Path | None, scale: str, results: list[dict[str, Any]]) -> list[str] | None:
    """Descriptions of the suite's units at ``scale`` with no stored result; None if the suite can't
    be expanded here (its trials are not registered in this process)."""
    if path is None or not scale or "," in scale:
        return None
    from harness.suite import load_suite

    try:
        units = load_suite(path).units(scale)
    except UserError:
        return None
    stored = {r["unit_key"] for r in results}
    return [unit.describe() for unit in units if unit.key not in stored]


def build_report(
    store: Store,
    suite_path: str | Path | None,
    run_id: int | None,
    formats: str | Iterable[str] = ("pdf", "md"),
    out_dir: str | Path = "reports",
) -> list[Path]:
    """Write the report of a suite (its latest results) or of one run; return the files written.

    Output names: ``<out_dir>/<suite>.<fmt>`` (or ``<suite>-run<ID>.<fmt>`` with ``run_id``), with
    figure files for Markdown/LaTeX under ``<out_dir>/<stem>_figures/``.
    """
    if suite_path is None and run_id is None:
        raise UserError("report: give a suite file or --run ID")
    fmts = parse_formats(formats)
    path = Path(suite_path) if suite_path is not None else None
    name, raw, path, runs, results = _select(store, path, run_id, with_samples="html" in fmts)
    layout = parse_layout(raw, str(path)) if path is not None else ReportLayout(paper=None)
    paper = layout.paper
    tables = [build_table(spec, results, paper) for spec in layout.tables]
    if not tables:
        generic = generic_table(results)
        tables = [generic] if generic else []
    figures = [(spec.id, spec.title, draw_figure(spec, results, paper)) for spec in layout.figures]
    stem = name if run_id is None else f"{name}-run{run_id}"
    provenance = build_provenance(name, raw, runs, results)
    if run_id is None:
        never_run = _units_never_run(path, provenance.scale, results)
        if never_run:
            provenance.status_counts["not run"] = len(never_run)
            provenance.never_run = never_run
    report = Report(provenance, tables, figures, stem)
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
    finally:
        for _, _, fig in figures:
            plt.close(fig)
    return written
