"""SparseRefine end to end at smoke scale, through the registered trial functions: tiny embedded
images, baselines and refiner trained for a handful of steps, every trial run once."""

from __future__ import annotations

import math

import pytest
import torch
from trial_runner import run_trial

from harness.context import TrialContext

DATASET = {"name": "embedded", "height": 64, "width": 128, "num_train": 4, "num_val": 2, "cache_dir": None}
SCALE = {
    "baseline": {"iters": 4, "batch_size": 2, "warmup_iters": 1},
    "sparserefine": {
        "epochs": 1,
        "batch": 2,
        "crop": [32, 64],
        "learnable_selector": {"steps": 3, "batch": 1, "crop": [32, 64]},
    },
}
SMALL = {"width_mult": 0.125, "reps": 1}

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems (tests/conftest.py)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    import methods  # noqa: F401 - registers the trials

    methods.discover()
    return tmp_path_factory.mktemp("sparserefine-artifacts")


def run(name: str, artifacts, **params) -> TrialContext:
    return run_trial(name, artifacts, SCALE, DATASET, **params)


def value(ctx: TrialContext, name: str) -> float:
    return ctx.metrics[name].value


@pytest.mark.parametrize("selector", ["entropy", "magnitude", "random", "learnable", "oracle"])
def test_selector_trial(artifacts, selector):
    ctx = run("sparserefine.selector", artifacts, selector=selector, alpha=0.3)
    counts = ctx.notes["counts"]
    # the figures are ratios of the counts: density = selected / pixels, and recall x errors =
    # precision x selected (both are the selected errors)
    assert value(ctx, "density") == pytest.approx(100.0 * counts["selected"] / counts["pixels"], rel=1e-12)
    if counts["selected"] and counts["errors"]:
        hits = value(ctx, "recall") * counts["errors"]
        assert hits == pytest.approx(value(ctx, "precision") * counts["selected"], rel=1e-9)
    latency = ctx.metrics["latency"]
    assert latency.samples == (latency.value,) and latency.value > 0  # TimingConfig(iters=1): one sample
    if selector == "oracle":  # exactly the LR errors (tests/test_sparserefine_known_answers.py counts them)
        assert counts["errors"] > 0 and counts["selected"] == counts["errors"]
        assert value(ctx, "recall") == 100.0
        assert value(ctx, "precision") == 100.0


def test_matched_density_and_full_selection(artifacts):
    entropy = run(
        "sparserefine.selector", artifacts, selector="entropy", alpha=0.3, split="train", measure_latency=False
    )
    magnitude = run(
        "sparserefine.selector", artifacts, selector="magnitude", alpha=0.3, split="train", measure_latency=False
    )
    # the magnitude threshold is calibrated on the train split to the entropy selector's density
    assert abs(value(magnitude, "density") - value(entropy, "density")) < 1.0
    everything = run("sparserefine.selector", artifacts, selector="entropy", alpha=-1.0, measure_latency=False)
    assert value(everything, "density") == 100.0
    assert value(everything, "recall") == 100.0


def test_selector_curve_recall_rises_with_density(artifacts):
    ctx = run("sparserefine.selector_curve", artifacts, selector="entropy", points=6)
    curve = sorted(ctx.notes["curve"], key=lambda p: p["density"])
    recalls = [p["recall"] for p in curve]
    assert recalls == sorted(recalls)
    assert curve[-1]["density"] > curve[0]["density"]


@pytest.mark.parametrize(
    "params",
    [
        {"ensembler": "gated"},
        {"ensembler": "oracle"},
        {"ensembler": "entropy", "inputs": "rgb+logits+features", "arch": "minkunet4"},
        {"arch": "pointnet", "selector": "oracle"},
    ],
)
def test_pipeline_trains_and_evaluates(artifacts, params):
    ctx = run("sparserefine.pipeline", artifacts, alpha=0.3, **SMALL, **params)
    # the selection statistics are those of the same selector on the val split
    selection = run(
        "sparserefine.selector", artifacts, selector=params.get("selector", "entropy"), alpha=0.3, measure_latency=False
    )
    for name in ("density", "recall", "precision"):
        assert value(ctx, name) == value(selection, name)
    miou, lr, hr = value(ctx, "miou"), value(ctx, "miou_lr"), value(ctx, "miou_hr")
    assert not math.isnan(miou) and hr != lr
    assert value(ctx, "gap_closed") == pytest.approx(100.0 * (miou - lr) / (hr - lr), rel=1e-12)
    assert ctx.notes["training"]["steps"] >= 1
    # parameter-free ensemblers other than direct reuse the refiner trained with direct replacement
    assert ctx.notes["training"]["shared_refiner"] == (params.get("ensembler") in ("entropy", "oracle"))


