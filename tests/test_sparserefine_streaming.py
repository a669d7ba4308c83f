"""Streamed data with bounded memory: per-image LR-output cache, DataLoader reads, images of
different sizes, and streamed results equal to in-memory ones (known answers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.context import TrialContext
from harness.registry import get_trial
from harness.timing import TimingConfig
from methods.baselines import trained_baseline
from methods.baselines.baseline import SplitTrainingImages, model_input, model_labels
from methods.baselines.models import SegCNN
from methods.baselines.training import StackedImages, TrainConfig, train_segmentation_model
from methods.datasets import build_dataset
from methods.datasets.loading import crop_size, iterate_samples, pad_to, worker_count
from methods.metrics import ConfusionMatrix
from methods.sparserefine.lr_outputs import RECORD_CACHE_BYTES, LROutputsSource, PerImage, SplitOutputs, lr_outputs

EMBEDDED = {"name": "embedded", "height": 64, "width": 128, "num_train": 4, "num_val": 6, "cache_dir": None}
SCALE = {
    "baseline": {"iters": 6, "batch_size": 2, "warmup_iters": 1},
    "sparserefine": {"epochs": 1, "batch": 2, "crop": [32, 64]},
}
VOC_SIZES = [(75, 101), (96, 128), (64, 90)]  # odd sides included: the LR grid is ceil(side / 2)

pytestmark = pytest.mark.usefixtures("one_thread")


def voc_palette() -> list[int]:
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def write_voc(root: Path, sizes: list[tuple[int, int]], num_train: int, num_val: int, seed: int = 0) -> Path:
    """A VOC2012-layout folder: JPEG photos-like images (coloured boxes of classes 1, 7, 15 on a
    background, noise), palette PNG labels with a void border row, split lists."""
    base = root / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    count = 0
    for split, n in (("train", num_train), ("val", num_val)):
        names = []
        for _ in range(n):
            h, w = sizes[count % len(sizes)]
            count += 1
            label = np.zeros((h, w), np.uint8)
            image = np.full((h, w, 3), 40, np.uint8)
            for cls in (1, 7, 15):
                y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
                y1, x1 = y0 + rng.integers(h // 6, h // 2), x0 + rng.integers(w // 6, w // 2)
                label[y0:y1, x0:x1] = cls
                image[y0:y1, x0:x1] = [(cls * 37) % 256, (cls * 91) % 256, (cls * 53) % 256]
            label[0, :] = 255
            noisy = image.astype(int) + rng.integers(-20, 20, image.shape)
            name = f"2007_{count:06d}"
            Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(base / "JPEGImages" / f"{name}.jpg")
            mask = Image.fromarray(label, mode="P")
            mask.putpalette(voc_palette())
            mask.save(base / "SegmentationClass" / f"{name}.png")
            names.append(name)
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


class CountingModel:
    """A frozen baseline wrapper counting the images it was run on."""

    def __init__(self, model):
        self.model = model
        self.images = 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def predict_grid(self, images, bf16: bool = False):
        self.images += images.shape[0]
        return self.model.predict_grid(images, bf16=bf16)


@pytest.fixture(scope="module")
def embedded_lr(tmp_path_factory):
    artifacts = tmp_path_factory.mktemp("stream-artifacts")
    model = trained_baseline("lr", EMBEDDED, SCALE, artifacts, arch="tiny", seed=1)
    return artifacts, model


def suite_text(name: str, root: Path, benchmarks: str, baselines: str = "", learnable_steps: int = 2) -> str:
    """A smoke-scale suite on the VOC folder at ``root`` (mixed sizes) running ``benchmarks``."""
    return f"""name: {name}
seed: 1
dataset: {{name: voc, root: "{root}"}}
timing: {{warmup: 0, iters: 1}}
scales:
  smoke:
    baseline: {{iters: 6, batch_size: 2, warmup_iters: 1}}
    sparserefine:
      epochs: 1
      batch: 2
      crop: [64, 96]
      learnable_selector: {{steps: {learnable_steps}, batch: 2, crop: [64, 96]}}
