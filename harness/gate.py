"""Regression gate: compare a run with a committed baseline file.

**Latency** is never compared across runs: samples taken on another machine, day or load share
that run's conditions, so any drift looks significant. It is gated by a same-machine A/B
(:mod:`harness.ab`): the baseline's commit (from the baseline file's provenance) and the current
tree measured here, interleaved in rounds. A latency change is a regression when the geometric mean
of the per-round ratios exceeds ``1 + min_effect`` and a t-test over the rounds' log ratios gives
p < ``alpha``. ``min_effect`` comes from measured A/A variation (``benchmarks/gate_aa.py``). When
the A/B cannot be made (the commit is not in a shallow clone, ``--no-ab``), the check says so and
gates the other metrics only.

**Other metrics with a direction** (accuracy, recall...) are deterministic on CPU with fixed seeds:
the run's values are compared with the baseline's within an absolute tolerance. Metrics whose
direction is "none" are informational, and so are times derived without samples.

**Completeness**: a baseline unit or metric missing from the run, a NaN or infinite value, and a
unit that was ok and now is not are failures, each named. Units added since the baseline are
reported, not failed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.ab import ABPlan, ABResult, ABUnavailable, run_ab, unit_identity
from harness.errors import UserError
from harness.redact import mask_tree
from harness.store import Store
from harness.suite import GateSettings, load_suite, suite_name_of

BASELINE_FORMAT = 2
TIME_UNITS = ("s", "ms", "us", "ns")
FAILING = ("regression", "missing", "invalid")


@dataclass
class Verdict:
    unit: str
    metric: str
    verdict: str  # regression | missing | invalid | improvement | unchanged | new | not gated
    baseline: float | None
    current: float | None
    change: str
    detail: str

    @property
    def fails(self) -> bool:
        return self.verdict in FAILING


def identity(row: dict[str, Any]) -> str:
    return unit_identity(row["trial"], row.get("section", ""), row.get("label", ""), row["params"],
                         row["precision"], row["batch_size"], row["device"])  # fmt: skip


def describe(row: dict[str, Any]) -> str:
    name = row.get("label") or ", ".join(f"{k}={v}" for k, v in row["params"].items())
    return f"{row['trial']} [{name}] {row['precision']} b{row['batch_size']} {row['device']}"


def is_timed(metric: dict[str, Any]) -> bool:
    """A latency measured with raw samples: gated by the A/B, never by stored values."""
    return metric["unit"] in TIME_UNITS and bool(metric.get("samples"))


def is_gated_value(metric: dict[str, Any]) -> bool:
    """A deterministic metric compared with the baseline's value."""
    return metric["better"] != "none" and metric["unit"] not in TIME_UNITS


# --- collecting a run ----------------------------------------------------------------------------


def collect(store: Store, target: str) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    """(suite name, result rows with samples, provenance) for a run id or a suite's latest results."""
    if target.isdigit():
        run = store.get_run(int(target))
        if run is None:
            raise UserError(f"no run with id {target}")
        rows = store.results(run_id=run.id, with_samples=True)
        suite = run.suite
    else:
        suite = suite_name_of(target)
        rows = store.results(suite=suite, with_samples=True)
        run = store.latest_run(suite)
        if run is None or not rows:
            raise UserError(f"no results stored for suite {suite!r}")
    prov = {
        "run_id": run.id,
        "git_sha": run.git_sha,
        "git_dirty": run.git_dirty,
        "host": run.host,
        "cpu": run.cpu,
        "threads": run.threads,
        "torch": run.torch_version,
        "scale": run.scale,
        "date": f"{run.started_at:%Y-%m-%d %H:%M:%S}",
    }
    return suite, rows, prov


