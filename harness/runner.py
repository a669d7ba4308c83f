"""Run the units of a suite: skip what is stored, time-limit each unit, classify how it ended,
store each unit in its own transaction, and show progress and a summary."""

from __future__ import annotations

import fnmatch
import random
import signal
import sys
import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from statistics import median
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from harness.allocator import tune_malloc
from harness.context import TrialContext
from harness.devices import check_device, is_oom, is_unsupported_dtype
from harness.errors import UnitStatusError, UnitTimeout
from harness.provenance import provenance
from harness.redact import mask_command, mask_secrets
from harness.results import MetricValue, ResultRow, RunStatus, Status
from harness.store import Store, utcnow
from harness.suite import Suite, Unit
from harness.timing import NOISY_SPREAD, set_threads, timing_noise


@dataclass
class RunOptions:
    scale: str = "default"
    force: bool = False
    fail_fast: bool = False
    only: str | None = None
    timeout: float | None = None
    threads: int | None = None
    artifacts_dir: Path = Path("results/artifacts")
    show_progress: bool = True
    trust_checkpoints: bool = False  # --trust-checkpoints: full unpickling of user checkpoints


@dataclass
class UnitOutcome:
    unit: Unit
    status: Status
    error: str = ""
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    samples: dict[str, tuple[float, ...]] = field(default_factory=dict)  # raw timing samples per timed metric


@dataclass
class RunSummary:
    run_id: int | None
    outcomes: list[UnitOutcome]

    @property
    def counts(self) -> Counter[str]:
        return Counter(o.status for o in self.outcomes)

    @property
    def has_failures(self) -> bool:
        return any(Status(o.status).is_failure for o in self.outcomes)


def select_units(units: list[Unit], only: str | None) -> list[Unit]:
    """Keep units whose description or trial name matches the glob/substring ``only``."""
    if not only:
        return units
    pattern = only if any(ch in only for ch in "*?[") else f"*{only}*"
    return [u for u in units if fnmatch.fnmatch(u.describe(), pattern) or fnmatch.fnmatch(u.trial.name, pattern)]


# --- time estimates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimeEstimate:
    """How long a unit is expected to take, and what the figure rests on."""

    seconds: float | None  # None: unknown
    basis: str


def estimate_times(units: list[Unit], store: Store | None, *, force: bool = False) -> list[TimeEstimate]:
    """Each unit's expected wall time, from the ok results stored earlier: a unit stored ok for its
    suite is skipped (0 s, unless ``force``); else the last wall time of the same unit key; else the
    median over the units of the same trial at the same scale (each unit's last time); else unknown."""
    if store is None:
        return [TimeEstimate(None, "unknown (no database)") for _ in units]
    stored = store.wall_times(sorted({u.trial.name for u in units}))
    last: dict[str, float] = {}
    per_trial: dict[tuple[str, str], dict[str, float]] = {}  # each unit's last time, per trial and scale
    for key, trial, scale, seconds in stored:  # oldest first: the last write wins
        last[key] = seconds
        per_trial.setdefault((trial, scale), {})[key] = seconds
    skipped: set[str] = set()
    if not force:
        for suite in {u.suite for u in units}:
            skipped |= store.ok_unit_keys([u.key for u in units if u.suite == suite], suite)
    out = []
    for unit in units:
        similar = list(per_trial.get((unit.trial.name, unit.scale), {}).values())
        if unit.key in skipped:
            out.append(TimeEstimate(0.0, "stored ok: skipped (--force runs it)"))
        elif unit.key in last:
            out.append(TimeEstimate(last[unit.key], "last run of this unit"))
        elif similar:
            n = len(similar)
            out.append(TimeEstimate(float(median(similar)), f"median of {n} {unit.trial.name} unit(s) at {unit.scale}"))
        else:
            out.append(TimeEstimate(None, "unknown"))
    return out


