"""Scale a suite out over submitit jobs (local processes or Slurm), with the database as the one
shared state.

The driver (:func:`submit_suite`, then :func:`wait_for`) starts a run, splits the pending units (those
not stored ok for the suite, unless ``--force``) into N contiguous shares and submits one job per
share. A job receives plain data only (:class:`JobSpec`: the suite path, scale, run id, database URL
without its password, the unit keys of its share): it re-loads the suite, picks its units by key and
runs them one after another with :func:`harness.runner.execute_unit`, storing each in its own
transaction as it ends (:meth:`Store.add_result`, retried with back-off on a lost connection). So a
job killed at any point loses at most its unit in flight, and re-running the same command runs only
the units not stored ok. The driver follows progress by polling the database.

Time limits and preemption: a per-unit guard stops a unit at the job's time limit (``timeout_min``
less submitit's ``signal_delay_s``) and ends it ``timeout``; submitit's signal (USR2, sent
``signal_delay_s`` before the limit or on preemption) does the same for the unit in flight when the
job timed out. On a preemption the unit in flight is not stored, and submitit requeues the job, which
resumes with the units this run has not stored yet.

Every stored unit records where it ran in its notes: host, gpu (``cpu`` without CUDA), job id,
executor and worker index.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import re
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from harness.allocator import tune_malloc
from harness.devices import is_cuda
from harness.errors import UnitTimeout, UserError
from harness.redact import mask_secrets, mask_url, one_line
from harness.registry import did_you_mean
from harness.results import RunStatus, Status
from harness.store import DB_ENV_VAR, RETRYABLE, Store, utcnow

EXECUTORS = ("inline", "local", "slurm")
LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # local jobs have no time limit of their own (submitit's default is 2 min)
DEFAULT_SIGNAL_DELAY_S = 90  # submitit's default for Slurm: USR2 this long before the time limit
# --slurm keys that take lists or mappings: not expressible as key=value.
UNSETTABLE_SLURM_KEYS = ("setup", "teardown", "srun_args", "additional_parameters", "num_gpus")
ONE_TASK_KEYS = ("nodes", "tasks_per_node", "ntasks_per_node")  # one worker per job: these must be 1


def _submitit(executor: str) -> Any:
    try:
        import submitit
    except ImportError:
        raise UserError(
            f"--executor {executor} needs submitit: pip install 'segharness[cluster]' (or pip install submitit)"
        ) from None
    return submitit


def check_executor(executor: str) -> None:
    """UserError unless submitit is installed and, for ``slurm``, Slurm's ``srun`` is on this machine."""
    submitit = _submitit(executor)
    if executor == "slurm" and submitit.SlurmExecutor.affinity() <= 0:
        raise UserError("--executor slurm: no Slurm on this machine (srun not found): run it where jobs are submitted")


# --- --slurm options ----------------------------------------------------------------------------------


def _slurm_key_types() -> tuple[dict[str, type], dict[str, type]]:
    """(generic AutoExecutor keys, Slurm-specific keys) with the type each value is parsed to."""
    submitit = _submitit("slurm")
    from submitit.slurm.slurm import _get_default_parameters

    generic = dict(submitit.AutoExecutor._typed_parameters())
    specific: dict[str, type] = {}
    for key, default in _get_default_parameters().items():
        if key in generic or key in UNSETTABLE_SLURM_KEYS:
            continue
        if isinstance(default, bool):
            specific[key] = bool
        elif isinstance(default, int) or key in ("cpus_per_gpu", "gpus_per_task", "ntasks_per_node"):
            specific[key] = int
        else:
            specific[key] = str
    return generic, specific


def _parse_value(key: str, raw: str, kind: type) -> Any:
    if kind is bool:
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise UserError(f"--slurm {key}={raw}: expected true or false")
    if kind is int:
        try:
            value = int(raw)
        except ValueError:
            raise UserError(f"--slurm {key}={raw}: expected an integer") from None
        if value < 0:
            raise UserError(f"--slurm {key}={raw}: must not be negative")
        return value
    if kind is float:
        try:
            return float(raw)
        except ValueError:
            raise UserError(f"--slurm {key}={raw}: expected a number") from None
    return raw


