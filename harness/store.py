"""Result store: SQLAlchemy 2 ORM over any SQLAlchemy URL (SQLite ``results/harness.db`` by default).

Tables: runs (one per ``harness run``, with provenance), results (one per executed unit), metrics
(name, value, unit per result) and samples (raw timing samples per metric). A unit's result, its
metrics and samples are written in ONE transaction, so a killed process loses at most the unit in
flight and never leaves a half-written row. SQLite runs in WAL mode with a busy timeout so that
several ``harness run`` processes can share one file.

The schema carries a version in the ``meta`` table. Migrations are explicit functions in
``MIGRATIONS``; opening a database of another version says so and how to upgrade.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    inspect,
    select,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from harness.errors import UserError

SCHEMA_VERSION = 1
DEFAULT_DB_URL = "sqlite:///results/harness.db"
DB_ENV_VAR = "HARNESS_DB"
STATUSES = ("ok", "failed", "oom", "unsupported", "unavailable", "timeout")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    suite: Mapped[str] = mapped_column(String(128), index=True)
    suite_path: Mapped[str] = mapped_column(Text, default="")
    suite_sha: Mapped[str] = mapped_column(String(64), default="")
    scale: Mapped[str] = mapped_column(String(32), default="default")
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    status: Mapped[str] = mapped_column(String(32), default="running")
    command: Mapped[str] = mapped_column(Text, default="")
    git_sha: Mapped[str] = mapped_column(String(64), default="")
    git_dirty: Mapped[bool] = mapped_column(Boolean, default=False)
    host: Mapped[str] = mapped_column(String(255), default="")
    cpu: Mapped[str] = mapped_column(Text, default="")
    gpu: Mapped[str] = mapped_column(Text, default="")
    threads: Mapped[int] = mapped_column(Integer, default=1)
    torch_version: Mapped[str] = mapped_column(String(64), default="")
    cuda_version: Mapped[str] = mapped_column(String(64), default="")
    packages: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    results: Mapped[list[Result]] = relationship(back_populates="run", cascade="all, delete-orphan")


class Result(Base):
    __tablename__ = "results"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    unit_key: Mapped[str] = mapped_column(String(64), index=True)
    suite: Mapped[str] = mapped_column(String(128), index=True)
    trial: Mapped[str] = mapped_column(String(128), index=True)
    trial_version: Mapped[str] = mapped_column(String(32), default="1")
    label: Mapped[str] = mapped_column(Text, default="")
    section: Mapped[str] = mapped_column(String(64), default="")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    precision: Mapped[str] = mapped_column(String(16), default="fp32")
    batch_size: Mapped[int] = mapped_column(Integer, default=1)
    device: Mapped[str] = mapped_column(String(16), default="cpu")
    dataset: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    scale: Mapped[str] = mapped_column(String(32), default="default")
    scale_settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str] = mapped_column(Text, default="")
    notes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    ended_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)
    run: Mapped[Run] = relationship(back_populates="results")
    metrics: Mapped[list[MetricRow]] = relationship(back_populates="result", cascade="all, delete-orphan")


class MetricRow(Base):
    __tablename__ = "metrics"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    value: Mapped[float] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(32), default="")
    better: Mapped[str] = mapped_column(String(8), default="none")
    result: Mapped[Result] = relationship(back_populates="metrics")
    samples: Mapped[list[Sample]] = relationship(
        back_populates="metric", cascade="all, delete-orphan", order_by="Sample.seq"
    )


class Sample(Base):
    __tablename__ = "samples"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    metric_id: Mapped[int] = mapped_column(ForeignKey("metrics.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)
    metric: Mapped[MetricRow] = relationship(back_populates="samples")


# Explicit migrations: MIGRATIONS[n] upgrades a database from version n to n + 1.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {}


@dataclass
class UnitRecord:
    """Everything stored for one executed unit."""

    unit_key: str
    suite: str
    trial: str
    trial_version: str
    label: str
    section: str
    params: dict[str, Any]
    precision: str
    batch_size: int
    device: str
    dataset: dict[str, Any]
    scale: str
    scale_settings: dict[str, Any]
    status: str
    error: str
    notes: dict[str, Any]
    started_at: datetime
    ended_at: datetime
    metrics: list[tuple[str, float, str, str, tuple[float, ...]]]  # name, value, unit, better, samples


def resolve_url(url: str | None) -> str:
    return url or os.environ.get(DB_ENV_VAR) or DEFAULT_DB_URL


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Store:
    """Open (creating if needed) the result database at ``url``."""

    def __init__(self, url: str | None = None, *, create: bool = True, check_version: bool = True):
        self.url = resolve_url(url)
        self.engine = self._make_engine(self.url, create=create)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._check_schema(create=create, check_version=check_version)

    @staticmethod
    def _make_engine(url: str, *, create: bool) -> Engine:
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise UserError(f"database URL {url!r} is not a valid SQLAlchemy URL") from None
        kwargs: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            kwargs["connect_args"] = {"timeout": 60}
            path = parsed.database
            if path and path != ":memory:":
                db_path = Path(path)
                if not create and not db_path.exists():
                    raise UserError(f"database {db_path} does not exist")
                try:
                    db_path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise UserError(f"cannot create database directory {db_path.parent}: {exc.strerror}") from None
                if db_path.exists() and not os.access(db_path, os.W_OK):
                    raise UserError(f"database {db_path} is not writable")
                if not db_path.exists() and not os.access(db_path.parent, os.W_OK):
                    raise UserError(f"database directory {db_path.parent} is not writable")
        try:
            engine = create_engine(url, **kwargs)
        except Exception as exc:  # noqa: BLE001 - driver import errors, bad options
            raise UserError(f"cannot open database {url!r}: {exc}") from None
        if parsed.get_backend_name() == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        return engine

    def _check_schema(self, *, create: bool, check_version: bool) -> None:
        try:
            names = set(inspect(self.engine).get_table_names())
        except OperationalError as exc:
            raise UserError(f"cannot open database {self.url!r}: {exc.orig}") from None
        if "meta" not in names:
            if names - {"meta"}:
                raise UserError(f"database {self.url!r} has tables but no schema version: not a harness database")
            if not create:
                raise UserError(f"database {self.url!r} is empty")
            try:
                Base.metadata.create_all(self.engine)
                with self.session() as s:
                    s.merge(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
            except OperationalError as exc:
                raise UserError(f"cannot write database {self.url!r}: {exc.orig}") from None
            return
        version = self.schema_version()
        if not check_version:
            return
        if version > SCHEMA_VERSION:
            raise UserError(
                f"database {self.url!r} has schema version {version}, newer than this harness "
                f"({SCHEMA_VERSION}): upgrade segharness"
            )
        if version < SCHEMA_VERSION:
            raise UserError(
                f"database {self.url!r} has schema version {version}, this harness needs "
                f"{SCHEMA_VERSION}: run `harness db upgrade --db {self.url}`"
            )

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            row = conn.execute(select(Meta.value).where(Meta.key == "schema_version")).first()
        return int(row[0]) if row else 0

    def upgrade(self) -> list[int]:
        """Apply the explicit migrations up to SCHEMA_VERSION; return the versions applied."""
        applied = []
        version = self.schema_version()
        while version < SCHEMA_VERSION:
            step = MIGRATIONS.get(version)
            if step is None:
                raise UserError(f"no migration from schema version {version}")
            with self.engine.begin() as conn:
                step(conn)
                conn.execute(Meta.__table__.update().where(Meta.key == "schema_version").values(value=str(version + 1)))
            version += 1
            applied.append(version)
        return applied

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as s:
            yield s

    # --- writing ---------------------------------------------------------------------------------

    def start_run(self, **fields: Any) -> int:
        with self.session() as s:
            run = Run(**fields)
            s.add(run)
            s.flush()
            return run.id

    def end_run(self, run_id: int, status: str) -> None:
        with self.session() as s:
            run = s.get(Run, run_id)
            if run is not None:
                run.ended_at = utcnow()
                run.status = status

    def add_result(self, run_id: int, rec: UnitRecord) -> int:
        """Store one unit with its metrics and samples in a single transaction."""
        with self.session() as s:
            result = Result(
                run_id=run_id,
                unit_key=rec.unit_key,
                suite=rec.suite,
                trial=rec.trial,
                trial_version=rec.trial_version,
                label=rec.label,
                section=rec.section,
                params=rec.params,
                precision=rec.precision,
                batch_size=rec.batch_size,
                device=rec.device,
                dataset=rec.dataset,
                scale=rec.scale,
                scale_settings=rec.scale_settings,
                status=rec.status,
                error=rec.error,
                notes=_jsonable(rec.notes),
                started_at=rec.started_at,
                ended_at=rec.ended_at,
                duration_s=(rec.ended_at - rec.started_at).total_seconds(),
            )
            for name, value, unit, better, samples in rec.metrics:
                metric = MetricRow(name=name, value=value, unit=unit, better=better)
                metric.samples = [Sample(seq=i, value=v) for i, v in enumerate(samples)]
                result.metrics.append(metric)
            s.add(result)
            s.flush()
            return result.id

    # --- reading ---------------------------------------------------------------------------------

    def ok_unit_keys(self, keys: list[str] | None = None, suite: str | None = None) -> set[str]:
        """Unit keys stored ok (within ``suite`` if given: reports read a suite's own rows, so a
        unit another suite stored does not count as done for this one)."""
        with self.session() as s:
            q = select(Result.unit_key).where(Result.status == "ok")
            if keys is not None:
                q = q.where(Result.unit_key.in_(keys))
            if suite is not None:
                q = q.where(Result.suite == suite)
            return set(s.scalars(q))

    def is_ok(self, unit_key: str, suite: str | None = None) -> bool:
        return bool(self.ok_unit_keys([unit_key], suite))

    def runs(self, suite: str | None = None) -> list[Run]:
        with self.session() as s:
            q = select(Run).order_by(Run.id)
            if suite:
                q = q.where(Run.suite == suite)
            return list(s.scalars(q))

    def get_run(self, run_id: int) -> Run | None:
        with self.session() as s:
            return s.get(Run, run_id)

    def latest_run(self, suite: str) -> Run | None:
        runs = self.runs(suite)
        return runs[-1] if runs else None

    def results(
        self,
        *,
        run_id: int | None = None,
        suite: str | None = None,
        latest_per_unit: bool = True,
        with_samples: bool = False,
    ) -> list[dict[str, Any]]:
        """Result rows as plain dicts (metrics as {name: {value, unit, better, samples?}}).

        With ``suite`` and ``latest_per_unit``, each unit appears once: its newest ok result, or,
        if it never succeeded, its newest result of any status.
        """
        with self.session() as s:
            q = select(Result).order_by(Result.id)
            if run_id is not None:
                q = q.where(Result.run_id == run_id)
            if suite is not None:
                q = q.where(Result.suite == suite)
            rows = list(s.scalars(q))
            out = [_result_dict(r, with_samples) for r in rows]
        if latest_per_unit:
            chosen: dict[str, dict[str, Any]] = {}
            for row in out:
                prev = chosen.get(row["unit_key"])
                if prev is None or row["status"] == "ok" or prev["status"] != "ok":
                    chosen[row["unit_key"]] = row
            out = list(chosen.values())
        return out

    def count_results(self, suite: str | None = None) -> int:
        with self.session() as s:
            q = select(func.count(Result.id))
            if suite:
                q = q.where(Result.suite == suite)
            return int(s.scalar(q) or 0)


def _result_dict(r: Result, with_samples: bool) -> dict[str, Any]:
    metrics = {}
    for m in r.metrics:
        entry: dict[str, Any] = {"value": m.value, "unit": m.unit, "better": m.better}
        if with_samples:
            entry["samples"] = [smp.value for smp in m.samples]
        metrics[m.name] = entry
    return {
        "id": r.id,
        "run_id": r.run_id,
        "unit_key": r.unit_key,
        "suite": r.suite,
        "trial": r.trial,
        "trial_version": r.trial_version,
        "label": r.label,
        "section": r.section,
        "params": dict(r.params or {}),
        "precision": r.precision,
        "batch_size": r.batch_size,
        "device": r.device,
        "dataset": dict(r.dataset or {}),
        "scale": r.scale,
        "status": r.status,
        "error": r.error,
        "notes": dict(r.notes or {}),
        "duration_s": r.duration_s,
        "metrics": metrics,
    }


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
