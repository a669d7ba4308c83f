"""``harness compare RUN_A RUN_B``: two runs of one suite side by side, metric by metric, with deltas.

Units are paired by what they measure (:attr:`UnitIdentity.subject_id`: trial, section, label,
parameters, axes), not by
unit key, so runs at different scales or on different datasets still line up. Each change is judged
by :mod:`harness.compare` with the suite's gate thresholds, in the gate's words (regression,
improvement, unchanged).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from harness.compare import Change, is_time, judge_relative, judge_value
from harness.errors import UserError
from harness.reports.tables import failure_reason
from harness.results import MetricValue, ResultRow, Status
from harness.store import Run, Store
from harness.suite import GateSettings

COLUMNS = [
    "trial",
    "section",
    "label",
    "params",
    "precision",
    "batch_size",
    "device",
    "metric",
    "unit",
    "better",
    "a",
    "b",
    "delta",
    "delta_pct",
    "status_a",
    "status_b",
    "verdict",
]


def _verdict(metric: MetricValue, a: float | None, b: float | None, settings: GateSettings) -> str:
    if a is None or b is None or metric.better not in ("higher", "lower"):
        return ""
    min_effect, tolerance = settings.for_metric(metric.name)
    if is_time(metric.unit):
        return judge_relative(metric.better, a, b, min_effect)[0].value
    return judge_value(metric.better, metric.unit, a, b, tolerance)[0].value


def _gate_settings(run: Run) -> GateSettings:
    """The thresholds of the run's suite file (the defaults when the file is gone)."""
    from harness.reports import read_suite

    if run.suite_path and Path(run.suite_path).is_file():
        try:
            return read_suite(run.suite_path, run.overrides).gate
        except UserError:
            pass
    return GateSettings()


def compare_runs(store: Store, run_a: int, run_b: int) -> pd.DataFrame:
    """One row per (unit, metric) present in either run; ``a``/``b`` are NaN where a run has no value."""
    runs = {}
    for run_id in (run_a, run_b):
        run = store.get_run(run_id)
        if run is None:
            raise UserError(f"no run with id {run_id} in {store.display_url}")
        runs[run_id] = run
    if runs[run_a].suite != runs[run_b].suite:
        raise UserError(
            f"runs {run_a} and {run_b} belong to different suites ({runs[run_a].suite} vs {runs[run_b].suite}); "
            "compare runs of one suite"
        )
    settings = _gate_settings(runs[run_a])
    by_run: dict[int, dict[str, ResultRow]] = {}
    for run_id in (run_a, run_b):
        rows = sorted(store.results(run_id=run_id, latest_per_unit=False), key=lambda r: r.id)
        by_run[run_id] = {r.identity.subject_id: r for r in rows}
    keys = list(by_run[run_a]) + [k for k in by_run[run_b] if k not in by_run[run_a]]
    rows = []
    for key in keys:
        ra, rb = by_run[run_a].get(key), by_run[run_b].get(key)
        metrics: list[str] = []
        for r in (ra, rb):
            for name in r.metrics if r is not None else ():
                if name not in metrics:
                    metrics.append(name)
        ident = (ra or rb).identity  # type: ignore[union-attr]
        for name in metrics or [""]:
            ma = ra.metrics.get(name) if ra is not None else None
            mb = rb.metrics.get(name) if rb is not None else None
            a = ma.value if ma else None
            b = mb.value if mb else None
            delta = b - a if a is not None and b is not None else None
            pct = 100.0 * delta / a if delta is not None and a else None
            info = ma or mb or MetricValue(name, math.nan)
            rows.append(
                {
                    "trial": ident.trial,
                    "section": ident.section,
                    "label": ident.label,
                    "params": ", ".join(f"{k}={v}" for k, v in sorted(ident.params.items())),
                    "precision": ident.precision,
                    "batch_size": ident.batch_size,
                    "device": ident.device,
                    "metric": name,
                    "unit": info.unit,
                    "better": info.better,
                    "a": math.nan if a is None else a,
                    "b": math.nan if b is None else b,
                    "delta": math.nan if delta is None else delta,
                    "delta_pct": math.nan if pct is None else pct,
                    "status_a": _status(ra, name),
                    "status_b": _status(rb, name),
                    "verdict": _verdict(info, a, b, settings),
                }
            )
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame.attrs.update(run_a=run_a, run_b=run_b, suite=runs[run_a].suite)
    return frame


def _status(result: ResultRow | None, metric: str) -> str:
    if result is None:
        return "not run"
    if result.ok:
        return Status.OK.value if not metric or metric in result.metrics else f"no metric {metric}"
    return failure_reason(result, metric)


def _num(value: float, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def comparison_table(frame: pd.DataFrame) -> Table:
    """A rich table of the comparison (status text in place of missing values)."""
    a, b = frame.attrs.get("run_a", "A"), frame.attrs.get("run_b", "B")
    table = Table(title=f"suite {frame.attrs.get('suite', '')}: run {a} vs run {b}")
    for name in ("unit", "metric", f"run {a}", f"run {b}", "delta", "delta %", ""):
        table.add_column(name, justify="right" if name.startswith(("run", "delta")) else "left")
    styles = {Change.IMPROVEMENT.value: "green", Change.REGRESSION.value: "red"}
    for row in frame.itertuples(index=False):
        unit = " ".join(str(x) for x in (row.trial, row.label or row.section, row.params) if x)
        unit += f" [{row.precision}/b{row.batch_size}/{row.device}]"
        va = _num(row.a) if row.status_a == Status.OK else row.status_a
        vb = _num(row.b) if row.status_b == Status.OK else row.status_b
        table.add_row(
            unit,
            f"{row.metric} ({row.unit})" if row.unit else row.metric,
            va,
            vb,
            _num(row.delta, True),
            _num(row.delta_pct, True),
            row.verdict,
            style=styles.get(row.verdict),
        )
    return table


def comparison_text(frame: pd.DataFrame, width: int = 160) -> str:
    """The comparison as plain text (for a terminal without colour, logs and tests)."""
    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    console.print(comparison_table(frame))
    return console.export_text()


def render_comparison(
    frame: pd.DataFrame, console: Console, run_a: int | None = None, run_b: int | None = None
) -> None:
    """Print the comparison to ``console`` (the ``harness compare`` output)."""
    if run_a is not None and run_b is not None:
        frame.attrs.update(run_a=run_a, run_b=run_b)
    if frame.empty:
        console.print(f"runs {frame.attrs.get('run_a')} and {frame.attrs.get('run_b')} have no results")
        return
    console.print(comparison_table(frame))
    counts = frame["verdict"].value_counts()
    words = (Change.IMPROVEMENT.value, Change.REGRESSION.value, Change.UNCHANGED.value)
    summary = ", ".join(f"{counts.get(k, 0)} {k}" for k in words if counts.get(k, 0))
    if summary:
        console.print(f"run {frame.attrs.get('run_b')} vs run {frame.attrs.get('run_a')}: {summary}")
