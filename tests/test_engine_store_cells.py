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


# (table, column, the SQL value written into its lowest-id row, what the message says the cell should
# be, where it can be written: "sqlite" = what only SQLite keeps, a value of the wrong storage type or
# a reference to no row (foreign keys are not enforced); "any" = a value of the right type that no code
# knows, caught on every back end)
DOCTORINGS = [
    ("results", "duration_s", "'abc'", "is not a number", "sqlite"),
    ("results", "params", "'{not json'", "is not valid JSON", "sqlite"),
    ("results", "notes", "'oops'", "is not valid JSON", "sqlite"),
    ("results", "seed", "'x'", "is not an integer", "sqlite"),
    ("results", "started_at", "'yesterday'", "is not a date", "sqlite"),
    ("results", "section", "x'00ff'", "is not text", "sqlite"),
    ("runs", "started_at", "'2026-13-45 10:00:00'", "is not a date", "sqlite"),
    ("runs", "packages", "'garbage'", "is not valid JSON", "sqlite"),
    ("runs", "threads", "'two'", "is not an integer", "sqlite"),
    ("runs", "git_dirty", "7", "is not a boolean", "sqlite"),
    ("metrics", "value", "'abc'", "is not a number", "sqlite"),
    ("samples", "value", "x'00'", "is not a number", "sqlite"),
    ("results", "run_id", "999", "is not the id of a row of runs", "sqlite"),
    ("metrics", "result_id", "999", "is not the id of a row of results", "sqlite"),
    ("samples", "metric_id", "999", "is not the id of a row of metrics", "sqlite"),
    ("results", "params", "'[1, 2]'", "is not a JSON object", "any"),
    ("results", "status", "'weird'", "is not one of ok, failed", "any"),
    ("results", "duration_s", "-5", "is not a duration", "any"),
    ("runs", "units", """'{"a": 1}'""", "is not a JSON array", "any"),
    ("runs", "status", "'sleeping'", "is not one of running, ok", "any"),
    ("runs", "jobs", """'{"jobs": 5}'""", "is not a list of jobs", "any"),
    ("runs", "jobs", """'{"jobs": [{"units": 3}]}'""", "is not a job's list of unit keys", "any"),
]


def doctored(where: str) -> list[tuple[str, str, str, str]]:
    return [case[:4] for case in DOCTORINGS if case[4] == where]


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


def doctor_and_check(
    tmp_path: Path, url: str, case: tuple[str, str, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    table, column, value, expected = case
    suite = stored_run(tmp_path, url)
    with create_engine(url).begin() as conn:
        row = conn.execute(text(f"SELECT min(id) FROM {table}")).scalar_one()
        conn.execute(text(f"UPDATE {table} SET {column} = {value} WHERE id = {row}"))
    check_every_command_refuses(tmp_path, url, suite, f"{table} row {row}, column {column}:", expected, capsys)


@pytest.mark.parametrize("case", doctored("sqlite"))
def test_a_cell_of_the_wrong_type_is_named_by_every_command(
    tmp_path: Path, db_url: str, case: tuple[str, str, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    doctor_and_check(tmp_path, db_url, case, capsys)


@pytest.mark.parametrize("case", doctored("any"))
def test_a_value_no_code_knows_is_named_on_every_back_end(
    tmp_path: Path, any_db_url: str, case: tuple[str, str, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    doctor_and_check(tmp_path, any_db_url, case, capsys)


def test_a_metric_named_twice_in_one_result_is_named_on_every_back_end(
    tmp_path: Path, any_db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A report would show either of the two values: the copy is named instead."""
    suite = stored_run(tmp_path, any_db_url)
    with create_engine(any_db_url).begin() as conn:
        conn.execute(
            text(
                "INSERT INTO metrics (result_id, name, value, unit, better) "
                "SELECT result_id, name, value + 1, unit, better FROM metrics WHERE id = (SELECT min(id) FROM metrics)"
            )
        )
        copy = conn.execute(text("SELECT max(id) FROM metrics")).scalar_one()
    check_every_command_refuses(
        tmp_path, any_db_url, suite, f"metrics row {copy}, column name:", "(it has it twice)", capsys
    )


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        ("DROP TABLE samples", "has no table samples"),
        ("ALTER TABLE results DROP COLUMN notes", "table results has no column notes"),
    ],
)
def test_a_table_or_column_removed_by_hand_is_named(
    tmp_path: Path, db_url: str, edit: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not a misleading cell (SQLite reads a missing quoted column as the string 'notes') nor a
    database error (exit 1) on the first query that needs it."""
    suite = stored_run(tmp_path, db_url)
    with create_engine(db_url).begin() as conn:
        conn.execute(text(edit))
    check_every_command_refuses(tmp_path, db_url, suite, said, "which its schema version", capsys)


def test_a_meta_table_without_a_schema_version_is_not_version_0(
    tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """It used to read as version 0, with the advice to run `harness db upgrade`, which has no
    migration from 0."""
    stored_run(tmp_path, db_url)
    with create_engine(db_url).begin() as conn:
        conn.execute(text("DELETE FROM meta"))
    capsys.readouterr()
    assert main(["runs", "--db", db_url]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "meta table without a schema_version" in lines[0]


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
