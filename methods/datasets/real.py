"""Loaders for real datasets in their official on-disk layouts: Cityscapes, ADE20K, Pascal VOC 2012.

Labels are converted to contiguous train ids with 255 = ignore:
Cityscapes labelIds -> the official 19 trainIds; ADE20K "reduce zero label" (0 -> 255, k -> k-1);
VOC palette indices are the class ids already (255 = object border).
A missing or malformed dataset raises :class:`harness.errors.UserError` naming what and where.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


def cityscapes_lut() -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    return lut


def reduce_zero_label_lut(num_classes: int = len(ADE20K_CLASSES)) -> np.ndarray:
    """0 (ADE's "other") -> 255, k -> k-1 for k in 1..num_classes; anything else -> 255."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[1 : num_classes + 1] = np.arange(num_classes, dtype=np.uint8)
    return lut


def voc_lut() -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[: len(VOC_CLASSES)] = np.arange(len(VOC_CLASSES), dtype=np.uint8)
    return lut


@dataclass(frozen=True)
class LabelledFile:
    image: Path
    label: Path
    name: str


def _require_dir(path: Path, dataset: str, what: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{dataset}: missing {what} directory {path}")
    return path


class FilePairDataset(SegDataset):
    """Image/label file pairs with a label lookup table, optional resize and a sample limit."""

    def __init__(
        self,
        dataset: str,
        classes: tuple[str, ...],
        files: list[LabelledFile],
        label_lut: np.ndarray,
        size: tuple[int, int] | None = None,
        palette_labels: bool = False,
    ):
        if not files:
            raise UserError(f"{dataset}: no labelled images found")
        self.dataset = dataset
        self.classes = classes
        self.files = files
        self.label_lut = label_lut
        self.size = size  # (height, width) to resize to, or None for native size
        self.palette_labels = palette_labels

    def __len__(self) -> int:
        return len(self.files)

    def _read_label(self, path: Path) -> np.ndarray:
        try:
            with Image.open(path) as im:
                if self.palette_labels and im.mode not in ("P", "L"):
                    raise UserError(f"{self.dataset}: {path} is a {im.mode} PNG, expected a palette-indexed PNG")
                if im.mode not in ("P", "L", "I", "I;16"):
                    raise UserError(f"{self.dataset}: label {path} has mode {im.mode}, expected a single channel")
                raw = np.asarray(im)
        except OSError as exc:
            raise UserError(f"{self.dataset}: cannot read label {path}: {exc}") from None
        if raw.max(initial=0) > 255:
            raise UserError(f"{self.dataset}: label {path} holds values above 255")
        return self.label_lut[raw.astype(np.uint8)]

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


def _limit(files: list[LabelledFile], limit: int | None) -> list[LabelledFile]:
    return files if limit is None else files[:limit]


def cityscapes_files(root: Path, split: str) -> list[LabelledFile]:
    image_dir = _require_dir(root / "leftImg8bit" / split, "cityscapes", "leftImg8bit/" + split)
    label_dir = _require_dir(root / "gtFine" / split, "cityscapes", "gtFine/" + split)
    files = []
    for image in sorted(image_dir.glob("*/*_leftImg8bit.png")):
        stem = image.name[: -len("_leftImg8bit.png")]
        label = label_dir / image.parent.name / f"{stem}_gtFine_labelIds.png"
        if not label.is_file():
            raise UserError(f"cityscapes: missing label {label} for image {image}")
        files.append(LabelledFile(image, label, stem))
    if not files:
        raise UserError(f"cityscapes: no <city>/*_leftImg8bit.png images under {image_dir}")
    return files


def ade20k_files(root: Path, split: str) -> list[LabelledFile]:
    folder = {"train": "training", "val": "validation"}[split]
    base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
    image_dir = _require_dir(base / "images" / folder, "ade20k", "ADEChallengeData2016/images/" + folder)
    label_dir = _require_dir(base / "annotations" / folder, "ade20k", "ADEChallengeData2016/annotations/" + folder)
    files = []
    for image in sorted(image_dir.glob("*.jpg")):
        label = label_dir / f"{image.stem}.png"
        if not label.is_file():
            raise UserError(f"ade20k: missing annotation {label} for image {image}")
        files.append(LabelledFile(image, label, image.stem))
    if not files:
        raise UserError(f"ade20k: no *.jpg images under {image_dir}")
    return files


def voc_files(root: Path, split: str) -> list[LabelledFile]:
    base = root / "VOC2012" if (root / "VOC2012").is_dir() else root
    if not (base / "JPEGImages").is_dir() and (root / "VOCdevkit" / "VOC2012").is_dir():
        base = root / "VOCdevkit" / "VOC2012"
    image_dir = _require_dir(base / "JPEGImages", "voc", "VOC2012/JPEGImages")
    label_dir = _require_dir(base / "SegmentationClass", "voc", "VOC2012/SegmentationClass")
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


@dataclass(frozen=True)
class RealLayout:
    classes: tuple[str, ...]
    find_files: Callable[[Path, str], list[LabelledFile]]
    lut: Callable[[], np.ndarray]
    palette_labels: bool = False


REAL_LAYOUTS: dict[str, RealLayout] = {
    "cityscapes": RealLayout(CITYSCAPES_CLASSES, cityscapes_files, cityscapes_lut),
    "ade20k": RealLayout(ADE20K_CLASSES, ade20k_files, reduce_zero_label_lut),
    "voc": RealLayout(VOC_CLASSES, voc_files, voc_lut, palette_labels=True),
}


def build_real_dataset(
    name: str, root: str | Path, split: str, size: tuple[int, int] | None = None, limit: int | None = None
) -> FilePairDataset:
    layout = REAL_LAYOUTS[name]
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise UserError(f"{name}: dataset root {root_path} does not exist (set dataset.root)")
    files = _limit(layout.find_files(root_path, split), limit)
    return FilePairDataset(name, layout.classes, files, layout.lut(), size=size, palette_labels=layout.palette_labels)
