"""Every SparseRefine trial on a researcher's own data: a VOC folder of JPEGs of different sizes (odd
sides included), streamed per image, with the embedded LR baseline and with an mmseg checkpoint as
the LR baseline; plus known answers for the per-image PointRend grids."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_sparserefine_streaming import VOC_SIZES, suite_text, write_voc

from methods.sparserefine import pointrend as pr
from methods.sparserefine.lr_outputs import PerImage, SplitOutputs

pytestmark = pytest.mark.usefixtures("one_thread")

ALL_SELECTORS = ["random", "magnitude", "learnable", "entropy", "oracle"]
SWEEPABLE = ["entropy", "random", "magnitude", "learnable"]
SMALL = "width_mult: 0.125, reps: 1"
# Every trial registered in methods/sparserefine, with the variants whose inputs differ (features,
# oracle labels, the point-wise extractor).
BENCHMARKS = f"""benchmarks:
  - trial: sparserefine.selector
    params: {{recall: 0.8}}
    matrix: {{selector: {ALL_SELECTORS}}}
  - trial: sparserefine.selector_curve
    params: {{points: 3}}
    matrix: {{selector: {SWEEPABLE}}}
  - trial: sparserefine.pipeline
    params: {{recall: 0.8, {SMALL}, measure_latency: true}}
    cases:
      - {{label: rgb}}
      - {{label: features, inputs: rgb+logits+features}}
      - {{label: oracle ensembler, ensembler: oracle}}
      - {{label: pointnet, arch: pointnet}}
  - trial: sparserefine.patchrefine
    params: {{recall: 0.8, {SMALL}, measure_latency: true, patch: 32}}
  - trial: sparserefine.pointrend
    params: {{measure_latency: true, hidden: 8, layers: 1}}
  - trial: sparserefine.object_sizes
    params: {{recall: 0.8, {SMALL}}}
  - trial: sparserefine.breakdown
    params: {{recall: 0.8, {SMALL}}}
  - trial: sparserefine.latency
    params: {{recall: 0.8, {SMALL}}}
"""
RANDOM_WEIGHT_TRIALS = f"""  - trial: sparserefine.paper_model_latency
    params: {{model: hrnet_w48, height: 64, width: 96, {SMALL}, num_classes: 21}}
  - trial: sparserefine.table1_cost
    params: {{model: hrnet_w48, height: 64, width: 96, lr_height: 32, lr_width: 48, {SMALL}, num_classes: 21,
             count_macs: false}}
