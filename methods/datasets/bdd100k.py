"""BDD100K semantic segmentation (the 10K images), in the official release's layout.

Current release (``bdd100k_images_10k.zip`` + ``bdd100k_sem_seg_labels_trainval.zip``, also MMSeg's
layout)::

    bdd100k/images/10k/{train,val}/<id>.jpg
    bdd100k/labels/sem_seg/masks/{train,val}/<id>.png      # train ids 0..18, 255 = ignore

Older release (``bdd100k_seg.zip``)::

    bdd100k/seg/images/{train,val}/<id>.jpg
    bdd100k/seg/labels/{train,val}/<id>_train_id.png

``root`` may be the ``bdd100k`` folder or its parent. The 19 classes are Cityscapes' train classes,
in the same order; masks already hold train ids (any other value is ignored).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.errors import UserError
from methods.datasets.real import (
    CITYSCAPES_CLASSES,
    IndexedLabels,
    LabelledFile,
    RealLayout,
    index_lut,
    pair_files,
    require_dir,
)

BDD100K_CLASSES = CITYSCAPES_CLASSES


def bdd100k_files(root: Path, split: str, options: Mapping[str, Any]) -> list[LabelledFile]:
    base = root / "bdd100k" if (root / "bdd100k").is_dir() else root
    if (base / "images" / "10k").is_dir():
        image_dir = require_dir(base / "images" / "10k" / split, "bdd100k", "images/10k/" + split)
        label_dir = require_dir(
            base / "labels" / "sem_seg" / "masks" / split, "bdd100k", "labels/sem_seg/masks/" + split
        )
        return pair_files(image_dir, "*.jpg", lambda i: label_dir / f"{i.stem}.png", "bdd100k", lambda i: i.stem)
    if (base / "seg").is_dir():
        image_dir = require_dir(base / "seg" / "images" / split, "bdd100k", "seg/images/" + split)
        label_dir = require_dir(base / "seg" / "labels" / split, "bdd100k", "seg/labels/" + split)
        return pair_files(
            image_dir, "*.jpg", lambda i: label_dir / f"{i.stem}_train_id.png", "bdd100k", lambda i: i.stem
        )
    raise UserError(
        f"bdd100k: {base} holds neither images/10k (current release) nor seg/ (older release): "
        "set dataset.root to the folder holding bdd100k/"
    )


BDD100K = RealLayout(
    bdd100k_files, lambda options: IndexedLabels(BDD100K_CLASSES, index_lut({k: k for k in range(19)}))
)
