"""Real dataset layouts: tiny files written in each official format, loaded back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.errors import UserError
from methods.datasets import build_dataset
from methods.datasets.real import ADE20K_CLASSES, CITYSCAPES_CLASSES, VOC_CLASSES

RNG = np.random.default_rng(0)


def write_rgb(path: Path, height: int, width: int, fmt: str = "PNG") -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return pixels


def write_gray(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), mode="L").save(path)


def test_cityscapes_label_ids_map_to_train_ids(tmp_path: Path) -> None:
    label_ids = np.array([[7, 8, 11, 12], [17, 19, 20, 26], [33, 0, 1, 9], [6, 29, 30, 24]], dtype=np.uint8)
    expected = np.array(
        [[0, 1, 2, 3], [5, 6, 7, 13], [18, 255, 255, 255], [255, 255, 255, 11]],
        dtype=np.int64,
    )
    for city, stem in (("aachen", "aachen_000000_000019"), ("bochum", "bochum_000000_000313")):
        write_rgb(tmp_path / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png", 4, 4)
        write_gray(tmp_path / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png", label_ids)
    dataset = build_dataset({"name": "cityscapes", "root": str(tmp_path)}, "val")
    assert len(dataset) == 2 and dataset.classes == CITYSCAPES_CLASSES and dataset.num_classes == 19
    sample = dataset[0]
    assert sample.name == "aachen_000000_000019"
    assert sample.image.shape == (3, 4, 4) and sample.image.dtype == torch.uint8
    assert torch.equal(sample.label, torch.from_numpy(expected))
    limited = build_dataset({"name": "cityscapes", "root": str(tmp_path), "num_val": 1}, "val")
    assert len(limited) == 1


def test_cityscapes_missing_pieces_are_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        build_dataset({"name": "cityscapes", "root": str(tmp_path / "nowhere")}, "train")
    with pytest.raises(UserError, match="leftImg8bit/train"):
        build_dataset({"name": "cityscapes", "root": str(tmp_path)}, "train")
    write_rgb(tmp_path / "leftImg8bit" / "train" / "ulm" / "ulm_000000_000001_leftImg8bit.png", 4, 4)
    with pytest.raises(UserError, match="gtFine/train"):
        build_dataset({"name": "cityscapes", "root": str(tmp_path)}, "train")
    (tmp_path / "gtFine" / "train" / "ulm").mkdir(parents=True)
    with pytest.raises(UserError, match="ulm_000000_000001_gtFine_labelIds.png"):
        build_dataset({"name": "cityscapes", "root": str(tmp_path)}, "train")


def test_ade20k_reduce_zero_label(tmp_path: Path) -> None:
    base = tmp_path / "ADEChallengeData2016"
    annotation = np.array([[0, 1, 2], [150, 75, 0]], dtype=np.uint8)
    write_rgb(base / "images" / "training" / "ADE_train_00000001.jpg", 2, 3, fmt="JPEG")
    write_gray(base / "annotations" / "training" / "ADE_train_00000001.png", annotation)
    dataset = build_dataset({"name": "ade20k", "root": str(tmp_path)}, "train")
    assert dataset.num_classes == 150 == len(ADE20K_CLASSES)
    label = dataset[0].label
    assert label.tolist() == [[255, 0, 1], [149, 74, 255]]
    with pytest.raises(UserError, match="images/validation"):
        build_dataset({"name": "ade20k", "root": str(tmp_path)}, "val")


def voc_palette() -> list[int]:
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def test_voc_palette_png_and_border(tmp_path: Path) -> None:
    base = tmp_path / "VOC2012"
    indices = np.zeros((6, 8), dtype=np.uint8)
    indices[1:5, 1:7] = 255  # the object's border
    indices[2:4, 2:6] = 15  # person
    for stem in ("2007_000032", "2007_000039"):
        write_rgb(base / "JPEGImages" / f"{stem}.jpg", 6, 8, fmt="JPEG")
        mask = Image.fromarray(indices, mode="P")
        mask.putpalette(voc_palette())
        (base / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        mask.save(base / "SegmentationClass" / f"{stem}.png")
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000039\n")
    (base / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000032\n2007_000404\n")
    dataset = build_dataset({"name": "voc", "root": str(tmp_path)}, "val")
    assert len(dataset) == 1 and dataset.classes == VOC_CLASSES
    sample = dataset[0]
    assert sample.name == "2007_000039"
    assert torch.equal(sample.label, torch.from_numpy(indices.astype(np.int64)))
    assert VOC_CLASSES[int(sample.label[3, 3])] == "person"
    resized = build_dataset({"name": "voc", "root": str(tmp_path), "height": 12, "width": 16}, "val")[0]
    assert resized.image.shape == (3, 12, 16) and set(resized.label.unique().tolist()) == {0, 15, 255}
    with pytest.raises(UserError, match="2007_000404"):
        build_dataset({"name": "voc", "root": str(tmp_path)}, "train")


def test_voc_rgb_mask_is_rejected(tmp_path: Path) -> None:
    base = tmp_path / "VOC2012"
    write_rgb(base / "JPEGImages" / "a.jpg", 4, 4, fmt="JPEG")
    write_rgb(base / "SegmentationClass" / "a.png", 4, 4)  # RGB, not palette-indexed
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "train.txt").write_text("a\n")
    dataset = build_dataset({"name": "voc", "root": str(tmp_path)}, "train")
    with pytest.raises(UserError, match="palette"):
        dataset[0]
    with pytest.raises(UserError, match="Segmentation/val.txt"):
        build_dataset({"name": "voc", "root": str(tmp_path)}, "val")