matrix: {{precision: [fp32], batch_size: [2], device: [cpu]}}
{baselines}
{benchmarks}"""


def in_memory(split: SplitOutputs) -> SplitOutputs:
    """The same split with every field stacked in memory (one batch)."""
    return SplitOutputs(
        images=split.images[:],
        labels=split.labels[:],
        logits_grid=split.logits_grid[:],
        magnitude_grid=split.magnitude_grid[:],
        factor=split.factor,
        num_classes=split.num_classes,
        names=list(split.names),
    )


def test_lr_outputs_are_cached_per_image_once_and_read_back_lazily(embedded_lr) -> None:
    artifacts, model = embedded_lr
    counting = CountingModel(model)
    split = lr_outputs(LROutputsSource(counting, EMBEDDED, artifacts, lambda m: None), "val")
    assert counting.images == EMBEDDED["num_val"]  # one LR pass
    assert isinstance(split.images, PerImage) and isinstance(split.logits_grid, PerImage)
    assert split.logits_grid[0].dtype == torch.float16
    assert split.logits_grid.shape == (6, 11, 32, 64)  # fp16 on the LR grid (factor 2)
    per_image = sorted((artifacts / "sparserefine-lr-outputs").glob("*.pt"))
    assert len(per_image) == 6 + 4 * 0  # val only so far; one file per image
    again = CountingModel(model)
    split2 = lr_outputs(LROutputsSource(again, EMBEDDED, artifacts, lambda m: None), "val")
    assert again.images == 0  # read back, not recomputed
    # the logits equal the model's own outputs on that image (run in its batch of 4), on its grid
    data = build_dataset(EMBEDDED, "val")
    direct = model.predict_grid(torch.stack([data[i].image for i in range(4)])).logits[3].half()
    assert torch.equal(split2.logits_grid[3], direct)
    assert torch.equal(split2.labels[3], data[3].label)
    # a larger num_val reuses the images already done
    more = {**EMBEDDED, "num_val": 7}
    counting = CountingModel(trained_baseline("lr", EMBEDDED, SCALE, artifacts, arch="tiny", seed=1))
    counting.model.config = model.config  # same frozen baseline
    lr_outputs(LROutputsSource(counting, more, artifacts, lambda m: None), "val")
    assert counting.images == 1
    # an image whose artifact vanished (between others still cached) is recomputed alone, in place
    from methods.artifacts import artifact_paths
    from methods.sparserefine.lr_outputs import OUTPUTS_KIND

    key = split2.reader.key
    before = [split2.logits_grid[i].clone() for i in range(3)]
    for path in artifact_paths(artifacts, OUTPUTS_KIND, key.config(1)):
        path.unlink()
    for path in (artifacts / "sparserefine-lr-manifest").glob("*"):
        path.unlink()
    counting = CountingModel(model)
    rebuilt = lr_outputs(LROutputsSource(counting, EMBEDDED, artifacts, lambda m: None), "val")
    assert counting.images == 1
    # alone in its batch: equal up to float rounding to its value computed in a batch of four
    assert torch.allclose(rebuilt.logits_grid[1].float(), before[1].float(), atol=1e-2)
    assert torch.equal(rebuilt.logits_grid[0], before[0]) and torch.equal(rebuilt.logits_grid[2], before[2])


def test_streamed_evaluation_equals_single_batch(embedded_lr) -> None:
    from methods.sparserefine.refiner import RefinerConfig, SparseRefiner
    from methods.sparserefine.selection import SelectionSpec, build_selector
    from methods.sparserefine.training import evaluate

    artifacts, model = embedded_lr
    streamed = lr_outputs(LROutputsSource(model, EMBEDDED, artifacts, lambda m: None, workers=2), "val")
    memory = in_memory(streamed)
    torch.manual_seed(0)
    refiner = SparseRefiner(RefinerConfig(num_classes=11, arch="minkunet4", width_mult=0.125, reps=1)).eval()
    spec = SelectionSpec("entropy", alpha=1.0)
    a = evaluate(refiner, build_selector(spec, streamed, seed=0), streamed, None, lambda m: None)
    b = evaluate(refiner, build_selector(spec, memory, seed=0), memory, None, lambda m: None)
    assert torch.equal(a.refined.counts, b.refined.counts)
    assert torch.equal(a.lr.counts, b.lr.counts)
    # and the LR confusion matrix equals one update over the whole split at once
    single = ConfusionMatrix(11)
    single.update(memory.prediction(slice(None)), memory.labels)
    assert torch.equal(a.lr.counts, single.counts)
    assert streamed.reader._records.bytes <= RECORD_CACHE_BYTES  # bounded by bytes, not by the split


def test_baseline_training_streamed_equals_stacked(tmp_path: Path) -> None:
    source = SplitTrainingImages(EMBEDDED, "lr", bf16=True)
    images = torch.stack([source.dataset[i].image for i in range(len(source))])
    labels = torch.stack([source.dataset[i].label for i in range(len(source))])
    stacked = StackedImages(model_input(images, "lr").to(torch.bfloat16), model_labels(labels, "lr").to(torch.uint8))
    config = TrainConfig(iters=3, batch_size=2, warmup_iters=1)
    runs = []
    for data in (source, stacked):
        torch.manual_seed(0)
        net = SegCNN(11, "tiny")
        runs.append(train_segmentation_model(net, data, None, config, seed=3).losses)
    assert runs[0] == runs[1]


def test_baseline_training_images_are_prepared_once_within_a_byte_bound(monkeypatch) -> None:
    reads: list[int] = []
    source = SplitTrainingImages(EMBEDDED, "lr", bf16=True)
    read = source.dataset.__getitem__
    monkeypatch.setattr(type(source.dataset), "__getitem__", lambda self, i: reads.append(i) or read(i))
    first = source.load(1)
    again = source.load(1)
    assert reads == [1] and again[0] is first[0] and again[1] is first[1]
    one_image = first[0].numel() * 2 + first[1].numel()  # bf16 inputs + uint8 labels
    small = SplitTrainingImages(EMBEDDED, "lr", bf16=True)
    small._loaded.max_bytes = one_image  # room for one prepared image: the older one is dropped
    small.load(0), small.load(1), small.load(0)
    assert reads[1:] == [0, 1, 0] and small._loaded.bytes <= one_image


def test_cached_logits_stay_finite_in_fp16() -> None:
    from methods.sparserefine.lr_outputs import to_fp16

    stored = to_fp16(torch.tensor([1.7e6, -3e5, 1.5]))
    assert stored.dtype == torch.float16 and bool(torch.isfinite(stored).all()) and float(stored[2]) == 1.5


def test_crop_and_pad_follow_mmseg() -> None:
    assert crop_size((64, 128), (75, 101), 2) == (64, 100)
    padded = pad_to(torch.ones(1, 3, 5), (4, 6), 255)
    assert padded.shape == (1, 4, 6) and int(padded[0, 3, 0]) == 255 and int(padded[0, 2, 5]) == 255
    assert worker_count({"workers": 2}) == 2
    from harness.errors import UserError

    with pytest.raises(UserError, match="workers"):
        worker_count({"workers": -1})


def test_images_of_different_sizes_run_through_a_pipeline_unit(tmp_path: Path) -> None:
    """A VOC folder of JPEGs of three sizes (odd sides included): the LR baseline, the refiner's
    training (crop + pad) and its evaluation (each image at its own size) all run."""
    import methods

    methods.discover()
    root = write_voc(tmp_path / "voc", VOC_SIZES, num_train=4, num_val=3)
    dataset = {"name": "voc", "root": str(root)}
    spec = get_trial("sparserefine.pipeline")
    params = spec.resolve_params({"selector": "entropy", "recall": 0.8, "width_mult": 0.125, "reps": 1})
    scale = {**SCALE, "sparserefine": {"epochs": 1, "batch": 2, "crop": [64, 96]}, "workers": 1}
    ctx = TrialContext(
        spec=spec,
        params=params,
        scale_name="smoke",
        scale=scale,
        dataset=dataset,
        seed=1,
        timing=TimingConfig(warmup=0, iters=1),
        artifacts_dir=tmp_path / "artifacts",
    )
    spec.fn(ctx)
    assert 0.0 <= ctx.metrics["miou"].value <= 100.0
    # evaluation at each image's own size: the LR matrix counts every labelled pixel of val once
    val = build_dataset(dataset, "val")
    labelled = sum(int((val[i].label != 255).sum()) for i in range(len(val)))
    from methods.sparserefine.experiment import Experiment

    exp = Experiment.of(ctx)
    split = exp.val
    assert [split.size(i) for i in range(3)] == [tuple(val[i].label.shape) for i in range(3)]
    assert len({split.size(i) for i in range(3)}) == 3
    odd = [split.size(i) for i in range(3)].index((75, 101))
    assert split.logits_grid[odd].shape == (21, 38, 51)  # ceil(75 / 2), ceil(101 / 2)
    lr = ConfusionMatrix(21)
    for i in split.stream(range(len(split))):
        lr.update(split.prediction(i), split.labels[i : i + 1])
    assert int(lr.counts.sum()) == labelled
    with pytest.raises(ValueError, match="different sizes"):
        split.images[0:2]


def test_dataloader_reads_every_image_in_order_with_workers(tmp_path: Path) -> None:
    root = write_voc(tmp_path / "voc", VOC_SIZES, num_train=5, num_val=1)
    data = build_dataset({"name": "voc", "root": str(root)}, "train")
    names = [s.name for batch in iterate_samples(data, range(len(data)), batch_size=2, workers=2) for s in batch]
    assert names == [data.files[i].name for i in range(5)]


def test_baseline_trains_on_images_of_different_sizes_with_random_rescaling(tmp_path: Path) -> None:
    """MMSeg-style RandomResize (ratio 0.5-2.0) + RandomCrop + Pad on a VOC folder of three sizes."""
    from methods.baselines.training import random_rescale

    root = write_voc(tmp_path / "voc", VOC_SIZES, num_train=3, num_val=1)
    source = SplitTrainingImages({"name": "voc", "root": str(root)}, "hr", bf16=True)
    config = TrainConfig(iters=3, batch_size=3, warmup_iters=1, scale_range=(0.5, 2.0))
    assert config.as_dict()["scale_range"] == [0.5, 2.0] and "scale_range" not in TrainConfig().as_dict()
    torch.manual_seed(0)
    result = train_segmentation_model(SegCNN(21, "tiny"), source, None, config, seed=0)
    assert len(result.losses) == 3 and all(np.isfinite(result.losses))
    gen = torch.Generator().manual_seed(0)
    image, label = source.load(0)
    for _ in range(5):
        x, y = random_rescale(image, label, (0.5, 2.0), gen)
        ratio = x.shape[-1] / image.shape[-1]
        assert 0.49 <= ratio <= 2.01 and x.shape[-2:] == y.shape and y.dtype == label.dtype
        assert set(y.unique().tolist()) <= set(label.unique().tolist())  # nearest: no new label ids


ALL_SELECTORS = ["random", "magnitude", "learnable", "entropy", "oracle"]


def test_every_selector_kind_runs_on_images_of_different_sizes(tmp_path: Path) -> None:
    """The mixed-size VOC folder through the runner: every selector kind as a ``sparserefine.selector``
    and a ``sparserefine.pipeline`` unit, timed on batches of 2 (stacked from images of one size), the
    learnable selector trained on batches of 2 crops of different sizes (padded); the odd sides' LR
    grids hold ceil(side / 2) cells, which every timed call crops back to the image."""
    from harness.cli import main
    from harness.store import Store

    # val image 0, whose size the timed batches take, is the odd-sided 75x101
    root = write_voc(tmp_path / "voc", VOC_SIZES, num_train=3, num_val=3)
    suite = tmp_path / "mixed.yaml"
    benchmarks = f"""benchmarks:
  - trial: sparserefine.selector
    params: {{recall: 0.8}}
    matrix: {{selector: {ALL_SELECTORS}}}
  - trial: sparserefine.pipeline
    params: {{recall: 0.8, width_mult: 0.125, reps: 1, measure_latency: true}}
    matrix: {{selector: {ALL_SELECTORS}}}
