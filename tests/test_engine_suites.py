from __future__ import annotations

import textwrap
from pathlib import Path

import engine_trials  # noqa: F401
import pytest

from harness.cli import main
from harness.errors import UserError
from harness.store import Store
from harness.suite import load_suite

GOOD = """\
name: good
title: A good suite
seed: 1
timing: {warmup: 0, iters: 2}
scales:
  smoke: {dataset: {height: 8}, timing: {iters: 1}, epochs: 1}
  default: {dataset: {height: 16}, epochs: 2}
matrix: {precision: [fp32, bf16], batch_size: [1, 2], device: [cpu]}
dataset: {name: embedded}
benchmarks:
  - trial: test.behave
    section: grid
    params: {seconds: 0.0}
    matrix: {index: {smoke: [1], default: [1, 2, 3]}}
  - trial: test.behave
    section: rows
    matrix: {precision: [fp32]}
    cases:
      - {label: first, index: 10}
      - {label: second, index: 11, batch_size: 4}
  - trial: test.simple
    matrix: {k: [1, 2]}
"""


def write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_expansion_grid_cases_scales_and_unsupported_axes(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, GOOD))
    default = suite.units("default")
    grid = [u for u in default if u.section == "grid"]
    assert len(grid) == 2 * 2 * 3  # precision x batch x index
    rows = [u for u in default if u.section == "rows"]
    # Cases overlay each grid point; the case that fixes batch_size collapses to one unit.
    assert sorted((u.label, u.params["index"], u.batch_size, u.precision) for u in rows) == [
        ("first", 10, 1, "fp32"), ("first", 10, 2, "fp32"), ("second", 11, 4, "fp32"),
    ]  # fmt: skip
    simple = [u for u in default if u.trial.name == "test.simple"]
    # test.simple has no axes: the top-level axes grid does not multiply it.
    assert len(simple) == 2 and all(u.precision == "fp32" and u.batch_size == 1 for u in simple)
    smoke = suite.units("smoke")
    assert len([u for u in smoke if u.section == "grid"]) == 4
    assert smoke[0].dataset == {"name": "embedded", "height": 8} and smoke[0].scale_settings == {"epochs": 1}
    assert smoke[0].timing.iters == 1 and default[0].timing.iters == 2


def test_unit_keys_are_stable_and_distinct(tmp_path: Path) -> None:
    a = [u.key for u in load_suite(write(tmp_path, GOOD)).units("default")]
    b = [u.key for u in load_suite(write(tmp_path, GOOD, "again.yaml")).units("default")]
    assert a == b and len(set(a)) == len(a)
    smoke = {u.key for u in load_suite(write(tmp_path, GOOD)).units("smoke")}
    assert not smoke & set(a)  # scale settings are part of the key


def test_missing_scale_is_reported(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, GOOD))
    with pytest.raises(UserError, match="declares no scale 'paper'"):
        suite.units("paper")


BAD_SUITES = {
    "malformed_yaml": ("name: x\nbenchmarks: [\n  - trial: test.simple\n", "malformed YAML"),
    "tab_indent": ("name: x\nbenchmarks:\n\t- trial: test.simple\n", "malformed YAML"),
    "not_a_mapping": ("- 1\n- 2\n", "must be a mapping"),
    "missing_benchmarks": ("name: x\n", "missing required key 'benchmarks'"),
    "unknown_top_key": ("name: x\nbenchmark: []\nbenchmarks:\n  - trial: test.simple\n", "benchmark: unknown key"),
    "unknown_trial": ("name: x\nbenchmarks:\n  - trial: test.simpel\n", "did you mean test.simple"),
    "unknown_param": ("name: x\nbenchmarks:\n  - trial: test.simple\n    params: {kk: 1}\n", "unknown parameter 'kk'"),
    "mistyped_param": (
        "name: x\nbenchmarks:\n  - trial: test.behave\n    params: {seconds: fast}\n",
        "expected a number",
    ),
    "value_not_allowed": ("name: x\nbenchmarks:\n  - trial: test.simple\n    matrix: {k: [1, 7]}\n", "7 is not one of"),
    "unknown_precision": (
        "name: x\nmatrix: {precision: [fp8]}\nbenchmarks:\n  - trial: test.behave\n",
        "unknown precision 'fp8'",
    ),
    "unknown_device": (
        "name: x\nbenchmarks:\n  - trial: test.behave\n    matrix: {device: [tpu]}\n",
        "unknown device 'tpu'",
    ),
    "bad_batch": (
        "name: x\nbenchmarks:\n  - trial: test.behave\n    cases: [{batch_size: 0}]\n",
        "batch_size must be a positive integer",
    ),
    "axis_unsupported": (
        "name: x\nbenchmarks:\n  - trial: test.simple\n    matrix: {precision: [bf16]}\n",
        "does not support axis 'precision'",
    ),
    "matrix_not_list": (
        "name: x\nbenchmarks:\n  - trial: test.simple\n    matrix: {k: 1}\n",
        "matrix values must be lists",
    ),
    "unknown_scale": ("name: x\nscales: {huge: {}}\nbenchmarks:\n  - trial: test.simple\n", "unknown scale"),
    "bad_timing": ("name: x\ntiming: {iters: 0}\nbenchmarks:\n  - trial: test.simple\n", "iters"),
    "duplicate_key": ("name: x\nname: y\nbenchmarks:\n  - trial: test.simple\n", "appears twice"),
    "scaled_value_missing": (
        "name: x\nscales: {smoke: {}, default: {}}\nbenchmarks:\n  - trial: test.simple\n    params: {k: {smoke: 1}}\n",
        "no value for scale 'default'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SUITES))
def test_malformed_suite_is_one_line_exit_2_and_db_untouched(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, expected = BAD_SUITES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    db = tmp_path / "results.db"
    store = Store(f"sqlite:///{db}")
    before = sum(store.results_per_run().values())
    runs_before = len(store.runs())
    code = main(["run", str(path), "--db", f"sqlite:///{db}", "--no-progress"])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1, captured.err
    assert str(path) in lines[0] and expected in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert sum(store.results_per_run().values()) == before and len(store.runs()) == runs_before


def test_error_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "name: x\nbenchmarks:\n  - trial: test.simple\n  - trial: test.simple\n    params: {k: 9}\n")
    assert main(["validate", str(path)]) == 2
    assert f"{path}:5: benchmarks.1.params.k" in capsys.readouterr().err


def test_missing_suite_file_and_unwritable_db(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    good = write(tmp_path, GOOD)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the DB directory should be")  # unwritable even for root
    code = main(["run", str(good), "--db", f"sqlite:///{blocker}/sub/x.db", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "blocker" in err
