"""``--set KEY=VALUE`` overrides of a suite file, the ``baselines:`` block and the settings hooks."""

from __future__ import annotations

import textwrap
from pathlib import Path

import engine_trials  # noqa: F401
import pytest

from harness.cli import main
from harness.errors import UserError
from harness.registry import _SCALE_SETTINGS, _SETTINGS_VALIDATORS, scale_setting, settings_validator
from harness.store import Store
from harness.suite import load_suite

SUITE = """\
name: sets
seed: 0
dataset: {name: embedded, num_train: 2}
baselines: {lr: {model: "embedded:small"}}
scales:
  smoke: {dataset: {num_train: 1, height: 8}, iters: 1}
  default: {iters: 2}
matrix: {device: [cpu]}
benchmarks:
  - trial: test.settings
  - trial: test.behave
    matrix: {index: [1, 2]}
"""


def write(tmp_path: Path, text: str = SUITE) -> Path:
    path = tmp_path / "sets.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def baselines_check():
    """A settings hook as a method package registers one: ``baselines.lr.model`` must name a kind."""

    def check(block: dict) -> None:
        for role, spec in block.items():
            model = (spec or {}).get("model", "")
            if not str(model).startswith(("embedded:", "mmseg:")):
                raise UserError(f"{role}.model: {model!r} is not embedded:<arch> or mmseg:<name>")

    settings_validator("baselines")(check)
    yield check
    _SETTINGS_VALIDATORS["baselines"].remove(check)


def test_a_set_reaches_the_units_and_their_keys(tmp_path: Path) -> None:
    path = write(tmp_path)
    plain = load_suite(path)
    changed = load_suite(path, ["dataset.num_train=5", "baselines.hr.model=embedded:small"])
    assert changed.overrides == {"dataset.num_train": 5, "baselines.hr.model": "embedded:small"}
    (settings,) = [u for u in changed.units("default") if u.trial.name == "test.settings"]
    assert settings.dataset == {"name": "embedded", "num_train": 5}
    assert settings.baselines == {"lr": {"model": "embedded:small"}, "hr": {"model": "embedded:small"}}
    assert {u.key for u in plain.units("default")}.isdisjoint(u.key for u in changed.units("default"))
    # the smoke scale's own dataset block still wins over the top-level value the --set changed
    (smoke,) = [u for u in changed.units("smoke") if u.trial.name == "test.settings"]
    assert smoke.dataset["num_train"] == 1
    # the gate pairs the units of both (a dataset does not change what a unit is about)
    assert sorted(u.identity.gate_id for u in plain.units("default")) == sorted(
        u.identity.gate_id for u in changed.units("default")
    )


def test_a_mapping_value_replaces_the_mapping_and_lists_are_yaml(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path), ["scales.smoke.dataset={num_train: 4}", "matrix.device=[cpu]"])
    (unit,) = [u for u in suite.units("smoke") if u.trial.name == "test.settings"]
    assert unit.dataset == {"name": "embedded", "num_train": 4}  # height 8 is gone with the old mapping
    assert suite.scales["smoke"]["iters"] == 1


def test_baselines_are_scaled_like_the_dataset(tmp_path: Path) -> None:
    text = SUITE.replace(
        'baselines: {lr: {model: "embedded:small"}}',
        'baselines: {lr: {smoke: {model: "embedded:tiny"}, default: {model: "embedded:small"}}}',
    )
    suite = load_suite(write(tmp_path, text))
    by_scale = {s: [u for u in suite.units(s) if u.trial.name == "test.settings"][0] for s in ("smoke", "default")}
    assert by_scale["smoke"].baselines == {"lr": {"model": "embedded:tiny"}}
    assert by_scale["default"].baselines == {"lr": {"model": "embedded:small"}}


BAD_SETS = {
    "unknown top key": (["datset.name=voc"], "--set datset.name=voc: datset: unknown key (did you mean dataset"),
    "not key=value": (["dataset.name"], "--set dataset.name: expected KEY=VALUE"),
    "bad yaml": (["matrix.device=[cpu"], "--set matrix.device=[cpu: the value is not valid YAML"),
    "bad axis value": (["matrix.device=[tpu]"], "--set matrix.device=[tpu]: matrix.device: unknown device 'tpu'"),
    "not a list": (["matrix.device=cpu"], "--set matrix.device=cpu: matrix.device: matrix values must be non-empty"),
    "through a scalar": (["seed.x=1"], "--set seed.x=1: seed is a int, not a mapping"),
    "bad seed": (["seed=many"], "--set seed=many: seed: must be an integer"),
    "bad gate key": (["gate.min_efect=0.2"], "--set gate.min_efect=0.2: gate.min_efect: unknown key"),
    "bad scale block": (["scales.smoke.dataset=3"], "--set scales.smoke.dataset=3: scales.smoke.dataset: expected"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETS))
