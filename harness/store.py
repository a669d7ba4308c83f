"""Result store: SQLAlchemy 2 ORM over any SQLAlchemy URL (SQLite ``results/harness.db`` by default).

Tables: runs (one per ``harness run``, with provenance, its ``--set`` overrides and the identities of
the units it planned, so reports need not re-expand the suite), results (one per executed unit), metrics
(name, value, unit per result) and samples (raw timing samples per metric). A unit's result, its
metrics and samples are written in ONE transaction, so a killed process loses at most the unit in
flight and never leaves a half-written row. SQLite runs in WAL mode with a busy timeout so that
several ``harness run`` processes can share one file.

The schema carries a version in the ``meta`` table. Migrations are explicit functions in
``MIGRATIONS``; opening a database of another version says so and how to upgrade.

A lost connection is not fatal: a server database's pool checks a connection before use
(``pool_pre_ping``), and :meth:`Store.add_result` retries with exponential back-off on
``OperationalError`` / ``DisconnectionError`` (a retry first checks that the unit did not land).
"""

from __future__ import annotations

import json
import math
import os
import time
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
    false,
    func,
    inspect,
    literal,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker
from sqlalchemy.types import TypeDecorator

from harness.errors import UserError
from harness.redact import mask_command, mask_secrets, mask_tree, mask_url, one_line
from harness.results import MetricValue, ResultRow, RunStatus, Status, UnitIdentity
from harness.results import latest_per_unit as newest_per_unit

SCHEMA_VERSION = 5
DEFAULT_DB_URL = "sqlite:///results/harness.db"
DB_ENV_VAR = "HARNESS_DB"
RETRYABLE = (OperationalError, DisconnectionError)  # a lost or refused connection, a locked SQLite file
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0)  # back-off between the 5 tries of a write


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class NanFloat(TypeDecorator[float]):
    """A float column that keeps NaN. SQLite binds a NaN as NULL (refused by NOT NULL), so there a
    NaN is stored as the text 'NaN', which SQLite keeps as text; other back ends store NaN natively.
    The processors are replaced, not chained: Float's own bind processor would turn 'NaN' back."""

    impl = Float
    cache_ok = True

    def bind_processor(self, dialect: Any) -> Callable[[Any], Any]:
        nan_as_text = dialect.name == "sqlite"

        def process(value: Any) -> Any:
            if value is None:
                return None
            value = float(value)
            return "NaN" if nan_as_text and math.isnan(value) else value

        return process

    def result_processor(self, dialect: Any, coltype: Any) -> Callable[[Any], Any]:
        return lambda value: None if value is None else float(value)


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
    status: Mapped[str] = mapped_column(String(32), default=RunStatus.RUNNING.value)
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
    # --trust-checkpoints / the suite's trust_checkpoints: user checkpoints were fully unpickled.
    trust_checkpoints: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # How the units ran: inline (in the harness process), local or slurm (submitit jobs); for the latter,
    # ``jobs`` = {"folder", "workers", "jobs": [{"job_id", "worker", "units": [unit keys]}], ...}.
    executor: Mapped[str] = mapped_column(String(16), default="inline", server_default="inline")
    jobs: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True, default=dict)
    # ``--set KEY=VALUE`` overrides of the suite file ({key: value}); the run's planned units as
    # [{"key", "section", "identity": UnitIdentity.to_json(), "describe"}] (NULL for runs before version 4).
    overrides: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True, default=dict)
    units: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True, default=list)
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
    baselines: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True, default=dict)
    timing: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True, default=dict)
    seed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    seed_index: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # k of a row's seeds
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
    value: Mapped[float] = mapped_column(NanFloat)
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


# --- cells a doctored or foreign-written database may hold -------------------------------------------
# SQLite stores any value in any column, and the JSON columns are text everywhere: a hand-edited row can
# hold text in a float column, invalid JSON, a list where an object belongs or a status no code knows.
# Such a cell would surface as a traceback deep in a report; it is found when the database is opened.

JSON_ARRAY_COLUMNS = {("runs", "units")}  # every other JSON column holds an object
STATUSES = {
    ("results", "status"): tuple(s.value for s in Status if s.is_stored),
    ("runs", "status"): tuple(s.value for s in RunStatus),
}


