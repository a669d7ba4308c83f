"""History of a suite's gated metrics across the runs in the database (asv's per-commit graph):
``harness report SUITE --history`` writes ``<out>/<suite>-history.html``, one small chart per unit
and gated metric, x = the suite's runs in time order labelled by short git sha.

A point is marked when the value moved beyond the gate's thresholds (the suite's ``gate:`` block)
relative to the previous run that measured it:

- values with a direction (mIoU, recall...): a change larger than ``accuracy_tolerance``;
- timed metrics (raw samples): a median ratio beyond ``1 + min_effect`` (either way) with a
  Mann-Whitney U test p below ``alpha`` on the two runs' samples (as asv does; with fewer than three
  samples a side, the ratio alone). Runs on other machines or under other load move latency too:
  the gate itself decides latency by a same-machine A/B, this page shows where to look.

A unit that was ok and then is not is marked as failed at that run. Only the newest run's scale is
shown (smoke and default numbers do not compare).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from scipy.stats import mannwhitneyu

from harness.compare import Change, is_gated_value, is_timed, judge
from harness.errors import UserError, cannot_write
from harness.results import MetricValue, ResultRow, Status, gate_ids
from harness.store import Run, Store
from harness.suite import GateSettings, Suite

CHART_W, CHART_H = 440, 190
PAD_L, PAD_R, PAD_T, PAD_B = 56, 12, 12, 28
MAX_X_LABELS = 8


def gated_kind(metric: MetricValue) -> str | None:
    """How the gate treats a stored metric: "timed" (a time with raw samples, gated by the A/B),
    "value" (a deterministic metric with a direction) or None (informational)."""
    if is_timed(metric.unit, metric.samples):
        return "timed"
    return "value" if is_gated_value(metric.unit, metric.better) else None


def unit_title(row: ResultRow) -> str:
    what = row.label or ", ".join(f"{k}={v}" for k, v in row.params.items())
    section = f" [{row.section}]" if row.section else ""
    return f"{row.trial}{section} {what} {row.precision}/b{row.batch_size}/{row.device}"


@dataclass
class Point:
    run: int  # index into History.runs
    value: float | None  # None: the unit did not end ok in this run
    samples: tuple[float, ...] = ()
    error: str = ""
    flag: str = ""  # regression | improvement | failed | ""
    detail: str = ""


@dataclass
class Series:
    unit: str
    metric: str
    measure: str  # the metric's unit (ms, %)
    better: str
    kind: str  # timed | value
    points: list[Point] = field(default_factory=list)


@dataclass
class History:
    suite: str
    title: str
    scale: str
    runs: list[Run]
    series: list[Series]
    settings: GateSettings
    skipped_runs: list[Run] = field(default_factory=list)  # stored no result (every unit skipped)


# --- collecting ----------------------------------------------------------------------------------


def _runs_with_rows(store: Store, name: str) -> tuple[str, list[tuple[Run, list[ResultRow]]], list[Run]]:
    runs = sorted(store.runs(name), key=lambda r: (r.started_at, r.id))
    if not runs:
        raise UserError(f"no runs of suite {name!r} are stored in this database")
    scale = runs[-1].scale
    kept: list[tuple[Run, list[ResultRow]]] = []
    empty: list[Run] = []
    for run in runs:
        if run.scale != scale:
            continue
        rows = store.results(run_id=run.id, latest_per_unit=False, with_samples=True)
        if rows:
            kept.append((run, rows))
        else:
            empty.append(run)
    return scale, kept, empty


def collect_history(store: Store, suite: Suite) -> History:
    """Every gated metric of every unit, one point per run of the newest run's scale."""
    scale, runs, empty = _runs_with_rows(store, suite.name)
    series: dict[tuple[str, str], Series] = {}
    for index, (_, rows) in enumerate(runs):
        for key, row in zip(gate_ids([r.identity for r in rows]), rows, strict=True):
            _add_row(series, index, key, row)
    for s in series.values():
        flag_moves(s, suite.gate)
    ordered = sorted(series.values(), key=lambda s: (s.unit, s.metric))
    return History(suite.name, suite.title, scale, [r for r, _ in runs], ordered, suite.gate, empty)


def _add_row(series: dict[tuple[str, str], Series], index: int, key: str, row: ResultRow) -> None:
    if not row.ok:
        # a failure is a point of every series this unit already has (unless it also ended ok in this run)
        for (k, _), s in series.items():
            if k == key and not (s.points and s.points[-1].run == index):
                s.points.append(Point(index, None, error=row.error or row.status.value))
        return
    for name, metric in row.metrics.items():
        kind = gated_kind(metric)
        if kind is None:
            continue
        s = series.setdefault((key, name), Series(unit_title(row), name, metric.unit, metric.better, kind))
        if s.points and s.points[-1].run == index:
            s.points.pop()  # a unit stored twice in one run: its later result counts
        s.points.append(Point(index, float(metric.value), tuple(metric.samples)))


# --- what moved ------------------------------------------------------------------------------------


def flag_moves(series: Series, settings: GateSettings) -> None:
    """Mark each point against the previous ok point of its series by the gate's thresholds."""
    min_effect, tolerance = settings.for_metric(series.metric)
    previous: Point | None = None
    for point in series.points:
        if point.value is None:
            point.flag, point.detail = (
                Status.FAILED.value,
                f"did not end ok: {point.error.strip().splitlines()[-1][:200]}",
            )
            continue
        if previous is not None and previous.value is not None:
            if series.kind == "timed":
                point.flag, point.detail = timed_move(previous, point, min_effect, settings.alpha)
            else:
                point.flag, point.detail = value_move(previous.value, point.value, series.better, tolerance)
        previous = point


