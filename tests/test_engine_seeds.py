"""``seeds: N``: each row runs N training seeds as distinct units (seed = the suite's seed + k, k = 0 being
the single-seed unit of before, key unchanged), each gated on its own; the report shows their mean ±
std (tests/test_reports_seeds.py)."""

from __future__ import annotations

from pathlib import Path

import engine_trials  # noqa: F401
import pytest

from harness.cli import main
from harness.context import TrialContext
from harness.errors import UserError
from harness.gate import snapshot
from harness.registry import Metric, trial
from harness.results import gate_ids
from harness.store import Store
from harness.suite import load_suite


@trial(
    "test.seeded",
    doc="Records its seed (a training run whose result depends on it) and its row's seed.",
    metrics=[Metric("value"), Metric("row_seed")],
)
def seeded(ctx: TrialContext) -> None:
    ctx.record("value", float(ctx.seed % 100))
    ctx.record("row_seed", float(ctx.row_seed))


SUITE = """\
name: {name}
seed: 40
{seeds}
scales: {{smoke: {{}}, default: {{}}}}
benchmarks:
  - trial: test.simple
    label: plain
    matrix: {{k: [1, 2]}}
  - trial: test.seeded
    label: seeded
{entry_seeds}
"""


def _suite(tmp_path: Path, seeds: str = "", entry_seeds: str = "", name: str = "sd") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SUITE.format(name=name, seeds=seeds, entry_seeds=entry_seeds))
    return path


def test_seeds_expand_each_row_into_n_units_whose_first_is_the_single_seed_unit(tmp_path: Path) -> None:
    single = {(u.trial.name, u.params.get("k")): u for u in load_suite(_suite(tmp_path)).units("smoke")}
    suite = load_suite(_suite(tmp_path, "seeds: 3", name="sd3"))
    units = suite.units("smoke")
    assert len(units) == 3 * 3
    for (trial_name, k), one in single.items():
        row = [u for u in units if u.trial.name == trial_name and u.params.get("k") == k]
        assert [(u.seed, u.identity.seed_index) for u in row] == [(40, 0), (41, 1), (42, 2)]
        assert row[0].key == one.key and row[0].identity.gate_id == one.identity.gate_id  # stored results stay
        assert len({u.key for u in row}) == 3 and len({u.identity.row_key for u in row}) == 1
        assert row[2].describe().endswith("| seed 2") and "| seed" not in row[0].describe()
    ids = gate_ids([u.identity for u in units])
    assert len(set(ids)) == len(units)  # the gate compares each seed unit on its own


def test_an_entry_sets_its_own_seeds_per_scale(tmp_path: Path) -> None:
    suite = load_suite(_suite(tmp_path, "seeds: 2", "    seeds: {smoke: 1, default: 4}"))
    count = {s: sum(u.trial.name == "test.seeded" for u in suite.units(s)) for s in ("smoke", "default")}
    assert count == {"smoke": 1, "default": 4}
    assert sum(u.trial.name == "test.simple" for u in suite.units("smoke")) == 4  # the suite's 2 per row


@pytest.mark.parametrize(
    ("seeds", "entry", "where"),
    [
        ("seeds: 0", "", "sd.yaml:3: seeds: must be a positive integer"),
        ("seeds: two", "", "sd.yaml:3: seeds: must be a positive integer"),
        ("seeds: true", "", "sd.yaml:3: seeds: must be a positive integer"),
        ("", "    seeds: {smoke: 2}", "benchmarks.1.seeds: no value for scale 'default'"),
        ("", "    seeds: -1", "sd.yaml:11: benchmarks.1.seeds: must be a positive integer"),
    ],
)
def test_bad_seeds_are_one_line_naming_file_line_and_key(tmp_path: Path, seeds: str, entry: str, where: str) -> None:
    path = _suite(tmp_path, seeds, entry)
    with pytest.raises(UserError) as caught:
        load_suite(path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path}/") and where in message and "\n" not in message


def test_seed_units_run_with_their_seed_and_are_stored_and_gated_apart(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'r.db'}"
    path = _suite(tmp_path, "seeds: 3")
    assert main(["run", str(path), "--scale", "smoke", "--db", db, "--no-progress", "--threads", "1"]) == 0
    rows = Store(db).results(suite="sd")
    seeded_rows = sorted((r for r in rows if r.trial == "test.seeded"), key=lambda r: r.identity.seed_index)
    assert [(r.identity.seed_index, r.value("value")) for r in seeded_rows] == [(0, 40.0), (1, 41.0), (2, 42.0)]
    assert {r.value("row_seed") for r in seeded_rows} == {40.0}  # what a row's seeds keep fixed
    assert len(snapshot(rows)) == len(rows) == 9  # no two seed units share a gate identity
    # seeds raised from 3 to 4: the three stored units are skipped, the fourth runs
    path4 = _suite(tmp_path, "seeds: 4")
    assert main(["run", str(path4), "--scale", "smoke", "--db", db, "--no-progress", "--threads", "1"]) == 0
    again = Store(db).results(suite="sd")
    assert len(again) == 12 and len({r.run_id for r in again}) == 2
