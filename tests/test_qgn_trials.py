"""QGN trials run end to end on tiny embedded data through a TrialContext."""

from __future__ import annotations

from pathlib import Path

import pytest

import methods.qgn.trials  # noqa: F401  (registers the trials)
from harness.context import TrialContext
from harness.registry import get_trial
from harness.timing import TimingConfig

TINY = {"name": "embedded", "seed": 7, "height": 64, "width": 128, "num_train": 2, "num_val": 2, "cache_dir": None}


def _context(name: str, params: dict, tmp_path: Path, scale: dict | None = None) -> TrialContext:
    spec = get_trial(name)
    return TrialContext(
        spec=spec,
        params=spec.resolve_params(params),
        dataset=dict(TINY),
        scale=scale or {},
        seed=3,
        timing=TimingConfig(warmup=0, iters=1),
        artifacts_dir=tmp_path,
    )


def test_sparsity_trial_percentages_sum_to_100(tmp_path: Path) -> None:
    ctx = _context("qgn.sparsity", {"split": "val", "levels": 5}, tmp_path)
    ctx.spec.fn(ctx)
    percents = [ctx.metrics[f"Q{level}"].value for level in range(6)]
    assert sum(percents) == pytest.approx(100.0)
    # the ratio is sum_l pct_l / 4**l when no padding is involved (64x128 is a multiple of 32)
    assert ctx.metrics["ratio"].value == pytest.approx(sum(p / 4**lv for lv, p in enumerate(percents)))
    assert ctx.metrics["images"].value == 2


@pytest.mark.slow
def test_train_eval_trial_caches_the_model(tmp_path: Path) -> None:
    scale = {"train": {"iters": 2, "batch_size": 2}}
    first = _context("qgn.train_eval", {"train_scheme": "gtc", "eval_scheme": "gtc", "levels": 3}, tmp_path, scale)
    first.spec.fn(first)
    assert 0.0 <= first.metrics["miou"].value <= 100.0
    assert len(list((tmp_path / "qgn_model").glob("*.pt"))) == 1
    second = _context("qgn.train_eval", {"train_scheme": "gtc", "eval_scheme": "pc", "levels": 3}, tmp_path, scale)
    second.spec.fn(second)
    assert second.metrics["train_time"].value == first.metrics["train_time"].value
    assert len(list((tmp_path / "qgn_model").glob("*.pt"))) == 1
