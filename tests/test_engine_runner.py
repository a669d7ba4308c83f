from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import engine_trials  # noqa: F401
import pytest
import torch
from sqlalchemy import create_engine, text

from harness.cli import main
from harness.errors import UserError
from harness.runner import RunOptions, run_suite
from harness.store import SCHEMA_VERSION, Store
from harness.suite import load_suite

TESTS = Path(__file__).parent


def suite_file(tmp_path: Path, body: str, name: str = "s") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\ntiming: {{warmup: 0, iters: 3}}\nbenchmarks:\n{body}")
    return path


STATUSES = """\
  - trial: test.behave
    cases:
      - {behaviour: ok}
      - {behaviour: raise}
      - {behaviour: oom}
      - {behaviour: unsupported}
      - {behaviour: unavailable}
      - {behaviour: dtype}
      - {behaviour: nometric}
      - {behaviour: partial}
      - {behaviour: ok, device: cuda}
      - {behaviour: hang, index: 99}
"""


def test_every_way_a_unit_ends_is_a_status(tmp_path: Path, any_db_url: str) -> None:
    suite = load_suite(suite_file(tmp_path, STATUSES))
    store = Store(any_db_url)
    summary = run_suite(suite, store, RunOptions(timeout=1.0, show_progress=False))
    by_case = {(o.unit.params["behaviour"], o.unit.device): o for o in summary.outcomes}
    expected = {
        ("ok", "cpu"): "ok", ("raise", "cpu"): "failed", ("oom", "cpu"): "oom",
        ("unsupported", "cpu"): "unsupported", ("unavailable", "cpu"): "unavailable",
        ("dtype", "cpu"): "unsupported", ("nometric", "cpu"): "failed", ("hang", "cpu"): "timeout",
        ("partial", "cpu"): "failed",
        ("ok", "cuda"): "ok" if torch.cuda.is_available() else "unavailable",
    }  # fmt: skip
    assert {k: o.status for k, o in by_case.items()} == expected
    assert "ValueError: boom" in by_case[("raise", "cpu")].error
    assert "backend xyz" in by_case[("unavailable", "cpu")].error
    assert by_case[("partial", "cpu")].error == "metric latency was not recorded"
    assert summary.has_failures
    rows = {(r.params["behaviour"], r.device): r for r in store.results(suite="s")}
    assert rows[("raise", "cpu")].status == "failed" and "traceback" in rows[("raise", "cpu")].notes
    ok = store.results(suite="s", with_samples=True)
    ok_row = next(r for r in ok if r.status == "ok" and r.device == "cpu")
    assert len(ok_row.metrics["latency"].samples) == 3
    assert store.runs("s")[-1].status == "failed" and store.runs("s")[-1].ended_at is not None


def test_second_run_skips_everything_and_force_reruns(tmp_path: Path, any_db_url: str) -> None:
    body = "  - trial: test.behave\n    matrix: {index: [1, 2, 3], batch_size: [1, 2]}\n"
    path = suite_file(tmp_path, body)
    assert main(["run", str(path), "--db", any_db_url, "--no-progress"]) == 0
    store = Store(any_db_url)
    assert sum(store.results_per_run("s").values()) == 6
    assert main(["run", str(path), "--db", any_db_url, "--no-progress"]) == 0
    assert sum(store.results_per_run("s").values()) == 6
    suite = load_suite(path)
    summary = run_suite(suite, store, RunOptions(show_progress=False))
    assert {o.status for o in summary.outcomes} == {"skipped"}
    summary = run_suite(suite, store, RunOptions(force=True, only="index=2", show_progress=False))
    assert len(summary.outcomes) == 2 and {o.status for o in summary.outcomes} == {"ok"}
    assert sum(store.results_per_run("s").values()) == 8


def test_fail_fast_stops(tmp_path: Path, any_db_url: str) -> None:
    body = "  - trial: test.behave\n    cases: [{behaviour: raise}, {behaviour: ok}]\n"
    summary = run_suite(load_suite(suite_file(tmp_path, body)), Store(any_db_url),
                        RunOptions(fail_fast=True, show_progress=False))  # fmt: skip
    assert [o.status for o in summary.outcomes] == ["failed"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, str(TESTS / "engine_trials.py"), *args]