@dataclass(frozen=True)
class BadCell:
    table: str
    row_id: Any
    column: str
    value: Any
    expected: str

    def message(self, db: str) -> str:
        shown = one_line(mask_secrets(repr(self.value)))
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        return (
            f"database {db!r}: {self.table} row {self.row_id}, column {self.column}: {shown} is not "
            f"{self.expected} (the row was edited or written by other software: fix or delete it; "
            "nothing was changed)"
        )


# (column types, SQLite condition true for a cell of the wrong storage class, what it should be), first
# match wins: NanFloat before Float (it also keeps the text 'NaN'), Boolean before Integer.
SQLITE_STORAGE: tuple[tuple[type | tuple[type, ...], str, str], ...] = (
    (NanFloat, "typeof({c}) NOT IN ('real', 'integer') AND {c} IS NOT 'NaN'", "a number"),
    (Float, "typeof({c}) NOT IN ('real', 'integer')", "a number"),
    (Boolean, "typeof({c}) != 'integer' OR {c} NOT IN (0, 1)", "a boolean (0 or 1)"),
    (Integer, "typeof({c}) != 'integer'", "an integer"),
    (DateTime, "typeof({c}) != 'text' OR datetime({c}) IS NULL", "a date and time"),
    (JSON, "typeof({c}) != 'text' OR NOT json_valid({json})", "valid JSON"),
    (String, "typeof({c}) != 'text'", "text"),
)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sqlite_json(column: str) -> str:
    """The column's JSON text with NaN and (-)Infinity as 0: Python's json writes and reads those tokens
    (a metric's NaN threshold, say), SQLite's JSON functions refuse them."""
    return f"replace(replace({column}, 'NaN', '0'), 'Infinity', '0')"


def _cell_rules(table: Any, dialect: str) -> list[tuple[str, str, str]]:
    """(column, SQL condition true for a bad cell, what the cell should be) for each checked column.
    Storage types are checked on SQLite only (other back ends enforce their column types); allowed
    values (statuses, durations) and JSON shapes on SQLite and PostgreSQL."""
    rules = []
    for column in table.columns:
        c, kind, name = _quoted(column.name), column.type, column.name
        conditions: list[tuple[str, str]] = []
        if dialect == "sqlite":
            storage = next(((bad, what) for kinds, bad, what in SQLITE_STORAGE if isinstance(kind, kinds)), None)
            if storage is not None:
                conditions.append((storage[0].format(c=c, json=_sqlite_json(c)), storage[1]))
        if isinstance(kind, JSON) and dialect in ("sqlite", "postgresql"):
            shape = "array" if (table.name, name) in JSON_ARRAY_COLUMNS else "object"
            allowed = f"('{shape}', 'null')" if column.nullable else f"('{shape}')"
            typeof = f"json_type({_sqlite_json(c)})" if dialect == "sqlite" else f"json_typeof({c})"
            conditions.append((f"{typeof} NOT IN {allowed}", f"a JSON {shape}"))
        if (table.name, name) in STATUSES:
            known = STATUSES[(table.name, name)]
            listed = ", ".join(f"'{v}'" for v in known)
            conditions.append((f"{c} NOT IN ({listed})", "one of " + ", ".join(known)))
        if (table.name, name) == ("results", "duration_s"):
            conditions.append((f"{c} < 0 OR {c} > 1e308 OR {c} != {c}", "a duration in seconds (finite, >= 0)"))
        for condition, expected in conditions:
            guarded = f"{c} IS NOT NULL AND ({condition})" if column.nullable else f"({condition})"
            rules.append((name, guarded, expected))
    return rules


def job_plan_problem(jobs: Any) -> tuple[Any, str] | None:
    """(the offending value, what it should be) when a run's ``jobs`` plan (see
    :meth:`Store.set_run_jobs`) is not the shape ``harness status`` and the workers read, else None."""
    listed = (jobs or {}).get("jobs", [])
    if not isinstance(listed, list):
        return listed, "a list of jobs (under 'jobs')"
    for job in listed:
        if not isinstance(job, dict):
            return job, "a job (an object)"
        units = job.get("units", [])
        if not isinstance(units, list) or not all(isinstance(key, str) for key in units):
            return units, "a job's list of unit keys"
    return None