"""


def run_suite(tmp_path: Path, text: str, name: str):
    from harness.cli import main
    from harness.store import Store

    suite = tmp_path / f"{name}.yaml"
    suite.write_text(text)
    db = f"sqlite:///{tmp_path / 'results.db'}"
    main(["run", str(suite), "--scale", "smoke", "--db", db, "--artifacts", str(tmp_path / "art")])
    return Store(db).results(suite=name)


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    """Three sizes, val image 0 odd-sided (75x101): the timed batches stack images of its size."""
    return write_voc(tmp_path_factory.mktemp("own-data") / "voc", VOC_SIZES, num_train=3, num_val=3)


def labelled_and_all_pixels(root: Path) -> tuple[int, int]:
    from methods.datasets import build_dataset

    val = build_dataset({"name": "voc", "root": str(root)}, "val")
    labels = [val[i].label for i in range(len(val))]
    return sum(int((y != 255).sum()) for y in labels), sum(y.numel() for y in labels)


def test_every_sparserefine_trial_runs_on_images_of_different_sizes(voc: Path, tmp_path: Path) -> None:
    from harness.registry import all_trials

    rows = run_suite(tmp_path, suite_text("own", voc, BENCHMARKS + RANDOM_WEIGHT_TRIALS), "own")
    registered = {t.name for t in all_trials() if t.name.startswith("sparserefine.")}
    assert {r.trial for r in rows} == registered  # every SparseRefine trial, none left out
    assert len(rows) == 5 + 4 + 4 + 5 + 2
    failed = {(r.trial, r.label): r.error for r in rows if r.status != "ok"}
    assert not failed
    _, every_pixel = labelled_and_all_pixels(voc)
    for row in rows:
        if row.trial == "sparserefine.selector":  # each val image counted once at its own size
            assert row.notes["counts"]["pixels"] == every_pixel
        if row.trial in ("sparserefine.pipeline", "sparserefine.patchrefine", "sparserefine.breakdown"):
            assert "latency" in row.metrics or "total_latency" in row.metrics, row.label
    by = {(r.trial, r.params.get("selector")): r.metrics for r in rows}
    oracle = by[("sparserefine.selector", "oracle")]
    assert oracle["recall"].value == 100.0 and oracle["precision"].value == 100.0
    # the LR figures of every trained unit are those of the same frozen outputs on the same pixels
    lr = {r.metrics["miou_lr"].value for r in rows if "miou_lr" in r.metrics}
    assert len(lr) == 1
    pointrend = next(r for r in rows if r.trial == "sparserefine.pointrend")
    assert len(pointrend.notes["training"]["grid"]) == 3  # one point grid per image size
    assert 0.0 < pointrend.metrics["density"].value < 100.0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """An HRNet-W48 for VOC's 21 classes in MMSeg's checkpoint format (fp16 tensors, ``module.``),
    and the built model holding exactly the file's (fp16-rounded) weights."""
    from methods.datasets.real import VOC_CLASSES
    from methods.mmseg_models import build_mmseg_model

    torch.manual_seed(0)
    model = build_mmseg_model("hrnet_w48", num_classes=len(VOC_CLASSES)).eval()
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.segmentor.state_dict().items()}
    model.segmentor.load_state_dict(state)
    path = tmp_path_factory.mktemp("checkpoints") / "hrnet_voc.pth"
    wrapped = {f"module.{k}": v for k, v in state.items()}
    torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": wrapped}, path)
    return path, model


CHECKPOINT_BENCHMARKS = f"""benchmarks:
  - trial: sparserefine.selector
    params: {{recall: 0.8}}
    matrix: {{selector: {ALL_SELECTORS}}}
  - trial: sparserefine.pipeline
    params: {{recall: 0.8, {SMALL}, measure_latency: true}}
    cases:
      - {{label: rgb}}
      - {{label: features, inputs: rgb+features}}
      - {{label: logits and features, inputs: rgb+logits+features}}
  - trial: sparserefine.breakdown
    params: {{recall: 0.8, {SMALL}, paper_grid: false}}
  - trial: sparserefine.pointrend
    params: {{hidden: 8, layers: 1, measure_latency: true}}
"""