@pytest.mark.parametrize("command", ["validate", "run", "dry-run"])
def test_a_bad_set_is_one_line_exit_2_naming_it_and_nothing_is_written(
    case: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sets, expected = BAD_SETS[case]
    path = write(tmp_path)
    db = tmp_path / "h.db"
    args = {"validate": ["validate", str(path)], "run": ["run", str(path), "--db", f"sqlite:///{db}", "--no-progress"],
            "dry-run": ["run", str(path), "--dry-run"]}[command]  # fmt: skip
    for item in sets:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("harness: error: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert not db.exists()


def test_a_registered_hook_checks_the_settings_before_anything_runs(
    tmp_path: Path, baselines_check, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path)
    db = tmp_path / "h.db"
    run = ["run", str(path), "--db", f"sqlite:///{db}", "--no-progress", "--scale", "smoke"]
    assert main([*run, "--set", "baselines.lr.model=resnet"]) == 2
    err = capsys.readouterr().err
    assert "--set baselines.lr.model=resnet: baselines: " in err and "'resnet'" in err
    assert err.count("\n") == 1 and not db.exists()
    # the same check on the file itself names the file and line
    bad = write(tmp_path, SUITE.replace('model: "embedded:small"', "model: resnet"))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:4: baselines: " in err and "'resnet'" in err


def test_a_dataset_set_is_checked_by_the_dataset_hook(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import methods

    methods.discover()  # registers the datasets package's check of `dataset:`
    path = write(tmp_path)
    assert main(["validate", str(path), "--set", "dataset.nme=voc"]) == 2
    err = capsys.readouterr().err
    assert "--set dataset.nme=voc: dataset: unknown dataset key 'nme'" in err and err.count("\n") == 1
    assert main(["validate", str(path), "--set", "dataset.num_train=-1"]) == 2
    assert "--set dataset.num_train=-1" in capsys.readouterr().err


def test_a_run_stores_its_overrides_and_trials_get_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path)
    url = f"sqlite:///{tmp_path / 'h.db'}"
    sets = ["--set", "dataset.num_train=7", "--set", "baselines.hr={model: 'embedded:small'}"]
    assert main(["run", str(path), "--db", url, "--no-progress", "--only", "test.settings", *sets]) == 0
    store = Store(url)
    (run,) = store.runs("sets")
    assert run.overrides == {
        "dataset.num_train": 7,
        "baselines.hr": {"model": "embedded:small"},
    }
    assert len(run.units) == 3  # the whole expansion at the run's scale, whatever --only selected
    (row,) = store.results(run_id=run.id)
    assert row.notes["dataset"] == {"name": "embedded", "num_train": 7} and row.value("value") == 7.0
    assert row.notes["baselines"]["hr"] == {"model": "embedded:small"} == row.identity.baselines["hr"]
    # without the overrides the unit is another one: it runs again rather than being skipped
    assert main(["run", str(path), "--db", url, "--no-progress", "--only", "test.settings"]) == 0
    assert [r.value("value") for r in store.results(suite="sets")] == [7.0, 2.0]
    # report and check read the suite as the run did, and accept --set themselves
    out = tmp_path / "reports"
    assert main(["report", str(path), "--db", url, "--format", "md", "--out", str(out), *sets]) == 0
    assert main(["report", str(path), "--db", url, "--format", "md", "--set", "gate.alpha=2"]) == 2
    assert "--set gate.alpha=2: gate.alpha: must be between 0 and 1" in capsys.readouterr().err


def test_dry_run_lists_the_units_the_overrides_give(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path)
    assert main(["run", str(path), "--dry-run", "--set", "benchmarks=[{trial: test.simple}]"]) == 0
    text = capsys.readouterr().out
    assert "1 units" in text and "test.simple" in text and "test.behave" not in text
    assert "overrides: benchmarks=" in text


def test_run_help_shows_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert "--set KEY=VALUE" in text and "--set dataset.name=voc --set dataset.root=" in text


def test_a_hook_taking_two_arguments_sees_every_block_at_the_scale(tmp_path: Path) -> None:
    seen: list[tuple[dict, dict]] = []

    def check(block: dict, resolved: dict) -> None:
        seen.append((block, resolved))

    settings_validator("baselines")(check)
    try:
        load_suite(write(tmp_path), ["dataset.num_train=9"])
    finally:
        _SETTINGS_VALIDATORS["baselines"].remove(check)
    by_scale = {r["dataset"].get("height"): (b, r) for b, r in seen}
    assert set(by_scale) == {8, None}  # smoke, then default
    block, resolved = by_scale[None]
    assert block == {"lr": {"model": "embedded:small"}} == resolved["baselines"]
    assert resolved["dataset"] == {"name": "embedded", "num_train": 9}


@pytest.fixture
def scale_check():
    """A throw-away check of the scale setting `iters` (the test suite's own key)."""
    seen: list[object] = []

    def check(value: object) -> None:
        seen.append(value)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"iters must be a positive integer, got {value!r}")

    scale_setting("iters")(check)
    yield seen
    _SCALE_SETTINGS.pop("iters", None)


def test_a_registered_scale_setting_is_checked_at_every_scale_and_named_where_it_is(
    tmp_path: Path, scale_check: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path)
    assert main(["validate", str(path)]) == 0
    assert sorted(scale_check) == [1, 2]  # smoke and default
    assert main(["validate", str(path), "--set", "scales.default.iters=0"]) == 2
    err = capsys.readouterr().err
    assert "--set scales.default.iters=0: scales.default.iters: iters must be a positive integer, got 0" in err
    assert "(at scale default)" in err and err.count("\n") == 1
    bad = write(tmp_path, SUITE.replace("default: {iters: 2}", "default: {iters: two}"))
    assert main(["validate", str(bad)]) == 2
    assert f"{bad}:7: scales.default.iters: " in capsys.readouterr().err


def test_two_packages_cannot_both_own_a_scale_setting(scale_check: list[object]) -> None:
    with pytest.raises(ValueError, match="'iters' is already checked by"):
        scale_setting("iters")(lambda value: None)


def test_a_scale_setting_no_package_registers_reaches_the_trials_unchecked(tmp_path: Path) -> None:
    """A user's own trial may read its own settings from ctx.scale."""
    path = write(tmp_path)
    assert main(["validate", str(path), "--set", "scales.default.my_epochs=abc"]) == 0


@pytest.mark.parametrize(
    ("suite", "setting", "says"),
    [
        ("table5", "scales.smoke.sparserefine.epoch=3", "sparserefine: unknown setting 'epoch' (did you mean epochs?)"),
        ("table5", "scales.smoke.sparserefine.epochs=abc", "sparserefine.epochs: expected an integer, got 'abc'"),
        ("table5", "scales.smoke.sparserefine.crop=[1]", "sparserefine.crop: expected a list of 2, got [1]"),
        ("table5", "scales.smoke.sparserefine.batch=0", "sparserefine batch must be >= 1, got 0"),
        ("table5", "scales.smoke.sparserefine.backend=nope", "sparserefine backend must be one of dense"),
        ("table5", "scales.smoke.sparserefine.learnable_selector.step=3", "learnable_selector: unknown setting 'step'"),
        ("table5", "scales.smoke.baseline.iters=x", "baseline.iters: expected an integer, got 'x'"),
        ("table5", "scales.smoke.workers=-1", "'workers' must be an integer >= 0, got -1"),
        ("qgn_table1", "scales.smoke.train.iter=3", "train: unknown setting 'iter'"),
        ("qgn_table1", "scales.smoke.train.lr=0", "train lr must be > 0"),
        ("hfgd_table1_4", "scales.smoke.hfgd_train.crop=[0, 8]", "hfgd_train iters, batch_size and crop must be >= 1"),
        ("hfgd_table1_4", "scales.smoke.hfgd_model.num_classes=3", "hfgd_model: unknown setting 'num_classes'"),
        ("hfgd_table5", "scales.smoke.latency_size=big", "expected an integer, got 'big'"),
        ("ess_table1", "scales.smoke.memory_budget_gb=0", "memory_budget_gb must be > 0, got 0"),
    ],
)
def test_the_method_packages_check_their_scale_settings_at_load(
    suite: str, setting: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: a typo in these blocks was silently ignored and a bad value failed every unit later."""
    import methods

    methods.discover()
    assert main(["validate", f"suites/{suite}.yaml", "--set", setting]) == 2
    err = capsys.readouterr().err
    assert f"--set {setting}: " in err and says in err and err.count("\n") == 1, err
