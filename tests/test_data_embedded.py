"""The embedded street-scene generator and its dataset wrapper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.errors import Unavailable, UserError
from methods.datasets import EMBEDDED_CLASSES, build_dataset, collate, dataset_identity, generate_scene, normalize
from methods.datasets.embedded import EMBEDDED_THING_CLASSES, sample_seed
from methods.datasets.stats import DownsampleLoss, downsample_roundtrip

H, W = 128, 256


def spec(tmp_path: Path, **extra: object) -> dict[str, object]:
    return {
        "name": "embedded",
        "height": H,
        "width": W,
        "num_train": 3,
        "num_val": 2,
        "cache_dir": str(tmp_path),
        **extra,
    }


def test_same_seed_is_byte_identical_and_seeds_differ() -> None:
    image_a, label_a = generate_scene(7, H, W)
    image_b, label_b = generate_scene(7, H, W)
    assert image_a.tobytes() == image_b.tobytes() and label_a.tobytes() == label_b.tobytes()
    image_c, label_c = generate_scene(8, H, W)
    assert not np.array_equal(image_a, image_c) and not np.array_equal(label_a, label_c)


def test_shapes_dtypes_and_label_values() -> None:
    image, label = generate_scene(3, H, W)
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    assert label.shape == (H, W) and label.dtype == np.uint8
    values = set(np.unique(label).tolist())
    assert values <= set(range(len(EMBEDDED_CLASSES))) | {255}
    assert 255 in values  # the ego-vehicle hood is void
    assert (label[-1] == 255).any() and not (label[0] == 255).any()


def test_every_class_appears_and_stuff_is_where_it_belongs() -> None:
    seen: set[int] = set()
    for seed in range(6):
        _, label = generate_scene(seed, 256, 512)
        seen |= set(np.unique(label).tolist())
        sky, road = EMBEDDED_CLASSES.index("sky"), EMBEDDED_CLASSES.index("road")
        rows = np.arange(256)[:, None].repeat(512, 1)
        assert rows[label == sky].mean() < rows[label == road].mean()
    assert set(range(len(EMBEDDED_CLASSES))) <= seen


def test_colour_does_not_determine_class() -> None:
    """Many exact RGB values occur under more than one class."""
    image, label = generate_scene(11, 256, 512)
    valid = label != 255
    codes = (image[valid].astype(np.int64) // 16) @ np.array([256, 16, 1])
    classes = label[valid].astype(np.int64)
    pairs = np.unique(codes * 256 + classes)
    colours, counts = np.unique(pairs // 256, return_counts=True)
    ambiguous = colours[counts > 1]
    share = np.isin(codes, ambiguous).mean()
    assert share > 0.5, f"only {share:.0%} of pixels have a colour (16-level bins) shared by several classes"


def test_downsampling_loses_small_objects() -> None:
    things = tuple(EMBEDDED_CLASSES.index(c) for c in EMBEDDED_THING_CLASSES)
    stats = DownsampleLoss(len(EMBEDDED_CLASSES), things, factor=2)
    for seed in range(3):
        stats.update(generate_scene(seed, 256, 512)[1])
    assert stats.bins["small"].instances > 10
    assert stats.bin_pixel_loss("small") > 5.0  # a measurable share of small-object pixels changes
    assert stats.bin_pixel_loss("small") > 3 * stats.bin_pixel_loss("large")
    pole = EMBEDDED_CLASSES.index("pole")
    assert stats.class_changed_share()[pole] > 5 * stats.class_changed_share()[EMBEDDED_CLASSES.index("road")]


def test_roundtrip_is_identity_on_constant_blocks() -> None:
    label = np.kron(np.arange(12, dtype=np.uint8).reshape(3, 4), np.ones((2, 2), dtype=np.uint8))
    assert np.array_equal(downsample_roundtrip(label, 2), label)
    odd = np.zeros((5, 5), dtype=np.uint8)
    odd[:, 1] = 1  # a 1-px line on an odd column vanishes
    assert not downsample_roundtrip(odd, 2).any()


def test_splits_use_disjoint_seeds() -> None:
    train = {sample_seed(0, "train", i) for i in range(1000)}
    val = {sample_seed(0, "val", i) for i in range(1000)}
    other_base = {sample_seed(1, "train", i) for i in range(1000)}
    assert not train & val and not train & other_base and len(train) == 1000


def test_dataset_samples_cache_and_splits(tmp_path: Path) -> None:
    train = build_dataset(spec(tmp_path), "train")
    val = build_dataset(spec(tmp_path), "val")
    assert len(train) == 3 and len(val) == 2 and train.num_classes == len(EMBEDDED_CLASSES) == 11
    sample = train[1]
    assert sample.image.dtype == torch.uint8 and sample.image.shape == (3, H, W)
    assert sample.label.dtype == torch.int64 and sample.label.shape == (H, W)
    fresh = generate_scene(train.seed_of(1), H, W)
    assert np.array_equal(sample.image.permute(1, 2, 0).numpy(), fresh[0])
    cached = sorted(p.name for p in tmp_path.rglob("*.npy"))
    assert cached == ["train_00001.npy", "train_00001_label.npy"]
    meta = json.loads(next(tmp_path.rglob("meta.json")).read_text())
    assert (meta["height"], meta["width"]) == (H, W)
    assert not torch.equal(val[0].label, train[0].label)
    # a corrupt cache file is detected and regenerated
    image_file = next(tmp_path.rglob("train_00001.npy"))
    image_file.write_bytes(b"not an array")
    assert torch.equal(train[1].image, sample.image)
    with pytest.raises(IndexError):
        train[3]


def test_batch_collate_and_normalize(tmp_path: Path) -> None:
    dataset = build_dataset(spec(tmp_path, cache_dir=None), "val")
    images, labels, names = dataset.batch([0, 1])
    assert images.shape == (2, 3, H, W) and labels.shape == (2, H, W) and names[0] != names[1]
    normed = normalize(images)
    assert normed.dtype == torch.float32
    expected = (images[0, 0, 0, 0].item() - 123.675) / 58.395
    assert normed[0, 0, 0, 0].item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError):
        collate([])


def test_spec_errors_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="'colour'"):
        build_dataset(spec(tmp_path, colour="red"), "train")
    with pytest.raises(UserError, match="split"):
        build_dataset(spec(tmp_path), "test")
    with pytest.raises(UserError, match="unknown dataset"):
        build_dataset({"name": "kitti"}, "train")
    with pytest.raises(UserError, match="height"):
        build_dataset(spec(tmp_path, height="tall"), "train")
    with pytest.raises(UserError, match="size"):
        build_dataset(spec(tmp_path, height=4096), "train")
    with pytest.raises(UserError, match="'seed' must be >= 0"):
        build_dataset(spec(tmp_path, seed=-1), "train")
    with pytest.raises(Unavailable, match="no root given"):  # a unit on absent data: unavailable, not an error
        build_dataset({"name": "cityscapes"}, "train")
    with pytest.raises(UserError, match="does not exist"):  # a root given but wrong: the user's error
        build_dataset({"name": "cityscapes", "root": str(tmp_path / "missing")}, "train")
    assert dataset_identity(spec(tmp_path))["generator"]
