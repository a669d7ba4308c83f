from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from harness.context import TrialContext
from harness.errors import Unavailable, Unsupported
from harness.registry import get_trial
from harness.timing import TimingConfig
from methods.sparse import trials  # noqa: F401  (registers the trial)
from methods.sparse.masks import boundary_map, dataset_masks, selector_like_masks, synthetic_labels

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems (tests/conftest.py)


def context(tmp_path, precision="fp32", **params):
    spec = get_trial("sparse.extractor_latency")
    given = {"height": 64, "width": 128, "variant": "4stage", "width_mult": 0.0625, **params}
    return TrialContext(
        spec=spec,
        params=spec.resolve_params(given),
        precision=precision,
        dataset={"name": "embedded", "num_train": 0, "num_val": 1, "cache_dir": str(tmp_path)},
        seed=3,
        timing=TimingConfig(warmup=0, iters=1),
    )


def test_trial_records_latency_and_exact_density(tmp_path):
    ctx = context(tmp_path, backend="native", density=6.9)
    ctx.spec.fn(ctx)
    assert ctx.metrics["active_sites"].value == round(0.069 * 64 * 128)
    assert ctx.metrics["density_measured"].value == pytest.approx(6.9, abs=0.01)
    assert ctx.metrics["latency"].value > 0
    assert "embedded" in ctx.notes["mask_source"]
    sites = ctx.notes["sites_per_stride"]
    assert list(sites) == ["1", "2", "4", "8"] and sites["1"] > sites["8"]


def test_trial_statuses(tmp_path):
    with pytest.raises(Unavailable):
        get_trial("sparse.extractor_latency").fn(context(tmp_path, backend="torchsparse"))
    ctx = context(tmp_path, precision="bf16", backend="spconv")
    with pytest.raises((Unsupported, Unavailable)):
        ctx.spec.fn(ctx)


def test_selector_like_masks_hit_density_and_prefer_boundaries():
    labels = synthetic_labels(2, 64, 96, seed=0)
    masks = selector_like_masks(labels, 0.1, seed=0)
    assert masks.shape == labels.shape
    assert masks.sum(dim=(1, 2)).tolist() == [round(0.1 * 64 * 96)] * 2
    edges = torch.from_numpy(np.stack([boundary_map(lab.numpy()) for lab in labels]))
    assert masks[edges].float().mean() > 0.9  # boundaries are selected first
    assert torch.equal(masks, selector_like_masks(labels, 0.1, seed=0))  # deterministic


def test_masks_fall_back_to_synthetic_labels_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "methods.datasets", None)
    batch = dataset_masks({"name": "embedded"}, 1, 64, 128, 0.05, seed=0)
    assert batch.source.startswith("synthetic")
    assert int(batch.mask.sum()) == round(0.05 * 64 * 128)
