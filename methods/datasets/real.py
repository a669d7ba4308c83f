"""Real datasets in their official on-disk layouts: the shared machinery (image/label file pairs, label
decoding, resizing) and the Cityscapes, ADE20K and Pascal VOC 2012 layouts.

Labels are decoded to contiguous train ids with 255 = ignore:
Cityscapes labelIds -> the official 19 trainIds; ADE20K "reduce zero label" (0 -> 255, k -> k-1);
VOC palette indices are the class ids already (255 = object border).
The other layouts (BDD100K, DeepGlobe, ISIC 2018, SUN-RGBD) live in their own modules and all are
registered in :mod:`methods.datasets.catalog`. Files are read per item: a dataset holds only its list
of file paths. A missing or malformed dataset raises :class:`harness.errors.UserError` naming what and
where.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from harness.errors import UserError
from methods.datasets.base import IGNORE_INDEX, SegDataset, SegSample

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
# labelId -> trainId for the 19 evaluated classes (cityscapesScripts' labels.py); all others -> 255.
CITYSCAPES_LABEL_TO_TRAIN: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
    27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip

ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
    "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
    "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
    "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def index_lut(mapping: Mapping[int, int]) -> np.ndarray:
    """A 256-entry lookup table: stored label value -> train id, every value not in ``mapping`` -> 255."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for value, train_id in mapping.items():
        lut[value] = train_id
    return lut


def cityscapes_lut() -> np.ndarray:
    return index_lut(CITYSCAPES_LABEL_TO_TRAIN)


def reduce_zero_label_lut(num_classes: int = len(ADE20K_CLASSES)) -> np.ndarray:
    """0 (ADE's "other") -> 255, k -> k-1 for k in 1..num_classes; anything else -> 255."""
    return index_lut({k: k - 1 for k in range(1, num_classes + 1)})


def voc_lut() -> np.ndarray:
    return index_lut({k: k for k in range(len(VOC_CLASSES))})


# --- label decoding -----------------------------------------------------------------------------------


class LabelCodec(Protocol):
    """How a dataset stores its labels: the class names and the decoding of one label file."""

    classes: tuple[str, ...]

    def decode(self, image: Image.Image, path: Path, dataset: str) -> np.ndarray:
        """The label file's train ids (uint8 [H,W], 255 = ignore)."""
        ...


@dataclass(frozen=True)
class IndexedLabels:
    """Single-channel labels (grey or palette PNG) whose values map to train ids through ``lut``."""

    classes: tuple[str, ...]
    lut: np.ndarray = field(repr=False)
    palette_only: bool = False  # VOC: the official masks are palette-indexed; an RGB rendering is an error

    def decode(self, image: Image.Image, path: Path, dataset: str) -> np.ndarray:
        if self.palette_only and image.mode not in ("P", "L"):
            raise UserError(f"{dataset}: {path} is a {image.mode} PNG, expected a palette-indexed PNG")
        if image.mode not in ("P", "L", "I", "I;16"):
            raise UserError(f"{dataset}: label {path} has mode {image.mode}, expected a single channel")
        raw = np.asarray(image)
        if raw.max(initial=0) > 255:
            raise UserError(f"{dataset}: label {path} holds values above 255")
        return self.lut[raw.astype(np.uint8)]


