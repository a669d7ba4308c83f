"""What a result is: its identity, its status, its metrics, and the row the store returns.

:class:`UnitIdentity` is the one definition of what a unit measures. The unit key (skip what is
stored), the gate's identity (pair a run with a baseline), the comparison of two runs and a report
layout's ``match`` are all derived from it. :class:`ResultRow` is one stored unit result as the
store returns it and the gate, the reports and the CLI read it; :func:`results_frame` flattens rows
into a pandas DataFrame, for ``harness show`` and for notebooks::

    >>> from harness.results import results_frame
    >>> frame = results_frame("sqlite:///results/harness.db", "table5")
    >>> frame[frame.status == "ok"].groupby("section")["latency"].median()

One frame row per stored unit result: identity and axes, ``p.<name>`` per parameter, one column per
metric (a metric named like an axis column, e.g. the selectors' ``precision``, becomes
``metric.<name>``), the wall time and the error of a unit that did not end ok.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from harness.store import Run, Store


class Status(str, Enum):
    """How a unit ended (the first six are stored), or what became of it in a run (the last two)."""

    OK = "ok"
    FAILED = "failed"
    OOM = "oom"
    UNSUPPORTED = "unsupported"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"  # stored ok before: not run again
    MISSING = "missing"  # a job ended without storing it

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def is_failure(self) -> bool:
        """A unit that should have worked and did not (fails the run and the gate)."""
        return self in (Status.FAILED, Status.TIMEOUT, Status.MISSING)

    @property
    def is_stored(self) -> bool:
        """How a stored unit may have ended (skipped and missing describe units of a run, never a row)."""
        return self not in (Status.SKIPPED, Status.MISSING)


class RunStatus(str, Enum):
    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


def _digest(payload: dict[str, Any], length: int, *, compact: bool = True) -> str:
    # compact separators for unit keys, json's defaults for gate identities: both as first defined,
    # so stored results, committed baselines and the A/B worker of an older commit still agree
    text = json.dumps(payload, sort_keys=True, separators=(",", ":") if compact else None, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@dataclass(frozen=True, eq=True)
class UnitIdentity:
    """What one unit measures. Every key, match and comparison of units is derived from this.

    - :attr:`key`: everything that changes a result (trial version, dataset, baselines, scale
      settings, timing, seed): two units with one key give the same numbers; a stored ok unit of
      that key is not run again.
    - :attr:`gate_id`: what a result is *about*, stable across scales, datasets and trial versions
      (trial, section, label, axes; the parameters only when the unit has no label, so a labelled
      unit keeps its identity when a test-only parameter changes). The gate pairs a run with its
      baseline by it and ``harness compare`` pairs two runs by it.
    - :meth:`fields`: the values a report layout's ``match`` filters on.
    """

    trial: str
    version: str = "1"
    label: str = ""
    section: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    batch_size: int = 1
    device: str = "cpu"
    dataset: dict[str, Any] = field(default_factory=dict)
    scale: dict[str, Any] = field(default_factory=dict)  # the scale's settings (not its name)
    baselines: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    seed_index: int = 0  # k of a row's ``seeds: N`` (seed = the suite's seed + k); 0 for a single seed

    __hash__ = None  # type: ignore[assignment]  # holds dicts

    @property
    def axes(self) -> dict[str, Any]:
        return {"precision": self.precision, "batch_size": self.batch_size, "device": self.device}

    @property
    def key(self) -> str:
        payload: dict[str, Any] = {
            "trial": self.trial,
            "version": self.version,
            "label": self.label,
            "params": self.params,
            "axes": self.axes,
            "dataset": self.dataset,
            "scale": self.scale,
            "timing": self.timing,
            "seed": self.seed,
        }
        if self.baselines:  # absent from the keys of suites that name no baselines (as before they existed)
            payload["baselines"] = self.baselines
        return _digest(payload, 24)

    @property
    def gate_id(self) -> str:
        parts: dict[str, Any] = {
            "trial": self.trial,
            "section": self.section or "",
            "label": self.label or "",
            "axes": [self.precision, self.batch_size, self.device],
        }
        if not self.label:
            parts["params"] = self.params
        if self.seed_index:  # absent for k = 0: a suite's single-seed units keep their identities
            parts["seed_index"] = self.seed_index
        return _digest(parts, 16, compact=False)

    @property
    def row_key(self) -> str:
        """The key of this unit with the seed left out: equal for the ``seeds: N`` units of one row."""
        return replace(self, seed=0, seed_index=0).key

    @property
    def subject_id(self) -> str:
        """Like :attr:`gate_id` but always with the parameters: what ``harness compare`` pairs by, and
        the gate's identity of labelled units that share a label (see :func:`gate_ids`)."""
        return _digest({"gate": self.gate_id, "params": self.params}, 16, compact=False)

    def fields(self) -> dict[str, Any]:
        """The values a layout ``match`` may name (``params`` is matched as a subset)."""
        return {"trial": self.trial, "section": self.section, "label": self.label, **self.axes}

    def describe(self) -> str:
        """``trial [label or params] precision bN device``: how a unit is named to a reader."""
        name = self.label or ", ".join(f"{k}={v}" for k, v in self.params.items())
        seed = f" seed {self.seed_index}" if self.seed_index else ""
        return f"{self.trial} [{name}] {self.precision} b{self.batch_size} {self.device}{seed}"

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UnitIdentity:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def gate_ids(identities: list[UnitIdentity], runs: list[int] | None = None) -> list[str]:
    """The gate's identity of each of ``identities``: :attr:`UnitIdentity.gate_id`, but
    :attr:`UnitIdentity.subject_id` where units of one run (``runs[i]`` is the run of
    ``identities[i]``; all one run if not given) share a label with different parameters (a label
    naming a table row whose columns vary a parameter), and the subject with the dataset where they
    differ in their entry's dataset (one suite, several datasets), so that no two are paired as one.
    Units of different runs that share a gate identity are one unit at two moments (a parameter
    changed)."""
    runs = runs if runs is not None else [0] * len(identities)
    variants: dict[tuple[str, int], tuple[set[str], set[str]]] = {}
    for ident, run in zip(identities, runs, strict=True):
        params, datasets = variants.setdefault((ident.gate_id, run), (set(), set()))
        params.add(json.dumps(ident.params, sort_keys=True, default=str))
        datasets.add(json.dumps(ident.dataset, sort_keys=True, default=str))
    out = []
    for ident, run in zip(identities, runs, strict=True):
        params, datasets = variants[(ident.gate_id, run)]
        if len(datasets) > 1:
            out.append(_digest({"subject": ident.subject_id, "dataset": ident.dataset}, 16, compact=False))
        else:
            out.append(ident.subject_id if len(params) > 1 else ident.gate_id)
    return out


