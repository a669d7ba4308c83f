"""One identity: for every unit of every shipped suite, the unit key, the gate's identity and a report
layout's match all come from the unit's UnitIdentity, and a stored result gives the same back."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest

from harness.gate import snapshot
from harness.reports.layout import Match
from harness.results import MetricValue, Status, UnitIdentity, gate_ids
from harness.runner import unit_result
from harness.store import Store
from harness.suite import Unit, load_suite

SUITES = sorted((Path(__file__).resolve().parents[1] / "suites").glob("*.yaml"))
T0 = datetime(2026, 1, 1)


@pytest.fixture(scope="module", autouse=True)
def _methods() -> None:
    import methods

    methods.discover()


def _matches(suite_layout) -> list[Match]:  # noqa: ANN001 - a ReportLayout
    found = []
    for table in suite_layout.tables:
        found.append(table.match)
        for row in table.rows:
            found.append(table.match.merged(row.match))
            found.extend(table.match.merged(row.match).merged(c.match) for c in table.columns)
    for figure in suite_layout.figures:
        found.append(figure.match)
        found.extend(figure.match.merged(bar.match) for bar in figure.bars)
    return found


def _stored_result(unit: Unit) -> object:
    metric = MetricValue("value", 1.0, "%", "higher")
    return unit_result(unit, Status.OK, "", {}, T0, T0, {"value": metric})


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.stem)
def test_key_gate_identity_and_layout_match_agree_on_every_unit(path: Path, tmp_path: Path) -> None:
    suite = load_suite(path)
    store = Store(f"sqlite:///{tmp_path / 'ids.db'}")
    run = store.start_run(suite=suite.name)
    units = [u for scale in suite.scale_names() for u in suite.units(scale)]
    by_key: dict[str, Unit] = {}
    for unit in units:
        if unit.key in by_key:  # a unit two scales share is stored once
            continue
        by_key[unit.key] = unit
        store.add_result(run, _stored_result(unit))  # type: ignore[arg-type]
    rows = {row.key: row for row in store.results(run_id=run, latest_per_unit=False)}
    assert set(rows) == set(by_key)
    matches = _matches(suite.layout)
    for key, unit in by_key.items():
        row = rows[key]
        assert row.identity == unit.identity  # the store gives the identity back whole
        assert unit.key == unit.identity.key == row.identity.key == key
        assert row.identity.gate_id == unit.identity.gate_id and row.identity.subject_id == unit.identity.subject_id
        for match in matches:
            assert match.accepts(unit.identity) == match.accepts(row)
    for scale in suite.scale_names():
        # the gate tells apart every unit of a run at one scale (else it would pair two units as one),
        # and the identities a baseline file holds are those of the units the A/B worker expands
        planned = suite.units(scale)
        ids = gate_ids([u.identity for u in planned])
        assert len(ids) == len(set(ids)), f"{path.name} at {scale}: two units share a gate identity"
        stored = [rows[u.key] for u in planned]
        assert sorted(snapshot(stored)) == sorted(ids)


def test_key_covers_what_changes_a_result_and_gate_id_what_a_result_is_about() -> None:
    base = UnitIdentity("t", params={"a": 1}, dataset={"name": "embedded"}, section="5a")
    changes_result = [
        replace(base, version="2"),
        replace(base, dataset={"name": "voc"}),
        replace(base, baselines={"lr": {"model": "mmseg:hrnet_w48"}}),
        replace(base, scale={"iters": 2}),
        replace(base, timing={"iters": 3}),
        replace(base, seed=1),
        replace(base, params={"a": 2}),
        replace(base, precision="bf16"),
    ]
    assert len({base.key, *(i.key for i in changes_result)}) == len(changes_result) + 1
    for same_subject in changes_result[:6]:  # scale, dataset, version...: the gate pairs them
        assert same_subject.gate_id == base.gate_id
    assert replace(base, section="5b").gate_id != base.gate_id
    assert replace(base, section="5b").key == base.key  # the section places a unit in a report only


def test_an_empty_baselines_block_leaves_the_unit_keys_of_before() -> None:
    """Keys computed before ``baselines:`` existed (stored results, skip-if-done) stay valid."""
    ident = UnitIdentity("t", params={"a": 1})
    import hashlib
    import json

    payload = {"trial": "t", "version": "1", "label": "", "params": {"a": 1},
               "axes": {"precision": "fp32", "batch_size": 1, "device": "cpu"}, "dataset": {}, "scale": {},
               "timing": {}, "seed": 0}  # fmt: skip
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    assert ident.key == hashlib.sha256(text.encode()).hexdigest()[:24]


NO_METHODS = """
import sys
from harness.cli import main
code = main(sys.argv[1:])
assert not [m for m in sys.modules if m == "methods" or m.startswith("methods.")], "a method package was imported"
sys.exit(code)
"""


def test_report_and_check_read_the_stored_units_without_the_method_packages(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    suite = root / "suites" / "table5.yaml"
    url = f"sqlite:///{tmp_path / 'h.db'}"
    store = Store(url)
    loaded = load_suite(suite)
    run = store.start_run(suite=loaded.name, suite_path=str(suite), scale="smoke", git_sha="0" * 40)
    planned = loaded.units("smoke")
    store.set_run_units(run, [u.listing() for u in planned])
    store.add_result(run, _stored_result(planned[0]))  # type: ignore[arg-type]
    store.end_run(run, "ok")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-c", NO_METHODS, *args, "--db", url]
        return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)

    report = cli("report", str(suite), "--format", "md", "--out", str(tmp_path / "r"))
    assert report.returncode == 0, report.stderr
    md = (tmp_path / "r" / "table5.md").read_text()
    assert f"{len(planned) - 1} not run" in md  # from the units the run stored, not a re-expansion
    saved = cli("baseline", "save", str(run), "--out", str(tmp_path / "b.json"), "--allow-dirty")
    assert saved.returncode == 0, saved.stderr
    check = cli("check", str(run), "--baseline", str(tmp_path / "b.json"), "--no-ab")
    assert check.returncode == 0, check.stdout + check.stderr
