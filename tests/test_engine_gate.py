from __future__ import annotations

import json
import math
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import engine_trials  # noqa: F401
import pytest
from rich.console import Console
from sqlalchemy import create_engine, text

from harness.ab import ABResult
from harness.cli import main
from harness.gate import ABOutcome, Verdict, compare, compare_ab, load_baseline, render
from harness.results import UnitIdentity
from harness.suite import GateSettings

ROOT = Path(__file__).resolve().parents[1]


def _unit(metrics: dict, status: str = "ok") -> dict:
    return {"unit": "u", "status": status, "error": "boom" if status != "ok" else "", "metrics": metrics}


MIOU = {"unit": "%", "better": "higher"}
LATENCY = {"unit": "ms", "better": "lower"}


def test_accuracy_tolerance_and_status_change() -> None:
    base = {"units": {"a": _unit({"miou": {**MIOU, "value": 70.0}})}}
    within = {"a": _unit({"miou": {**MIOU, "value": 69.8}})}
    worse = {"a": _unit({"miou": {**MIOU, "value": 69.5}})}
    settings = GateSettings()
    assert [v.verdict for v in compare(base, within, settings)] == ["unchanged"]
    assert [v.verdict for v in compare(base, worse, settings)] == ["regression"]
    for status in ("failed", "timeout", "oom", "unavailable"):
        (verdict,) = compare(base, {"a": _unit({}, status)}, settings)
        assert verdict.verdict == "regression" and verdict.fails and f"ok -> {status}" == verdict.change


def test_missing_unit_missing_metric_and_nan_fail_and_are_named() -> None:
    base = {"units": {"a": _unit({"miou": {**MIOU, "value": 70.0}, "recall": {**MIOU, "value": 50.0}})}}
    (missing_unit,) = compare(base, {}, GateSettings())
    assert missing_unit.verdict == "missing" and missing_unit.fails
    dropped = compare(base, {"a": _unit({"miou": {**MIOU, "value": 70.0}})}, GateSettings())
    assert [(v.metric, v.verdict) for v in dropped if v.fails] == [("recall", "missing")]
    for bad in (float("nan"), float("inf"), None):
        got = compare(base, {"a": _unit({"miou": {**MIOU, "value": bad}, "recall": {**MIOU, "value": 50.0}})},
                      GateSettings())  # fmt: skip
        assert [(v.metric, v.verdict) for v in got if v.fails] == [("miou", "invalid")]


def test_new_units_are_reported_not_failed() -> None:
    base = {"units": {"a": _unit({"miou": {**MIOU, "value": 70.0}})}}
    current = {"a": _unit({"miou": {**MIOU, "value": 70.0}}), "b": {**_unit({}), "unit": "b"}}
    verdicts = compare(base, current, GateSettings())
    assert [v.verdict for v in verdicts] == ["unchanged", "new"] and not any(v.fails for v in verdicts)


def test_a_time_derived_without_samples_does_not_gate_but_an_accuracy_does() -> None:
    per_site = {"unit": "us", "better": "lower"}
    base = {"units": {"a": _unit({"per_site": {**per_site, "value": 6.9}})}}
    assert compare(base, {"a": _unit({"per_site": {**per_site, "value": 8.1}})}, GateSettings()) == []
    as_points = {"unit": "%", "better": "lower"}
    base = {"units": {"a": _unit({"m": {**as_points, "value": 6.9}})}}
    worse = {"a": _unit({"m": {**as_points, "value": 8.1}})}
    assert [v.verdict for v in compare(base, worse, GateSettings())] == ["regression"]


def _ab(base: list[float], head: list[float]) -> ABResult:
    return ABResult("a", "latency", base=base, head=head)


def test_ab_verdict_uses_rounds_as_evidence() -> None:
    steady = [10.0, 10.2, 9.9, 10.1, 10.0]
    assert compare_ab(_ab(steady, [x * 1.5 for x in steady]), 0.25, 0.01)[0] == "regression"
    assert compare_ab(_ab(steady, [x / 1.5 for x in steady]), 0.25, 0.01)[0] == "improvement"
    # A consistent but small change is below the minimum effect: unchanged.
    assert compare_ab(_ab(steady, [x * 1.1 for x in steady]), 0.25, 0.01)[0] == "unchanged"
    # A large mean change driven by one noisy round is not significant over the rounds.
    assert compare_ab(_ab(steady, [10.0, 10.1, 30.0, 10.0, 9.9]), 0.25, 0.01)[0] == "unchanged"
    assert compare_ab(_ab([10.0], [20.0]), 0.25, 0.01)[0] == "not gated"
    assert math.isclose(_ab([1.0, 4.0], [2.0, 2.0]).ratio(), 1.0)