"""
    suite.write_text(suite_text("mixed", root, benchmarks, learnable_steps=3))
    db = f"sqlite:///{tmp_path / 'results.db'}"
    args = ["run", str(suite), "--scale", "smoke", "--db", db, "--artifacts", str(tmp_path / "art")]
    main([*args, "--threads", "1", "--no-progress"])
    rows = Store(db).results(suite="mixed")
    ran = {(r.trial, r.params["selector"]): r for r in rows}
    wanted = {(t, s) for t in ("sparserefine.selector", "sparserefine.pipeline") for s in ALL_SELECTORS}
    assert set(ran) == wanted
    failed = {key: row.error for key, row in ran.items() if row.status != "ok"}
    assert not failed
    for (trial_name, kind), row in ran.items():
        assert "latency" in row.metrics, (trial_name, kind)
        if trial_name == "sparserefine.selector":
            # every val pixel counted once, each image at its own size
            assert 0.0 <= row.metrics["density"].value <= 100.0
    val = build_dataset({"name": "voc", "root": str(root)}, "val")
    assert tuple(val[0].label.shape) == (75, 101)
    oracle = ran[("sparserefine.selector", "oracle")].metrics
    assert oracle["recall"].value == 100.0 and oracle["precision"].value == 100.0


def test_learnable_selector_trains_on_crops_of_images_of_different_sizes() -> None:
    """Images of one size share a window; a smaller image is cropped to its own size and padded
    (label 255, never a target); the batch's images, logits and labels are the split's pixels."""
    from methods.sparserefine.selection import _learnable_crops

    sizes = [(5, 7), (8, 6), (5, 7)]
    gen = torch.Generator().manual_seed(0)
    split = SplitOutputs(
        images=PerImage(lambda i: torch.full((3, *sizes[i]), i + 1, dtype=torch.uint8), [(3, *s) for s in sizes]),
        labels=PerImage(lambda i: torch.full(sizes[i], i, dtype=torch.int64), sizes),
        logits_grid=PerImage(
            lambda i: torch.randn(2, (sizes[i][0] + 1) // 2, (sizes[i][1] + 1) // 2, generator=gen).half(),
            [(2, (h + 1) // 2, (w + 1) // 2) for h, w in sizes],
        ),
        magnitude_grid=PerImage(lambda i: torch.zeros((sizes[i][0] + 1) // 2, (sizes[i][1] + 1) // 2), sizes),
        factor=2,
        num_classes=2,
        names=["a", "b", "c"],
    )
    image, logits, labels = _learnable_crops(split, [0, 1, 2], (6, 6), torch.Generator().manual_seed(1))
    assert image.shape == (3, 3, 6, 6) and logits.shape == (3, 2, 6, 6) and labels.shape == (3, 6, 6)
    # image 0 (5x7) is cropped to 5x6 and padded by one row; image 1 (8x6) fills the 6x6 crop
    assert torch.equal(labels[0, :5], torch.zeros(5, 6, dtype=torch.int64)) and bool((labels[0, 5] == 255).all())
    assert bool((labels[1] == 1).all()) and bool((logits[0, :, 5] == 0).all())
    # images 0 and 2 have one size: one window for both, as in a stacked batch
    assert torch.equal(labels[2], torch.where(labels[0] == 255, 255, 2))
