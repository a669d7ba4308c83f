"""harness run --executor local|slurm (submitit jobs sharing the database), its faults, and the store's
resilience (one transaction per unit, retries on a lost connection), on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import engine_trials  # noqa: F401
import pytest
from rich.console import Console
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

import harness.store as store_module
from harness.cli import main
from harness.cluster import (
    ClusterOptions,
    JobSpec,
    _first_line,
    parse_slurm_options,
    run_job,
    slurm_executor,
    split_units,
    submit_suite,
    wait_for,
)
from harness.results import MetricValue, ResultRow, Status, UnitIdentity
from harness.runner import RunOptions
from harness.store import MetricRow, Result, Sample, Store, utcnow
from harness.suite import load_suite

pytest.importorskip("submitit")

TESTS = Path(__file__).parent
QUIET = Console(stderr=True, quiet=True)
SECRET = "s3cretPW-not-shown"


def suite_file(tmp_path: Path, body: str, name: str = "s") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\ntiming: {{warmup: 0, iters: 3}}\nbenchmarks:\n{body}")
    return path


def behave(indices: list[int], seconds: float = 0.0, extra: str = "") -> str:
    return f"  - trial: test.behave\n    params: {{seconds: {seconds}}}\n    matrix: {{index: {indices}}}\n{extra}"


def _cli(*args: str) -> list[str]:
    return [sys.executable, str(TESTS / "engine_trials.py"), *args]


def _local_run(path: Path, db: str, tmp_path: Path, *, workers: int) -> list[str]:
    """The CLI command running ``path`` on the local submitit executor."""
    return _cli("run", str(path), "--db", db, "--no-progress", "--executor", "local", "--workers", str(workers),
                "--submitit-dir", str(tmp_path / "jobs"))  # fmt: skip


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _rows(url: str, suite: str) -> list[dict]:
    return Store(url).results(suite=suite, latest_per_unit=False, with_samples=True)


# --- local executor: same results as inline ----------------------------------------------------------


def test_local_executor_stores_what_inline_stores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = behave([1, 2, 3, 4]) + "  - trial: test.behave\n    cases: [{label: bad, behaviour: raise}]\n"
    path = suite_file(tmp_path, body)
    inline_db, local_db = f"sqlite:///{tmp_path / 'inline.db'}", f"sqlite:///{tmp_path / 'local.db'}"
    assert main(["run", str(path), "--db", inline_db, "--no-progress"]) == 1  # one unit fails, as below
    capsys.readouterr()
    argv = ["run", str(path), "--db", local_db, "--no-progress", "--executor", "local", "--workers", "2"]
    argv += ["--submitit-dir", str(tmp_path / "jobs")]
    assert main(argv) == 1
    capsys.readouterr()
    inline, local = _rows(inline_db, "s"), _rows(local_db, "s")
    assert len(local) == 5 and len({r.key for r in local}) == 5  # one row per unit
    assert {r.key: (r.status, r.value("value")) for r in local} == {r.key: (r.status, r.value("value")) for r in inline}
    assert all(len(r.metrics["latency"].samples) == 3 for r in local if r.status == "ok")
    run = Store(local_db).runs("s")[-1]
    assert run.executor == "local" and run.status == "failed" and run.ended_at is not None
    job_ids = {job["job_id"] for job in run.jobs["jobs"]}
    assert len(job_ids) == 2 and sorted(len(job["units"]) for job in run.jobs["jobs"]) == [2, 3]
    for row in local:  # provenance of each unit: where it ran
        assert row.notes["job_id"] in job_ids and row.notes["host"] and row.notes["gpu"] == "cpu"
    assert main(["status", str(run.id), "--db", local_db]) == 0
    status = " ".join(capsys.readouterr().out.split())
    assert "5 planned, 5 done (1 failed, 4 ok)" in status and "0 pending" in status
    assert all(job_id in status for job_id in job_ids)


# --- faults ------------------------------------------------------------------------------------------


def test_sigkill_a_local_worker_then_rerun_runs_only_the_missing_units(tmp_path: Path, postgres_db: str) -> None:
    path = suite_file(tmp_path, behave([1, 2, 3, 4, 5, 6], seconds=0.6))
    command = _local_run(path, postgres_db, tmp_path, workers=2)
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = Store(postgres_db)
    deadline = time.monotonic() + 120
    victim = None
    while victim is None and time.monotonic() < deadline:
        runs = store.runs("s")
        jobs = runs[-1].jobs if runs else None
        if jobs and jobs["jobs"][0]["job_id"] and sum(store.results_per_run("s").values()) >= 1:
            mine = {key for key in jobs["jobs"][0]["units"]}
            if any(key in mine for _, key, _, _ in store.run_unit_statuses(runs[-1].id)):
                tasks = _children(int(jobs["jobs"][0]["job_id"]))  # the controller's child runs the units
                victim = tasks[0] if tasks else None
        time.sleep(0.05)
    assert victim is not None, "job 0 never stored a unit"
    os.kill(victim, signal.SIGKILL)  # mid-unit: each unit sleeps 0.6 s
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 1, out + err
    assert "missing" in out and "ended without a result" in " ".join(err.split())
    first = _rows(postgres_db, "s")
    assert 1 <= len(first) < 6 and all(len(r.metrics) == 2 and r.status == "ok" for r in first)
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    rows = _rows(postgres_db, "s")
    keys = [r.key for r in rows]
    assert len(keys) == 6 and len(set(keys)) == 6  # no duplicate
    assert all(r.status == "ok" and len(r.metrics) == 2 and r.metrics["latency"].samples for r in rows)
    second_run = store.runs("s")[-1].id
    assert {r.key for r in rows if r.run_id == second_run} == set(keys) - {r.key for r in first}


def test_two_drivers_on_one_postgres_database(tmp_path: Path, postgres_db: str) -> None:
    Store(postgres_db)
    suites = [suite_file(tmp_path, behave([1, 2, 3, 4], seconds=0.1), name) for name in ("a", "b")]
    procs = [
        subprocess.Popen(
            _local_run(path, postgres_db, tmp_path, workers=workers),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for path, workers in zip(suites, (2, 1), strict=True)  # 3 jobs and 2 drivers on 2 cores
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    store = Store(postgres_db)
    for name in ("a", "b"):
        rows = _rows(postgres_db, name)
        assert len(rows) == 4 and len({r.key for r in rows}) == 4 and all(r.status == "ok" for r in rows)
        assert store.runs(name)[-1].status == "ok"
    password = make_url(postgres_db).password
    assert password and password not in "".join(o + e for o, e in outputs)
    files = [p for p in (tmp_path / "jobs").rglob("*") if p.is_file()]  # job pickles and logs
    assert files and not any(password.encode() in p.read_bytes() for p in files)  # it travelled in the environment


def _spec(run_id: int, url: str, path: Path, keys: list[str], **kw: object) -> JobSpec:
    return JobSpec(
        run_id=run_id,
        suite_path=str(path),
        scale="default",
        db_url=url,
        unit_keys=tuple(keys),
        trial_sources=(("engine_trials", str(TESTS / "engine_trials.py")),),
        **kw,
    )  # type: ignore[arg-type]


def _planned_run(store: Store, path: Path) -> tuple[int, list[str]]:
    import methods

    methods.discover()  # what run_job does first, done here so that its clock starts at the units
    units = load_suite(path).units("default")
    keys = [u.key for u in units]
    run_id = store.start_run(suite="s")
    store.set_run_units(run_id, [u.listing() for u in units])  # as a run records what it planned
    store.set_run_jobs(run_id, "local", {"jobs": [{"job_id": "", "worker": 0, "units": keys}]})
    return run_id, keys


def test_a_unit_past_the_jobs_time_limit_ends_timeout(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"  # worker logic: the back ends are covered elsewhere
    path = suite_file(tmp_path, "  - trial: test.behave\n    cases: [{behaviour: hang}, {behaviour: ok, index: 2}]\n")
    store = Store(url)
    run_id, keys = _planned_run(store, path)
    started = time.monotonic()
    report = run_job(_spec(run_id, url, path, keys, job_time_s=4.0, signal_delay_s=1.0))
    assert time.monotonic() - started < 20
    rows = store.results(run_id=run_id, latest_per_unit=False)
    assert [r.status for r in rows] == ["timeout"] and "job's time limit" in rows[0].error
    assert rows[0].notes["gpu"] == "cpu" and "job_id" in rows[0].notes and rows[0].notes["host"]
    assert report["units"][keys[0]][0] == "timeout" and keys[1] not in report["units"]
    assert report["stopped"] == "the job reached its time limit"


def test_the_schedulers_signal_ends_the_unit_in_flight_as_timeout(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"  # worker logic: the back ends are covered elsewhere
    path = suite_file(tmp_path, "  - trial: test.behave\n    cases: [{behaviour: hang}, {behaviour: ok, index: 2}]\n")
    store = Store(url)
    run_id, keys = _planned_run(store, path)
    previous = signal.signal(signal.SIGUSR2, lambda *_: None)  # a stray early signal must not end pytest
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGUSR2))
    timer.start()
    try:
        report = run_job(_spec(run_id, url, path, keys))
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR2, previous)
    rows = store.results(run_id=run_id, latest_per_unit=False)
    assert [r.status for r in rows] == ["timeout"] and "SIGUSR2" in rows[0].error
    assert report["stopped"] == "the job reached its time limit" and keys[1] not in report["units"]


def test_a_preempted_local_job_is_requeued_and_reruns_its_unit_in_flight(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    path = suite_file(tmp_path, behave([1, 2, 3], seconds=0.7))
    store = Store(url)
    cluster = ClusterOptions(executor="local", workers=1, folder=tmp_path / "jobs")
    sub = submit_suite(load_suite(path), store, RunOptions(show_progress=False), cluster, QUIET)
    deadline = time.monotonic() + 120
    while sum(store.results_per_run("s").values()) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    task = _children(int(sub.job_ids[0]))[0]
    signalled = utcnow()
    os.kill(task, signal.SIGUSR2)  # what Slurm sends on preemption; the job's time limit is far away
    summary = wait_for(sub, store, QUIET, show_progress=False, poll_s=0.2)
    assert [o.status for o in summary.outcomes] == ["ok", "ok", "ok"]
    rows = store.results(run_id=sub.run_id, latest_per_unit=False)
    assert len(rows) == 3 and len({r.key for r in rows}) == 3
    assert sum(1 for r in rows if r.status == "ok") == 3
    log = "".join(p.read_text() for p in (tmp_path / "jobs").rglob("*_log.*"))
    assert "Requeued job" in log  # submitit requeued the job; it resumed with what was not stored
    assert Store(url).get_run(sub.run_id).status == "ok"  # type: ignore[union-attr]
    assert any(r.notes["job_id"] == sub.job_ids[0] for r in rows) and signalled


def test_detach_returns_the_job_ids_and_the_workers_close_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    path = suite_file(tmp_path, behave([1, 2]))
    argv = ["run", str(path), "--db", url, "--executor", "local", "--detach", "--submitit-dir", str(tmp_path / "j")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    run = Store(url).runs("s")[-1]
    assert f"harness status {run.id}" in out and run.jobs["jobs"][0]["job_id"] in out and run.status == "running"
    deadline = time.monotonic() + 120
    while Store(url).get_run(run.id).status == "running" and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.1)
    assert Store(url).get_run(run.id).status == "ok"  # type: ignore[union-attr]
    assert main(["status", str(run.id), "--db", url]) == 0
    assert "2 planned, 2 done (2 ok)" in capsys.readouterr().out


# --- the store: atomic units, retries -------------------------------------------------------------------


KILL_MID_WRITE = textwrap.dedent(
    """
    import os, signal, sys
    from datetime import datetime
    from sqlalchemy import event, func, select
    from harness.results import MetricValue, ResultRow, Status, UnitIdentity
    from harness.store import Result, Sample, Store

    store = Store(sys.argv[1])
    run_id = store.start_run(suite="k")

    def die(mapper, connection, target):  # the result and metric rows are written, in the open transaction
        print("in flight:", connection.execute(select(func.count(Result.id))).scalar(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    event.listen(Sample, "before_insert", die)
    now = datetime(2024, 1, 1)
    latency = MetricValue("latency", 1.0, "ms", "lower", (1.0, 2.0, 3.0))
    store.add_result(run_id, ResultRow("k1", "k", UnitIdentity("t"), Status.OK, started_at=now, ended_at=now,
                                       metrics={"latency": latency}))
    print("not killed", flush=True)
    """
)


def test_a_process_killed_mid_write_leaves_no_half_written_unit(tmp_path: Path, any_db_url: str) -> None:
    Store(any_db_url)
    proc = subprocess.run(
        [sys.executable, "-c", KILL_MID_WRITE, any_db_url], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL and "in flight: 1" in proc.stdout, proc.stdout + proc.stderr
    engine = create_engine(any_db_url)
    with engine.connect() as conn:
        counts = [conn.execute(select(func.count(t.id))).scalar() for t in (Result, MetricRow, Sample)]
    engine.dispose()
    assert counts == [0, 0, 0]


def _record(key: str = "k1") -> ResultRow:
    now = utcnow()
    return ResultRow(
        key=key,
        suite="k",
        identity=UnitIdentity("t"),
        status=Status.OK,
        started_at=now,
        ended_at=now,
        metrics={"value": MetricValue("value", 1.0, "", "higher")},
    )


def test_add_result_retries_a_lost_connection_with_backoff(any_db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(any_db_url)
    run_id = store.start_run(suite="k")
    slept: list[float] = []
    monkeypatch.setattr(store_module.time, "sleep", slept.append)
    real = store._add_result_once
    calls = {"n": 0}

    def flaky(run: int, rec: ResultRow) -> int:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise OperationalError("INSERT", {}, Exception("server closed the connection unexpectedly"))
        if calls["n"] == 3:  # committed, but the acknowledgement was lost: the retry must not store it twice
            real(run, rec)
            raise OperationalError("COMMIT", {}, Exception("connection reset"))
        return real(run, rec)

    monkeypatch.setattr(store, "_add_result_once", flaky)
    store.add_result(run_id, _record())
    assert slept == [0.5, 1.0, 2.0] and sum(store.results_per_run("k").values()) == 1
    slept.clear()

    def down(run: int, rec: ResultRow) -> int:
        raise OperationalError("INSERT", {}, Exception("could not connect to server"))

    monkeypatch.setattr(store, "_add_result_once", down)
    with pytest.raises(OperationalError, match="could not connect"):
        store.add_result(run_id, _record("k2"))
    assert slept == [0.5, 1.0, 2.0, 4.0]  # 5 tries, exponential back-off
    assert sum(store.results_per_run("k").values()) == 1


def test_a_worker_reports_a_unit_it_could_not_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    path = suite_file(tmp_path, behave([1]))
    store = Store(url)
    run_id, keys = _planned_run(store, path)
    monkeypatch.setattr(store_module, "RETRY_DELAYS_S", (0.0, 0.0, 0.0, 0.0))

    def down(self: Store, run: int, rec: ResultRow) -> int:
        raise OperationalError("INSERT", {}, Exception("could not connect to server: Connection refused"))

    monkeypatch.setattr(Store, "_add_result_once", down)
    report = run_job(_spec(run_id, url, path, keys))
    status, reason = report["units"][keys[0]]
    assert status == "failed" and reason.startswith("not stored: database error after 5 tries: could not connect")


def test_a_connection_the_server_dropped_is_replaced(postgres_db: str) -> None:
    store = Store(postgres_db)
    run_id = store.start_run(suite="k")
    store.add_result(run_id, _record("k1"))
    admin = create_engine(postgres_db)
    with admin.begin() as conn:  # the server ends every other session on this database (restart, idle timeout)
        ended = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar()
    admin.dispose()
    assert ended >= 1
    store.add_result(run_id, _record("k2"))
    assert sum(store.results_per_run("k").values()) == 2


def test_schema_2_upgrades_to_current_and_keeps_old_runs(any_db_url: str) -> None:
    store = Store(any_db_url)
    old = store.start_run(suite="old")
    store.add_result(old, _record("k0"))
    engine = create_engine(any_db_url)
    with engine.begin() as conn:  # make it a version-2 database
        for column in ("executor", "jobs", "overrides", "units"):
            conn.execute(text(f"ALTER TABLE runs DROP COLUMN {column}"))
        for column in ("baselines", "timing", "seed", "seed_index"):
            conn.execute(text(f"ALTER TABLE results DROP COLUMN {column}"))
        conn.execute(text("UPDATE meta SET value = '2' WHERE key = 'schema_version'"))
    engine.dispose()
    with pytest.raises(Exception, match="harness db upgrade"):
        Store(any_db_url)
    assert Store(any_db_url, check_version=False).upgrade() == [3, 4, 5]
    assert [r.key for r in Store(any_db_url).results(run_id=old)] == ["k0"]
    upgraded = Store(any_db_url)
    run = upgraded.get_run(old)
    assert run is not None and run.executor == "inline" and not run.jobs
    new = upgraded.start_run(suite="new")
    upgraded.set_run_jobs(new, "slurm", {"jobs": [{"job_id": "42_0", "units": ["a"]}]})
    assert upgraded.get_run(new).jobs["jobs"][0]["job_id"] == "42_0"  # type: ignore[union-attr]


# --- Slurm: parameters only (no Slurm here; never a fake run) --------------------------------------------


def test_slurm_options_become_submitit_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import submitit

    options = parse_slurm_options("partition=gpu,gpus_per_node=1,timeout_min=240,array_parallelism=4,slurm_qos=high")
    assert options == {
        "partition": "gpu",
        "gpus_per_node": 1,
        "timeout_min": 240,
        "array_parallelism": 4,
        "qos": "high",
    }
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # as if srun were here
    executor = slurm_executor(tmp_path, options, "harness-s")
    assert executor.cluster == "slurm"
    params = executor._executor.parameters
    assert params == {
        "partition": "gpu",
        "gpus_per_node": 1,
        "time": 240,
        "array_parallelism": 4,
        "qos": "high",
        "job_name": "harness-s",
    }
    sbatch = executor._executor._make_submission_file_text("python -m submitit.core._submit", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=1", "--time=240", "--qos=high", "--signal=USR2@90"):
        assert f"#SBATCH {line}" in sbatch


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--slurm", "partiton=gpu,timeout_min=5"], "did you mean partition"),
        (["--slurm", "partition=gpu"], "timeout_min=MINUTES"),
        (["--slurm", "timeout_min=soon"], "timeout_min=soon: expected an integer"),
        (["--slurm", "nodes=2,timeout_min=5"], "one worker"),
        (["--slurm", "setup=module load cuda,timeout_min=5"], "not settable"),
        (["--slurm", "gpus_per_node"], "is not KEY=VALUE"),
        (["--slurm", "timeout_min=5"], "SQLite"),  # SQLite is refused for Slurm...
        (["--slurm", "timeout_min=5", "--allow-sqlite"], "no Slurm on this machine"),  # ...unless allowed
        (["--workers", "0", "--slurm", "timeout_min=5"], "--workers 0"),
    ],
)
def test_bad_slurm_input_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    path = suite_file(tmp_path, behave([1]))
    db = tmp_path / "h.db"
    jobs = tmp_path / "jobs"
    argv = ["run", str(path), "--db", f"sqlite:///{db}", "--executor", "slurm", "--submitit-dir", str(jobs), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not db.exists() and not jobs.exists()  # refused before anything was written


def test_executor_flags_are_checked_and_passwords_masked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = suite_file(tmp_path, behave([1]))
    db = f"sqlite:///{tmp_path / 'h.db'}"
    cases = [
        (["--workers", "2"], "--workers needs --executor local or slurm"),
        (["--executor", "local", "--slurm", "timeout_min=5"], "--slurm needs --executor slurm"),
        (["--executor", "local", "--detach", "--report"], "--report needs the results"),
        (["--executor", "local", "--db", "sqlite://"], "in-memory SQLite"),
    ]
    for extra, message in cases:
        assert main(["run", str(path), "--db", db, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    url = f"postgresql+psycopg2://u:{SECRET}@127.0.0.1:1/x"  # nothing listens on port 1
    assert main(["run", str(path), "--db", url, "--executor", "local"]) == 2
    err = capsys.readouterr().err
    assert SECRET not in err and "u:***@127.0.0.1" in err and err.count("\n") == 1


def test_executors_need_submitit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if the cluster extra were not installed
    path = suite_file(tmp_path, behave([1]))
    assert main(["run", str(path), "--db", f"sqlite:///{tmp_path / 'h.db'}", "--executor", "local"]) == 2
    err = capsys.readouterr().err
    assert "segharness[cluster]" in err and err.count("\n") == 1


def test_a_jobs_failure_is_told_in_one_line() -> None:
    from submitit.core.utils import FailedJobError, UncompletedJobError

    trace = 'Traceback (most recent call last):\n  File "x.py", line 1\n'
    trace += "harness.errors.UserError: suite file s.yaml does not exist"
    failed = FailedJobError(
        f"Job (task=0) failed during processing with trace:\n{'-' * 22}\n{trace}\n{'-' * 22}\n"
        "You can check full logs with 'job.stderr(0)'or at paths:\n  - /x/1_0_log.err"
    )
    assert _first_line(failed) == "harness.errors.UserError: suite file s.yaml does not exist"
    lost = UncompletedJobError(
        "Job 12 (task: 0) with path /x/12_0_result.pkl\nhas not produced any output (state: FINISHED)"
    )
    assert _first_line(lost) == "ended without a result (state FINISHED): killed or crashed"
    assert _first_line(RuntimeError(f"could not connect to postgresql://u:{SECRET}@h/d")) == (
        "could not connect to postgresql://u:***@h/d"
    )


def test_units_are_split_into_contiguous_near_equal_shares() -> None:
    keys = [str(i) for i in range(7)]
    assert split_units(keys, 3) == [["0", "1", "2"], ["3", "4"], ["5", "6"]]
    assert split_units(keys[:2], 4) == [["0"], ["1"]]