def parse_slurm_options(text: str | None) -> dict[str, Any]:
    """``partition=gpu,gpus_per_node=1,timeout_min=240`` -> {"partition": "gpu", "gpus_per_node": 1, ...}.
    Keys are submitit's: its generic ones (timeout_min, gpus_per_node, cpus_per_task, mem_gb, name...)
    and SlurmExecutor's (partition, account, qos, constraint, array_parallelism, signal_delay_s...),
    with or without the ``slurm_`` prefix. A bad key or value raises UserError naming it."""
    if not text or not text.strip():
        return {}
    generic, specific = _slurm_key_types()
    known = {**generic, **specific}
    out: dict[str, Any] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, raw = item.partition("=")
        key, raw = key.strip().removeprefix("slurm_"), raw.strip()
        if not sep or not key or not raw:
            raise UserError(f"--slurm: {item!r} is not KEY=VALUE (e.g. partition=gpu,gpus_per_node=1,timeout_min=240)")
        if key in UNSETTABLE_SLURM_KEYS:
            raise UserError(f"--slurm {key}: takes a list or mapping, not settable from the command line")
        if key not in known:
            raise UserError(f"--slurm: unknown key {key!r}{did_you_mean(key, known)}")
        if key in out:
            raise UserError(f"--slurm: key {key!r} given twice")
        out[key] = _parse_value(key, raw, known[key])
    for key in ONE_TASK_KEYS:
        if out.get(key, 1) != 1:
            raise UserError(f"--slurm {key}={out[key]}: each job runs one worker (one task on one node); use --workers")
    if "timeout_min" in out and "time" in out:
        raise UserError("--slurm: give timeout_min or time, not both")
    if "name" in out and "job_name" in out:
        raise UserError("--slurm: give name or job_name, not both")
    if not out.get("timeout_min") and not out.get("time"):
        raise UserError("--slurm: give the jobs' time limit, timeout_min=MINUTES (submitit's default is 5 minutes)")
    return out


def slurm_parameters(options: dict[str, Any]) -> dict[str, Any]:
    """``executor.update_parameters`` keywords of an AutoExecutor(cluster="slurm") for parsed ``--slurm``
    options: generic keys as they are, Slurm-specific ones prefixed ``slurm_``."""
    generic, _ = _slurm_key_types()
    return {key if key in generic else f"slurm_{key}": value for key, value in options.items()}


def slurm_executor(folder: Path, options: dict[str, Any], job_name: str) -> Any:
    """The submitit AutoExecutor for Slurm with ``--slurm`` options applied (UserError if no Slurm here)."""
    submitit = _submitit("slurm")
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    except RuntimeError as exc:
        raise UserError(f"--executor slurm: no Slurm on this machine ({one_line(str(exc))})") from None
    params = slurm_parameters(options)
    if "name" not in options and "job_name" not in options:
        params["name"] = job_name
    try:
        executor.update_parameters(**params)
    except (ValueError, NameError, AssertionError) as exc:
        raise UserError(f"--slurm: {one_line(str(exc))}") from None
    return executor


def job_time_limit_s(options: dict[str, Any]) -> float | None:
    """The jobs' time limit in seconds from ``--slurm`` options (``timeout_min`` or ``time`` in minutes)."""
    minutes = options.get("timeout_min") or options.get("time")
    return float(minutes) * 60 if minutes else None


# --- database URLs -----------------------------------------------------------------------------------


def _without_password(url: str) -> str:
    try:
        parsed = make_url(url)
    except ArgumentError:
        return url
    return parsed._replace(password=None).render_as_string(hide_password=False)  # URL.set ignores None


def _has_password(url: str) -> bool:
    try:
        return make_url(url).password is not None
    except ArgumentError:
        return False


def shared_db_url(url: str, executor: str, allow_sqlite: bool) -> str:
    """The URL the jobs open (a relative SQLite path made absolute); refuses what jobs cannot share."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UserError(f"database URL {mask_url(url)!r} is not a valid SQLAlchemy URL") from None
    if parsed.get_backend_name() != "sqlite":
        return url
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file::memory:"):
        raise UserError(f"--executor {executor}: an in-memory SQLite database cannot be shared with jobs")
    if executor == "slurm" and not allow_sqlite:
        raise UserError(
            f"--executor slurm with SQLite ({mask_url(url)}): SQLite's WAL needs one machine's shared memory "
            "and breaks over network filesystems; use PostgreSQL (HARNESS_DB=postgresql+psycopg2://user@host/db), "
            "or --allow-sqlite if every job runs on this one node"
        )
    return parsed.set(database=str(Path(database).resolve())).render_as_string(hide_password=False)


def _job_db_url(spec_url: str) -> str:
    """The URL a job opens: ``$HARNESS_DB`` when it is the job's URL with a password (the password
    travels in the job's environment, never in its pickle or logs), else the URL given."""
    env = os.environ.get(DB_ENV_VAR)
    if env and _without_password(env) == spec_url:
        return env
    return spec_url


