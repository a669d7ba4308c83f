"""ESSNet trials run end to end at tiny sizes; the segmenter trains with both heads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import methods.essnet.trials  # noqa: F401  (registers the trials)
from harness.context import TrialContext
from harness.registry import get_trial
from harness.timing import TimingConfig
from methods.essnet.model import Segmenter

TINY_TIMING = TimingConfig(warmup=0, iters=1)


def _ctx(name: str, params: dict, tmp_path: Path, scale: dict | None = None) -> TrialContext:
    spec = get_trial(name)
    return TrialContext(
        spec=spec,
        params=spec.resolve_params(params),
        scale=scale or {},
        dataset={"name": "embedded", "height": 64, "width": 128, "num_train": 1, "num_val": 1, "cache_dir": None},
        timing=TINY_TIMING,
        artifacts_dir=tmp_path,
    )


@pytest.mark.parametrize("head", ["linear", "embedding"])
def test_inference_trial_records_latency_and_memory(head: str, tmp_path: Path) -> None:
    ctx = _ctx("essnet.inference", {"head": head, "num_classes": 300, "height": 32, "width": 48}, tmp_path)
    ctx.spec.fn(ctx)
    assert ctx.metrics["latency"].value > 0
    # linear: full-resolution logits of 300 classes (fp32) must be counted
    if head == "linear":
        assert ctx.metrics["peak_memory"].value * 1e6 >= 300 * 32 * 48 * 4
    else:
        assert ctx.metrics["peak_memory"].value * 1e6 < 300 * 32 * 48 * 4


def test_inference_trial_refuses_heads_over_the_memory_budget(tmp_path: Path) -> None:
    params = {"head": "linear", "num_classes": 5000, "height": 256, "width": 256}
    ctx = _ctx("essnet.inference", params, tmp_path, scale={"memory_budget_gb": 0.1})
    with pytest.raises(MemoryError, match="out of memory"):
        ctx.spec.fn(ctx)


def test_crossover_trial_finds_the_memory_crossover(tmp_path: Path) -> None:
    params = {"classes": "4,64,1024", "height": 32, "width": 32, "backend": "torch", "embed_dim": 16}
    ctx = _ctx("essnet.crossover", params, tmp_path)
    ctx.spec.fn(ctx)
    assert 4 <= ctx.metrics["memory_crossover"].value <= 1024
    assert set(ctx.notes["per_class_count"]) == {"4", "64", "1024"}


@pytest.mark.parametrize("head", ["linear", "embedding"])
def test_segmenter_loss_decreases(head: str) -> None:
    torch.manual_seed(0)
    model = Segmenter(30, head, feature_channels=16, embed_dim=8)
    images = torch.randn(2, 3, 32, 64)
    labels = torch.randint(0, 30, (2, 32, 64))
    optimizer = model.optimizer(lr=0.05)
    losses = []
    for _ in range(4):
        loss = model.loss(images, labels, k=5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_train_step_trial(tmp_path: Path) -> None:
    params = {"head": "embedding", "num_classes": 50, "height": 64, "width": 64, "feature_channels": 16}
    ctx = _ctx("essnet.train_step", params, tmp_path)
    ctx.spec.fn(ctx)
    assert ctx.metrics["train_iter"].value > 0