# (table, column, parent table): each value must be the id of a row of the parent. The ORM deletes a
# run's results, metrics and samples with it; a row left pointing nowhere was edited by hand.
REFERENCES = (("results", "run_id", "runs"), ("metrics", "result_id", "results"), ("samples", "metric_id", "metrics"))


def missing_structure(conn: Connection) -> str | None:
    """What of this schema's tables and columns the database lacks (a table dropped or a column
    removed by hand), or None. Extra tables and columns are left alone."""
    inspector = inspect(conn)
    present = set(inspector.get_table_names())
    for table in Base.metadata.sorted_tables:
        if table.name not in present:
            return f"has no table {table.name}"
        columns = {column["name"] for column in inspector.get_columns(table.name)}
        missing = [column.name for column in table.columns if column.name not in columns]
        if missing:
            return f"table {table.name} has no column {', '.join(missing)}"
    return None


def _dangling_reference(conn: Connection) -> BadCell | None:
    """The first row whose reference (``REFERENCES``) names no row of its parent table."""
    for table, column, parent in REFERENCES:
        t, c, p = _quoted(table), _quoted(column), _quoted(parent)
        dangling = conn.execute(
            text(
                f"SELECT ref FROM (SELECT DISTINCT {c} AS ref FROM {t}) refs "
                f"WHERE NOT EXISTS (SELECT 1 FROM {p} WHERE {p}.id = refs.ref) ORDER BY 1 LIMIT 1"
            )
        ).first()
        if dangling is not None:
            row_id = conn.execute(text(f"SELECT min(id) FROM {t} WHERE {c} = :ref"), {"ref": dangling[0]}).scalar()
            return BadCell(table, row_id, column, dangling[0], f"the id of a row of {parent}")
    return None


def _repeated_metric(conn: Connection) -> BadCell | None:
    """The first metric whose name its result already has (a report would show either value)."""
    row = conn.execute(
        select(func.max(MetricRow.id), MetricRow.name, MetricRow.result_id)
        .group_by(MetricRow.result_id, MetricRow.name)
        .having(func.count() > 1)
        .order_by(func.max(MetricRow.id))
        .limit(1)
    ).first()
    if row is None:
        return None
    return BadCell("metrics", row[0], "name", row[1], f"a metric name new to result {row[2]} (it has it twice)")


def find_bad_cell(conn: Connection) -> BadCell | None:
    """The first cell (table by table, lowest row id first) that the schema cannot read back: a value
    of the wrong storage type, invalid JSON or a JSON value of the wrong shape, an unknown status, a
    negative or infinite duration; then a run's jobs plan of the wrong shape, a reference to a row
    that does not exist and a metric named twice in one result. One scan per checked column; None
    when every cell is readable."""
    dialect = conn.dialect.name
    for table in Base.metadata.sorted_tables:
        key = _quoted(next(iter(table.primary_key.columns)).name)
        for column, condition, expected in _cell_rules(table, dialect):
            query = f"SELECT {key}, {_quoted(column)} FROM {_quoted(table.name)} WHERE {condition} ORDER BY 1 LIMIT 1"
            # in rule order: a JSON column's shape is asked only once all its cells are valid JSON
            row = conn.execute(text(query)).first()
            if row is not None:
                return BadCell(table.name, row[0], column, row[1], expected)
    for run_id, jobs in conn.execute(select(Run.id, Run.jobs).where(Run.jobs.is_not(None))):
        problem = job_plan_problem(jobs)
        if problem is not None:
            return BadCell("runs", run_id, "jobs", *problem)
    return _dangling_reference(conn) or _repeated_metric(conn)


def _add_trust_checkpoints(conn: Connection) -> None:
    """Version 1 -> 2: runs.trust_checkpoints (false for every earlier run)."""
    column = Run.__table__.c.trust_checkpoints
    kind = column.type.compile(dialect=conn.dialect)
    default = literal(False).compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
    conn.execute(text(f"ALTER TABLE runs ADD COLUMN trust_checkpoints {kind} NOT NULL DEFAULT {default}"))


