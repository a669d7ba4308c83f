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
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, get_args

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.ab import ABPlan, ABResult, ABUnavailable, commit_reachable, repo_root, run_ab, worktree
from harness.compare import Change, finite, judge_ab, judge_value
from harness.compare import is_gated_value as _is_gated_value
from harness.compare import is_timed as _is_timed
from harness.errors import UserError, cannot_write
from harness.redact import mask_tree
from harness.registry import Better
from harness.results import ResultRow, Status, gate_ids, resolve_target
from harness.store import Store
from harness.suite import GateSettings, load_suite

BASELINE_FORMAT = 2
compare_ab = judge_ab  # the gate's name for it


@dataclass
class Verdict:
    unit: str
    metric: str
    verdict: Change
    baseline: float | None
    current: float | None
    change: str
    detail: str

    @property
    def fails(self) -> bool:
        return Change(self.verdict).fails


def is_timed(metric: dict[str, Any]) -> bool:
    """A latency measured with raw samples: gated by the A/B, never by stored values."""
    return _is_timed(metric["unit"], metric.get("samples"))


def is_gated_value(metric: dict[str, Any]) -> bool:
    """A deterministic metric compared with the baseline's value."""
    return _is_gated_value(metric["unit"], metric["better"])


# --- collecting a run ----------------------------------------------------------------------------


def collect(store: Store, target: str) -> tuple[str, list[ResultRow], dict[str, Any]]:
    """(suite name, result rows with samples, provenance) for a run id or a suite's latest results."""
    found = resolve_target(store, target, with_samples=True)
    suite, rows, run = found.suite, found.rows, found.run
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


def snapshot(rows: list[ResultRow]) -> dict[str, dict[str, Any]]:
    """Units by gate identity in the baseline file's format (JSON: identity fields, status, metrics
    with raw samples). The gate compares a run's snapshot with the file's."""
    units: dict[str, dict[str, Any]] = {}
    ids = gate_ids([r.identity for r in rows], [r.run_id for r in rows])
    for ident, row in sorted(zip(ids, rows, strict=True), key=lambda pair: pair[1].id):  # the newest wins
        metrics = {}
        for name, m in row.metrics.items():
            entry: dict[str, Any] = {"value": m.value, "unit": m.unit, "better": m.better}
            if m.samples:
                entry["samples"] = [round(s, 6) for s in m.samples]
            metrics[name] = entry
        fields = row.identity.fields()
        units[ident] = {
            "unit": row.identity.describe(),
            **fields,
            "params": row.params,
            "status": row.status.value,
            "error": row.error,
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
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(mask_tree(data), indent=1, sort_keys=True) + "\n")  # no password in a baseline
    except OSError as exc:
        raise cannot_write(out, exc) from None
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
    problem = baseline_problem(data)
    if problem:
        raise UserError(f"baseline file {path}: {problem}")
    return data


def baseline_problem(data: dict[str, Any]) -> str:
    """Where a (hand-edited) baseline departs from what ``baseline save`` writes, or "": each unit
    an object with its description, status, error and metrics; each metric a number (NaN allowed: a
    stored NaN fails the gate by name), a unit and a direction; raw samples a list of numbers."""
    if not isinstance(data.get("suite"), str):
        return "suite: missing or not a string"
    stored = [s.value for s in Status if s.is_stored]
    directions = get_args(Better)
    for ident, unit in data["units"].items():
        at = f"units.{ident}"
        if not isinstance(unit, dict):
            return f"{at}: not an object"
        for key in ("unit", "error"):
            if not isinstance(unit.get(key), str):
                return f"{at}.{key}: missing or not a string"
        if unit.get("status") not in stored:
            return f"{at}.status: {unit.get('status')!r} is not one of {', '.join(stored)}"
        if not isinstance(unit.get("metrics"), dict):
            return f"{at}.metrics: missing or not an object"
        for name, metric in unit["metrics"].items():
            where = f"{at}.metrics.{name}"
            if not isinstance(metric, dict):
                return f"{where}: not an object"
            value = metric.get("value")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"{where}.value: {value!r} is not a number"
            if not isinstance(metric.get("unit"), str):
                return f"{where}.unit: missing or not a string"
            if metric.get("better") not in directions:
                return f"{where}.better: {metric.get('better')!r} is not one of {', '.join(directions)}"
            samples = metric.get("samples", [])
            if not isinstance(samples, list) or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) for v in samples
            ):
                return f"{where}.samples: not a list of numbers"
    return ""


