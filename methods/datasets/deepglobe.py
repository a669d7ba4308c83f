"""DeepGlobe 2018 Land Cover Classification, in the challenge's layout.

Only the challenge's training set has masks (803 images of 2448x2448)::

    land-train/<id>_sat.jpg      (Kaggle's copy: train/<id>_sat.jpg)
    land-train/<id>_mask.png     RGB colour-coded mask beside its image

``root`` is the folder holding ``land-train/`` (or ``train/``), or that folder itself.

Classes and colours (the challenge's): unknown (0,0,0), urban (0,255,255), agriculture (255,255,0),
rangeland (255,0,255), forest (0,255,0), water (0,0,255), barren (255,255,255). Unknown is train id 0,
the others 1..6, as in GLNet's and ISDNet's 7-class setup (the challenge itself did not score
unknown). Each mask channel is binarised at 128 first, as the challenge's instructions say (the masks
are not exactly 0/255); a colour outside the table (e.g. pure red) is ignored (255).

There is no official validation split (the challenge's valid/test masks were never released), so the
803 labelled images are split by a deterministic rule, the dataset key ``split_rule``:

- ``hash`` (default): an image is in val iff SHA-256 of its id (the ``<id>`` of ``<id>_sat.jpg``, as
  text) read as an integer is divisible by 5 -- about 20% of the images. Each id's split depends on
  nothing else, so adding or removing images never moves the others.
- ``glnet``: the lists GLNet published and later high-resolution work reuses: ``train.txt`` (train)
  and ``crossvali.txt`` (val), one ``<id>_sat.jpg`` per line, placed in ``root``. GLNet's test
  images are in neither list and are not used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.errors import UserError
from methods.datasets.real import ColourCodedLabels, LabelledFile, RealLayout

DEEPGLOBE_CLASSES: tuple[str, ...] = ("unknown", "urban", "agriculture", "rangeland", "forest", "water", "barren")
DEEPGLOBE_COLOURS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (0, 255, 255), (255, 255, 0), (255, 0, 255), (0, 255, 0), (0, 0, 255), (255, 255, 255),
)  # fmt: skip
SPLIT_RULES = ("hash", "glnet")
_GLNET_LISTS = {"train": "train.txt", "val": "crossvali.txt"}
_IMAGE_SUFFIX, _MASK_SUFFIX = "_sat.jpg", "_mask.png"


def in_val_by_hash(image_id: str) -> bool:
    """The ``hash`` rule: SHA-256 of the id, as an integer, divisible by 5."""
    return int(hashlib.sha256(image_id.encode()).hexdigest(), 16) % 5 == 0


def _image_dir(root: Path) -> Path:
    for candidate in (root / "land-train", root / "train", root):
        if candidate.is_dir() and any(candidate.glob("*" + _IMAGE_SUFFIX)):
            return candidate
    raise UserError(f"deepglobe: no *{_IMAGE_SUFFIX} images in {root}/land-train, {root}/train or {root}")


def _glnet_ids(root: Path, split: str) -> set[str]:
    listing = root / _GLNET_LISTS[split]
    if not listing.is_file():
        raise UserError(f"deepglobe: split_rule glnet needs GLNet's list {listing} (one <id>_sat.jpg per line)")
    names = listing.read_text().split()
    bad = [n for n in names if not n.endswith(_IMAGE_SUFFIX)]
    if bad:
        raise UserError(f"deepglobe: {listing} lists {bad[0]!r}, expected <id>{_IMAGE_SUFFIX} names")
    return {n[: -len(_IMAGE_SUFFIX)] for n in names}


def deepglobe_files(root: Path, split: str, options: Mapping[str, Any]) -> list[LabelledFile]:
    image_dir = _image_dir(root)
    rule = options["split_rule"]
    listed = _glnet_ids(root, split) if rule == "glnet" else None
    files = []
    for image in sorted(image_dir.glob("*" + _IMAGE_SUFFIX)):
        image_id = image.name[: -len(_IMAGE_SUFFIX)]
        chosen = image_id in listed if listed is not None else in_val_by_hash(image_id) == (split == "val")
        if not chosen:
            continue
        mask = image_dir / f"{image_id}{_MASK_SUFFIX}"
        if not mask.is_file():
            raise UserError(f"deepglobe: missing mask {mask} for image {image}")
        files.append(LabelledFile(image, mask, image_id))
    if listed is not None and len(files) < len(listed):
        found = {f.name for f in files}
        missing = sorted(listed - found)[0]
        listing = root / _GLNET_LISTS[split]
        raise UserError(f"deepglobe: {missing}{_IMAGE_SUFFIX} listed in {listing} is not in {image_dir}")
    if not files:
        raise UserError(f"deepglobe: the {rule} split rule puts no image of {image_dir} in split {split}")
    return files


DEEPGLOBE = RealLayout(
    deepglobe_files,
    lambda options: ColourCodedLabels(DEEPGLOBE_CLASSES, DEEPGLOBE_COLOURS),
    options={"split_rule": SPLIT_RULES},
)