def snapshot(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Units by identity, with their status, metrics and raw samples."""
    units: dict[str, dict[str, Any]] = {}
    for row in rows:
        metrics = {}
        for name, m in row["metrics"].items():
            entry: dict[str, Any] = {"value": m["value"], "unit": m["unit"], "better": m["better"]}
            if m.get("samples"):
                entry["samples"] = [round(s, 6) for s in m["samples"]]
            metrics[name] = entry
        units[identity(row)] = {
            "unit": describe(row),
            "trial": row["trial"],
            "section": row["section"],
            "label": row["label"],
            "params": row["params"],
            "precision": row["precision"],
            "batch_size": row["batch_size"],
            "device": row["device"],
            "status": row["status"],
            "error": row["error"],
            "metrics": metrics,
        }
    return units


# --- baseline file ---------------------------------------------------------------------------------


def suite_file_for(target: str, suite: str) -> Path | None:
    """The suite file holding the gate settings: the target itself, or suites/<name>.yaml."""
    path = Path(target) if target.endswith((".yaml", ".yml")) else Path("suites") / f"{suite}.yaml"
    return path if path.exists() else None


def save_baseline(store: Store, target: str, out: Path, *, allow_dirty: bool = False) -> Path:
    suite, rows, prov = collect(store, target)
    if prov["git_dirty"] and not allow_dirty:
        raise UserError(
            f"run {prov['run_id']} was made on a dirty tree (commit {prov['git_sha'][:12]} plus uncommitted "
            "changes): the A/B gate could not re-measure that code. Commit, re-run, then save; or pass --allow-dirty"
        )
    if not prov["git_sha"]:
        raise UserError(f"run {prov['run_id']} records no git commit: the A/B gate needs one (run from a git clone)")
    data = {
        "format": BASELINE_FORMAT,
        "suite": suite,
        "saved_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "provenance": prov,
        "units": snapshot(rows),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(mask_tree(data), indent=1, sort_keys=True) + "\n")  # no password in a baseline
    return out


def load_baseline(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"baseline file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"baseline file {path} is not valid JSON (line {exc.lineno}): {exc.msg}") from None
    if not isinstance(data, dict) or data.get("format") != BASELINE_FORMAT or not isinstance(data.get("units"), dict):
        raise UserError(f"baseline file {path} is not a harness baseline (format {BASELINE_FORMAT})")
    return data


# --- comparison ----------------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def compare_value(base: dict[str, Any], cur: dict[str, Any], tolerance: float) -> tuple[str, str, str]:
    delta = cur["value"] - base["value"]
    sign = 1 if base["better"] == "higher" else -1
    change = f"{delta:+.3g} {base['unit']}".strip()
    detail = f"tolerance ±{tolerance:g}"
    if sign * delta < -tolerance:
        return "regression", change, detail
    if sign * delta > tolerance:
        return "improvement", change, detail
    return "unchanged", change, detail


def compare_ab(result: ABResult, min_effect: float, alpha: float) -> tuple[str, str, str]:
    """Verdict on one timed metric from its A/B rounds."""
    n = len(result.log_ratios)
    if n < 2:
        return "not gated", "", f"only {n} A/B round(s) measured"
    ratio, p = result.ratio(), result.p_value()
    detail = f"A/B ratio {ratio:.3f} over {n} rounds, t-test p={p:.2g}, min effect {min_effect:.0%}"
    change = f"{(ratio - 1) * 100:+.1f}%"
    if p < alpha and ratio > 1 + min_effect:
        return "regression", change, detail
    if p < alpha and ratio < 1 / (1 + min_effect):
        return "improvement", change, detail
    return "unchanged", change, detail


@dataclass
class ABOutcome:
    """What the A/B gave: results by (identity, metric), or why it was not made."""

    results: dict[tuple[str, str], ABResult]
    unavailable: str = ""
    notes: tuple[str, ...] = ()


def _unit_verdicts(
    name: str, ident: str, base_unit: dict[str, Any], cur_unit: dict[str, Any], settings: GateSettings, ab: ABOutcome
) -> list[Verdict]:
    if base_unit["status"] == "ok" and cur_unit["status"] != "ok":
        return [Verdict(name, "-", "regression", None, None, f"ok -> {cur_unit['status']}", cur_unit["error"][:200])]
    if cur_unit["status"] != "ok":
        return [Verdict(name, "-", "unchanged", None, None, cur_unit["status"], "not ok in the baseline either")]
    broken = ab.results.get((ident, "*"))
    out: list[Verdict] = []
    for metric, bm in base_unit["metrics"].items():
        cm = cur_unit["metrics"].get(metric)
        if cm is None:
            out.append(Verdict(name, metric, "missing", bm["value"], None, "", "metric not recorded by this run"))
            continue
        if not _finite(cm["value"]):
            out.append(Verdict(name, metric, "invalid", bm["value"], cm["value"], "", "not a finite number"))
            continue
        min_effect, tolerance = settings.for_metric(metric)
        if is_timed(bm):
            out.append(_timed_verdict(name, ident, metric, bm, cm, broken, ab, min_effect, settings.alpha))
        elif is_gated_value(bm):
            verdict, change, detail = compare_value(bm, cm, tolerance)
            out.append(Verdict(name, metric, verdict, bm["value"], cm["value"], change, detail))
    return out


def _timed_verdict(
    name: str,
    ident: str,
    metric: str,
    bm: dict[str, Any],
    cm: dict[str, Any],
    broken: ABResult | None,
    ab: ABOutcome,
    min_effect: float,
    alpha: float,
) -> Verdict:
    if ab.unavailable:
        return Verdict(name, metric, "not gated", bm["value"], cm["value"], "", f"no A/B: {ab.unavailable}")
    if broken is not None:
        verdict = "regression" if broken.failed_side == "head" else "not gated"
        return Verdict(name, metric, verdict, bm["value"], cm["value"], "", f"A/B {broken.failed_side}: {broken.error}")
    result = ab.results.get((ident, metric))
    if result is None:
        return Verdict(name, metric, "not gated", bm["value"], cm["value"], "", "not measured by the A/B")
    verdict, change, detail = compare_ab(result, min_effect, alpha)
    base_ms = sorted(result.base)[len(result.base) // 2] if result.base else None
    head_ms = sorted(result.head)[len(result.head) // 2] if result.head else None
    return Verdict(name, metric, verdict, base_ms, head_ms, change, detail)


def compare(
    baseline: dict[str, Any], current: dict[str, dict[str, Any]], settings: GateSettings, ab: ABOutcome | None = None
) -> list[Verdict]:
    ab = ab or ABOutcome({}, unavailable="not run")
    verdicts: list[Verdict] = []
    for ident, base_unit in sorted(baseline["units"].items(), key=lambda kv: kv[1]["unit"]):
        cur_unit = current.get(ident)
        name = base_unit["unit"]
        if cur_unit is None:
            verdicts.append(Verdict(name, "-", "missing", None, None, "", "unit not in this run"))
            continue
        verdicts.extend(_unit_verdicts(name, ident, base_unit, cur_unit, settings, ab))
    for ident, cur_unit in current.items():
        if ident not in baseline["units"]:
            verdicts.append(Verdict(cur_unit["unit"], "-", "new", None, None, "", "not in the baseline"))
    return verdicts


def timed_identities(baseline: dict[str, Any]) -> list[str]:
    """Baseline units that were ok and have a timed metric: what the A/B measures."""
    return [
        ident
        for ident, unit in sorted(baseline["units"].items())
        if unit["status"] == "ok" and any(is_timed(m) for m in unit["metrics"].values())
    ]


def measure_ab(
    baseline: dict[str, Any], suite_path: Path | None, settings: GateSettings, scale: str, artifacts: Path,
    console: Console,
) -> ABOutcome:  # fmt: skip
    identities = timed_identities(baseline)
    if not identities:
        return ABOutcome({}, unavailable="the baseline has no timed unit")
    if suite_path is None:
        return ABOutcome({}, unavailable="no suite file to measure (give the suite's path)")
    base_sha = str(baseline.get("provenance", {}).get("git_sha", ""))
    plan = ABPlan(suite=suite_path, scale=scale, base_sha=base_sha, identities=identities, rounds=settings.rounds,
                  warmup_rounds=settings.warmup_rounds, artifacts=artifacts)  # fmt: skip
    console.print(
        f"A/B: {len(identities)} timed units, baseline commit {base_sha[:12]} vs the current tree, "
        f"{settings.warmup_rounds} warm-up + {settings.rounds} rounds"
    )
    try:
        with console.status("A/B") as status:
            results, notes = run_ab(plan, lambda message: status.update(str(message)))
    except ABUnavailable as exc:
        return ABOutcome({}, unavailable=str(exc))
    return ABOutcome(results, notes=tuple(notes))


def run_check(
    store: Store,
    target: str,
    baseline_path: Path,
    console: Console,
    *,
    min_effect: float | None = None,
    accuracy_tolerance: float | None = None,
    alpha: float | None = None,
    rounds: int | None = None,
    ab: bool = True,
    artifacts: Path = Path("results/artifacts"),
) -> int:
    baseline = load_baseline(baseline_path)
    suite, rows, prov = collect(store, target)
    if suite != baseline["suite"]:
        raise UserError(f"run is of suite {suite!r} but baseline {baseline_path} is of suite {baseline['suite']!r}")
    suite_path = suite_file_for(target, suite)
    settings = load_suite(suite_path).gate if suite_path is not None else GateSettings()
    settings = settings.with_overrides(
        min_effect=min_effect, accuracy_tolerance=accuracy_tolerance, alpha=alpha, rounds=rounds
    )
    if ab:
        outcome = measure_ab(baseline, suite_path, settings, prov["scale"], artifacts, console)
    else:
        outcome = ABOutcome({}, unavailable="--no-ab given")
    verdicts = compare(baseline, snapshot(rows), settings, outcome)
    render(verdicts, console, f"{suite}: run {prov['run_id']} vs baseline {baseline_path}")
    if outcome.unavailable:
        console.print(f"[yellow]latency NOT gated[/]: {escape(outcome.unavailable)}; the other metrics are")
    for note in outcome.notes:
        console.print(f"A/B note: {escape(note)}")
    failing = [v for v in verdicts if v.fails]
    for v in failing:
        console.print(
            f"[bold red]{v.verdict}[/]: {escape(v.unit)} {escape(v.metric)}: {escape(v.detail)}", highlight=False
        )
    return 1 if failing else 0


def render(verdicts: list[Verdict], console: Console, title: str) -> None:
    table = Table(title=title)
    for col in ("verdict", "unit", "metric", "baseline", "current", "change", "evidence"):
        table.add_column(col, overflow="fold")
    style = {"regression": "bold red", "missing": "bold red", "invalid": "bold red", "improvement": "green",
             "unchanged": "dim", "not gated": "yellow"}  # fmt: skip
    order = {"regression": 0, "missing": 1, "invalid": 2, "not gated": 3, "improvement": 4, "new": 5, "unchanged": 6}
    for v in sorted(verdicts, key=lambda v: order.get(v.verdict, 7)):
        fmt = lambda x: "" if x is None else f"{x:.4g}"  # noqa: E731
        table.add_row(f"[{style.get(v.verdict, '')}]{v.verdict}[/]", escape(v.unit), escape(v.metric),
                      fmt(v.baseline), fmt(v.current), escape(v.change), escape(v.detail))  # fmt: skip
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v.verdict] = counts.get(v.verdict, 0) + 1
    table.caption = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    console.print(table)