# --- comparison ----------------------------------------------------------------------------------


@dataclass
class ABOutcome:
    """What the A/B gave: results by (identity, metric), or why it was not made."""

    results: dict[tuple[str, str], ABResult]
    unavailable: str = ""
    notes: tuple[str, ...] = ()


def _unit_verdicts(
    name: str, ident: str, base_unit: dict[str, Any], cur_unit: dict[str, Any], settings: GateSettings, ab: ABOutcome
) -> list[Verdict]:
    if base_unit["status"] == Status.OK and cur_unit["status"] != Status.OK:
        change = f"ok -> {cur_unit['status']}"
        return [Verdict(name, "-", Change.REGRESSION, None, None, change, cur_unit["error"][:200])]
    if cur_unit["status"] != Status.OK:
        return [Verdict(name, "-", Change.UNCHANGED, None, None, cur_unit["status"], "not ok in the baseline either")]
    broken = ab.results.get((ident, "*"))
    out: list[Verdict] = []
    for metric, bm in base_unit["metrics"].items():
        cm = cur_unit["metrics"].get(metric)
        if cm is None:
            out.append(Verdict(name, metric, Change.MISSING, bm["value"], None, "", "metric not recorded by this run"))
            continue
        if not finite(cm["value"]):
            out.append(Verdict(name, metric, Change.INVALID, bm["value"], cm["value"], "", "not a finite number"))
            continue
        min_effect, tolerance = settings.for_metric(metric)
        if is_timed(bm):
            out.append(_timed_verdict(name, ident, metric, bm, cm, broken, ab, min_effect, settings.alpha))
        elif is_gated_value(bm):
            verdict, change, detail = judge_value(bm["better"], bm["unit"], bm["value"], cm["value"], tolerance)
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
        return Verdict(name, metric, Change.NOT_GATED, bm["value"], cm["value"], "", f"no A/B: {ab.unavailable}")
    if broken is not None:
        verdict = Change.REGRESSION if broken.failed_side == "head" else Change.NOT_GATED
        return Verdict(name, metric, verdict, bm["value"], cm["value"], "", f"A/B {broken.failed_side}: {broken.error}")
    result = ab.results.get((ident, metric))
    if result is None:
        return Verdict(name, metric, Change.NOT_GATED, bm["value"], cm["value"], "", "not measured by the A/B")
    verdict, change, detail = judge_ab(result, min_effect, alpha)
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
            verdicts.append(Verdict(name, "-", Change.MISSING, None, None, "", "unit not in this run"))
            continue
        verdicts.extend(_unit_verdicts(name, ident, base_unit, cur_unit, settings, ab))
    for ident, cur_unit in current.items():
        if ident not in baseline["units"]:
            verdicts.append(Verdict(cur_unit["unit"], "-", Change.NEW, None, None, "", "not in the baseline"))
    return verdicts