def test_checkpoint_lr_baseline_runs_every_unit_features_included(
    voc: Path, checkpoint: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    """With ``baselines.lr`` an mmseg checkpoint every unit is ok, those that read the LR features
    (the "+features" inputs, PointRend) included: the features are computed per image on demand,
    and none are written to the artifacts."""
    path, _ = checkpoint
    baselines = f'baselines: {{lr: {{model: "mmseg:hrnet_w48", checkpoint: "{path}"}}}}'
    rows = run_suite(tmp_path, suite_text("own_ckpt", voc, CHECKPOINT_BENCHMARKS, baselines), "own_ckpt")
    assert len(rows) == 5 + 3 + 1 + 1
    failed = {(r.trial, r.label or r.params.get("selector")): (r.status, r.error) for r in rows if r.status != "ok"}
    assert not failed
    _, every_pixel = labelled_and_all_pixels(voc)
    for row in rows:
        if row.trial == "sparserefine.selector":
            assert row.notes["counts"]["pixels"] == every_pixel
            assert "latency" in row.metrics  # magnitude: thresholding the norm the LR pass computed
    pipeline = {r.label: r for r in rows if r.trial == "sparserefine.pipeline"}
    for label in ("features", "logits and features"):
        assert pipeline[label].params["inputs"].endswith("+features")
        assert "latency" in pipeline[label].metrics and pipeline[label].notes["training"]["steps"] >= 1
    # the LR figures of every unit are the same frozen outputs', whatever the refiner reads
    assert len({r.metrics["miou_lr"].value for r in rows if "miou_lr" in r.metrics}) == 1
    pointrend = next(r for r in rows if r.trial == "sparserefine.pointrend")
    assert len(pointrend.notes["training"]["grid"]) == 3 and "latency" in pointrend.metrics
    assert pointrend.notes["training"]["steps"] >= 1
    breakdown = next(r for r in rows if r.trial == "sparserefine.breakdown")
    assert breakdown.metrics["lr_gmacs"].value > 0 and breakdown.metrics["speedup"].value > 0
    from methods.sparserefine.lr_outputs import FEATURES_KIND, OUTPUTS_KIND

    artifacts = tmp_path / "art"
    assert list(artifacts.rglob(f"*{OUTPUTS_KIND}*"))  # the per-image LR outputs are cached ...
    assert not list(artifacts.rglob(f"*{FEATURES_KIND}*"))  # ... the features never written


def test_checkpoint_features_on_demand_are_the_hooked_classifier_input(
    voc: Path, checkpoint: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    """Known answer: image i's on-demand LR features are the input of the checkpoint model's
    classifier (``decode_head.conv_seg``) in a direct forward on that image's x2-downsampled input,
    placed as mmseg places the logits (bilinear to the input padded to 32, cropped), in fp16."""
    import torch.nn.functional as F

    from methods.baselines.frozen import load_checkpoint_baseline, parse_choice
    from methods.datasets import build_dataset, normalize
    from methods.datasets.real import VOC_CLASSES
    from methods.sparserefine.lr_outputs import LROutputsSource, lr_features, lr_outputs, to_fp16
    from methods.sparserefine.training import Features

    path, model = checkpoint
    choice = parse_choice("lr", {"model": "mmseg:hrnet_w48", "checkpoint": str(path)})
    baseline = load_checkpoint_baseline(choice, VOC_CLASSES, "voc", tmp_path, False, lambda m: None)
    assert baseline.feature_channels == 720  # HRNet-W48's head: 48 + 96 + 192 + 384 channels
    dataset = {"name": "voc", "root": str(voc)}
    source = LROutputsSource(baseline, dataset, tmp_path / "art", lambda m: None)
    split = lr_outputs(source, "val")
    features, factor = lr_features(source, "val")
    assert factor == split.factor == 2
    hooked: list[torch.Tensor] = []
    hook = model.segmentor.decode_head.conv_seg.register_forward_pre_hook(lambda _m, args: hooked.append(args[0]))
    val = build_dataset(dataset, "val")
    try:
        for i in [0, 1, 2, 0]:  # the last read comes back from the images kept in memory
            h, w = val[i].label.shape
            x = F.avg_pool2d(F.pad(normalize(val[i].image[None]), (0, w % 2, 0, h % 2), mode="replicate"), 2)
            hooked.clear()
            with torch.inference_mode():
                logits = model(x)
            gh, gw = x.shape[-2:]
            padded = (math.ceil(gh / 32) * 32, math.ceil(gw / 32) * 32)
            expected = F.interpolate(hooked[-1], size=padded, mode="bilinear", align_corners=False)[..., :gh, :gw]
            got = features[i]
            assert got.shape == (720, math.ceil(h / 2), math.ceil(w / 2)) == features.item_shape(i)
            assert got.shape[-2:] == split.logits_grid[i].shape[-2:] == logits.shape[-2:]
            assert got.dtype == torch.float16 and got.device.type == "cpu" and not got.is_inference()
            assert torch.equal(got, to_fp16(expected[0]))
    finally:
        hook.remove()
    # as the consumers read them: nearest-upsampled to the image's own size (odd sides cropped)
    full = Features(features, factor).at(0, split.size(0))
    assert full.shape == (1, 720, *split.size(0)) and torch.equal(full[0, :, ::2, ::2], features[0].float())


# --- PointRend on images of different sizes: known answers --------------------------------------


class CopyingHead(torch.nn.Module):
    """A point head that answers the coarse logits it is given."""

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        return coarse


def mixed_split(sizes: list[tuple[int, int]], classes: int = 4) -> tuple[SplitOutputs, PerImage]:
    """In-memory split of images of ``sizes`` (random LR logits on the x2 grid, labels with a void
    row) and its LR features."""
    gen = torch.Generator().manual_seed(0)
    grids = [(math.ceil(h / 2), math.ceil(w / 2)) for h, w in sizes]
    logits = [torch.randn(classes, *g, generator=gen).half() for g in grids]
    labels = []
    for h, w in sizes:
        y = torch.randint(0, classes, (h, w), generator=gen)
        y[0] = 255
        labels.append(y)
    split = SplitOutputs(
        images=PerImage(lambda i: torch.zeros(3, *sizes[i], dtype=torch.uint8), [(3, *s) for s in sizes]),
        labels=PerImage(lambda i: labels[i], sizes),
        logits_grid=PerImage(lambda i: logits[i], [(classes, *g) for g in grids]),
        magnitude_grid=PerImage(lambda i: torch.ones(grids[i]), grids),
        factor=2,
        num_classes=classes,
        names=[str(i) for i in range(len(sizes))],
    )
    return split, PerImage(lambda i: torch.ones(2, *grids[i]), [(2, *g) for g in grids])


def test_pointrend_with_a_copying_head_reproduces_the_lr_prediction_per_image() -> None:
    """At scale 0.5 an even-sided image's point grid is its LR grid: a head that copies the coarse
    logits gives back the LR prediction, image by image at each image's own size, and the matrix
    counts exactly the labelled pixels."""
    from methods.metrics import ConfusionMatrix

    split, feats = mixed_split([(12, 18), (8, 10), (16, 6)])
    config = pr.PointRendConfig(num_classes=4, feature_channels=2, scale=0.5, density=0.3)
    refined, lr = ConfusionMatrix(4), ConfusionMatrix(4)
    for i in range(len(split)):
        grid, points = pr.image_points(split, feats, i, config)
        assert grid.full == split.size(i) and grid.size == (split.size(i)[0] // 2, split.size(i)[1] // 2)
        out = pr.predict(CopyingHead(), points, grid.full)
        assert torch.equal(out, split.prediction(i))
        refined.update(out, split.labels[i : i + 1])
        lr.update(split.prediction(i), split.labels[i : i + 1])
    assert torch.equal(refined.counts, lr.counts)
    assert int(refined.counts.sum()) == sum(int((split.labels[i] != 255).sum()) for i in range(len(split)))


def test_an_odd_sided_images_point_grid_spans_the_image_not_its_padded_lr_grid() -> None:
    """A 7x101 image has a 4x51 LR grid whose last cells reach past the image; with logits equal to
    each cell's centre coordinate (a linear ramp, which bilinear sampling reproduces exactly), the
    points sample the image's own pixel centres, in LR cells."""
    height, width, n = 7, 101, 50
    ramp = (torch.arange(51, dtype=torch.float32) + 0.5).expand(1, 1, 4, 51)
    sampled = pr.resample(ramp, (3, n), covered=(height / 2, width / 2))
    expected = (torch.arange(n, dtype=torch.float64) + 0.5) * width / n / 2
    assert torch.allclose(sampled[0, 0, 1].double(), expected, atol=1e-5)
    # an even side: F.interpolate's own mapping, unchanged
    even = torch.randn(1, 2, 4, 6)
    assert torch.equal(pr.resample(even, (3, 5), covered=(4, 6)), pr.resample(even, (3, 5)))


def test_pointrend_trains_one_image_at_a_time_on_images_of_different_sizes() -> None:
    split, feats = mixed_split([(12, 18), (9, 11), (20, 6)])
    config = pr.PointRendConfig(num_classes=4, feature_channels=2, hidden=4, layers=1, scale=0.5, density=0.5)
    head, record = pr.train_head(config, split, feats, epochs=2, lr=0.01, seed=0, progress=lambda m: None)
    assert record["steps"] == 6  # every image once per epoch
    ks = [pr.ImageGrid.of(split.size(i), config, 2).k for i in range(3)]
    assert record["points_per_image"] == sorted(set(ks)) and len(set(ks)) == 3