def test_kill_9_then_rerun_completes_with_one_row_per_unit(tmp_path: Path, any_db_url: str) -> None:
    body = "  - trial: test.behave\n    params: {seconds: 0.4}\n    matrix: {index: [1, 2, 3, 4, 5, 6, 7, 8]}\n"
    path = suite_file(tmp_path, body)
    proc = subprocess.Popen(_cli("run", str(path), "--db", any_db_url, "--no-progress"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    store = Store(any_db_url)
    deadline = time.monotonic() + 60
    while sum(store.results_per_run("s").values()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sum(store.results_per_run("s").values())
    assert 3 <= done < 8
    assert (
        subprocess.run(_cli("run", str(path), "--db", any_db_url, "--no-progress"), capture_output=True).returncode == 0
    )
    rows = store.results(suite="s", latest_per_unit=False)
    keys = [r.key for r in rows]
    assert len(keys) == 8 and len(set(keys)) == 8 and all(r.status == "ok" for r in rows)
    assert all(len(r.metrics) == 2 for r in rows)  # no half-written unit


def test_a_unit_stored_by_another_suite_is_not_skipped(tmp_path: Path, db_url: str) -> None:
    body = "  - trial: test.behave\n    params: {seconds: 0.0}\n    matrix: {index: [1, 2]}\n"
    a, b = suite_file(tmp_path, body, "a"), suite_file(tmp_path, body, "b")
    for path in (a, b, b):
        assert (
            subprocess.run(_cli("run", str(path), "--db", db_url, "--no-progress"), capture_output=True).returncode == 0
        )
    store = Store(db_url)
    assert (
        sum(store.results_per_run("a").values()) == 2 and sum(store.results_per_run("b").values()) == 2
    )  # b ran its own, once


def test_two_concurrent_runs_share_one_db(tmp_path: Path, any_db_url: str) -> None:
    Store(any_db_url)
    body = "  - trial: test.behave\n    params: {seconds: 0.05}\n    matrix: {index: [1, 2, 3, 4, 5, 6]}\n"
    a, b = suite_file(tmp_path, body, "a"), suite_file(tmp_path, body, "b")
    procs = [subprocess.Popen(_cli("run", str(p), "--db", any_db_url, "--no-progress"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for p in (a, b)]  # fmt: skip
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    store = Store(any_db_url)
    assert sum(store.results_per_run("a").values()) == 6 and sum(store.results_per_run("b").values()) == 6


def test_schema_version_mismatch_is_a_clear_error(any_db_url: str) -> None:
    Store(any_db_url)
    engine = create_engine(any_db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE meta SET value = :v WHERE key = 'schema_version'"), {"v": str(SCHEMA_VERSION + 1)})
    with pytest.raises(UserError, match="newer than this harness"):
        Store(any_db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE meta SET value = '0' WHERE key = 'schema_version'"))
    with pytest.raises(UserError, match="harness db upgrade"):
        Store(any_db_url)


def test_show_and_runs_commands(tmp_path: Path, any_db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = suite_file(tmp_path, "  - trial: test.behave\n    matrix: {index: [1, 2]}\n")
    assert main(["run", str(path), "--db", any_db_url, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["show", "s", "--db", any_db_url, "--format", "csv"]) == 0
    csv = capsys.readouterr().out
    assert csv.splitlines()[0].startswith("run_id,suite,trial") and len(csv.splitlines()) == 3
    assert main(["runs", "--db", any_db_url]) == 0
    assert main(["show", "nosuch", "--db", any_db_url]) == 2


def test_list_dry_run_and_did_you_mean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    assert "test.behave" in capsys.readouterr().out
    assert main(["list", "test.behave"]) == 0
    shown = capsys.readouterr().out
    assert "behaviour" in shown and "latency" in shown and "precision" in shown
    assert main(["list", "test.behav"]) == 2
    assert "did you mean test.behave" in capsys.readouterr().err
    path = suite_file(tmp_path, "  - trial: test.behave\n    matrix: {index: [1, 2, 3]}\n")
    db = tmp_path / "never.db"
    assert main(["run", str(path), "--dry-run", "--db", f"sqlite:///{db}"]) == 0
    assert "3 units" in capsys.readouterr().out and not db.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--threads", "0"], "--threads 0: must be at least 1"),
        (["--threads", "-2", "--dry-run"], "--threads -2: must be at least 1"),
        (["--timeout", "-5"], "--timeout -5: must be a positive number of seconds"),
        (["--timeout", "nan"], "--timeout nan: must be a positive number of seconds"),
    ],
)
def test_bad_run_flags_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    path = suite_file(tmp_path, "  - trial: test.behave\n    matrix: {index: [1]}\n")
    db = tmp_path / "h.db"
    assert main(["run", str(path), "--db", f"sqlite:///{db}", "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not db.exists()


def test_a_database_driver_that_is_not_installed_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    """SQLAlchemy 2.1 reads postgresql:// as psycopg (3); the postgres extra installs psycopg2."""
    pytest.importorskip("psycopg2")  # the postgres extra, as `make test` installs it
    if importlib.util.find_spec("psycopg") is not None:
        pytest.skip("psycopg (3) is installed here: the default driver loads")
    assert main(["runs", "--db", "postgresql://me:hunter2@127.0.0.1:1/db"]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err and err.count("\n") == 1
    assert "driver 'psycopg' is not installed" in err and "postgresql+psycopg2://" in err


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_show_to_a_path_that_cannot_be_written_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    path = suite_file(tmp_path, "  - trial: test.behave\n    matrix: {index: [1]}\n")
    db = f"sqlite:///{tmp_path / 'h.db'}"
    assert main(["run", str(path), "--db", db, "--no-progress"]) == 0
    (tmp_path / "a_directory").mkdir()
    (tmp_path / "a_file").write_text("")
    for out, said in ((tmp_path / "a_directory", "cannot write"), (tmp_path / "a_file" / "x", "cannot create")):
        capsys.readouterr()
        assert main(["show", "s", "--db", db, "--format", fmt, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"--out: {said} " in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_report_and_baseline_to_paths_that_cannot_be_written_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = suite_file(tmp_path, "  - trial: test.behave\n    matrix: {index: [1]}\n")
    db = f"sqlite:///{tmp_path / 'h.db'}"
    assert main(["run", str(path), "--db", db, "--no-progress"]) == 0
    (tmp_path / "out" / "s.md").mkdir(parents=True)  # where the report's markdown file goes
    (tmp_path / "out" / "s-history.html").mkdir()
    (tmp_path / "baseline.json").mkdir()
    cases = [
        (["report", str(path), "--out", str(tmp_path / "out"), "--format", "md"], "s.md: Is a directory"),
        (["report", str(path), "--out", str(tmp_path / "out"), "--history"], "s-history.html: Is a directory"),
        (["baseline", "save", "1", "--out", str(tmp_path / "baseline.json"), "--allow-dirty"], "Is a directory"),
    ]
    for argv, said in cases:
        capsys.readouterr()
        assert main([*argv, "--db", db]) == 2, argv
        err = capsys.readouterr().err
        assert "--out: cannot write" in err and said in err and err.count("\n") == 1, err