def test_latency_is_not_gated_without_ab_and_says_why() -> None:
    base = {"units": {"a": _unit({"latency": {**LATENCY, "value": 1.0, "samples": [1.0, 1.0, 1.0]}})}}
    current = {"a": _unit({"latency": {**LATENCY, "value": 5.0, "samples": [5.0, 5.0, 5.0]}})}
    (v,) = compare(base, current, GateSettings(), ABOutcome({}, unavailable="commit not in this clone"))
    assert v.verdict == "not gated" and "commit not in this clone" in v.detail and not v.fails
    broken = ABOutcome({("a", "*"): ABResult("a", "*", error="failed: boom", failed_side="head")})
    (v,) = compare(base, current, GateSettings(), broken)
    assert v.fails and "boom" in v.detail
    ab = ABOutcome({("a", "latency"): _ab([1.0, 1.02, 0.99], [1.6, 1.63, 1.58])})
    (v,) = compare(base, current, GateSettings(min_effect=0.25), ab)
    assert v.verdict == "regression"


def test_render_lists_verdicts() -> None:
    console = Console(record=True, width=200)
    render([Verdict("u", "latency", "regression", 1.0, 2.0, "+100%", "A/B ratio 2")], console, "t")
    text = console.export_text()
    assert "regression" in text and "A/B ratio" in text


def test_gate_settings_are_validated_on_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    cases = (
        ("{min_efect: 0.1}", "gate.min_efect"),
        ("{rounds: 1}", "gate.rounds"),
        ("{alpha: 2}", "gate.alpha"),
        ("{metrics: {latency: {tolerance: 1}}}", "gate.metrics.latency"),
    )
    for gate, key in cases:
        path.write_text(f"name: bad\ngate: {gate}\nbenchmarks:\n  - trial: test.behave\n")
        assert main(["validate", str(path)]) == 2
        err = capsys.readouterr().err
        assert key in err and err.count("\n") == 1


# --- end to end: doctored result databases ----------------------------------------------------------

ACCURACY_SUITE = """\
name: gated
seed: 0
benchmarks:
  - trial: test.behave
    cases:
      - {label: one, index: 10}
      - {label: two, index: 12}
"""


def _doctor(db: Path, sql: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(sql)


@pytest.mark.parametrize(
    ("sql", "named"),
    [
        (
            "DELETE FROM samples WHERE metric_id IN (SELECT m.id FROM metrics m JOIN results r ON m.result_id = r.id"
            " WHERE r.label = 'two');"
            " DELETE FROM metrics WHERE result_id IN (SELECT id FROM results WHERE label = 'two');"
            " DELETE FROM results WHERE label = 'two'",
            "test.behave [two]",
        ),
        ("UPDATE metrics SET value = 'NaN' WHERE name = 'value'", "value"),
        ("UPDATE metrics SET value = {infinity} WHERE name = 'value'", "value"),
        ("DELETE FROM metrics WHERE name = 'value'", "value"),
    ],
)
def test_check_fails_on_a_doctored_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sql: str, named: str, any_db_url: str
) -> None:
    suite = tmp_path / "gated.yaml"
    suite.write_text(ACCURACY_SUITE)
    base_db, cur_db = f"sqlite:///{tmp_path / 'base.db'}", any_db_url  # the run checked: SQLite, then PostgreSQL
    for db in (base_db, cur_db):
        assert main(["run", str(suite), "--db", db, "--no-progress"]) == 0
    baseline = tmp_path / "baseline.json"
    assert main(["baseline", "save", str(suite), "--db", base_db, "--out", str(baseline), "--allow-dirty"]) == 0
    check = ["check", str(suite), "--db", cur_db, "--baseline", str(baseline), "--no-ab"]
    assert main(check) == 0
    capsys.readouterr()
    engine = create_engine(cur_db)
    infinity = "9e999" if engine.dialect.name == "sqlite" else "'Infinity'"
    with engine.begin() as conn:  # foreign keys hold (PostgreSQL): dependent rows go first
        for statement in sql.format(infinity=infinity).split(";"):
            conn.execute(text(statement))
    engine.dispose()
    assert main(check) == 1
    out = capsys.readouterr().out
    failing = [line for line in out.splitlines() if line.startswith(("missing:", "invalid:", "regression:"))]
    assert failing and any(named in line for line in failing)


