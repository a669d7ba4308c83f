"""ISIC 2018 Task 1 (skin lesion boundary segmentation), in the challenge's folder layout::

    ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg
    ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png     # 0 background, 255 lesion
    ISIC2018_Task1-2_Validation_Input/...
    ISIC2018_Task1_Validation_GroundTruth/...

split "train" reads the Training folders, "val" the Validation ones (the official validation set's
ground truth). Two classes, background and lesion; the masks are single-channel 0/255 and are
binarised at 128 so a re-encoded mask with values near 0/255 still decodes (nothing is ignored).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from methods.datasets.real import IndexedLabels, LabelledFile, RealLayout, index_lut, pair_files, require_dir

ISIC_CLASSES: tuple[str, ...] = ("background", "lesion")
_SPLIT_FOLDERS = {"train": "Training", "val": "Validation"}


def isic_files(root: Path, split: str, options: Mapping[str, Any]) -> list[LabelledFile]:
    folder = _SPLIT_FOLDERS[split]
    image_name, label_name = f"ISIC2018_Task1-2_{folder}_Input", f"ISIC2018_Task1_{folder}_GroundTruth"
    image_dir = require_dir(root / image_name, "isic2018", image_name)
    label_dir = require_dir(root / label_name, "isic2018", label_name)
    return pair_files(
        image_dir, "ISIC_*.jpg", lambda i: label_dir / f"{i.stem}_segmentation.png", "isic2018", lambda i: i.stem
    )


def isic_lut() -> np.ndarray:
    return index_lut({value: int(value >= 128) for value in range(256)})


ISIC2018 = RealLayout(isic_files, lambda options: IndexedLabels(ISIC_CLASSES, isic_lut()))