def total_estimate(estimates: list[TimeEstimate]) -> str:
    """'about 12.5 min (3 units unknown: a lower bound)'."""
    known = sum(e.seconds for e in estimates if e.seconds is not None)
    unknown = sum(e.seconds is None for e in estimates)
    text = f"about {format_seconds(known)}"
    if unknown:
        text += f" ({unknown} unit(s) with no earlier time: a lower bound)"
    return text


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# --- one unit ----------------------------------------------------------------------------------------


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise UnitTimeout in the main thread after ``seconds`` (checked between Python bytecodes,
    so a single long-running native op finishes before the limit takes effect)."""
    if not seconds or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(_signum: int, _frame: Any) -> None:
        raise UnitTimeout(f"unit exceeded its time limit of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def classify(exc: BaseException) -> tuple[Status, str]:
    """Map an exception from a trial to (status, one-line reason)."""
    if isinstance(exc, UnitStatusError):
        return exc.status, exc.reason
    if isinstance(exc, UnitTimeout):
        return Status.TIMEOUT, str(exc)
    first = mask_secrets((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:500]
    if is_oom(exc):
        return Status.OOM, first
    if is_unsupported_dtype(exc):
        return Status.UNSUPPORTED, first
    return Status.FAILED, f"{type(exc).__name__}: {first}"


def _check_recorded(unit: Unit, ctx: TrialContext) -> tuple[Status, str]:
    """A unit is ok only if it recorded every metric it declares (but the optional ones)."""
    if not ctx.metrics:
        return Status.FAILED, "trial recorded no metric"
    missing = [m.name for m in unit.trial.metrics if not m.optional and m.name not in ctx.metrics]
    if missing:
        return Status.FAILED, f"metric {', '.join(missing)} was not recorded"
    return Status.OK, ""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass


def execute_unit(unit: Unit, options: RunOptions, progress: Any = None) -> tuple[ResultRow, UnitOutcome]:
    ctx = TrialContext.for_unit(
        unit, artifacts_dir=options.artifacts_dir, trust_checkpoints=options.trust_checkpoints, progress=progress
    )
    started = utcnow()
    status, error = Status.OK, ""
    threads_before = torch.get_num_threads()
    try:
        set_threads(unit.timing.threads or options.threads)
        seed_everything(unit.seed)
        check_device(unit.device)
        with time_limit(options.timeout):
            unit.trial.fn(ctx)
        status, error = _check_recorded(unit, ctx)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - every way a unit can end is a status
        status, error = classify(exc)
        if status == Status.FAILED:
            ctx.note("traceback", traceback.format_exc(limit=8)[-4000:])
    finally:
        torch.set_num_threads(threads_before)
    metrics = ctx.metrics if status == Status.OK else {}
    row = unit_result(unit, status, error, ctx.notes, started, utcnow(), metrics)
    outcome = UnitOutcome(
        unit=unit,
        status=status,
        error=error,
        seconds=row.duration_s or 0.0,
        metrics={m.name: m.value for m in metrics.values()},
        samples={m.name: m.samples for m in metrics.values() if m.samples},
    )
    return row, outcome


def unit_result(
    unit: Unit,
    status: Status,
    error: str,
    notes: dict[str, Any],
    started: datetime,
    ended: datetime,
    metrics: dict[str, MetricValue] | None = None,
) -> ResultRow:
    """What is stored for ``unit``, ended with ``status`` (and ``error``) between ``started`` and ``ended``."""
    return ResultRow(
        key=unit.key,
        suite=unit.suite,
        identity=unit.identity,
        status=status,
        error=error,
        notes=notes,
        metrics=dict(metrics or {}),
        scale_name=unit.scale,
        started_at=started,
        ended_at=ended,
    )


# --- a suite -------------------------------------------------------------------------------------


def _with_checkpoint_trust(suite: Suite, options: RunOptions, console: Console) -> RunOptions:
    """The options with the suite's ``trust_checkpoints`` folded in; warns when trust is on."""
    trusted = options.trust_checkpoints or suite.trust_checkpoints
    if trusted:
        source = "--trust-checkpoints" if options.trust_checkpoints else f"{suite.path}: trust_checkpoints"
        console.print(
            f"[yellow]warning[/]: {source}: user checkpoints will be fully unpickled, which runs any code "
            "they carry; use only files from a source you trust (recorded in the run's provenance)"
        )
    return replace(options, trust_checkpoints=trusted)