def test_bad_baseline_input_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'x.db'}"
    path = tmp_path / "gated.yaml"
    path.write_text(ACCURACY_SUITE)
    assert main(["run", str(path), "--db", db, "--no-progress"]) == 0
    assert main(["check", str(path), "--db", db, "--baseline", str(tmp_path / "missing.json")]) == 2
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": 2, "suite": "ci", "units": {}}))
    assert main(["check", str(path), "--db", db, "--baseline", str(other)]) == 2
    assert "baseline" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["check", str(path), "--db", db, "--baseline", str(tmp_path / "bad.json")]) == 2


def _first_unit(data: dict) -> dict:
    return next(iter(data["units"].values()))


def _first_metric(data: dict) -> dict:
    return next(iter(_first_unit(data)["metrics"].values()))


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda d: d.pop("suite"), "suite: missing"),
        (lambda d: _first_unit(d).update(status="weird"), ".status: 'weird' is not one of"),
        (lambda d: _first_unit(d).update(metrics=[1, 2]), ".metrics: missing or not an object"),
        (lambda d: _first_unit(d).pop("unit"), ".unit: missing or not a string"),
        (lambda d: _first_metric(d).update(value="abc"), ".value: 'abc' is not a number"),
        (lambda d: _first_metric(d).update(value=True), ".value: True is not a number"),
        (lambda d: _first_metric(d).update(better="sideways"), ".better: 'sideways' is not one of"),
        (lambda d: _first_metric(d).update(samples=["x"]), ".samples: not a list of numbers"),
    ],
)
def test_a_hand_edited_baseline_is_named_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit, named: str
) -> None:
    db = f"sqlite:///{tmp_path / 'x.db'}"
    path = tmp_path / "gated.yaml"
    path.write_text(ACCURACY_SUITE)
    assert main(["run", str(path), "--db", db, "--no-progress"]) == 0
    baseline = tmp_path / "baseline.json"
    assert main(["baseline", "save", str(path), "--db", db, "--out", str(baseline), "--allow-dirty"]) == 0
    check = ["check", str(path), "--db", db, "--baseline", str(baseline), "--no-ab"]
    assert main(check) == 0
    data = json.loads(baseline.read_text())
    edit(data)
    baseline.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(check) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(baseline) in err and named in err and "Traceback" not in err


def test_baseline_save_refuses_a_dirty_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "x.db"
    path = tmp_path / "gated.yaml"
    path.write_text(ACCURACY_SUITE)
    assert main(["run", str(path), "--db", f"sqlite:///{db}", "--no-progress"]) == 0
    _doctor(db, "UPDATE runs SET git_dirty = 1, git_sha = 'abc'")
    out = tmp_path / "b.json"
    assert main(["baseline", "save", str(path), "--db", f"sqlite:///{db}", "--out", str(out)]) == 2
    assert "dirty" in capsys.readouterr().err and not out.exists()
    assert main(["baseline", "save", str(path), "--db", f"sqlite:///{db}", "--out", str(out), "--allow-dirty"]) == 0


# --- end to end: the same-machine A/B in a throw-away git repository ---------------------------------

AB_SUITE = """\
name: absuite
seed: 0
timing: {{warmup: 3, iters: 15, threads: 1}}
gate: {{min_effect: 0.25, rounds: 8, warmup_rounds: 1, alpha: 0.01}}
benchmarks:
  - trial: micro.conv2d
    cases:
      - {{label: steady, channels: 32, height: 64, width: 128}}
      - {{label: work, channels: 32, height: 64, width: 128, work_factor: {factor}}}
"""


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def _harness(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from harness.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin", "HOME": str(repo.parent)}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=repo, env=env, capture_output=True, text=True)


@pytest.fixture
def ab_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    for package in ("harness", "methods"):
        shutil.copytree(ROOT / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "suites").mkdir()
    (repo / "suites" / "absuite.yaml").write_text(AB_SUITE.format(factor=1.0))
    (repo / ".gitignore").write_text("results/\n")
    _git(repo, "init", "-q")
    _git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    _git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "base")
    return repo


