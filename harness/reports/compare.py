"""``harness compare RUN_A RUN_B``: two runs of one suite side by side, metric by metric, with deltas.

Units are paired by what they measure (trial, section, label, parameters, precision, batch size,
device), not by unit key, so runs at different scales or on different datasets still line up.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from harness.errors import UserError
from harness.reports.tables import failure_reason
from harness.store import Store

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


def _identity(result: dict[str, Any]) -> tuple[Any, ...]:
    return (
        result["trial"],
        result["section"],
        result["label"],
        json.dumps(result["params"], sort_keys=True),
        result["precision"],
        result["batch_size"],
        result["device"],
    )


def _verdict(better: str, delta: float | None, base: float | None) -> str:
    if delta is None or base is None or better not in ("higher", "lower"):
        return ""
    if delta == 0 or (base and abs(delta / base) < 0.005):
        return "same"
    improved = delta > 0 if better == "higher" else delta < 0
    return "better" if improved else "worse"


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
    by_run = {}
    for run_id in (run_a, run_b):
        by_run[run_id] = {
            _identity(r): r for r in sorted(store.results(run_id=run_id, latest_per_unit=False), key=lambda r: r["id"])
        }
    keys = list(by_run[run_a]) + [k for k in by_run[run_b] if k not in by_run[run_a]]
    rows = []
    for key in keys:
        ra, rb = by_run[run_a].get(key), by_run[run_b].get(key)
        metrics: list[str] = []
        for r in (ra, rb):
            for name in (r or {}).get("metrics", {}):
                if name not in metrics:
                    metrics.append(name)
        for name in metrics or [""]:
            ma = (ra or {}).get("metrics", {}).get(name)
            mb = (rb or {}).get("metrics", {}).get(name)
            a = ma["value"] if ma else None
            b = mb["value"] if mb else None
            delta = b - a if a is not None and b is not None else None
            pct = 100.0 * delta / a if delta is not None and a else None
            info = ma or mb or {}
            rows.append(
                {
                    "trial": key[0],
                    "section": key[1],
                    "label": key[2],
                    "params": ", ".join(f"{k}={v}" for k, v in json.loads(key[3]).items()),
                    "precision": key[4],
                    "batch_size": key[5],
                    "device": key[6],
                    "metric": name,
                    "unit": info.get("unit", ""),
                    "better": info.get("better", "none"),
                    "a": math.nan if a is None else a,
                    "b": math.nan if b is None else b,
                    "delta": math.nan if delta is None else delta,
                    "delta_pct": math.nan if pct is None else pct,
                    "status_a": _status(ra, name),
                    "status_b": _status(rb, name),
                    "verdict": _verdict(info.get("better", "none"), delta, a),
                }
            )
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame.attrs.update(run_a=run_a, run_b=run_b, suite=runs[run_a].suite)
    return frame


def _status(result: dict[str, Any] | None, metric: str) -> str:
    if result is None:
        return "not run"
    if result["status"] == "ok":
        return "ok" if not metric or metric in result["metrics"] else f"no metric {metric}"
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
    styles = {"better": "green", "worse": "red"}
    for row in frame.itertuples(index=False):
        unit = " ".join(str(x) for x in (row.trial, row.label or row.section, row.params) if x)
        unit += f" [{row.precision}/b{row.batch_size}/{row.device}]"
        va = _num(row.a) if row.status_a == "ok" else row.status_a
        vb = _num(row.b) if row.status_b == "ok" else row.status_b
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
    summary = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("better", "worse", "same") if counts.get(k, 0))
    if summary:
        console.print(f"run {frame.attrs.get('run_b')} vs run {frame.attrs.get('run_a')}: {summary}")
