"""Datasets: the embedded procedural street scenes (default) and real datasets in their official layouts.

``build_dataset(spec, split)`` takes a suite's dataset dict (``ctx.dataset``):

- ``{"name": "embedded", "height": 512, "width": 1024, "num_train": 64, "num_val": 16, "seed": 0,
  "cache_dir": "results/cache"}`` (all keys but name optional; ``cache_dir: null`` disables caching);
- ``{"name": NAME, "root": PATH}`` for NAME in cityscapes, ade20k, voc, bdd100k, deepglobe, isic2018,
  sunrgbd (layouts: :mod:`methods.datasets.catalog`), plus optional ``height``/``width`` (resize:
  bilinear image, nearest label), ``num_train``/``num_val`` (use the first N files) and the dataset's
  own keys (sunrgbd ``classes: 37 | 13``, deepglobe ``split_rule: hash | glnet``). ``seed`` and
  ``cache_dir`` are accepted and unused, so one suite can switch datasets by name.

A real dataset without ``root`` raises :class:`harness.errors.Unavailable` (its units end
``unavailable``: the data is not on this machine); a ``root`` that is given but missing or malformed is
a :class:`harness.errors.UserError` naming the path.
"""

from __future__ import annotations

from typing import Any

from harness.errors import Unavailable, UserError
from harness.registry import scale_setting, settings_validator
from methods.datasets.base import (
    IGNORE_INDEX,
    MMSEG_MEAN,
    MMSEG_STD,
    SegDataset,
    SegSample,
    collate,
    normalize,
)
from methods.datasets.catalog import REAL_LAYOUTS, build_real_dataset, existing_root, layout_options
from methods.datasets.embedded import (
    EMBEDDED_CLASSES,
    GENERATOR_VERSION,
    EmbeddedConfig,
    EmbeddedDataset,
    check_size,
    generate_scene,
)

__all__ = [
    "EMBEDDED_CLASSES",
    "IGNORE_INDEX",
    "MMSEG_MEAN",
    "MMSEG_STD",
    "EmbeddedConfig",
    "EmbeddedDataset",
    "SegDataset",
    "SegSample",
    "build_dataset",
    "collate",
    "dataset_classes",
    "dataset_identity",
    "generate_scene",
    "normalize",
]

SPLITS = ("train", "val")
_COMMON_KEYS = {"name", "height", "width", "num_train", "num_val", "cache_dir", "seed"}
_KEYS = {
    "embedded": _COMMON_KEYS,
    **{name: _COMMON_KEYS | {"root"} | set(layout.options) for name, layout in REAL_LAYOUTS.items()},
}
_INT_KEYS = ("height", "width", "num_train", "num_val", "seed")


def _check_spec(spec: dict[str, Any]) -> str:
    if not isinstance(spec, dict):
        raise UserError(f"dataset settings must be a mapping, got {type(spec).__name__}")
    name = spec.get("name", "embedded")
    if name not in _KEYS:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(_KEYS)}")
    for key in spec:
        if key not in _KEYS[name]:
            raise UserError(
                f"unknown dataset key {key!r} for dataset {name} (allowed: {', '.join(sorted(_KEYS[name]))})"
            )
    for key in _INT_KEYS:
        value = spec.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise UserError(f"dataset key {key!r} must be an integer, got {value!r}")
        minimum = 1 if key in ("height", "width") else 0
        if value is not None and value < minimum:
            raise UserError(f"dataset key {key!r} must be >= {minimum}, got {value!r}")
    cache_dir = spec.get("cache_dir")
    if cache_dir is not None and not isinstance(cache_dir, str):
        raise UserError(f"dataset key 'cache_dir' must be a path string or null, got {cache_dir!r}")
    root = spec.get("root")
    if root is not None and not isinstance(root, str):
        raise UserError(f"dataset key 'root' must be a path string, got {root!r}")
    if root and name in REAL_LAYOUTS:
        existing_root(name, root)  # checked at suite load too: a wrong path fails before anything runs
    if name != "embedded":
        if (spec.get("height") is None) != (spec.get("width") is None):
            raise UserError(f"dataset {name}: give both height and width to resize, or neither")
        layout_options(name, spec)
    return name


# Checked at suite load (after --set overrides), so a bad key or value fails before anything runs.
settings_validator("dataset")(_check_spec)


@settings_validator("dataset")
def _check_layout(spec: dict[str, Any]) -> None:
    """A real dataset's root must hold its layout: the val split is indexed at suite load (its file
    lists only), so a root that exists but is not, say, a VOCdevkit fails before anything runs instead
    of failing every unit. The train split, which some suites never read, is left to the trials."""
    name = spec.get("name", "embedded")
    if name in REAL_LAYOUTS and spec.get("root"):
        build_dataset(spec, "val")


@scale_setting("workers")
def _check_workers(value: Any) -> None:
    from methods.datasets.loading import WORKERS_KEY, worker_count

    worker_count({WORKERS_KEY: value})


def build_dataset(spec: dict[str, Any], split: str) -> SegDataset:
    """The dataset described by ``spec`` (a suite's dataset dict), split "train" or "val"."""
    name = _check_spec(spec)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if name == "embedded":
        defaults = EmbeddedConfig()
        config = EmbeddedConfig(
            height=spec.get("height", defaults.height),
            width=spec.get("width", defaults.width),
            num_train=spec.get("num_train", defaults.num_train),
            num_val=spec.get("num_val", defaults.num_val),
            seed=spec.get("seed", defaults.seed),
            cache_dir=spec.get("cache_dir", defaults.cache_dir),
        )
        try:
            check_size(config.height, config.width)
        except ValueError as exc:
            raise UserError(f"embedded dataset: {exc}") from None
        return EmbeddedDataset(config, split)
    height, width = spec.get("height"), spec.get("width")
    root = spec.get("root")
    if not root:
        raise Unavailable(f"dataset {name} is not on this machine: no root given (set dataset.root=PATH)")
    size = (height, width) if height is not None else None
    limit = spec.get("num_train" if split == "train" else "num_val")
    return build_real_dataset(name, root, split, size=size, limit=limit, options=spec)


def dataset_classes(spec: dict[str, Any]) -> tuple[str, ...]:
    """The class names a spec's dataset labels with, from its name and own keys alone (no file is read)."""
    name = _check_spec(spec)
    if name == "embedded":
        return EMBEDDED_CLASSES
    return REAL_LAYOUTS[name].codec(layout_options(name, spec)).classes


def dataset_identity(spec: dict[str, Any]) -> dict[str, Any]:
    """What determines the data a spec yields: the spec with defaults filled in, plus the embedded
    generator's version. Put it in artifact cache keys so a generator change invalidates them."""
    name = _check_spec(spec)
    if name != "embedded":
        return {**dict(spec), **layout_options(name, spec)}
    defaults = EmbeddedConfig()
    resolved = {
        key: spec.get(key, getattr(defaults, key)) for key in ("height", "width", "num_train", "num_val", "seed")
    }
    return {"name": "embedded", "generator": GENERATOR_VERSION, **resolved}