def _add_executor_and_jobs(conn: Connection) -> None:
    """Version 2 -> 3: runs.executor ('inline' for every earlier run) and runs.jobs (submitit jobs, NULL)."""
    executor = Run.__table__.c.executor.type.compile(dialect=conn.dialect)
    jobs = Run.__table__.c.jobs.type.compile(dialect=conn.dialect)
    conn.execute(text(f"ALTER TABLE runs ADD COLUMN executor {executor} NOT NULL DEFAULT 'inline'"))
    conn.execute(text(f"ALTER TABLE runs ADD COLUMN jobs {jobs}"))


def _add_overrides_units_and_identity(conn: Connection) -> None:
    """Version 3 -> 4: runs.overrides and runs.units (NULL for earlier runs: their units are not
    listed), results.baselines and results.timing (NULL) and results.seed (0)."""
    for table, column in (("runs", "overrides"), ("runs", "units"), ("results", "baselines"), ("results", "timing")):
        kind = Base.metadata.tables[table].c[column].type.compile(dialect=conn.dialect)
        conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {kind}"))
    seed = Result.__table__.c.seed.type.compile(dialect=conn.dialect)
    conn.execute(text(f"ALTER TABLE results ADD COLUMN seed {seed} NOT NULL DEFAULT 0"))


def _add_seed_index(conn: Connection) -> None:
    """Version 4 -> 5: results.seed_index (0: every earlier result is its row's only seed)."""
    kind = Result.__table__.c.seed_index.type.compile(dialect=conn.dialect)
    conn.execute(text(f"ALTER TABLE results ADD COLUMN seed_index {kind} NOT NULL DEFAULT 0"))


