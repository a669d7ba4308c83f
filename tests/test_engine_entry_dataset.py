"""A benchmark entry's own ``dataset:``: merged over the suite's at the unit's scale (per-scale values,
null leaves a key out), part of the unit's identity, checked by the datasets' settings hook at load,
overridable by ``--set benchmarks.N.dataset.KEY``, told apart by the gate and selectable by a layout's
``match: {dataset: {...}}``."""

from __future__ import annotations

from pathlib import Path

import engine_trials  # noqa: F401
import pytest

import methods
from harness.errors import UserError
from harness.reports.layout import parse_layout
from harness.results import gate_ids
from harness.suite import load_suite

methods.discover()  # the datasets' settings hook

SUITE = """\
name: ed
dataset: {name: embedded, num_val: 2}
scales:
  smoke: {dataset: {height: 64, width: 128, num_train: 3}}
  default: {dataset: {height: 128, width: 256, num_train: 5}}
benchmarks:
  - trial: test.settings
    section: s
  - trial: test.settings
    section: s
    dataset: {num_train: {smoke: 7, default: null}, width: 64}
"""


def _write(tmp_path: Path, text: str = SUITE) -> Path:
    path = tmp_path / "ed.yaml"
    path.write_text(text)
    return path


def test_an_entry_dataset_merges_over_the_suites_at_each_scale(tmp_path: Path) -> None:
    suite = load_suite(_write(tmp_path))
    plain, own = suite.units("smoke")
    assert plain.dataset == {"name": "embedded", "num_val": 2, "height": 64, "width": 128, "num_train": 3}
    assert own.dataset == {"name": "embedded", "num_val": 2, "height": 64, "width": 64, "num_train": 7}
    _, own_default = suite.units("default")
    assert own_default.dataset == {"name": "embedded", "num_val": 2, "height": 128, "width": 64}  # null: left out
    assert own.key != plain.key and own.identity.gate_id == plain.identity.gate_id
    ids = gate_ids([plain.identity, own.identity])  # same trial, section and params: the dataset tells them apart
    assert len(set(ids)) == 2 and ids != [plain.identity.gate_id] * 2
    assert gate_ids([plain.identity]) == [plain.identity.gate_id]  # a suite with one dataset keeps its ids


def test_a_layout_match_selects_by_dataset_keys(tmp_path: Path) -> None:
    plain, own = load_suite(_write(tmp_path)).units("smoke")
    layout = {"tables": [{"id": "t", "columns": [{"metric": "value"}], "rows": [
        {"label": "own", "match": {"dataset": {"width": 64}}},
        {"label": "both", "match": {"dataset": {"name": "embedded"}}},
    ]}]}  # fmt: skip
    (table,) = parse_layout(layout, "l.yaml").tables
    own_row, both = table.rows
    assert [own_row.match.accepts(u.identity) for u in (plain, own)] == [False, True]
    assert [both.match.accepts(u.identity) for u in (plain, own)] == [True, True]
    bad = {"tables": [{"id": "t", "columns": [{"metric": "v"}], "rows": [{"label": "x", "match": {"dataset": 3}}]}]}
    with pytest.raises(UserError, match=r"l\.yaml: tables\[0\]\.rows\[0\]\.match\.dataset: expected a mapping"):
        parse_layout(bad, "l.yaml")


def test_a_bad_entry_dataset_is_one_line_naming_the_entry(tmp_path: Path) -> None:
    path = _write(tmp_path, SUITE.replace("width: 64}", "widht: 64}"))
    with pytest.raises(UserError) as caught:
        load_suite(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:11: benchmarks.1.dataset: unknown dataset key 'widht'")
    assert "(at scale smoke)" in message


def test_set_reaches_an_entry_dataset_through_the_list_index(tmp_path: Path) -> None:
    path = _write(tmp_path)
    suite = load_suite(path, ["benchmarks.1.dataset.num_val=4"])
    plain, own = suite.units("smoke")
    assert own.dataset["num_val"] == 4 and plain.dataset["num_val"] == 2
    assert suite.overrides == {"benchmarks.1.dataset.num_val": 4}
    with pytest.raises(UserError, match=r"^--set benchmarks\.1\.dataset\.num_val=-1: benchmarks\.1\.dataset: .*>= 0"):
        load_suite(path, ["benchmarks.1.dataset.num_val=-1"])
    with pytest.raises(UserError, match=r"^--set benchmarks\.2\.dataset\.x=1: benchmarks is a list of 2: '2' is not"):
        load_suite(path, ["benchmarks.2.dataset.x=1"])
    with pytest.raises(UserError, match=r"^--set benchmarks\.first\.x=1: benchmarks is a list of 2: 'first' is not"):
        load_suite(path, ["benchmarks.first.x=1"])
    added = load_suite(path, ["benchmarks.0.dataset={num_train: 9}"])  # an entry without one gets a dataset
    assert added.units("smoke")[0].dataset["num_train"] == 9
