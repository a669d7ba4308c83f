"""Frozen baselines from MMSeg checkpoints (``baselines:`` / ``ctx.baselines``): a checkpoint written
here from a built HRNet-W48 loads (``state_dict`` wrapping, ``module.`` prefixes, bare tensors), runs
as the LR baseline on the x2-downsampled image, and the refiner trains on its frozen outputs; bad
files and blocks are one line naming the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_sparserefine_streaming import write_voc

from harness.context import TrialContext
from harness.errors import UserError
from harness.registry import get_trial
from harness.timing import TimingConfig
from methods.baselines.frozen import (
    load_checkpoint_baseline,
    parse_baselines,
    parse_choice,
    validate_baselines,
)
from methods.datasets import normalize
from methods.datasets.real import VOC_CLASSES
from methods.metrics import ConfusionMatrix
from methods.sparserefine.lr_outputs import to_fp16

REPO = Path(__file__).resolve().parents[1]
SCALE = {
    "baseline": {"iters": 6, "batch_size": 2, "warmup_iters": 1},
    "sparserefine": {"epochs": 3, "batch": 2, "crop": [64, 96]},
}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hrnet(tmp_path_factory):
    """A built HRNet-W48 for VOC's 21 classes and its checkpoint in MMSeg's format (fp16 tensors
    to halve the file; loading casts them to the model's fp32)."""
    from methods.mmseg_models import build_mmseg_model

    torch.manual_seed(0)
    model = build_mmseg_model("hrnet_w48", num_classes=len(VOC_CLASSES)).eval()
    folder = tmp_path_factory.mktemp("checkpoints")
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.segmentor.state_dict().items()}
    # Keep the model equal to what the file holds (fp16-rounded weights).
    model.segmentor.load_state_dict(state)
    wrapped = folder / "hrnet_voc.pth"
    meta = {"epoch": 3, "mmseg_version": "1.2.2"}
    torch.save({"meta": meta, "state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    return model, wrapped, state, folder


def choice(path: Path, kind: str = "lr"):
    return parse_choice(kind, {"model": "mmseg:hrnet_w48", "checkpoint": str(path)})


def test_wrapped_checkpoint_loads_and_lr_runs_on_the_downsampled_image(hrnet, tmp_path: Path) -> None:
    model, wrapped, _, _ = hrnet
    baseline = load_checkpoint_baseline(choice(wrapped), VOC_CLASSES, "voc", tmp_path, False, lambda m: None)
    images = torch.randint(0, 256, (2, 3, 37, 50), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    grid = baseline.predict_grid(images)
    assert grid.factor == 2 and grid.logits.shape == (2, 21, 19, 25)  # ceil(37 / 2), ceil(50 / 2)
    # known answer: the model the checkpoint was written from, on the x2 area-downsampled image
    # (odd side padded by repetition)
    x = F.pad(normalize(images), (0, 0, 0, 1), mode="replicate")
    with torch.inference_mode():
        expected = model(F.avg_pool2d(x, 2))
    assert torch.equal(grid.logits, expected.float())
    full, _ = baseline.predict(images)
    assert full.shape == (2, 21, 37, 50)
    assert torch.equal(full[..., ::2, ::2], expected.float())  # nearest upsampling
    assert torch.equal(full[..., 1::2, 1::2], expected.float()[..., :18, :25])
    assert grid.magnitude.shape == (2, 19, 25) and bool((grid.magnitude > 0).all())
    assert baseline.config["model"] == "mmseg:hrnet_w48" and len(baseline.config["checkpoint_sha256"]) == 64


def test_features_are_placed_on_the_logits_grid(hrnet, tmp_path: Path) -> None:
    """Known answer: the classifier is a 1x1 conv and mmseg's resize is linear, so the classifier
    applied to the features on the LR grid gives back the LR logits, odd and padded sizes included
    (a misplaced resize would not). The magnitude is their norm, placed the same way."""
    model, wrapped, _, _ = hrnet
    baseline = load_checkpoint_baseline(choice(wrapped), VOC_CLASSES, "voc", tmp_path, False, lambda m: None)
    assert baseline.feature_channels == 720 and baseline.caches_features is False
    images = torch.randint(0, 256, (1, 3, 75, 101), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    grid = baseline.predict_grid(images, features=True)
    assert grid.features is not None and grid.features.shape == (1, 720, 38, 51)  # input 38x51, padded 64x64
    assert baseline.predict_grid(images).features is None  # only when asked
    conv_seg = model.segmentor.decode_head.conv_seg
    with torch.inference_mode():
        again = conv_seg(grid.features)
    scale = grid.logits.abs().max()
    assert torch.allclose(again, grid.logits, rtol=0, atol=1e-5 * float(scale))
    norm = torch.linalg.vector_norm(grid.features, dim=1)
    # the norm is resized, not the features: equal where bilinear weights are trivial, close elsewhere
    assert torch.allclose(grid.magnitude, norm, rtol=0.05)


def test_bare_state_dict_loads(hrnet, tmp_path: Path) -> None:
    model, _, state, folder = hrnet
    bare = folder / "bare.pth"
    if not bare.exists():
        torch.save(state, bare)
    baseline = load_checkpoint_baseline(choice(bare, "hr"), VOC_CLASSES, "voc", tmp_path, False, lambda m: None)
    images = torch.randint(0, 256, (1, 3, 32, 48), dtype=torch.uint8)
    with torch.inference_mode():
        expected = model(normalize(images))
    assert torch.equal(baseline.predict_grid(images).logits, expected.float())


def test_bad_checkpoints_are_one_line_naming_the_file(hrnet, tmp_path: Path) -> None:
    _, wrapped, state, _ = hrnet
    missing = tmp_path / "missing.pth"
    with pytest.raises(UserError, match="missing.pth"):
        load_checkpoint_baseline(choice(missing), VOC_CLASSES, "voc", tmp_path, False, print)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(wrapped.read_bytes()[:5000])
    with pytest.raises(UserError, match="corrupt.pth") as error:
        load_checkpoint_baseline(choice(corrupt), VOC_CLASSES, "voc", tmp_path, False, print)
    assert "\n" not in str(error.value)
    nineteen = dict(state)
    for key in ("decode_head.conv_seg.weight", "decode_head.conv_seg.bias"):
        nineteen[key] = state[key][:19]
    wrong = tmp_path / "cityscapes_head.pth"
    torch.save({"state_dict": nineteen}, wrong)
    with pytest.raises(UserError, match=r"cityscapes_head.pth predicts 19 classes, dataset voc has 21"):
        load_checkpoint_baseline(choice(wrong), VOC_CLASSES, "voc", tmp_path, False, print)
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, other)
    with pytest.raises(UserError, match="other.pth"):
        baseline = load_checkpoint_baseline(choice(other), VOC_CLASSES, "voc", tmp_path, False, print)
        baseline.predict_grid(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))  # builds and loads the network


def test_baselines_block_is_validated(tmp_path: Path, hrnet) -> None:
    _, wrapped, _, _ = hrnet
    assert parse_baselines({})["lr"].model == "embedded:small"
    validate_baselines(
        {"lr": {"model": "mmseg:hrnet_w48", "checkpoint": str(wrapped)}, "hr": {"model": "embedded:tiny"}}
    )
    bad = [
        ({"lr": {"model": "mmseg:unet"}}, "unknown mmseg model 'unet'"),
        ({"lr": {"model": "mmseg:hrnet_w48"}}, "needs 'checkpoint'"),
        ({"lr": {"model": "embedded:small", "checkpoint": "x.pth"}}, "takes no checkpoint"),
        ({"mid": {}}, "unknown key 'mid'"),
        ({"lr": {"model": "hrnet"}}, "embedded:<arch>"),
        ({"lr": {"model": "mmseg:hrnet_w48", "checkpoint": str(tmp_path / "nope.pth")}}, "nope.pth does not exist"),
        ({"hr": {"model": "embedded:small", "weights": 1}}, "unknown key 'weights'"),
    ]
    for block, message in bad:
        with pytest.raises(UserError, match=message):
            validate_baselines(block)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt.pth"):
        validate_baselines({"lr": {"model": "mmseg:hrnet_w48", "checkpoint": str(corrupt)}})
    # the class count is checked against the dataset resolved at the same scale
    ours = {"lr": {"model": "mmseg:hrnet_w48", "checkpoint": str(wrapped)}}
    with pytest.raises(UserError, match="classes"):
        validate_baselines(ours, {"dataset": {"name": "embedded"}, "baselines": ours})
    # a real dataset's class count comes from its name and keys: no root (no file) is needed for it
    validate_baselines(ours, {"dataset": {"name": "voc"}, "baselines": ours})
    with pytest.raises(UserError, match="predicts 21 classes, dataset cityscapes has 19"):
        validate_baselines(ours, {"dataset": {"name": "cityscapes"}, "baselines": ours})


def test_refiner_trains_on_the_checkpoint_baselines_frozen_outputs(hrnet, tmp_path: Path) -> None:
    """A pipeline unit with ``baselines.lr`` = the checkpoint: the LR figures are those of the
    checkpoint's model (computed here directly), and the refiner trains on its outputs."""
    import methods

    methods.discover()
    model, wrapped, _, _ = hrnet
    root = write_voc(tmp_path / "voc", [(64, 96), (48, 70)], num_train=2, num_val=2)
    dataset = {"name": "voc", "root": str(root)}
    spec = get_trial("sparserefine.pipeline")
    ctx = TrialContext(
        spec=spec,
        params=spec.resolve_params({"selector": "entropy", "recall": 0.8, "width_mult": 0.125, "reps": 1}),
        scale_name="smoke",
        scale=SCALE,
        dataset=dataset,
        seed=1,
        timing=TimingConfig(warmup=0, iters=1),
        artifacts_dir=tmp_path / "artifacts",
    )
    ctx.baselines = {"lr": {"model": "mmseg:hrnet_w48", "checkpoint": str(wrapped)}}
    spec.fn(ctx)
    from methods.datasets import build_dataset

    val = build_dataset(dataset, "val")
    lr = ConfusionMatrix(21)
    for i in range(len(val)):
        sample = val[i]
        h, w = sample.label.shape
        x = F.pad(normalize(sample.image[None]), (0, w % 2, 0, h % 2), mode="replicate")
        with torch.inference_mode():
            grid = to_fp16(model(F.avg_pool2d(x, 2))).float()  # cached in fp16
        full = grid.repeat_interleave(2, -2).repeat_interleave(2, -1)[..., :h, :w]
        lr.update(full.argmax(1), sample.label[None])
    assert ctx.metrics["miou_lr"].value == pytest.approx(lr.miou(), abs=1e-9)
    assert ctx.metrics["miou"].value >= 0.0
    assert ctx.notes["training"]["steps"] >= 1  # the refiner took optimiser steps on those outputs
    from methods.sparserefine.experiment import Experiment

    assert Experiment.of(ctx).baseline_config["model"] == "mmseg:hrnet_w48"  # its cache key


def _harness(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def test_cli_rejects_bad_checkpoints_with_one_line_and_nothing_written(tmp_path: Path, hrnet) -> None:
    db = tmp_path / "results.db"
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02garbage")
    _, voc_checkpoint, _, _ = hrnet  # 21 classes; the suite's embedded dataset has 11
    cases = (
        (tmp_path / "absent.pth", "absent.pth"),
        (corrupt, "corrupt.pth"),
        (voc_checkpoint, "hrnet_voc.pth predicts 21 classes, dataset embedded has 11"),
    )
    for checkpoint, name in cases:
        done = _harness(
            "run",
            "suites/table5.yaml",
            "--scale",
            "smoke",
            "--db",
            f"sqlite:///{db}",
            "--set",
            "baselines.lr.model=mmseg:hrnet_w48",
            "--set",
            f"baselines.lr.checkpoint={checkpoint}",
        )
        assert done.returncode == 2, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and name in lines[0], done.stderr
        assert "Traceback" not in done.stderr
    assert not db.exists()