@contextmanager
def _environment(**values: str | None) -> Iterator[None]:
    """Set (or leave) environment variables for the duration: submitted jobs inherit them."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is not None:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --- the job ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    """Everything one job needs, as plain data (Unit objects hold trial functions: not sent)."""

    run_id: int
    suite_path: str
    scale: str
    db_url: str  # without its password (see _job_db_url)
    unit_keys: tuple[str, ...]
    worker: int = 0
    executor: str = "local"
    force: bool = False
    fail_fast: bool = False
    timeout: float | None = None  # --timeout, per unit
    threads: int | None = None
    artifacts_dir: str = "results/artifacts"
    trust_checkpoints: bool = False
    trial_sources: tuple[tuple[str, str], ...] = ()  # (module, file) of trials outside ``methods``
    cpus: tuple[int, ...] = ()  # CPU cores this worker is pinned to (local executor)
    job_time_s: float | None = None  # the job's time limit (Slurm timeout_min)
    signal_delay_s: float = DEFAULT_SIGNAL_DELAY_S


class UnitJob:
    """The callable submitit runs: ``run_job(spec)``. Deliberately not Checkpointable: on a
    preemption submitit requeues the same call, which resumes where the run stands in the database."""

    def __init__(self, spec: JobSpec):
        self.spec = spec

    def __call__(self) -> dict[str, Any]:
        return run_job(self.spec)


class JobTimeUp(UnitTimeout):
    """Raised in the unit in flight when the job's time is up (guard or submitit's signal)."""


class _StopSignal:
    """submitit's USR2 (time limit near, or preemption) ends the unit in flight: the handler raises
    JobTimeUp inside a running unit, and only flags the stop otherwise (never inside a DB write)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.preempted = False
        self.in_unit = False
        self.previous: Any = None
        self.installed = False
        self.received = False

    def install(self) -> None:
        self.signum = int(getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2))
        try:
            self.previous = signal.signal(self.signum, self._handle)
            self.installed = True
        except ValueError:  # not the main thread: leave submitit's handler in place
            pass

    def uninstall(self) -> None:
        if self.installed and self.signum is not None:
            signal.signal(self.signum, self.previous)
            self.installed = False

    @property
    def reason(self) -> str:
        if not self.received:
            return ""
        return "preempted: requeued by submitit" if self.preempted else "the job reached its time limit"

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.received:
            return
        self.received = True
        timed_out = getattr(getattr(self.previous, "__self__", None), "has_timed_out", None)
        self.preempted = bool(callable(timed_out) and not timed_out())
        if self.in_unit:
            what = "preempted" if self.preempted else "stopped at the job's time limit"
            raise JobTimeUp(f"unit {what} (signal {signal.Signals(signum).name} from the scheduler)")

    def hand_over(self) -> None:
        """After a preemption, let submitit requeue the job (it exits the process)."""
        if self.preempted and callable(self.previous) and self.signum is not None:
            self.previous(self.signum, None)


