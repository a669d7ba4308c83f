"""Run the units of a suite: skip what is stored, time-limit each unit, classify how it ended,
store each unit in its own transaction, and show progress and a summary."""

from __future__ import annotations

import fnmatch
import os
import platform
import random
import signal
import subprocess
import sys
import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from harness.context import TrialContext
from harness.errors import UnitStatusError, UnitTimeout
from harness.redact import mask_command, mask_secrets
from harness.store import Store, UnitRecord, utcnow
from harness.suite import Suite, Unit
from harness.timing import NOISY_SPREAD, check_device, is_oom, is_unsupported_dtype, set_threads, timing_noise

TRACKED_PACKAGES = (
    "torch", "numpy", "sqlalchemy", "spconv", "torchsparse", "mmsegmentation", "mmcv-lite", "mmengine",
    "mmdet", "faiss-cpu", "fvcore", "segharness",
)  # fmt: skip


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
    status: str  # ok | failed | oom | unsupported | unavailable | timeout | skipped | missing (a job ended without it)
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
        return any(o.status in ("failed", "timeout", "missing") for o in self.outcomes)


def select_units(units: list[Unit], only: str | None) -> list[Unit]:
    """Keep units whose description or trial name matches the glob/substring ``only``."""
    if not only:
        return units
    pattern = only if any(ch in only for ch in "*?[") else f"*{only}*"
    return [u for u in units if fnmatch.fnmatch(u.describe(), pattern) or fnmatch.fnmatch(u.trial.name, pattern)]


# --- provenance ----------------------------------------------------------------------------------


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(threads: int) -> dict[str, Any]:
    packages = {}
    for name in TRACKED_PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    gpu = ""
    if torch.cuda.is_available():
        gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return {
        "git_sha": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "host": platform.node(),
        "cpu": cpu_model(),
        "gpu": gpu,
        "threads": threads,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "",
        "packages": {**packages, "python": platform.python_version()},
    }


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


def classify(exc: BaseException) -> tuple[str, str]:
    """Map an exception from a trial to (status, one-line reason)."""
    if isinstance(exc, UnitStatusError):
        return exc.status, exc.reason
    if isinstance(exc, UnitTimeout):
        return "timeout", str(exc)
    first = mask_secrets((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:500]
    if is_oom(exc):
        return "oom", first
    if is_unsupported_dtype(exc):
        return "unsupported", first
    return "failed", f"{type(exc).__name__}: {first}"


def _check_recorded(unit: Unit, ctx: TrialContext) -> tuple[str, str]:
    """A unit is ok only if it recorded every metric it declares (but the optional ones)."""
    if not ctx.metrics:
        return "failed", "trial recorded no metric"
    missing = [m.name for m in unit.trial.metrics if not m.optional and m.name not in ctx.metrics]
    if missing:
        return "failed", f"metric {', '.join(missing)} was not recorded"
    return "ok", ""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass


def execute_unit(unit: Unit, options: RunOptions, progress: Any = None) -> tuple[UnitRecord, UnitOutcome]:
    ctx = TrialContext(
        spec=unit.trial,
        params=dict(unit.params),
        precision=unit.precision,
        batch_size=unit.batch_size,
        device=unit.device,
        scale_name=unit.scale,
        scale=dict(unit.scale_settings),
        dataset=dict(unit.dataset),
        seed=unit.seed,
        timing=unit.timing,
        artifacts_dir=options.artifacts_dir,
        trust_checkpoints=options.trust_checkpoints,
        progress=progress or (lambda message: None),
    )
    started = utcnow()
    status, error = "ok", ""
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
        if status == "failed":
            ctx.note("traceback", traceback.format_exc(limit=8)[-4000:])
    finally:
        torch.set_num_threads(threads_before)
    ended = utcnow()
    metrics = [] if status != "ok" else [
        (m.name, m.value, m.unit, m.better, m.samples) for m in ctx.metrics.values()
    ]  # fmt: skip
    record = unit_record(unit, status, error, ctx.notes, started, ended, metrics)
    outcome = UnitOutcome(
        unit=unit,
        status=status,
        error=error,
        seconds=(ended - started).total_seconds(),
        metrics={m.name: m.value for m in ctx.metrics.values()} if status == "ok" else {},
        samples={m.name: m.samples for m in ctx.metrics.values() if m.samples} if status == "ok" else {},
    )
    return record, outcome


def unit_record(
    unit: Unit,
    status: str,
    error: str,
    notes: dict[str, Any],
    started: Any,
    ended: Any,
    metrics: list[tuple[str, float, str, str, tuple[float, ...]]] | None = None,
) -> UnitRecord:
    """What is stored for ``unit``, ended with ``status`` (and ``error``) between ``started`` and ``ended``."""
    return UnitRecord(
        unit_key=unit.key,
        suite=unit.suite,
        trial=unit.trial.name,
        trial_version=unit.trial.version,
        label=unit.label,
        section=unit.section,
        params=unit.params,
        precision=unit.precision,
        batch_size=unit.batch_size,
        device=unit.device,
        dataset=unit.dataset,
        scale=unit.scale,
        scale_settings=unit.scale_settings,
        status=status,
        error=error,
        notes=notes,
        started_at=started,
        ended_at=ended,
        metrics=metrics or [],
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
    options = _with_checkpoint_trust(suite, options, console)
    run_id = store.start_run(
        suite=suite.name,
        suite_path=str(suite.path),
        suite_sha=suite.sha,
        scale=options.scale,
        command=command or mask_command(sys.argv),
        trust_checkpoints=options.trust_checkpoints,
        **provenance(threads),
    )
    outcomes: list[UnitOutcome] = []
    final = "interrupted"
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
                    outcomes.append(UnitOutcome(unit, "skipped"))
                    bar.advance(task)
                    continue

                def report(message: str) -> None:
                    bar.update(task, status=mask_secrets(str(message))[:60])

                record, outcome = execute_unit(unit, options, report)
                store.add_result(run_id, record)
                outcomes.append(outcome)
                bar.advance(task)
                if outcome.status != "ok":
                    console.print(f"[yellow]{outcome.status}[/]: {unit.describe()}: {outcome.error}")
                if options.fail_fast and outcome.status in ("failed", "timeout"):
                    console.print("[red]stopping: --fail-fast[/]")
                    break
        final = "failed" if any(o.status in ("failed", "timeout") for o in outcomes) else "ok"
    finally:
        store.end_run(run_id, final)
    return RunSummary(run_id, outcomes)


def summary_table(summary: RunSummary, title: str) -> Table:
    table = Table(title=title, show_lines=False)
    for col in ("status", "unit", "time (s)", "metrics / reason"):
        table.add_column(col, overflow="fold")
    style = {"ok": "green", "skipped": "dim", "failed": "red", "timeout": "red", "missing": "red", "oom": "magenta"}
    noisy_units = 0
    for o in summary.outcomes:
        detail = o.error or ", ".join(f"{k}={v:.4g}" for k, v in list(o.metrics.items())[:6])
        warnings = noisy_timings(o)
        noisy_units += bool(warnings)
        detail += "".join(f"\n[bold red]noisy timing: {w}[/]" for w in warnings)
        table.add_row(f"[{style.get(o.status, 'yellow')}]{o.status}[/]", o.unit.describe(),
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


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