def run_suite(
    suite: Suite, store: Store, options: RunOptions, console: Console | None = None, command: str = ""
) -> RunSummary:
    console = console or Console(stderr=True)
    units = select_units(suite.units(options.scale), options.only)
    threads = set_threads(options.threads)
    tune_malloc()
    options = _with_checkpoint_trust(suite, options, console)
    run_id = start_run(store, suite, options, command or mask_command(sys.argv), threads)
    outcomes: list[UnitOutcome] = []
    final = RunStatus.INTERRUPTED
    columns = (
        TextColumn("[bold]{task.fields[unit]}", justify="left"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    try:
        with Progress(*columns, console=console, disable=not options.show_progress, transient=False) as bar:
            task = bar.add_task(suite.name, total=len(units), unit="", status="")
            for unit in units:
                short = unit.describe()[:70]
                bar.update(task, unit=short, status="")
                if not options.force and store.is_ok(unit.key, unit.suite):
                    outcomes.append(UnitOutcome(unit, Status.SKIPPED))
                    bar.advance(task)
                    continue

                def report(message: str) -> None:
                    bar.update(task, status=mask_secrets(str(message))[:60])

                record, outcome = execute_unit(unit, options, report)
                store.add_result(run_id, record)
                outcomes.append(outcome)
                bar.advance(task)
                if outcome.status != Status.OK:
                    console.print(f"[yellow]{outcome.status}[/]: {unit.describe()}: {outcome.error}")
                if options.fail_fast and outcome.status.is_failure:
                    console.print("[red]stopping: --fail-fast[/]")
                    break
        final = RunStatus.FAILED if any(o.status.is_failure for o in outcomes) else RunStatus.OK
    finally:
        store.end_run(run_id, final.value)
    return RunSummary(run_id, outcomes)


def start_run(store: Store, suite: Suite, options: RunOptions, command: str, threads: int) -> int:
    """Insert the run with its provenance, its ``--set`` overrides and the suite's units at the run's
    scale (all of them, whatever ``--only`` selects: a report lists those never run)."""
    run_id = store.start_run(
        suite=suite.name,
        suite_path=str(suite.path),
        suite_sha=suite.sha,
        scale=options.scale,
        command=command,
        trust_checkpoints=options.trust_checkpoints,
        overrides=dict(suite.overrides),
        **provenance(threads),
    )
    store.set_run_units(run_id, [unit.listing() for unit in suite.units(options.scale)])
    return run_id


def summary_table(summary: RunSummary, title: str) -> Table:
    table = Table(title=title, show_lines=False)
    for col in ("status", "unit", "time (s)", "metrics / reason"):
        table.add_column(col, overflow="fold")
    style = {Status.OK: "green", Status.SKIPPED: "dim", Status.OOM: "magenta"}
    noisy_units = 0
    for o in summary.outcomes:
        detail = o.error or ", ".join(f"{k}={v:.4g}" for k, v in list(o.metrics.items())[:6])
        warnings = noisy_timings(o)
        noisy_units += bool(warnings)
        detail += "".join(f"\n[bold red]noisy timing: {w}[/]" for w in warnings)
        colour = "red" if Status(o.status).is_failure else style.get(Status(o.status), "yellow")
        table.add_row(f"[{colour}]{o.status}[/]", o.unit.describe(),
                      f"{o.seconds:.1f}", detail)  # fmt: skip
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.counts.items()))
    table.caption = f"run {summary.run_id}: {counts}"
    if noisy_units:
        table.caption += (
            f"; {noisy_units} unit(s) with noisy timing (IQR/median > {NOISY_SPREAD:.0%}): do not trust their medians"
        )
    return table


def noisy_timings(outcome: UnitOutcome) -> list[str]:
    """'latency IQR/median 23%' for each timed metric of ``outcome`` whose samples are noisy."""
    out = []
    for name, samples in outcome.samples.items():
        spread = timing_noise(samples)
        if spread is not None and spread > NOISY_SPREAD:
            out.append(f"{name} IQR/median {spread:.0%}")
    return out
