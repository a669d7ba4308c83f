"""``harness run --dry-run`` estimates each unit's time from a doctored database: the last wall time of
the same unit key, else the median of the same trial at the same scale, else unknown; units stored ok
for the suite are skipped (0 s) unless --force; the total is printed."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import engine_trials  # noqa: F401
import pytest

from harness import cli
from harness.cli import main
from harness.results import MetricValue, ResultRow, Status, UnitIdentity
from harness.runner import estimate_times, total_estimate
from harness.store import Store
from harness.suite import Unit, load_suite

SUITE = """\
name: est
scales: {smoke: {}, default: {}}
benchmarks:
  - trial: test.behave
    matrix: {index: [0, 1, 2]}
  - trial: test.simple
"""
T0 = datetime(2026, 1, 1, 12, 0, 0)


def _store(db: str, suite: str, unit_key: str, trial: str, seconds: float, scale: str = "smoke",
           status: Status = Status.OK) -> None:  # fmt: skip
    store = Store(db)
    run = store.start_run(suite=suite, scale=scale)
    identity = UnitIdentity(trial, params={"doctored": unit_key})
    metrics = {"value": MetricValue("value", 1.0)} if status == Status.OK else {}
    start = T0 + timedelta(minutes=len(store.runs()))
    row = ResultRow(unit_key, suite, identity, status, metrics=metrics, scale_name=scale,
                    started_at=start, ended_at=start + timedelta(seconds=seconds))  # fmt: skip
    store.add_result(run, row)


@pytest.fixture
def units(tmp_path: Path) -> list[Unit]:
    path = tmp_path / "est.yaml"
    path.write_text(SUITE)
    return load_suite(path).units("smoke")


def test_estimates_from_the_same_unit_then_the_trials_median_then_unknown(tmp_path: Path, units: list[Unit]) -> None:
    db = f"sqlite:///{tmp_path / 'r.db'}"
    first, second, third, simple = units
    _store(db, "other", first.key, "test.behave", 10.0)  # the same unit, stored by another suite
    _store(db, "other", first.key, "test.behave", 20.0)  # ... later: its last time counts
    _store(db, "other", first.key, "test.behave", 500.0, status=Status.FAILED)  # a failure is no estimate
    for i, seconds in enumerate((3.0, 5.0, 100.0)):  # other units of the trial at this scale
        _store(db, "other", f"k{i}", "test.behave", seconds)
    _store(db, "other", "k9", "test.behave", 1000.0, scale="default")  # another scale does not count
    _store(db, "est", second.key, "test.behave", 7.0)  # stored ok for this suite: skipped
    estimates = estimate_times(units, Store(db, create=False))
    assert [e.seconds for e in estimates] == [20.0, 0.0, 7.0, None]
    assert estimates[0].basis == "last run of this unit" and estimates[1].basis.startswith("stored ok: skipped")
    assert estimates[2].basis == "median of 5 test.behave unit(s) at smoke"  # last times 3, 5, 7, 20, 100
    assert estimates[3].basis == "unknown"
    forced = estimate_times(units, Store(db, create=False), force=True)
    assert [e.seconds for e in forced] == [20.0, 7.0, 7.0, None]  # --force: the stored unit's own last time
    assert total_estimate(forced) == "about 34.0 s (1 unit(s) with no earlier time: a lower bound)"
    assert total_estimate(estimates[:3]) == "about 27.0 s"


def test_dry_run_prints_each_estimate_and_the_total(
    tmp_path: Path,
    units: list[Unit],
    capsys,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    monkeypatch.setattr(cli.out, "width", 250)  # one line per unit
    db = f"sqlite:///{tmp_path / 'r.db'}"
    for unit in units:
        _store(db, "other", unit.key, unit.trial.name, 90.0)
    path = str(tmp_path / "est.yaml")
    assert main(["run", path, "--scale", "smoke", "--dry-run", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "estimated time: about 6.0 min" in out and out.count("1.5 min") == 4
    assert out.count("last run of this unit") == 4
    assert [r.suite for r in Store(db).results()] == ["other"] * 4  # a dry run stores nothing


def test_dry_run_without_a_database_lists_the_units_and_says_why_there_is_no_estimate(
    tmp_path: Path,
    units: list[Unit],
    capsys,  # noqa: ANN001
) -> None:
    missing = tmp_path / "none" / "r.db"
    assert (
        main(["run", str(tmp_path / "est.yaml"), "--scale", "smoke", "--dry-run", "--db", f"sqlite:///{missing}"]) == 0
    )
    captured = capsys.readouterr()
    assert "no time estimates: database" in captured.err and "does not exist" in captured.err
    assert "4 unit(s) with no earlier time" in captured.out and not missing.exists()