def test_oracle_ensembler_never_hurts(artifacts):
    """Choosing per pixel the better of LR and refined logits by the ground truth keeps every pixel the
    LR gets right: accuracy >= LR accuracy and >= the direct replacement by the same refiner."""
    oracle = run("sparserefine.pipeline", artifacts, alpha=0.3, ensembler="oracle", **SMALL)
    direct = run("sparserefine.pipeline", artifacts, alpha=0.3, ensembler="direct", **SMALL)
    assert value(oracle, "pixel_accuracy") >= value(oracle, "pixel_accuracy_lr")
    assert value(oracle, "pixel_accuracy") >= value(direct, "pixel_accuracy")


def test_breakdown_and_latency(artifacts):
    ctx = run("sparserefine.breakdown", artifacts, alpha=0.3, paper_grid=False, **SMALL)
    for name in (
        "selector_latency",
        "extractor_latency",
        "ensembler_latency",
        "lr_latency",
        "total_latency",
        "hr_latency",
    ):
        latency = ctx.metrics[name]
        assert latency.samples == (latency.value,) and latency.value > 0  # TimingConfig(iters=1): one sample
    assert value(ctx, "speedup") == value(ctx, "hr_latency") / value(ctx, "total_latency")
    convs = ctx.notes["sparse_convs"]
    assert convs and all(pairs >= 0 for _, _, _, pairs, _, _ in convs)
    # the extractor's MACs are its sparse convs' kernel-map pairs x C_in x C_out
    macs = sum(pairs * cin * cout for _, _, _, pairs, cin, cout in convs)
    assert macs > 0 and value(ctx, "extractor_gmacs") == macs / 1e9
    # LR and HR baselines are the same fully convolutional net, the LR one on a quarter of the pixels
    assert value(ctx, "hr_gmacs") == pytest.approx(4 * value(ctx, "lr_gmacs"), rel=1e-12)
    lat = run("sparserefine.latency", artifacts, alpha=0.3, **SMALL)
    assert lat.metrics["latency"].samples == (value(lat, "latency"),) and value(lat, "latency") > 0
    assert value(lat, "density") == value(ctx, "density")  # same entropy selection of the same val image


def test_paper_model_latency_on_an_mmseg_baseline(artifacts):
    ctx = run("sparserefine.paper_model_latency", artifacts, height=64, width=128, **SMALL)
    parts = ("hr_latency", "lr_latency", "selector_latency", "extractor_latency", "ensembler_latency")
    for name in (*parts, "total_latency"):
        latency = ctx.metrics[name]
        assert latency.samples == (latency.value,) and latency.value > 0  # TimingConfig(iters=1): one sample
    assert value(ctx, "speedup") == pytest.approx(value(ctx, "hr_latency") / value(ctx, "total_latency"))
    assert value(ctx, "density") == pytest.approx(11.8, abs=0.1)
    assert value(ctx, "extractor_gmacs") > 0
    # an embedded arch is refused when the parameters resolve (suite load: exit 2), before anything runs
    with pytest.raises(ValueError, match="'small' is not one of: hrnet_w48"):
        run("sparserefine.paper_model_latency", artifacts, model="small", height=64, width=128, **SMALL)


def test_mac_count_matches_kernel_map_pairs():
    """A submanifold 3x3 conv on a full 3x3 block: the centre has 9 neighbours, edges 6, corners 4."""
    from methods.sparse import SparseConv2d, SparseTensor
    from methods.sparserefine.costs import conv_pairs

    coords = torch.tensor([[0, y, x] for y in range(3) for x in range(3)], dtype=torch.int32)
    x = SparseTensor(coords, torch.randn(9, 2), 1, (3, 3), 1)
    conv = SparseConv2d(2, 5, 3)
    kind, s_in, s_out, pairs = conv_pairs(conv, x)
    assert (kind, s_in, s_out) == ("subm", 1, 1)
    assert pairs == 9 + 4 * 6 + 4 * 4