@pytest.mark.slow
def test_ab_gate_passes_an_unchanged_tree_and_flags_a_real_slowdown(ab_repo: Path, tmp_path: Path) -> None:
    db, baseline = f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "baseline.json"
    run = _harness(ab_repo, "run", "suites/absuite.yaml", "--db", db, "--no-progress")
    assert run.returncode == 0, run.stderr
    saved = _harness(ab_repo, "baseline", "save", "suites/absuite.yaml", "--db", db, "--out", str(baseline))
    assert saved.returncode == 0, saved.stderr
    data = load_baseline(baseline)
    assert data["provenance"]["git_dirty"] is False and len(data["provenance"]["git_sha"]) == 40
    same = _harness(ab_repo, "check", "suites/absuite.yaml", "--db", db, "--baseline", str(baseline))
    assert same.returncode == 0, same.stdout + same.stderr
    assert "A/B ratio" in same.stdout and "regression" not in same.stdout
    # A commit that makes one unit do 1.5x the work.
    (ab_repo / "suites" / "absuite.yaml").write_text(AB_SUITE.format(factor=1.5))
    _git(ab_repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-am", "slower")
    assert _harness(ab_repo, "run", "suites/absuite.yaml", "--db", db, "--no-progress").returncode == 0
    slow = _harness(ab_repo, "check", "suites/absuite.yaml", "--db", db, "--baseline", str(baseline))
    assert slow.returncode == 1, slow.stdout + slow.stderr
    flagged = [line for line in slow.stdout.splitlines() if line.startswith("regression:")]
    assert len(flagged) == 1 and "[work]" in flagged[0], slow.stdout


@pytest.mark.slow
def test_ab_gate_says_so_when_the_commit_is_unreachable(ab_repo: Path, tmp_path: Path) -> None:
    db, baseline = f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "baseline.json"
    assert _harness(ab_repo, "run", "suites/absuite.yaml", "--db", db, "--no-progress").returncode == 0
    assert (
        _harness(ab_repo, "baseline", "save", "suites/absuite.yaml", "--db", db, "--out", str(baseline)).returncode == 0
    )
    data = json.loads(baseline.read_text())
    data["provenance"]["git_sha"] = "0" * 40
    baseline.write_text(json.dumps(data))
    check = _harness(ab_repo, "check", "suites/absuite.yaml", "--db", db, "--baseline", str(baseline))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "latency NOT gated" in check.stdout and "not in this clone" in check.stdout


def test_identity_ignores_parameters_of_labelled_units() -> None:
    labelled = UnitIdentity("t", label="x", params={"a": 1})
    assert labelled.gate_id == replace(labelled, params={"a": 2}).gate_id
    assert labelled.key != replace(labelled, params={"a": 2}).key  # a unit key still tells them apart
    bare = replace(labelled, label="")
    assert bare.gate_id != replace(bare, params={"a": 2}).gate_id


@pytest.mark.slow
def test_values_are_judged_against_the_baseline_commit_re_run_on_this_machine(ab_repo: Path, tmp_path: Path) -> None:
    """A value stored on another machine (a trained model's figure moves with the CPU's summation
    order) is re-measured here from the baseline's commit; without the A/B the stored value is used."""
    db, baseline = f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "baseline.json"
    assert _harness(ab_repo, "run", "suites/absuite.yaml", "--db", db, "--no-progress").returncode == 0
    assert (
        _harness(ab_repo, "baseline", "save", "suites/absuite.yaml", "--db", db, "--out", str(baseline)).returncode == 0
    )
    data = json.loads(baseline.read_text())
    for unit in data["units"].values():  # as if stored elsewhere: a gated value off by 1 (tolerance 0.3)
        unit["metrics"]["gmacs"].update(better="higher", value=unit["metrics"]["gmacs"]["value"] + 1.0)
    baseline.write_text(json.dumps(data))
    here = _harness(ab_repo, "check", "suites/absuite.yaml", "--db", db, "--baseline", str(baseline))
    assert "re-run on this machine" in here.stdout, here.stdout + here.stderr
    assert "regression:" not in here.stdout and here.returncode == 0, here.stdout + here.stderr
    stored = _harness(ab_repo, "check", "suites/absuite.yaml", "--db", db, "--baseline", str(baseline), "--no-ab")
    assert stored.returncode == 1 and "gmacs" in stored.stdout, stored.stdout + stored.stderr
