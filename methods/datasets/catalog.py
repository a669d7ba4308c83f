"""The real datasets by name, their own dataset keys, and building one split of one."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.errors import UserError
from methods.datasets.bdd100k import BDD100K
from methods.datasets.deepglobe import DEEPGLOBE
from methods.datasets.isic import ISIC2018
from methods.datasets.real import ADE20K, CITYSCAPES, VOC, FilePairDataset, RealLayout
from methods.datasets.sunrgbd import SUNRGBD

REAL_LAYOUTS: dict[str, RealLayout] = {
    "cityscapes": CITYSCAPES,
    "ade20k": ADE20K,
    "voc": VOC,
    "bdd100k": BDD100K,
    "deepglobe": DEEPGLOBE,
    "isic2018": ISIC2018,
    "sunrgbd": SUNRGBD,
}


def layout_options(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The dataset's own keys (e.g. SUN-RGBD's ``classes``) from ``spec``, defaults filled in; a value
    outside the allowed ones is a UserError naming the key."""
    options = {}
    for key, allowed in REAL_LAYOUTS[name].options.items():
        value = spec.get(key, allowed[0])
        if isinstance(value, bool) or value not in allowed:
            raise UserError(
                f"dataset key {key!r} of dataset {name} must be one of {', '.join(map(str, allowed))}, got {value!r}"
            )
        options[key] = value
    return options


def existing_root(name: str, root: str | Path) -> Path:
    """``root`` as a directory path; UserError naming it if it is missing or not a directory."""
    root_path = Path(root).expanduser()
    if not root_path.exists():
        raise UserError(f"{name}: dataset root {root_path} does not exist (set dataset.root)")
    if not root_path.is_dir():
        raise UserError(f"{name}: dataset root {root_path} is not a directory (set dataset.root)")
    return root_path


def build_real_dataset(
    name: str,
    root: str | Path,
    split: str,
    size: tuple[int, int] | None = None,
    limit: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> FilePairDataset:
    layout = REAL_LAYOUTS[name]
    resolved = layout_options(name, options or {})
    root_path = existing_root(name, root)
    files = layout.find_files(root_path, split, resolved)
    if limit is not None:
        files = files[:limit]
    return FilePairDataset(name, layout.codec(resolved), files, size=size)
