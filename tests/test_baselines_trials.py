from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.context import TrialContext
from harness.registry import get_trial
from harness.timing import TimingConfig
from methods.baselines import trained_baseline
from methods.baselines.trials import build_model

TINY_DATA = {"name": "embedded", "height": 64, "width": 128, "num_train": 2, "num_val": 1, "cache_dir": None}
TINY_SCALE = {"baseline": {"iters": 3, "batch_size": 1, "warmup_iters": 1}}


@pytest.fixture(autouse=True)
def one_thread():
    """See tests/test_baselines_models.py: avoids OpenMP spin-waiting on a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _context(name: str, params: dict, tmp_path: Path, **axes) -> TrialContext:
    spec = get_trial(name)
    return TrialContext(
        spec=spec,
        params=spec.resolve_params(params),
        dataset=dict(TINY_DATA),
        scale=dict(TINY_SCALE),
        seed=1,
        artifacts_dir=tmp_path,
        timing=TimingConfig(warmup=1, iters=2),
        **axes,
    )


def test_trained_baseline_is_cached_and_predicts_full_resolution(tmp_path: Path) -> None:
    messages: list[str] = []
    lr = trained_baseline("lr", TINY_DATA, TINY_SCALE, tmp_path, messages.append, arch="tiny", seed=1)
    assert any("training" in m for m in messages)
    messages.clear()
    again = trained_baseline("lr", TINY_DATA, TINY_SCALE, tmp_path, messages.append, arch="tiny", seed=1)
    assert not any("training" in m for m in messages)
    state, state_again = lr.module.state_dict(), again.module.state_dict()
    assert all(torch.equal(state[k], state_again[k]) for k in state)
    assert len(list((tmp_path / "baseline").glob("*.pt"))) == 1
    images = torch.randint(0, 256, (1, 3, 64, 128), dtype=torch.uint8)
    logits, feats = lr.predict(images)
    assert logits.shape == (1, lr.num_classes, 64, 128)
    assert feats.shape == (1, lr.feature_channels, 64, 128)
    # The HR kind is a different artifact.
    trained_baseline("hr", TINY_DATA, TINY_SCALE, tmp_path, arch="tiny", seed=1)
    assert len(list((tmp_path / "baseline").glob("*.pt"))) == 2


def test_unknown_training_setting_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="iterations"):
        trained_baseline("hr", TINY_DATA, {"baseline": {"iterations": 3}}, tmp_path, arch="tiny")


def test_evaluate_trial_records_accuracy_and_per_class_iou(tmp_path: Path) -> None:
    ctx = _context("baseline.evaluate", {"kind": "lr", "arch": "tiny"}, tmp_path)
    get_trial("baseline.evaluate").fn(ctx)
    for name in ("miou", "miou_absent_as_zero", "pixel_accuracy", "train_seconds"):
        assert name in ctx.metrics
    assert 0.0 <= ctx.metrics["pixel_accuracy"].value <= 100.0
    assert ctx.metrics["miou_absent_as_zero"].value <= ctx.metrics["miou"].value + 1e-9
    per_class = [m for m in ctx.metrics if m.startswith("iou_")]
    assert per_class and len(per_class) + len(ctx.notes["absent_classes"]) == 11


@pytest.mark.parametrize("kind", ["lr", "hr"])
def test_latency_trial_measures_embedded_model(tmp_path: Path, kind: str) -> None:
    ctx = _context("baseline.latency", {"model": "tiny", "height": 64, "width": 128, "kind": kind}, tmp_path)
    get_trial("baseline.latency").fn(ctx)
    assert ctx.metrics["latency"].value > 0 and len(ctx.metrics["latency"].samples) == 2
    assert ctx.notes["input_size"] == ([32, 64] if kind == "lr" else [64, 128])


def test_complexity_trial_counts_params_and_macs(tmp_path: Path) -> None:
    small = _context("baseline.complexity", {"model": "tiny", "height": 64, "width": 128}, tmp_path)
    big = _context("baseline.complexity", {"model": "tiny", "height": 128, "width": 256}, tmp_path)
    get_trial("baseline.complexity").fn(small)
    get_trial("baseline.complexity").fn(big)
    expected_params = sum(p.numel() for p in build_model("tiny").parameters()) / 1e6
    assert small.metrics["params_m"].value == pytest.approx(expected_params)
    # Convolutions dominate: 4x the pixels is about 4x the MACs.
    ratio = big.metrics["gmacs"].value / small.metrics["gmacs"].value
    assert 3.8 < ratio < 4.2


def test_unknown_model_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        build_model("no_such_model")