def value_move(before: float, after: float, better: str, tolerance: float) -> tuple[str, str]:
    delta = after - before
    detail = f"{delta:+.3g} vs previous run (tolerance ±{tolerance:g})"
    if not math.isfinite(delta):
        return "", detail
    change = judge(better, delta, tolerance)
    return ("" if change == Change.UNCHANGED else change.value), detail


def timed_move(before: Point, after: Point, min_effect: float, alpha: float) -> tuple[str, str]:
    b = before.samples or (before.value or 0.0,)
    a = after.samples or (after.value or 0.0,)
    base = statistics.median(b)
    ratio = statistics.median(a) / base if base else math.inf
    if len(a) >= 3 and len(b) >= 3:
        p = float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
        test = f"U-test p={p:.2g}"
    else:
        p, test = 0.0, "too few samples for a U test"
    detail = f"median ratio {ratio:.3f} vs previous run, {test} (min effect {min_effect:.0%}, alpha {alpha:g})"
    if p >= alpha:
        return "", detail
    change = judge("lower", math.log(ratio), math.log1p(min_effect)) if ratio > 0 else Change.IMPROVEMENT
    return ("" if change == Change.UNCHANGED else change.value), detail


# --- charts ------------------------------------------------------------------------------------------


@dataclass
class ChartPoint:
    x: float
    y: float
    cls: str
    title: str
    run_id: int


@dataclass
class Chart:
    name: str
    metric: str
    measure: str
    kind: str
    line: str  # polyline points
    points: list[ChartPoint]
    fails: list[ChartPoint]
    yticks: list[tuple[float, str]]
    xticks: list[tuple[float, str]]
    flagged: int
    width: int = CHART_W
    height: int = CHART_H
    left: int = PAD_L
    right: int = CHART_W - PAD_R
    bottom: int = CHART_H - PAD_B


def short_sha(run: Run) -> str:
    sha = (run.git_sha or "")[:7]
    return (sha + ("+" if run.git_dirty else "")) if sha else f"run {run.id}"


def _x(index: int, n_runs: int) -> float:
    return PAD_L + (index + 0.5) * (CHART_W - PAD_L - PAD_R) / max(n_runs, 1)


def _y_scale(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12 * max(abs(hi), 1.0):
        span = abs(hi) * 0.05 or 1.0
        return lo - span, hi + span
    pad = (hi - lo) * 0.12
    return lo - pad, hi + pad


def chart(series: Series, runs: list[Run]) -> Chart:
    values = [p.value for p in series.points if p.value is not None]
    lo, hi = _y_scale(values) if values else (0.0, 1.0)
    top, bottom = PAD_T, CHART_H - PAD_B

    def y(v: float) -> float:
        return bottom - (v - lo) / (hi - lo) * (bottom - top)

    points, fails = [], []
    for p in series.points:
        run = runs[p.run]
        when = f"{run.started_at:%Y-%m-%d %H:%M}" if run.started_at else ""
        head = f"run {run.id} · {short_sha(run)} · {when} · {run.host or '?'}"
        if p.value is None:
            fails.append(ChartPoint(_x(p.run, len(runs)), bottom - 4, "fail", f"{head}\n{p.detail}", run.id))
            continue
        text = f"{head}\n{series.metric} = {p.value:.4g} {series.measure}".rstrip()
        if p.samples:
            text += f" (median of {len(p.samples)} samples)"
        if p.detail:
            text += f"\n{p.flag + ': ' if p.flag else ''}{p.detail}"
        points.append(ChartPoint(_x(p.run, len(runs)), y(p.value), f"pt {p.flag}".strip(), text, run.id))
    step = math.ceil(len(runs) / MAX_X_LABELS)
    xticks = [(_x(i, len(runs)), short_sha(r)) for i, r in enumerate(runs) if i % step == 0]
    yticks = [(y(v), f"{v:.4g}") for v in (lo + (hi - lo) * f for f in (0.1, 0.5, 0.9))]
    line = " ".join(f"{p.x:.1f},{p.y:.1f}" for p in points)
    flagged = sum(bool(p.flag) for p in series.points)
    return Chart(series.unit, series.metric, series.measure, series.kind, line, points, fails, yticks, xticks, flagged)


# --- the page ----------------------------------------------------------------------------------------


def render_history(history: History) -> str:
    from harness.reports.html import environment

    groups: dict[str, list[Chart]] = {}
    for s in history.series:
        groups.setdefault(s.unit, []).append(chart(s, history.runs))
    flagged = sum(c.flagged for charts in groups.values() for c in charts)
    return (
        environment()
        .get_template("history.html.j2")
        .render(h=history, groups=groups, flagged=flagged, short_sha=short_sha, settings=history.settings)
    )


def build_history_report(store: Store, suite: Suite | str | Path, out_dir: Path) -> Path:
    """Write ``<out_dir>/<suite>-history.html`` and return its path (``suite``: loaded, or its file)."""
    if not isinstance(suite, Suite):
        from harness.reports import read_suite

        suite = read_suite(suite)
    history = collect_history(store, suite)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out: cannot create {out_dir}: {exc.strerror}") from None
    target = out_dir / f"{suite.name}-history.html"
    try:
        target.write_text(render_history(history), encoding="utf-8")
    except OSError as exc:
        raise cannot_write(target, exc) from None
    return target
