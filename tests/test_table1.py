"""SparseRefine Table 1 on the mmseg baselines: the resized-LR pipeline (known answers against the x2
pipeline and the nearest-upsampled LR logits) and the sparserefine.table1_cost trial's bookkeeping."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn
from trial_runner import run_trial

from methods.sparserefine.costs import SparseRefinePipeline
from methods.sparserefine.refiner import RefinerConfig, SparseRefiner
from methods.sparserefine.table1 import ResizedLRPipeline

NUM_CLASSES = 5


def _lr_module() -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(3, NUM_CLASSES, 3, padding=1).eval()


def _refiner() -> SparseRefiner:
    torch.manual_seed(1)
    return SparseRefiner(RefinerConfig(NUM_CLASSES, "minkunet4", width_mult=0.125, reps=1)).eval()


def _images(height: int, width: int) -> torch.Tensor:
    return torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(2))


def _mask(height: int, width: int, density: float = 0.1) -> torch.Tensor:
    return torch.rand(2, height, width, generator=torch.Generator().manual_seed(3)) < density


def test_at_an_exact_x2_it_computes_what_the_x2_pipeline_computes() -> None:
    images, mask = _images(32, 64), _mask(32, 64)
    lr, refiner = _lr_module(), _refiner()
    with torch.inference_mode():
        ours = ResizedLRPipeline(lr, refiner, 0.3, (16, 32), fixed_mask=mask)(images)
        reference = SparseRefinePipeline(lr, refiner, 0.3, factor=2, fixed_mask=mask)(images)
    torch.testing.assert_close(ours, reference)


def test_entropy_selection_at_x2_matches_the_x2_pipeline() -> None:
    images = _images(32, 64)
    lr, refiner = _lr_module(), _refiner()
    ours = ResizedLRPipeline(lr, refiner, 0.5, (16, 32))
    reference = SparseRefinePipeline(lr, refiner, 0.5, factor=2)
    with torch.inference_mode():
        logits = ours.dense(images)
        torch.testing.assert_close(logits, reference.dense(images))
        assert torch.equal(ours.select(images, logits).coords, reference.select(images, logits).coords)


def test_a_non_integer_lr_size_keeps_the_lr_logits_outside_the_refined_pixels() -> None:
    """SegNeXt-L's case (640x1280 of 1024x2048, x1.6), small: unrefined pixels are exactly the LR
    logits resized nearest to the full grid; refined pixels differ from them."""
    images, mask = _images(64, 128), _mask(64, 128)
    lr, refiner = _lr_module(), _refiner()
    pipeline = ResizedLRPipeline(lr, refiner, 0.3, (40, 80), fixed_mask=mask)
    with torch.inference_mode():
        out = pipeline(images)
        small = lr(nn.functional.interpolate(images, size=(40, 80), mode="area"))
        expected = nn.functional.interpolate(small, size=(64, 128), mode="nearest")
    assert out.shape == (2, NUM_CLASSES, 64, 128)
    keep = ~mask[:, None].expand_as(out)
    torch.testing.assert_close(out[keep], expected[keep])
    assert not torch.allclose(out[~keep], expected[~keep])


needs_mmseg = pytest.mark.skipif(
    importlib.util.find_spec("mmseg") is None or importlib.util.find_spec("fvcore") is None,
    reason="mmsegmentation / fvcore not installed",
)


@needs_mmseg
def test_table1_cost_adds_the_refiner_to_the_lr_pass(tmp_path: Path) -> None:
    import methods

    methods.discover()
    ctx = run_trial(
        "sparserefine.table1_cost",
        tmp_path,
        {},
        {"name": "embedded", "seed": 2023, "height": 64, "width": 128, "num_train": 0, "num_val": 1, "cache_dir": None},
        model="hrnet_w48",
        height=64,
        width=128,
        lr_height=32,
        lr_width=64,
        density=10.0,
        width_mult=0.125,
        reps=1,
    )
    m = {name: metric.value for name, metric in ctx.metrics.items()}
    assert m["sr_params_m"] == pytest.approx(m["params_m"] + m["refiner_params_m"])
    assert m["params_m"] == pytest.approx(m["backbone_params_m"] + m["head_params_m"])
    assert m["params_m"] == pytest.approx(65.9, rel=0.01)  # HRNet-W48, as SparseRefine Table 1
    assert m["sr_gmacs"] == pytest.approx(m["lr_gmacs"] + m["refine_gmacs"])
    assert m["macs_reduction"] == pytest.approx(m["hr_gmacs"] / m["sr_gmacs"])
    # a fully convolutional net's MACs scale with the pixels: 32x64 is a quarter of 64x128
    assert m["lr_gmacs"] / m["hr_gmacs"] == pytest.approx(0.25, abs=0.03)
    assert m["density"] == pytest.approx(10.0, abs=1.0)
    assert m["speedup"] == pytest.approx(m["hr_latency"] / m["sr_latency"])
    assert ctx.notes["lr_input"] == [32, 64]


@needs_mmseg
def test_table1_cost_rejects_an_lr_input_larger_than_the_grid(tmp_path: Path) -> None:
    import methods

    methods.discover()
    with pytest.raises(ValueError, match="exceeds the grid"):
        run_trial(
            "sparserefine.table1_cost",
            tmp_path,
            {},
            {"name": "embedded", "height": 64, "width": 128, "num_train": 0, "num_val": 1, "cache_dir": None},
            model="hrnet_w48",
            height=64,
            width=128,
            lr_height=96,
            lr_width=80,
        )
