"""The data.class_stats trial end to end on tiny embedded scenes, and the data_stats suite file."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

import methods.datasets.trials  # noqa: F401  (registers the trial)
from harness.context import TrialContext
from harness.registry import get_trial
from harness.timing import TimingConfig
from methods.datasets import EMBEDDED_CLASSES

SUITE = Path(__file__).parent.parent / "suites" / "data_stats.yaml"


def run_trial(tmp_path: Path, **params: object) -> TrialContext:
    spec = get_trial("data.class_stats")
    ctx = TrialContext(
        spec=spec,
        params=spec.resolve_params(params),
        dataset={
            "name": "embedded",
            "height": 128,
            "width": 256,
            "num_train": 2,
            "num_val": 3,
            "cache_dir": str(tmp_path),
        },
        timing=TimingConfig(warmup=0, iters=2, min_iters=1),
    )
    spec.fn(ctx)
    return ctx


def test_class_stats_records_every_declared_metric(tmp_path: Path) -> None:
    ctx = run_trial(tmp_path, split="val", factor=2)
    declared = {m.name for m in get_trial("data.class_stats").metrics}
    assert declared - set(ctx.metrics) <= {"lost_pixels_large"}  # no large object in 3 tiny scenes is fine
    sizes = [ctx.metrics[f"size_{c.replace(' ', '_')}"].value for c in EMBEDDED_CLASSES]
    assert sum(sizes) + ctx.metrics["void_share"].value == pytest.approx(100.0)
    assert ctx.metrics["size_road"].value > ctx.metrics["size_pole"].value > 0
    assert 0 < ctx.metrics["downsample_pixel_error"].value < ctx.metrics["lost_pixels_small"].value
    assert ctx.metrics["images_per_s"].value > 0 and ctx.notes["images"] == 3
    assert not math.isnan(ctx.metrics["lost_instances_small"].value)


def test_larger_factor_loses_more(tmp_path: Path) -> None:
    x2 = run_trial(tmp_path, split="train", factor=2)
    x4 = run_trial(tmp_path, split="train", factor=4)
    assert x4.metrics["downsample_pixel_error"].value > x2.metrics["downsample_pixel_error"].value
    assert x4.metrics["size_road"].value == x2.metrics["size_road"].value


def test_suite_file_names_the_trial_at_three_scales() -> None:
    suite = yaml.safe_load(SUITE.read_text())
    assert suite["name"] == SUITE.stem
    assert set(suite["scales"]) == {"smoke", "default", "paper"}
    spec = get_trial("data.class_stats")
    for entry in suite["benchmarks"]:
        assert entry["trial"] == spec.name
        spec.resolve_params(entry.get("params", {}))
