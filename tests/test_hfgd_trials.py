"""HFGD trials run end to end at tiny sizes through a TrialContext."""

from __future__ import annotations

from pathlib import Path

import pytest

import methods.hfgd.trials  # noqa: F401  (registers the trials)
from harness.context import TrialContext
from harness.errors import Unsupported
from harness.registry import get_trial
from harness.timing import TimingConfig


def _ctx(name: str, params: dict, tmp_path: Path, scale: dict | None = None) -> TrialContext:
    spec = get_trial(name)
    return TrialContext(
        spec=spec,
        params=spec.resolve_params(params),
        scale=scale or {},
        dataset={"name": "embedded", "height": 64, "width": 128, "num_train": 2, "num_val": 1, "cache_dir": None},
        timing=TimingConfig(warmup=0, iters=1),
        artifacts_dir=tmp_path,
    )


def test_cost_trial_counts_macs_and_times(tmp_path: Path) -> None:
    params = {"backbone": "resnet_small", "size": 64, "decoder_channels": 16, "encoder_hidden": 16}
    ctx = _ctx("hfgd.cost", params, tmp_path)
    ctx.spec.fn(ctx)
    assert ctx.metrics["gmacs"].value > 0 and ctx.metrics["latency"].value > 0
    assert "paper_gflops" not in ctx.metrics  # only the paper's ResNet-50 / 513 rows have a reference
    assert set(ctx.notes["gmacs_by_module"]) >= {"backbone", "encoder", "head", "axial"}


def test_cost_trial_rejects_an_impossible_variant(tmp_path: Path) -> None:
    ctx = _ctx("hfgd.cost", {"backbone": "resnet_small", "upsampler": "sfpn", "output_stride": 2}, tmp_path)
    with pytest.raises(Unsupported):
        ctx.spec.fn(ctx)


def test_train_trial_trains_caches_and_evaluates(tmp_path: Path) -> None:
    scale = {
        "hfgd_model": {"backbone": "resnet_small", "decoder_channels": 8, "encoder_hidden": 16},
        "hfgd_train": {"iters": 2, "batch_size": 1, "crop": [32, 64]},
    }
    ctx = _ctx("hfgd.train", {"output_stride": 2}, tmp_path, scale)
    ctx.spec.fn(ctx)
    assert 0 <= ctx.metrics["miou"].value <= 100
    assert "miou_os32" in ctx.metrics  # HFGM models also report their OS 32 class-kernel head
    assert list(tmp_path.glob("hfgd_model/*.pt"))
    again = _ctx("hfgd.train", {"output_stride": 2}, tmp_path, scale)
    again.spec.fn(again)  # loads the cached checkpoint: same training time, same accuracy
    assert again.metrics["train_time"].value == ctx.metrics["train_time"].value
    assert again.metrics["miou"].value == ctx.metrics["miou"].value
