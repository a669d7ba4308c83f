"""A hand-edited (doctored) result database: every command that opens it names the first cell it
cannot read back (table, row, column) in one line, exits 2 without a traceback, and changes nothing."""

from __future__ import annotations

import math
from pathlib import Path

import engine_trials  # noqa: F401
import pytest
from sqlalchemy import create_engine, text

from harness.cli import main
from harness.results import MetricValue, ResultRow, Status, UnitIdentity
from harness.store import Store, utcnow

SUITE = "name: s\ntiming: {warmup: 0, iters: 3}\nbenchmarks:\n  - trial: test.behave\n    matrix: {index: [1, 2]}\n"


def stored_run(tmp_path: Path, url: str) -> Path:
    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE)
    assert main(["run", str(suite), "--db", url, "--no-progress"]) == 0
    return suite


def commands(suite: Path, out: Path) -> list[list[str]]:
    return [
        ["runs"],
        ["show", "s"],
        ["show", "1", "--format", "json"],
        ["report", str(suite), "--out", str(out / "reports"), "--format", "md"],
        ["compare", "1", "1"],
        ["run", str(suite), "--force", "--no-progress"],
        ["status", "1"],
        ["baseline", "save", "1", "--out", str(out / "baseline.json"), "--allow-dirty"],
    ]


def table_counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        return {t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in ("runs", "results")}


def result_id(url: str) -> int:
    with create_engine(url).connect() as conn:
        return int(conn.execute(text("SELECT min(id) FROM results")).scalar_one())


# (SQL with {id} = the first result's id, table, column, what the message says the cell should be)
SQLITE_DOCTORINGS = [
    ("UPDATE results SET duration_s = 'abc' WHERE id = {id}", "results", "duration_s", "is not a number"),
    ("UPDATE results SET params = '{{not json' WHERE id = {id}", "results", "params", "is not valid JSON"),
    ("UPDATE results SET notes = 'oops' WHERE id = {id}", "results", "notes", "is not valid JSON"),
    ("UPDATE results SET seed = 'x' WHERE id = {id}", "results", "seed", "is not an integer"),
    ("UPDATE results SET started_at = 'yesterday' WHERE id = {id}", "results", "started_at", "is not a date"),
    ("UPDATE results SET section = x'00ff' WHERE id = {id}", "results", "section", "is not text"),
    ("UPDATE runs SET started_at = '2026-13-45 10:00:00' WHERE id = 1", "runs", "started_at", "is not a date"),
    ("UPDATE runs SET packages = 'garbage' WHERE id = 1", "runs", "packages", "is not valid JSON"),
    ("UPDATE runs SET threads = 'two' WHERE id = 1", "runs", "threads", "is not an integer"),
    ("UPDATE runs SET git_dirty = 7 WHERE id = 1", "runs", "git_dirty", "is not a boolean"),
    (
        "UPDATE metrics SET value = 'abc' WHERE id = (SELECT min(id) FROM metrics)",
        "metrics",
        "value",
        "is not a number",
    ),
    (
        "UPDATE samples SET value = x'00' WHERE id = (SELECT min(id) FROM samples)",
        "samples",
        "value",
        "is not a number",
    ),
]

# Wrong values of the right type: caught on every back end.
ANY_DB_DOCTORINGS = [
    ("UPDATE results SET params = '[1, 2]' WHERE id = {id}", "results", "params", "is not a JSON object"),
    ("UPDATE results SET status = 'weird' WHERE id = {id}", "results", "status", "is not one of ok, failed"),
    ("UPDATE results SET duration_s = -5 WHERE id = {id}", "results", "duration_s", "is not a duration"),
    ("UPDATE runs SET units = '{{\"a\": 1}}' WHERE id = 1", "runs", "units", "is not a JSON array"),
    ("UPDATE runs SET status = 'sleeping' WHERE id = 1", "runs", "status", "is not one of running, ok"),
    ("UPDATE runs SET jobs = '{{\"jobs\": 5}}' WHERE id = 1", "runs", "jobs", "is not a list of jobs"),
    (
        'UPDATE runs SET jobs = \'{{"jobs": [{{"units": 3}}]}}\' WHERE id = 1',
        "runs",
        "jobs",
        "is not a job's list of unit keys",
    ),
]


def check_every_command_refuses(
    tmp_path: Path, url: str, suite: Path, where: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = table_counts(url)
    for command in commands(suite, tmp_path):
        capsys.readouterr()
        assert main([*command, "--db", url]) == 2, command
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err + captured.out, command
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and where in lines[0] and expected in lines[0], (command, captured.err)
        assert "nothing was changed" in lines[0]
    # a dry run needs no database: it lists the units and says why it has no time estimates
    capsys.readouterr()
    assert main(["run", str(suite), "--dry-run", "--db", url]) == 0
    said = capsys.readouterr().err
    assert said.startswith("no time estimates: ") and where in said and expected in said
    assert table_counts(url) == before
    assert not (tmp_path / "reports").exists() and not (tmp_path / "baseline.json").exists()


@pytest.mark.parametrize(("sql", "table", "column", "expected"), SQLITE_DOCTORINGS)
def test_a_cell_of_the_wrong_type_is_named_by_every_command(
    tmp_path: Path, db_url: str, sql: str, table: str, column: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = stored_run(tmp_path, db_url)
    first = result_id(db_url)
    with create_engine(db_url).begin() as conn:
        row = conn.execute(text(f"SELECT min(id) FROM {table}")).scalar_one() if table != "results" else first
        conn.execute(text(sql.format(id=first)))
    check_every_command_refuses(tmp_path, db_url, suite, f"{table} row {row}, column {column}:", expected, capsys)


@pytest.mark.parametrize(("sql", "table", "column", "expected"), ANY_DB_DOCTORINGS)
def test_a_value_no_code_knows_is_named_on_every_back_end(
    tmp_path: Path,
    any_db_url: str,
    sql: str,
    table: str,
    column: str,
    expected: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    suite = stored_run(tmp_path, any_db_url)
    first = result_id(any_db_url)
    with create_engine(any_db_url).begin() as conn:
        conn.execute(text(sql.format(id=first)))
    row = first if table == "results" else 1
    check_every_command_refuses(tmp_path, any_db_url, suite, f"{table} row {row}, column {column}:", expected, capsys)


def test_what_the_harness_itself_writes_passes_the_check(db_url: str) -> None:
    """NaN in a metric and NaN / infinity inside JSON notes (Python's json writes those tokens, SQLite's
    JSON functions refuse them) are the harness's own values, not damage."""
    store = Store(db_url)
    run_id = store.start_run(suite="s", command="harness run s.yaml")
    now = utcnow()
    identity = UnitIdentity(trial="test.behave", version="1", label="", section="", params={"index": 1})
    nan = MetricValue("miou", math.nan, "%", "higher", (1.0, math.inf))
    row = ResultRow(
        key="k",
        suite="s",
        identity=identity,
        status=Status.OK,
        error="",
        notes={"threshold": math.nan, "ratio": math.inf, "low": -math.inf},
        metrics={"miou": nan},
        scale_name="default",
        started_at=now,
        ended_at=now,
    )
    store.add_result(run_id, row)
    again = Store(db_url).results(suite="s")[0]
    assert math.isnan(again.metrics["miou"].value) and math.isnan(again.notes["threshold"])
    assert again.notes["ratio"] == math.inf and again.notes["low"] == -math.inf