@dataclass(frozen=True)
class ColourCodedLabels:
    """RGB masks whose colours name the classes, every channel 0 or 255 (DeepGlobe). Each channel is
    binarised at ``threshold`` first (the masks are not exactly 0/255 after compression); a colour
    that names no class -> 255."""

    classes: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...]  # colour of class i
    threshold: int = 128

    def __post_init__(self) -> None:
        if len(self.colours) != len(self.classes):
            raise ValueError("one colour per class")
        if any(c not in (0, 255) for colour in self.colours for c in colour):
            raise ValueError("colour-coded classes must use channel values 0 or 255")

    def code_lut(self) -> np.ndarray:
        """3-bit colour code (R*4 + G*2 + B, each bit = channel >= threshold) -> train id."""
        lut = np.full(8, IGNORE_INDEX, dtype=np.uint8)
        for train_id, (r, g, b) in enumerate(self.colours):
            lut[(r // 255) * 4 + (g // 255) * 2 + b // 255] = train_id
        return lut

    def decode(self, image: Image.Image, path: Path, dataset: str) -> np.ndarray:
        if image.mode not in ("RGB", "RGBA", "P"):
            raise UserError(f"{dataset}: label {path} has mode {image.mode}, expected an RGB colour-coded mask")
        bits = (np.asarray(image.convert("RGB")) >= self.threshold).astype(np.uint8)
        return self.code_lut()[bits[..., 0] * 4 + bits[..., 1] * 2 + bits[..., 2]]


# --- files --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledFile:
    image: Path
    label: Path
    name: str


def require_dir(path: Path, dataset: str, what: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{dataset}: missing {what} directory {path}")
    return path


def pair_files(
    image_dir: Path, pattern: str, label_of: Callable[[Path], Path], dataset: str, name_of: Callable[[Path], str]
) -> list[LabelledFile]:
    """Every image under ``image_dir`` matching ``pattern`` (sorted) with its label; a missing label or
    no image at all is a UserError naming the path."""
    files = []
    for image in sorted(image_dir.glob(pattern)):
        label = label_of(image)
        if not label.is_file():
            raise UserError(f"{dataset}: missing label {label} for image {image}")
        files.append(LabelledFile(image, label, name_of(image)))
    if not files:
        raise UserError(f"{dataset}: no {pattern} images under {image_dir}")
    return files


class FilePairDataset(SegDataset):
    """Image/label file pairs decoded by a label codec, with an optional resize. Reads per item."""

    def __init__(self, dataset: str, codec: LabelCodec, files: list[LabelledFile], size: tuple[int, int] | None = None):
        if not files:
            raise UserError(f"{dataset}: no labelled images found")
        self.dataset = dataset
        self.codec = codec
        self.classes = codec.classes
        self.files = files
        self.size = size  # (height, width) to resize to, or None for native size

    def __len__(self) -> int:
        return len(self.files)

    def _read_label(self, path: Path) -> np.ndarray:
        try:
            with Image.open(path) as im:
                return self.codec.decode(im, path, self.dataset)
        except OSError as exc:
            raise UserError(f"{self.dataset}: cannot read label {path}: {exc}") from None

    def _read_image(self, path: Path) -> Image.Image:
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except OSError as exc:
            raise UserError(f"{self.dataset}: cannot read image {path}: {exc}") from None

    def __getitem__(self, index: int) -> SegSample:
        entry = self.files[index]
        image = self._read_image(entry.image)
        label = self._read_label(entry.label)
        if label.shape != (image.height, image.width):
            raise UserError(
                f"{self.dataset}: label {entry.label} is {label.shape[1]}x{label.shape[0]}, "
                f"image {entry.image} is {image.width}x{image.height}"
            )
        if self.size is not None and self.size != label.shape:
            height, width = self.size
            image = image.resize((width, height), Image.Resampling.BILINEAR)
            label = np.asarray(Image.fromarray(label).resize((width, height), Image.Resampling.NEAREST))
        image_array = np.asarray(image).transpose(2, 0, 1)
        return SegSample(
            image=torch.from_numpy(np.ascontiguousarray(image_array)),
            label=torch.from_numpy(label.astype(np.int64)),
            name=entry.name,
        )


@dataclass(frozen=True)
class RealLayout:
    """One dataset's on-disk layout. ``options`` are its own dataset keys: key -> allowed values, the
    first being the default (e.g. SUN-RGBD's ``classes: 37 | 13``)."""

    find_files: Callable[[Path, str, Mapping[str, Any]], list[LabelledFile]]
    codec: Callable[[Mapping[str, Any]], LabelCodec]
    options: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)


# --- Cityscapes, ADE20K, VOC ----------------------------------------------------------------------------


def cityscapes_files(root: Path, split: str, options: Mapping[str, Any]) -> list[LabelledFile]:
    image_dir = require_dir(root / "leftImg8bit" / split, "cityscapes", "leftImg8bit/" + split)
    label_dir = require_dir(root / "gtFine" / split, "cityscapes", "gtFine/" + split)
    suffix = "_leftImg8bit.png"
    return pair_files(
        image_dir,
        "*/*" + suffix,
        lambda image: label_dir / image.parent.name / (image.name[: -len(suffix)] + "_gtFine_labelIds.png"),
        "cityscapes",
        lambda image: image.name[: -len(suffix)],
    )


def ade20k_files(root: Path, split: str, options: Mapping[str, Any]) -> list[LabelledFile]:
    folder = {"train": "training", "val": "validation"}[split]
    base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
    image_dir = require_dir(base / "images" / folder, "ade20k", "ADEChallengeData2016/images/" + folder)
    label_dir = require_dir(base / "annotations" / folder, "ade20k", "ADEChallengeData2016/annotations/" + folder)
    return pair_files(image_dir, "*.jpg", lambda image: label_dir / f"{image.stem}.png", "ade20k", lambda i: i.stem)


def voc_files(root: Path, split: str, options: Mapping[str, Any]) -> list[LabelledFile]:
    base = root / "VOC2012" if (root / "VOC2012").is_dir() else root
    if not (base / "JPEGImages").is_dir() and (root / "VOCdevkit" / "VOC2012").is_dir():
        base = root / "VOCdevkit" / "VOC2012"
    image_dir = require_dir(base / "JPEGImages", "voc", "VOC2012/JPEGImages")
    label_dir = require_dir(base / "SegmentationClass", "voc", "VOC2012/SegmentationClass")
    listing = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise UserError(f"voc: missing split list {listing}")
    files = []
    for line in listing.read_text().split():
        image, label = image_dir / f"{line}.jpg", label_dir / f"{line}.png"
        for path, what in ((image, "image"), (label, "label")):
            if not path.is_file():
                raise UserError(f"voc: missing {what} {path} listed in {listing}")
        files.append(LabelledFile(image, label, line))
    if not files:
        raise UserError(f"voc: split list {listing} is empty")
    return files


CITYSCAPES = RealLayout(cityscapes_files, lambda options: IndexedLabels(CITYSCAPES_CLASSES, cityscapes_lut()))
ADE20K = RealLayout(ade20k_files, lambda options: IndexedLabels(ADE20K_CLASSES, reduce_zero_label_lut()))
VOC = RealLayout(voc_files, lambda options: IndexedLabels(VOC_CLASSES, voc_lut(), palette_only=True))