class IdentityFields:
    """Read-through properties of ``self.identity`` (a :class:`UnitIdentity`), shared by the suite's
    units and the stored result rows."""

    identity: UnitIdentity

    @property
    def params(self) -> dict[str, Any]:
        return self.identity.params

    @property
    def precision(self) -> str:
        return self.identity.precision

    @property
    def batch_size(self) -> int:
        return self.identity.batch_size

    @property
    def device(self) -> str:
        return self.identity.device

    @property
    def label(self) -> str:
        return self.identity.label

    @property
    def section(self) -> str:
        return self.identity.section

    @property
    def dataset(self) -> dict[str, Any]:
        return self.identity.dataset

    @property
    def baselines(self) -> dict[str, Any]:
        return self.identity.baselines


@dataclass(frozen=True)
class MetricValue:
    """One recorded metric: value, unit, which direction is better, and raw samples (timings)."""

    name: str
    value: float
    unit: str = ""
    better: str = "none"
    samples: tuple[float, ...] = ()


@dataclass(frozen=True)
class ResultRow(IdentityFields):
    """One unit result: what the runner stores and the store returns (``id``/``run_id`` set then)."""

    key: str
    suite: str
    identity: UnitIdentity
    status: Status
    error: str = ""
    notes: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, MetricValue] = field(default_factory=dict)
    scale_name: str = "default"
    started_at: datetime | None = None
    ended_at: datetime | None = None
    id: int = 0
    run_id: int = 0

    __hash__ = None  # type: ignore[assignment]

    # the identity's fields, read directly
    @property
    def trial(self) -> str:
        return self.identity.trial

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()

    def value(self, metric: str) -> float | None:
        m = self.metrics.get(metric)
        return None if m is None else m.value

    def lookup(self, name: str) -> Any:
        """A metric value, else a parameter, else a field of the result (None if absent).

        A dotted name reaches into a mapping field: ``dataset.name``, ``notes.backend``.
        """
        if name in self.metrics:
            return self.metrics[name].value
        if name in self.params:
            return self.params[name]
        head, dot, rest = name.partition(".")
        if dot:
            inner = getattr(self, head, None) if head in _MAPPING_FIELDS else None
            return inner.get(rest) if isinstance(inner, dict) else None
        if name == "scale":  # the scale's name, as a report names it
            return self.scale_name
        if name in _SCALAR_FIELDS:
            value = getattr(self, name)
            return value.value if isinstance(value, Status) else value
        return None

    def describe(self) -> str:
        return self.identity.describe()


_MAPPING_FIELDS = ("dataset", "notes", "params")
_SCALAR_FIELDS = ("trial", "label", "section", "precision", "batch_size", "device", "status", "error", "id",
                  "run_id", "suite", "key", "scale_name", "duration_s")  # fmt: skip


def latest_per_unit(rows: list[ResultRow]) -> list[ResultRow]:
    """Each unit once: its newest ok result or, if it never succeeded, its newest result (``rows``
    oldest first)."""
    chosen: dict[str, ResultRow] = {}
    for row in rows:
        prev = chosen.get(row.key)
        if prev is None or row.ok or not prev.ok:
            chosen[row.key] = row
    return list(chosen.values())