def timed_identities(baseline: dict[str, Any]) -> list[str]:
    """Baseline units that were ok and have a timed metric: what the A/B measures."""
    return [
        ident
        for ident, unit in sorted(baseline["units"].items())
        if unit["status"] == Status.OK and any(is_timed(m) for m in unit["metrics"].values())
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


def same_machine_reference(
    baseline: dict[str, Any], suite_path: Path | None, scale: str, threads: int | None, console: Console
) -> tuple[dict[str, Any], str]:
    """The baseline with its deterministic values re-measured here: the baseline's commit, checked out
    in a temporary worktree, runs the suite on this machine at the run's thread count, and its values
    replace the stored ones. Trained models' figures depend on the CPU's summation order, so values
    stored on another machine are not a fair reference. Falls back to the stored values (and says
    why) when the commit or the suite file is not at hand."""
    base_sha = str(baseline.get("provenance", {}).get("git_sha", ""))
    if suite_path is None:
        return baseline, "no suite file to re-run"
    try:
        root = repo_root(suite_path.resolve().parent)
    except Exception:  # noqa: BLE001 - not in a git checkout
        return baseline, "the suite is not in a git checkout"
    if not commit_reachable(root, base_sha):
        return baseline, f"the baseline's commit {base_sha[:12] or '(none)'} is not in this clone"
    relative = suite_path.resolve().relative_to(root)
    with tempfile.TemporaryDirectory(prefix="harness-ref-") as scratch, worktree(root, base_sha) as tree:
        url = f"sqlite:///{Path(scratch) / 'reference.db'}"
        command = [sys.executable, "-m", "harness.cli", "run", str(tree / relative), "--scale", scale, "--db", url,
                   "--artifacts", str(Path(scratch) / "artifacts"), "--no-progress"]  # fmt: skip
        if threads:
            command += ["--threads", str(threads)]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        console.print(f"accuracy reference: the baseline's commit {base_sha[:12]} re-run on this machine")
        done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=False)
        if done.returncode not in (0, 1):
            tail = " ".join(done.stderr.split()[-30:])
            return baseline, f"re-running the baseline's commit failed (exit {done.returncode}): {tail}"
        reference = Store(url, create=False, check_version=False)
        reference.upgrade()  # written by the baseline commit's (older) schema
        rows = reference.results(suite=baseline["suite"], latest_per_unit=True)
        measured = snapshot(rows)
    units = {}
    for ident, unit in baseline["units"].items():
        again = measured.get(ident)
        if again is None or again["status"] != Status.OK.value:
            units[ident] = unit
            continue
        metrics = {
            name: {**m, "value": again["metrics"][name]["value"]}
            if is_gated_value(m) and not is_timed(m) and name in again["metrics"]
            else m
            for name, m in unit["metrics"].items()
        }
        units[ident] = {**unit, "metrics": metrics}
    return {**baseline, "units": units}, ""


def run_check(
    store: Store,
    target: str,
    baseline_path: Path,
    console: Console,
    *,
    overrides: list[str] | None = None,
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
    if not overrides:  # read the suite as the run did
        overrides = [f"{k}={json.dumps(v)}" for k, v in found_overrides(store, prov["run_id"]).items()]
    suite_file = load_suite(suite_path, overrides, with_units=False) if suite_path is not None else None
    settings = suite_file.gate if suite_file is not None else GateSettings()
    settings = settings.with_overrides(
        min_effect=min_effect, accuracy_tolerance=accuracy_tolerance, alpha=alpha, rounds=rounds
    )
    if ab:
        baseline, why_stored = same_machine_reference(baseline, suite_path, prov["scale"], prov.get("threads"), console)
        if why_stored:
            console.print(f"[yellow]accuracy against the stored values[/] (not re-measured here: {escape(why_stored)})")
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
    style = {Change.IMPROVEMENT: "green", Change.UNCHANGED: "dim", Change.NOT_GATED: "yellow"}
    order = {c: i for i, c in enumerate((Change.REGRESSION, Change.MISSING, Change.INVALID, Change.NOT_GATED,
                                         Change.IMPROVEMENT, Change.NEW, Change.UNCHANGED))}  # fmt: skip
    for v in sorted(verdicts, key=lambda v: order.get(Change(v.verdict), 7)):
        fmt = lambda x: "" if x is None else f"{x:.4g}"  # noqa: E731
        colour = "bold red" if v.fails else style.get(Change(v.verdict))
        table.add_row(f"[{colour}]{v.verdict}[/]" if colour else str(v.verdict), escape(v.unit), escape(v.metric),
                      fmt(v.baseline), fmt(v.current), escape(v.change), escape(v.detail))  # fmt: skip
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[str(v.verdict)] = counts.get(str(v.verdict), 0) + 1
    table.caption = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    console.print(table)


def found_overrides(store: Store, run_id: int) -> dict[str, Any]:
    """The ``--set`` overrides the run was made with (the gate reads the suite as that run did)."""
    run = store.get_run(run_id)
    return dict(run.overrides or {}) if run is not None else {}
