"""SUN-RGBD semantic segmentation (RGB only: depth is not read), in the layout of the release that
made it usable without MATLAB and that QGN's split matches (ankurhanda/sunrgbd-meta-data: 5,285
train and 5,050 test images, QGN §4.2)::

    SUNRGBD-train_images/img-000001.jpg ... img-005285.jpg
    SUNRGBD-test_images/img-000001.jpg  ... img-005050.jpg
    sunrgbd_train_test_labels/img-000001.png ... img-010335.png

The label files number the test images first (img-000001..005050 = test 1..5050) and the training
images after them (img-005051..010335 = train 1..5285); the label folder may also be ``root`` itself.
split "val" is the test set (as QGN reports). Labels hold 0 = unlabelled (-> 255) and 1..37 for the
37 classes (-> 0..36).

``classes: 13`` maps the 37 classes to the 13 of the NYUv2 13-class benchmark with the standard
NYU40 -> 13 mapping (ankurhanda/nyuv2-meta-data, class13Mapping.mat; the 37 SUN-RGBD classes are
NYU40's first 37, in the same order).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import UserError
from methods.datasets.real import IndexedLabels, LabelledFile, RealLayout, index_lut, require_dir

SUNRGBD_37_CLASSES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
    "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard",
    "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag",
)  # fmt: skip
SUNRGBD_13_CLASSES: tuple[str, ...] = (
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture", "sofa", "table", "tv", "wall",
    "window",
)  # fmt: skip
# The 13-class name of each of the 37 classes, in SUNRGBD_37_CLASSES order (NYU40 -> 13 mapping).
SUNRGBD_37_TO_13: tuple[str, ...] = (
    "wall", "floor", "furniture", "bed", "chair", "sofa", "table", "wall", "window", "furniture", "picture",
    "furniture", "window", "table", "furniture", "window", "furniture", "objects", "objects", "floor", "objects",
    "ceiling", "books", "furniture", "tv", "objects", "objects", "objects", "objects", "objects",
    "objects", "furniture", "objects", "objects", "objects", "objects", "objects",
)  # fmt: skip
NUM_TEST_IMAGES = 5050  # label files of training image k are numbered NUM_TEST_IMAGES + k
_IMAGE_DIRS = {"train": "SUNRGBD-train_images", "val": "SUNRGBD-test_images"}
_LABEL_DIR = "sunrgbd_train_test_labels"
_IMAGE_NAME = re.compile(r"img-(\d{6})\.jpg")


def sunrgbd_lut(num_classes: int) -> np.ndarray:
    if num_classes == 37:
        return index_lut({k: k - 1 for k in range(1, 38)})
    return index_lut({k: SUNRGBD_13_CLASSES.index(SUNRGBD_37_TO_13[k - 1]) for k in range(1, 38)})


def sunrgbd_files(root: Path, split: str, options: Mapping[str, Any]) -> list[LabelledFile]:
    image_dir = require_dir(root / _IMAGE_DIRS[split], "sunrgbd", _IMAGE_DIRS[split])
    label_dir = root / _LABEL_DIR if (root / _LABEL_DIR).is_dir() else root
    offset = NUM_TEST_IMAGES if split == "train" else 0
    files = []
    for image in sorted(image_dir.glob("img-*.jpg")):
        match = _IMAGE_NAME.fullmatch(image.name)
        if match is None:
            raise UserError(f"sunrgbd: unexpected image name {image} (expected img-NNNNNN.jpg)")
        label = label_dir / f"img-{int(match.group(1)) + offset:06d}.png"
        if not label.is_file():
            raise UserError(f"sunrgbd: missing label {label} for image {image} (labels are in {_LABEL_DIR}/)")
        files.append(LabelledFile(image, label, f"{split}-{image.stem}"))
    if not files:
        raise UserError(f"sunrgbd: no img-NNNNNN.jpg images under {image_dir}")
    return files


def _codec(options: Mapping[str, Any]) -> IndexedLabels:
    classes = SUNRGBD_37_CLASSES if options["classes"] == 37 else SUNRGBD_13_CLASSES
    return IndexedLabels(classes, sunrgbd_lut(len(classes)))


SUNRGBD = RealLayout(sunrgbd_files, _codec, options={"classes": (37, 13)})