# --- what a CLI target names ------------------------------------------------------------------------


def suite_name_of(target: str) -> str:
    """The suite name a CLI target means: a suite file's stem, or the name itself."""
    return Path(target).stem if target.endswith((".yaml", ".yml")) else target


@dataclass(frozen=True)
class Target:
    """What ``harness check 12`` / ``harness show table5`` name: one run, or a suite's latest results."""

    suite: str
    run: Run  # the run itself, or the suite's newest run
    rows: list[ResultRow]
    whole_suite: bool


def resolve_target(store: Store, target: str, *, with_samples: bool = False) -> Target:
    """A run id (every unit it stored) or a suite file/name (its newest result per unit).

    Raises UserError for an unknown run or a suite with nothing stored."""
    from harness.errors import UserError

    if target.isdigit():
        run = store.get_run(int(target))
        if run is None:
            raise UserError(f"no run with id {target}")
        return Target(run.suite, run, store.results(run_id=run.id, with_samples=with_samples), False)
    name = suite_name_of(target)
    rows = store.results(suite=name, with_samples=with_samples)
    run = store.latest_run(name)
    if run is None or not rows:
        raise UserError(f"no results stored for suite {name!r}")
    return Target(name, run, rows, True)


# --- frames -----------------------------------------------------------------------------------------

ID_COLUMNS = ("run_id", "suite", "trial", "label", "section", "precision", "batch_size", "device", "status")
FRAME_FORMATS = ("csv", "json", "parquet")


def flat_row(row: ResultRow) -> dict[str, Any]:
    """One result flattened to scalar columns."""
    out: dict[str, Any] = {k: row.lookup(k) for k in ID_COLUMNS}
    out["status"] = row.status.value
    out.update({f"p.{k}": v for k, v in row.params.items()})
    # a metric named like a column (the selectors' "precision") must not overwrite the axis
    out.update({(f"metric.{m}" if m in out else m): v.value for m, v in row.metrics.items()})
    out["duration_s"] = row.duration_s
    out["error"] = row.error
    return out


def results_frame(db: str | Store | None = None, suite: str | None = None, *, run: int | None = None) -> pd.DataFrame:
    """Results of ``suite`` (a name or suite file; its newest result per unit), of one ``run`` (every
    unit it stored) or, with neither, every stored result.

    ``db`` is a SQLAlchemy URL or an open :class:`~harness.store.Store` (default: ``$HARNESS_DB``,
    else ``sqlite:///results/harness.db``). Raises UserError for an unknown suite or run.
    """
    import pandas as pd

    from harness.store import Store

    store = db if isinstance(db, Store) else Store(db, create=False)
    if run is not None:
        rows = store.results(run_id=resolve_target(store, str(run)).run.id, latest_per_unit=False)
    elif suite is not None:
        rows = resolve_target(store, suite).rows
    else:
        rows = store.results(latest_per_unit=False)
    return pd.DataFrame([flat_row(r) for r in rows])


def _arrow_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns holding more than one type (a parameter that is a list in one row and a number
    in another) become JSON text, so that parquet can store them."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype != object:
            continue
        kinds = {type(v) for v in out[column] if v is not None and v == v}
        if len(kinds) > 1 or kinds & {list, dict, tuple}:
            out[column] = [None if v is None else json.dumps(v, default=str) for v in out[column]]
    return out


def write_frame(frame: pd.DataFrame, fmt: str, out: Path | None = None, stream: IO[str] | None = None) -> None:
    """Write ``frame`` as csv, json or parquet to ``out`` (a file) or else to stdout.

    Parquet is binary: to stdout only when stdout is not a terminal.
    """
    from harness.errors import UserError, cannot_write

    if fmt not in FRAME_FORMATS:
        raise UserError(f"--format: unknown format {fmt!r} (choose from {', '.join(FRAME_FORMATS)})")
    if fmt == "parquet":
        _write_parquet(frame, out)
        return
    text = frame.to_csv(index=False) if fmt == "csv" else frame.to_json(orient="records", indent=1) + "\n"
    if out is not None:
        path = _writable(out)
        try:
            path.write_text(text)
        except OSError as exc:
            raise cannot_write(path, exc) from None
    else:
        (stream or sys.stdout).write(text)


def _write_parquet(frame: pd.DataFrame, out: Path | None) -> None:
    from harness.errors import UserError, cannot_write

    if out is None and sys.stdout.isatty():
        raise UserError("--format parquet is binary: give --out FILE or redirect stdout")
    target: Any = _writable(out) if out is not None else sys.stdout.buffer
    try:
        _arrow_safe(frame).to_parquet(target, index=False)
    except OSError as exc:
        raise cannot_write(target if out is not None else "stdout", exc) from None


def _writable(path: Path) -> Path:
    from harness.errors import UserError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out: cannot create {path.parent}: {exc.strerror}") from None
    return path