# Explicit migrations: MIGRATIONS[n] upgrades a database from version n to n + 1.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _add_trust_checkpoints,
    2: _add_executor_and_jobs,
    3: _add_overrides_units_and_identity,
    4: _add_seed_index,
}


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
        self.display_url = mask_url(self.url)  # the only form of the URL that is ever shown
        self.retry_delays: tuple[float, ...] = RETRY_DELAYS_S
        self.engine = self._make_engine(self.url, create=create)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if self._check_schema(create=create, check_version=check_version):
            self._check_cells()

    @staticmethod
    def _make_engine(url: str, *, create: bool) -> Engine:
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise UserError(f"database URL {mask_url(url)!r} is not a valid SQLAlchemy URL") from None
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
        else:
            kwargs["pool_pre_ping"] = True  # a connection the server dropped (restart, idle timeout) is replaced
        try:
            engine = create_engine(url, **kwargs)
        except ModuleNotFoundError as exc:
            hint = (
                " (the postgres extra installs psycopg2: postgresql+psycopg2://...)"
                if parsed.get_backend_name() == "postgresql"
                else ""
            )
            raise UserError(
                f"cannot open database {mask_url(url)!r}: its driver {exc.name!r} is not installed{hint}"
            ) from None
        except Exception as exc:  # noqa: BLE001 - driver import errors, bad options
            raise UserError(f"cannot open database {mask_url(url)!r}: {one_line(str(exc))}") from None
        if parsed.get_backend_name() == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        return engine

    def _check_schema(self, *, create: bool, check_version: bool) -> bool:
        """UserError unless this is a harness database of this schema version (or ``create`` made one);
        returns whether it holds earlier rows at this version (the ones worth checking)."""
        try:
            names = set(inspect(self.engine).get_table_names())
        except OperationalError as exc:
            raise UserError(f"cannot open database {self.display_url!r}: {one_line(str(exc.orig))}") from None
        if "meta" not in names:
            if names - {"meta"}:
                raise UserError(
                    f"database {self.display_url!r} has tables but no schema version: not a harness database"
                )
            if not create:
                raise UserError(f"database {self.display_url!r} is empty")
            try:
                Base.metadata.create_all(self.engine)
                with self.session() as s:
                    s.merge(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
            except OperationalError as exc:
                raise UserError(f"cannot write database {self.display_url!r}: {one_line(str(exc.orig))}") from None
            return False
        version = self.schema_version()
        if not check_version:
            return False
        if version > SCHEMA_VERSION:
            raise UserError(
                f"database {self.display_url!r} has schema version {version}, newer than this harness "
                f"({SCHEMA_VERSION}): upgrade segharness"
            )
        if version < SCHEMA_VERSION:
            raise UserError(
                f"database {self.display_url!r} has schema version {version}, this harness needs "
                f"{SCHEMA_VERSION}: run `harness db upgrade --db {self.display_url}`"
            )
        return True

    def _check_cells(self) -> None:
        """UserError naming a table or column this schema needs and the database lacks, or the first
        cell this schema cannot read back (see :func:`find_bad_cell`)."""
        with self.engine.connect() as conn:
            missing = missing_structure(conn)
            if missing is not None:
                raise UserError(
                    f"database {self.display_url!r} {missing}, which its schema version "
                    f"{SCHEMA_VERSION} has (it was edited by hand or by other software; nothing was changed)"
                )
            bad = find_bad_cell(conn)
        if bad is not None:
            raise UserError(bad.message(self.display_url))

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            row = conn.execute(select(Meta.value).where(Meta.key == "schema_version")).first()
        if row is None:
            raise UserError(
                f"database {self.display_url!r} has a meta table without a schema_version: not a harness "
                "database, or its creation was interrupted"
            )
        value = row[0]
        if not str(value).isdigit():
            raise UserError(f"database {self.display_url!r}: meta schema_version {value!r} is not a version number")
        return int(value)

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
        """Insert a run; its ``command`` is stored with every password masked."""
        if "command" in fields:
            fields["command"] = mask_command(str(fields["command"]).split(" "))
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

    def set_run_jobs(self, run_id: int, executor: str, jobs: dict[str, Any]) -> None:
        """Record how a run's units are executed (the submitit jobs and the unit keys of each)."""
        with self.session() as s:
            run = s.get(Run, run_id)
            if run is not None:
                run.executor = executor
                run.jobs = mask_tree(_jsonable(jobs))

    def close_run_if_complete(self, run_id: int) -> bool:
        """End a running run whose planned units (``runs.jobs``) are all stored: ``failed`` if one of
        them failed or timed out, else ``ok``. Workers call it as they finish, so a detached run ends
        without its driver. Returns whether the run is ended."""
        with self.session() as s:
            run = s.get(Run, run_id)
            if run is None:
                return False
            if run.status != RunStatus.RUNNING:
                return True
            planned = {key for job in (run.jobs or {}).get("jobs", []) for key in job.get("units", [])}
            rows = s.execute(select(Result.unit_key, Result.status).where(Result.run_id == run_id)).all()
            if not planned or not planned <= {key for key, _ in rows}:
                return False
            failed = any(Status(status).is_failure for _, status in rows)
            run.status = (RunStatus.FAILED if failed else RunStatus.OK).value
            run.ended_at = utcnow()
            return True

    def retrying(self, fn: Callable[[int], Any]) -> Any:
        """``fn(attempt)`` (attempt 1, 2, ...), retried after a lost connection or a locked database
        with exponential back-off (``self.retry_delays``: 5 tries in all); the last error is re-raised."""
        delays = self.retry_delays
        for attempt in range(1, len(delays) + 2):
            try:
                return fn(attempt)
            except RETRYABLE:
                if attempt > len(delays):
                    raise
                self.engine.dispose()  # drop pooled connections that may be dead
                time.sleep(delays[attempt - 1])
        raise AssertionError("unreachable")

    def result_id(self, run_id: int, unit_key: str) -> int | None:
        """The id of the result of ``unit_key`` stored by run ``run_id``, if any."""
        with self.session() as s:
            q = select(Result.id).where(Result.run_id == run_id, Result.unit_key == unit_key).limit(1)
            return s.scalar(q)

    def add_result(self, run_id: int, rec: ResultRow) -> int:
        """Store one unit with its metrics and samples in a single transaction, retried with back-off
        if the connection is lost (a retry first checks whether the failed try committed after all)."""

        def attempt(n: int) -> int:
            if n > 1:
                landed = self.result_id(run_id, rec.key)
                if landed is not None:
                    return landed
            return self._add_result_once(run_id, rec)

        return int(self.retrying(attempt))

    def _add_result_once(self, run_id: int, rec: ResultRow) -> int:
        ident = rec.identity
        with self.session() as s:
            result = Result(
                run_id=run_id,
                unit_key=rec.key,
                suite=rec.suite,
                trial=ident.trial,
                trial_version=ident.version,
                label=ident.label,
                section=ident.section,
                params=ident.params,
                precision=ident.precision,
                batch_size=ident.batch_size,
                device=ident.device,
                dataset=ident.dataset,
                scale=rec.scale_name,
                scale_settings=ident.scale,
                baselines=ident.baselines,
                timing=ident.timing,
                seed=ident.seed,
                seed_index=ident.seed_index,
                status=Status(rec.status).value,
                error=mask_secrets(rec.error),
                notes=mask_tree(_jsonable(rec.notes)),
                started_at=rec.started_at,
                ended_at=rec.ended_at,
                duration_s=rec.duration_s or 0.0,
            )
            for m in rec.metrics.values():
                metric = MetricRow(name=m.name, value=m.value, unit=m.unit, better=m.better)
                metric.samples = [Sample(seq=i, value=v) for i, v in enumerate(m.samples)]
                result.metrics.append(metric)
            s.add(result)
            s.flush()
            return result.id

    def set_run_units(self, run_id: int, units: list[dict[str, Any]]) -> None:
        """Record the units a run planned (their keys and identities), for reports and the gate."""
        with self.session() as s:
            run = s.get(Run, run_id)
            if run is not None:
                run.units = mask_tree(_jsonable(units))

    # --- reading ---------------------------------------------------------------------------------

    def ok_unit_keys(self, keys: list[str] | None = None, suite: str | None = None) -> set[str]:
        """Unit keys stored ok (within ``suite`` if given: reports read a suite's own rows, so a
        unit another suite stored does not count as done for this one)."""
        with self.session() as s:
            q = select(Result.unit_key).where(Result.status == Status.OK.value)
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
    ) -> list[ResultRow]:
        """Stored results, oldest first (samples read only ``with_samples``).

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
            out = [_result_row(r, with_samples) for r in rows]
        return newest_per_unit(out) if latest_per_unit else out

    def run_unit_statuses(self, run_id: int) -> list[tuple[int, str, str, str]]:
        """(result id, unit key, status, error) of every result of a run, oldest first: a light
        query for progress polling."""
        with self.session() as s:
            q = select(Result.id, Result.unit_key, Result.status, Result.error).where(Result.run_id == run_id)
            return [tuple(row) for row in s.execute(q.order_by(Result.id))]  # type: ignore[misc]

    def wall_times(self, trials: list[str]) -> list[tuple[str, str, str, float]]:
        """(unit key, trial, scale, wall time in s) of every ok result of ``trials``, oldest first: what
        ``harness run --dry-run`` estimates a unit's time from."""
        with self.session() as s:
            q = (
                select(Result.unit_key, Result.trial, Result.scale, Result.duration_s)
                .where(Result.status == Status.OK.value, Result.trial.in_(trials))
                .order_by(Result.id)
            )
            return [(key, trial, scale, float(seconds or 0.0)) for key, trial, scale, seconds in s.execute(q)]

    def results_per_run(self, suite: str | None = None) -> dict[int, int]:
        """{run id: number of results stored}, counted in SQL."""
        with self.session() as s:
            q = select(Result.run_id, func.count(Result.id)).group_by(Result.run_id)
            if suite:
                q = q.where(Result.suite == suite)
            return {int(run_id): int(n) for run_id, n in s.execute(q)}


def _result_row(r: Result, with_samples: bool) -> ResultRow:
    identity = UnitIdentity(
        trial=r.trial,
        version=r.trial_version,
        label=r.label,
        section=r.section,
        params=dict(r.params or {}),
        precision=r.precision,
        batch_size=r.batch_size,
        device=r.device,
        dataset=dict(r.dataset or {}),
        scale=dict(r.scale_settings or {}),
        baselines=dict(r.baselines or {}),
        timing=dict(r.timing or {}),
        seed=r.seed or 0,
        seed_index=r.seed_index or 0,
    )
    metrics = {
        m.name: MetricValue(
            m.name, float(m.value), m.unit, m.better, tuple(smp.value for smp in m.samples) if with_samples else ()
        )
        for m in r.metrics
    }
    return ResultRow(
        key=r.unit_key,
        suite=r.suite,
        identity=identity,
        status=Status(r.status),
        error=r.error,
        notes=dict(r.notes or {}),
        metrics=metrics,
        scale_name=r.scale,
        started_at=r.started_at,
        ended_at=r.ended_at,
        id=r.id,
        run_id=r.run_id,
    )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