def _load_trials(sources: tuple[tuple[str, str], ...]) -> None:
    """Register every trial: ``methods`` (discovery, as the CLI does), then each module outside it that
    the driver's units came from (by name if importable, else from its file, e.g. a script's __main__)."""
    import methods

    methods.discover()
    for module, file in sources:
        if module in sys.modules and module != "__main__":
            continue
        if module != "__main__":
            try:
                importlib.import_module(module)
                continue
            except ImportError:
                pass
        name = module if module != "__main__" else f"_harness_trials_{Path(file).stem}"
        if name in sys.modules:
            continue
        folder = str(Path(file).parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        loader_spec = importlib.util.spec_from_file_location(name, file)
        if loader_spec is None or loader_spec.loader is None:
            raise UserError(f"cannot load trials from {file}")
        loaded = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = loaded
        loader_spec.loader.exec_module(loaded)


def worker_provenance(spec: JobSpec) -> dict[str, Any]:
    """Where a unit ran: host, gpu ('cpu' without CUDA), job id (submitit's, else $SLURM_JOB_ID)."""
    import torch

    job_id = ""
    try:
        import submitit

        job_id = str(submitit.JobEnvironment().job_id)
    except Exception:  # noqa: BLE001 - not inside a submitit job
        job_id = os.environ.get("SLURM_JOB_ID", "")
    gpu = "cpu"
    if torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        gpu = (
            f"{torch.cuda.get_device_name(0)} (CUDA_VISIBLE_DEVICES={visible})"
            if visible
            else torch.cuda.get_device_name(0)
        )
    notes: dict[str, Any] = {
        "host": platform.node(),
        "gpu": gpu,
        "job_id": job_id,
        "executor": spec.executor,
        "worker": spec.worker,
    }
    if spec.cpus:
        notes["cpus"] = list(spec.cpus)
    return notes


def _job_age_s() -> float:
    """Seconds since Slurm started this job ($SLURM_JOB_START_TIME), 0 if unknown."""
    try:
        return max(0.0, time.time() - float(os.environ["SLURM_JOB_START_TIME"]))
    except (KeyError, ValueError):
        return 0.0


def _allowed_cores() -> int:
    """The cores this process may run on (its affinity: a Slurm allocation, a pinned local worker)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_job(spec: JobSpec) -> dict[str, Any]:
    """Run a job's share of units one after another, storing each as it ends. Returns a report
    {"worker", "job_id", "host", "units": {key: [status, reason]}, "stopped": reason or ""} of the units
    it ran or could not (a unit it stored is in the database; the report is for the driver's summary)."""
    from harness.runner import RunOptions, execute_unit, unit_result
    from harness.suite import Unit

    started = time.monotonic()
    if spec.cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, spec.cpus)
    tune_malloc()  # as the inline runner does (the run's provenance records the driver's setting)
    _load_trials(spec.trial_sources)
    store = Store(_job_db_url(spec.db_url))
    run = store.retrying(lambda _: store.get_run(spec.run_id))
    planned = {item["key"]: item for item in (run.units or [])} if run is not None else {}
    options = RunOptions(
        scale=spec.scale,
        timeout=spec.timeout,
        threads=spec.threads or _allowed_cores(),  # the cores this job may use (Slurm: its allocation)
        artifacts_dir=Path(spec.artifacts_dir),
        show_progress=False,
        trust_checkpoints=spec.trust_checkpoints,
    )
    where = worker_provenance(spec)
    report: dict[str, Any] = {
        "worker": spec.worker,
        "job_id": where["job_id"],
        "host": where["host"],
        "units": {},
        "stopped": "",
    }
    deadline = None
    if spec.job_time_s:  # the job's clock started with the job (Slurm says when), else with this call
        deadline = started - _job_age_s() + spec.job_time_s - spec.signal_delay_s
    stop = _StopSignal()
    stop.install()
    try:
        for key in spec.unit_keys:
            if stop.received:
                report["stopped"] = stop.reason
                break
            try:
                if key not in planned:
                    raise UserError(f"unit {key} is not among the units run {spec.run_id} planned")
                unit = Unit.from_listing(run.suite, spec.scale, planned[key])  # type: ignore[union-attr]
            except UserError as exc:
                report["units"][key] = [Status.FAILED.value, str(exc)]
                continue
            if store.retrying(lambda _, key=key: store.result_id(spec.run_id, key)) is not None:
                continue  # stored by this run before a requeue
            if not spec.force and store.retrying(lambda _, unit=unit: store.is_ok(unit.key, unit.suite)):
                report["units"][key] = [Status.SKIPPED.value, "stored ok meanwhile"]
                continue
            if spec.fail_fast and any(
                Status(status).is_failure
                for _, _, status, _ in store.retrying(lambda _: store.run_unit_statuses(spec.run_id))
            ):
                report["stopped"] = "--fail-fast: a unit of this run failed"
                break
            limit = spec.timeout
            guard = False
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 1.0:
                    report["stopped"] = "the job reached its time limit"
                    break
                if limit is None or remaining < limit:
                    limit, guard = remaining, True
            unit_started = utcnow()
            stop.in_unit = True
            try:
                record, outcome = execute_unit(unit, replace(options, timeout=limit))
            except JobTimeUp as exc:  # the signal came just outside the unit's own try block
                record = unit_result(unit, Status.TIMEOUT, str(exc), {}, unit_started, utcnow())
                outcome = None
            finally:
                stop.in_unit = False
                if hasattr(signal, "setitimer"):  # a signal inside time_limit's clean-up could leave its alarm set
                    signal.setitimer(signal.ITIMER_REAL, 0)
            if stop.preempted:
                report["stopped"] = stop.reason  # the unit in flight is not stored: the requeued job re-runs it
                break
            if guard and record.status == Status.TIMEOUT and not stop.received:
                record = replace(
                    record,
                    error=f"unit stopped at the job's time limit ({spec.job_time_s / 60:g} min less the "
                    f"{spec.signal_delay_s:g} s signal delay)",
                )
            record = replace(record, notes={**record.notes, **where})
            try:
                store.add_result(spec.run_id, record)
            except RETRYABLE as exc:
                tries = len(store.retry_delays) + 1
                reason = one_line(str(getattr(exc, "orig", None) or exc))
                report["units"][key] = [
                    Status.FAILED.value,
                    f"not stored: database error after {tries} tries: {reason}",
                ]
            else:
                report["units"][key] = [record.status.value, record.error if outcome is None else outcome.error]
            if guard and record.status == Status.TIMEOUT:
                report["stopped"] = "the job reached its time limit"
                break
        else:
            if stop.received:
                report["stopped"] = stop.reason
    finally:
        stop.uninstall()
    try:
        store.close_run_if_complete(spec.run_id)
    except RETRYABLE:
        pass
    stop.hand_over()
    return report


# --- the driver ---------------------------------------------------------------------------------------


@dataclass
class ClusterOptions:
    executor: str = "local"  # local | slurm
    workers: int = 1
    slurm: dict[str, Any] = field(default_factory=dict)  # parsed --slurm
    detach: bool = False
    allow_sqlite: bool = False
    folder: Path = Path("results/submitit")  # submitit's pickles and logs (on a shared filesystem for Slurm)
    poll_s: float = 0.5
    local: dict[str, Any] = field(default_factory=dict)  # extra LocalExecutor parameters (timeout_min, signal_delay_s)


@dataclass
class Submitted:
    run_id: int
    units: list[Any]  # every selected unit, in suite order
    pending: list[Any]
    shares: list[list[str]]  # unit keys per job
    jobs: list[Any]  # submitit Job objects
    folder: Path
    executor: str

    @property
    def job_ids(self) -> list[str]:
        return [str(job.job_id) for job in self.jobs]


def split_units(keys: list[str], workers: int) -> list[list[str]]:
    """Contiguous, near-equal shares (units of one entry often share a cached artifact)."""
    workers = max(1, min(workers, len(keys)))
    size, extra = divmod(len(keys), workers)
    shares, start = [], 0
    for i in range(workers):
        end = start + size + (1 if i < extra else 0)
        shares.append(keys[start:end])
        start = end
    return shares


def _trial_sources(units: list[Any]) -> tuple[tuple[str, str], ...]:
    sources: dict[str, str] = {}
    for unit in units:
        module = unit.trial.module
        if module == "methods" or module.startswith("methods.") or module in sources:
            continue
        file = getattr(sys.modules.get(module), "__file__", None)
        if file:
            sources[module] = str(Path(file).resolve())
    return tuple(sorted(sources.items()))


def _cpu_shares(workers: int) -> list[tuple[int, ...]]:
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    per = len(cores) // workers if workers else 0
    if per < 1:
        return [() for _ in range(workers)]
    return [tuple(cores[i * per : (i + 1) * per]) for i in range(workers)]


def submit_suite(
    suite: Any,
    store: Store,
    options: Any,
    cluster: ClusterOptions,
    console: Console,
    command: str = "",
) -> Submitted:
    """Start a run and submit its pending units as ``cluster.workers`` jobs (see the module doc)."""
    import torch

    from harness.runner import _with_checkpoint_trust, select_units, start_run
    from harness.timing import set_threads

    if cluster.executor not in ("local", "slurm"):
        raise UserError(f"--executor {cluster.executor}: submit_suite runs local or slurm jobs")
    if cluster.workers < 1:
        raise UserError(f"--workers {cluster.workers}: must be at least 1")
    submitit = _submitit(cluster.executor)
    check_executor(cluster.executor)
    url = shared_db_url(store.url, cluster.executor, cluster.allow_sqlite)
    units = select_units(suite.units(options.scale), options.only)
    ok = set() if options.force else store.ok_unit_keys([u.key for u in units], suite.name)
    pending = [u for u in units if u.key not in ok]
    options = _with_checkpoint_trust(suite, options, console)
    shares = split_units([u.key for u in pending], cluster.workers) if pending else []
    uses_cuda = any(is_cuda(u.device) for u in pending)
    gpus = torch.cuda.device_count() if cluster.executor == "local" and torch.cuda.is_available() else 0
    if cluster.executor == "local" and uses_cuda and gpus and len(shares) > gpus:
        raise UserError(f"--workers {len(shares)} > {gpus} GPUs: two workers would time units on one GPU at once")
    if (
        cluster.executor == "slurm"
        and uses_cuda
        and not (cluster.slurm.get("gpus_per_node") or cluster.slurm.get("gpus_per_task") or cluster.slurm.get("gres"))
    ):
        console.print("[yellow]warning[/]: units run on cuda but --slurm asks for no GPU (gpus_per_node=1)")
    cpus = _cpu_shares(len(shares)) if cluster.executor == "local" else [() for _ in shares]
    threads = options.threads or (len(cpus[0]) if cpus and cpus[0] else None)
    if cluster.executor == "local" and len(shares) > 1 and not gpus:
        console.print(
            f"[yellow]note[/]: {len(shares)} local workers share this machine's CPU "
            f"({'pinned to separate cores' if cpus[0] else 'more workers than cores'}): "
            "latencies are measured side by side"
        )
    tune_malloc()  # recorded in the run's provenance; every job sets it up in its own process
    run_id = start_run(store, suite, options, command, threads or set_threads(None))
    folder = (cluster.folder / f"{suite.name}-run{run_id}").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    plan: dict[str, Any] = {
        "folder": str(folder),
        "workers": len(shares),
        "host": platform.node(),
        "jobs": [{"job_id": "", "worker": i, "units": share} for i, share in enumerate(shares)],
    }
    if cluster.executor == "slurm":
        plan["slurm"] = cluster.slurm
    store.set_run_jobs(run_id, cluster.executor, plan)
    if not shares:
        store.end_run(run_id, RunStatus.OK.value)
        return Submitted(run_id, units, pending, shares, [], folder, cluster.executor)
    job_time_s = job_time_limit_s(cluster.slurm) if cluster.executor == "slurm" else None
    signal_delay = float(cluster.slurm.get("signal_delay_s", DEFAULT_SIGNAL_DELAY_S))
    if cluster.executor == "local" and cluster.local.get("timeout_min"):
        job_time_s = float(cluster.local["timeout_min"]) * 60
        signal_delay = float(cluster.local.get("signal_delay_s", 30))
    specs = [
        JobSpec(
            run_id=run_id,
            suite_path=str(Path(suite.path).resolve()),
            scale=options.scale,
            db_url=_without_password(url),
            unit_keys=tuple(share),
            worker=i,
            executor=cluster.executor,
            force=options.force,
            fail_fast=options.fail_fast,
            timeout=options.timeout,
            threads=threads,
            artifacts_dir=str(Path(options.artifacts_dir).resolve()),
            trust_checkpoints=options.trust_checkpoints,
            trial_sources=_trial_sources(pending),
            cpus=cpus[i],
            job_time_s=job_time_s,
            signal_delay_s=signal_delay,
        )
        for i, share in enumerate(shares)
    ]
    # The password (if any) reaches the jobs through their environment, never through a file.
    jobs: list[Any] = []
    try:
        with _environment(**{DB_ENV_VAR: url if _has_password(url) else None}):
            if cluster.executor == "slurm":
                executor = slurm_executor(folder, cluster.slurm, f"harness-{suite.name}")
                with executor.batch():  # one Slurm job array; array_parallelism caps how many run at once
                    batch = [executor.submit(UnitJob(spec)) for spec in specs]
                jobs = batch
            else:
                executor = submitit.LocalExecutor(folder=folder)
                for i, spec in enumerate(specs):
                    params: dict[str, Any] = {"timeout_min": LOCAL_TIMEOUT_MIN, **cluster.local}
                    if gpus:
                        params.update(gpus_per_node=1, visible_gpus=(i % gpus,))  # CUDA_VISIBLE_DEVICES: one GPU each
                    executor.update_parameters(**params)
                    job = executor.submit(UnitJob(spec))
                    job._results_timeout_s = 2  # a local job without a result pickle is not slow storage: it died
                    jobs.append(job)
    except Exception as exc:
        store.end_run(run_id, RunStatus.FAILED.value)
        if isinstance(exc, UserError):
            raise
        already = f" (job(s) {', '.join(str(j.job_id) for j in jobs)} were submitted)" if jobs else ""
        raise UserError(f"run {run_id}: submitting the jobs failed{already}: {_first_line(exc)}") from None
    for entry, job in zip(plan["jobs"], jobs, strict=True):
        entry["job_id"] = str(job.job_id)
    store.set_run_jobs(run_id, cluster.executor, plan)
    return Submitted(run_id, units, pending, shares, jobs, folder, cluster.executor)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if "has not produced any output" in text:  # submitit: no result pickle (killed, or died before writing it)
        state = re.search(r"\(state: ([^)]*)\)", text)
        return f"ended without a result (state {state.group(1) if state else 'unknown'}): killed or crashed"
    if text.startswith("Job (task=") and "-" * 22 in text:  # submitit's FailedJobError: the job's traceback
        text = text.split("-" * 22)[1]
        lines = [line for line in text.splitlines() if line.strip()]
        pick = lines[-1] if lines else ""  # the exception, after its traceback
    else:
        pick = next((line for line in text.splitlines() if line.strip()), "")
    return mask_secrets(one_line(pick or type(exc).__name__))[:300]


def wait_for(sub: Submitted, store: Store, console: Console, *, show_progress: bool = True, poll_s: float = 0.5) -> Any:
    """Follow a submitted run from the database until every job has ended, then end the run and
    return its RunSummary (units a job never stored are ``missing``, with the job's reason)."""
    from harness.runner import RunSummary, UnitOutcome

    by_key = {unit.key: unit for unit in sub.units}
    pending_keys = {unit.key for unit in sub.pending}
    job_of = {key: i for i, share in enumerate(sub.shares) for key in share}
    final = RunStatus.INTERRUPTED.value
    columns = (
        TextColumn("[bold]{task.fields[unit]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
    )
    try:
        with Progress(*columns, console=console, disable=not show_progress) as bar:
            task = bar.add_task(
                "run",
                total=len(sub.units),
                completed=len(sub.units) - len(sub.pending),
                unit=f"run {sub.run_id}",
                status="",
            )
            seen: set[int] = set()
            while True:
                done = [job.done() for job in sub.jobs]
                rows = store.retrying(lambda _: store.run_unit_statuses(sub.run_id))
                for row_id, key, status, error in rows:
                    if row_id in seen:
                        continue
                    seen.add(row_id)
                    unit = by_key.get(key)
                    described = unit.describe() if unit else key
                    bar.update(task, advance=1, unit=described[:70])
                    if status != Status.OK:
                        console.print(f"[yellow]{status}[/]: {described}: {error}")
                bar.update(task, status=f"{len(done) - sum(done)}/{len(done)} jobs running")
                if all(done):
                    break
                time.sleep(poll_s)
        reports: dict[int, dict[str, Any]] = {}
        errors: dict[int, str] = {}
        for i, job in enumerate(sub.jobs):
            try:
                reports[i] = job.result()
            except Exception as exc:  # noqa: BLE001 - a job killed, crashed or out of time
                errors[i] = _first_line(exc)
                console.print(f"[red]job {job.job_id}[/] ended without finishing: {errors[i]}")
        stored = {row.key: row for row in store.results(run_id=sub.run_id, latest_per_unit=False, with_samples=True)}
        outcomes = []
        for unit in sub.units:
            if unit.key not in pending_keys:
                outcomes.append(UnitOutcome(unit, Status.SKIPPED))
                continue
            row = stored.get(unit.key)
            if row is not None:
                metrics = row.metrics.values()
                outcomes.append(
                    UnitOutcome(
                        unit,
                        row.status,
                        row.error,
                        row.duration_s or 0.0,
                        {m.name: m.value for m in metrics},
                        {m.name: m.samples for m in metrics if m.samples},
                    )
                )
                continue
            i = job_of[unit.key]
            said = reports.get(i, {}).get("units", {}).get(unit.key)
            if said is not None:
                outcomes.append(UnitOutcome(unit, Status(said[0]), said[1]))
                continue
            why = errors.get(i) or reports.get(i, {}).get("stopped") or "ended before it"
            outcomes.append(UnitOutcome(unit, Status.MISSING, f"not run: job {sub.jobs[i].job_id}: {why}"))
        summary = RunSummary(sub.run_id, outcomes)
        final = (RunStatus.FAILED if summary.has_failures else RunStatus.OK).value
        return summary
    except KeyboardInterrupt:
        if sub.executor == "slurm":  # the jobs run on: the run stays open, and its workers close it
            final = ""
            console.print(f"interrupted: the jobs keep running; follow them with harness status {sub.run_id}")
        raise
    finally:
        if final:
            store.end_run(sub.run_id, final)


# --- harness status -----------------------------------------------------------------------------------


def _local_job_state(job_id: str, host: str) -> str:
    if host and host != platform.node():
        return f"unknown (runs on {host})"
    try:
        state = Path(f"/proc/{int(job_id)}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return "ended"
    return "ended" if state in ("Z", "X") else "running"


def _slurm_job_state(folder: str, job_id: str) -> str:
    if shutil.which("sacct") is None:
        return "unknown (no sacct here)"
    try:
        import submitit

        return str(submitit.SlurmJob(folder, job_id).state)
    except Exception as exc:  # noqa: BLE001 - best effort
        return f"unknown ({_first_line(exc)[:60]})"


def status_table(store: Store, run_id: int) -> tuple[str, Table]:
    """``harness status RUN``: a headline and a table of the run's jobs (or of its stored units)."""
    run = store.get_run(run_id)
    if run is None:
        known = ", ".join(str(r.id) for r in store.runs()[-5:]) or "none"
        raise UserError(f"no run with id {run_id} (latest: {known})")
    rows = store.run_unit_statuses(run_id)
    latest: dict[str, tuple[str, str]] = {key: (status, error) for _, key, status, error in rows}
    plan = run.jobs or {}
    planned = [key for job in plan.get("jobs", []) for key in job.get("units", [])]
    counts: dict[str, int] = {}
    for status, _ in latest.values():
        counts[status] = counts.get(status, 0) + 1
    stored = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"
    headline = (
        f"run {run.id}: {run.suite} ({run.scale}), executor {run.executor or 'inline'}, status {run.status}, "
        f"started {run.started_at:%Y-%m-%d %H:%M:%S}"
    )
    if planned:
        missing = [key for key in planned if key not in latest]
        failed = sum(1 for s, _ in latest.values() if Status(s).is_failure)
        headline += (
            f"\nunits: {len(planned)} planned, {len(latest)} done ({stored}), {failed} failed/timeout, "
            f"{len(missing)} pending"
        )
    else:
        headline += f"\nunits stored: {len(latest)} ({stored})"
    table = Table(title=f"run {run.id} jobs" if planned else f"run {run.id}")
    if plan.get("jobs"):
        for col in ("job id", "worker", "units", "done", "failed", "pending", "state"):
            table.add_column(col)
        for job in plan["jobs"]:
            keys = job.get("units", [])
            done = [key for key in keys if key in latest]
            failed = sum(1 for key in done if Status(latest[key][0]).is_failure)
            job_id = str(job.get("job_id", ""))
            if run.executor == "local":
                state = _local_job_state(job_id, str(plan.get("host", "")))
            elif run.executor == "slurm":
                state = _slurm_job_state(str(plan.get("folder", "")), job_id)
            else:
                state = ""
            table.add_row(
                job_id,
                str(job.get("worker", "")),
                str(len(keys)),
                str(len(done)),
                str(failed),
                str(len(keys) - len(done)),
                state,
            )
        if plan.get("folder"):
            table.caption = f"logs: {plan['folder']}"
    else:
        for col in ("status", "units"):
            table.add_column(col)
        for status, n in sorted(counts.items()):
            table.add_row(status, str(n))
    return headline, table
