"""Low- and high-resolution dense baselines (SparseRefine §3.1), trained once and cached.

- "hr": trained and run at full resolution.
- "lr": trained and run on images downsampled x2 (area averaging of the normalised image, an odd
  side first padded by repeating its last row/column; labels downsampled by nearest neighbour); its
  logits and features are upsampled x2 with NEAREST interpolation to full resolution, so every 2x2
  block of the output is constant.
Both kinds use the same architecture. Training reads the train split image by image
(:class:`SplitTrainingImages`): the split is never stacked in memory.

Every frozen baseline (these, and the checkpoint ones of :mod:`methods.baselines.frozen`) offers
``predict_grid`` (outputs on the model's own grid, :class:`GridOutputs`) and ``predict`` (full
resolution).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from methods.artifacts import cached_artifact
from methods.baselines.models import ARCH_NAMES, SegCNN
from methods.baselines.training import TrainConfig, train_segmentation_model
from methods.memory_cache import BoundedLRU

Kind = Literal["lr", "hr"]
KINDS: tuple[str, ...] = ("lr", "hr")
LR_FACTOR = 2
# Bump when a code change alters what a cached baseline contains.
ARTIFACT_VERSION = "1"
# Key in a suite scale dict holding TrainConfig overrides, e.g. ``baseline: {iters: 10}``; its
# ``by_kind`` block overrides them for one kind only: ``baseline: {iters: 10, by_kind: {hr: {iters: 5}}}``.
SCALE_KEY = "baseline"
BY_KIND = "by_kind"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"baseline kind must be one of {KINDS}, got {kind!r}")


def model_input(images_uint8: torch.Tensor, kind: str) -> torch.Tensor:
    """Normalised float input for the model: full resolution for "hr", area-downsampled x2 for "lr"."""
    from methods.datasets import normalize

    _check_kind(kind)
    x = normalize(images_uint8)
    if kind == "lr":
        height, width = x.shape[-2:]
        pad_bottom, pad_right = -height % LR_FACTOR, -width % LR_FACTOR
        if pad_bottom or pad_right:
            squeeze = x.dim() == 3
            x = F.pad(x.unsqueeze(0) if squeeze else x, (0, pad_right, 0, pad_bottom), mode="replicate")
            x = x[0] if squeeze else x
        x = F.avg_pool2d(x, LR_FACTOR)
    return x


@dataclass
class GridOutputs:
    """A batch's outputs on the model's grid: full resolution / ``factor`` (ceil on odd sides).
    ``magnitude`` is the L2 norm of the penultimate features; ``features`` None if not exposed."""

    logits: torch.Tensor  # fp32 [B, C, h, w]
    magnitude: torch.Tensor  # fp32 [B, h, w]
    features: torch.Tensor | None  # fp32 [B, F, h, w]
    factor: int


def to_full_resolution(grid: torch.Tensor, factor: int, size: tuple[int, int]) -> torch.Tensor:
    """NEAREST upsampling of a grid by ``factor``, cropped to ``size`` (H, W)."""
    if factor > 1:
        grid = grid.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    return grid[..., : size[0], : size[1]].contiguous()


def grid_factor(kind: str) -> int:
    return LR_FACTOR if kind == "lr" else 1


def model_labels(labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Training labels at the model's input resolution (nearest, i.e. the top-left pixel of each block)."""
    _check_kind(kind)
    return labels if kind == "hr" else labels[..., ::LR_FACTOR, ::LR_FACTOR]


@dataclass
class BaselineModel:
    """A trained dense baseline. ``predict`` maps uint8 images to full-resolution outputs."""

    module: SegCNN
    kind: str
    arch: str
    classes: tuple[str, ...]
    train_seconds: float = 0.0
    seconds_per_iter: float = 0.0
    losses: list[float] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def feature_channels(self) -> int:
        return self.module.feature_channels

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the network itself sees for a full-resolution image of ``height x width``."""
        return (height // LR_FACTOR, width // LR_FACTOR) if self.kind == "lr" else (height, width)

    @property
    def grid_factor(self) -> int:
        return grid_factor(self.kind)

    @torch.inference_mode()
    def predict_grid(self, images_uint8: torch.Tensor, bf16: bool = False) -> GridOutputs:
        """uint8 images [B,3,H,W] -> outputs at the network's input resolution (half for "lr")."""
        self.module.eval()
        x = model_input(images_uint8, self.kind).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, feats = self.module.forward_with_features(x)
        logits, feats = logits.float().contiguous(), feats.float().contiguous()
        return GridOutputs(logits, torch.linalg.vector_norm(feats, dim=1), feats, self.grid_factor)

    @torch.inference_mode()
    def predict(self, images_uint8: torch.Tensor, bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images [B,3,H,W] -> (logits [B,C,H,W], penultimate features [B,F,H,W]), float32, at
        full resolution. LR outputs are nearest-upsampled from half resolution."""
        grid = self.predict_grid(images_uint8, bf16=bf16)
        size = tuple(images_uint8.shape[-2:])
        assert grid.features is not None
        return to_full_resolution(grid.logits, grid.factor, size), to_full_resolution(grid.features, grid.factor, size)


class SplitTrainingImages:
    """The train split as a baseline sees it, read image by image: model inputs (normalised, x2
    downsampled for "lr"; bf16 when training in bf16, as autocast casts them at the first conv
    anyway) and labels at the model's resolution."""

    CACHE_BYTES = 1 << 30  # every embedded default-scale image; ~80 Cityscapes-size HR ones

    def __init__(self, dataset_spec: dict[str, Any], kind: str, bf16: bool):
        from methods.datasets import build_dataset

        self.dataset = build_dataset(dataset_spec, "train")
        self.kind = kind
        self.dtype = torch.bfloat16 if bf16 else torch.float32
        self.classes = tuple(self.dataset.classes)
        self._reference: tuple[int, int] | None = None
        # Prepared images are read again and again (random batches over thousands of iterations).
        self._loaded: BoundedLRU[tuple[torch.Tensor, torch.Tensor]] = BoundedLRU(self.CACHE_BYTES)

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._loaded.get(index, lambda: self._prepare(index))

    def _prepare(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.dataset[index]
        inputs = model_input(sample.image.unsqueeze(0), self.kind)[0].to(self.dtype)
        return inputs, model_labels(sample.label, self.kind).to(torch.uint8)

    def reference_size(self) -> tuple[int, int]:
        """The first image's size at the model's resolution (crop sizes are fractions of it)."""
        if self._reference is None:
            self._reference = tuple(self.load(0)[1].shape)  # type: ignore[assignment]
        return self._reference  # type: ignore[return-value]

    def class_counts(self, num_classes: int) -> torch.Tensor:
        from methods.baselines.training import label_counts
        from methods.datasets.loading import iterate_samples

        counts = torch.zeros(num_classes, dtype=torch.int64)
        for batch in iterate_samples(self.dataset, range(len(self.dataset)), batch_size=4):
            for sample in batch:
                counts += label_counts(model_labels(sample.label, self.kind), num_classes)
        return counts


def dataset_identity(dataset_spec: dict[str, Any]) -> dict[str, Any]:
    """The dataset settings that determine its content: the spec without where it is cached, plus
    the embedded generator's version (a new generator must not reuse stale baselines)."""
    identity = {k: v for k, v in dataset_spec.items() if k != "cache_dir"}
    if identity.get("name", "embedded") == "embedded":
        from methods.datasets.embedded import GENERATOR_VERSION

        identity["generator_version"] = GENERATOR_VERSION
    return identity


def baseline_config(
    kind: str, dataset_spec: dict[str, Any], scale: dict[str, Any], arch: str, seed: int
) -> dict[str, Any]:
    """The full, resolved configuration that determines a trained baseline (its cache key)."""
    _check_kind(kind)
    if arch not in ARCH_NAMES:
        raise ValueError(f"unknown baseline arch {arch!r}; known: {', '.join(ARCH_NAMES)}")
    train = train_settings(kind, scale)
    config = {
        "version": ARTIFACT_VERSION,
        "kind": kind,
        "arch": arch,
        "dataset": dataset_identity(dataset_spec),
        "train": train.as_dict(),
        "seed": seed,
    }
    if train.init == "lr":
        config["init_from"] = baseline_config("lr", dataset_spec, scale, arch, seed)
    return config


def train_settings(kind: str, scale: dict[str, Any]) -> TrainConfig:
    """The training settings of ``kind``: the scale's ``baseline`` block, then its ``by_kind.<kind>``."""
    given = scale.get(SCALE_KEY) or {}
    if not isinstance(given, dict):
        raise ValueError(f"{SCALE_KEY}: expected a mapping of training settings, got {given!r}")
    given = dict(given)
    by_kind = given.pop(BY_KIND, None) or {}
    if not isinstance(by_kind, dict) or set(by_kind) - set(KINDS):
        raise ValueError(f"baseline.{BY_KIND} must map kinds ({', '.join(KINDS)}) to settings, got {by_kind!r}")
    own = by_kind.get(kind) or {}
    if not isinstance(own, dict):
        raise ValueError(f"baseline.{BY_KIND}.{kind} must be a mapping of training settings, got {own!r}")
    settings = TrainConfig.from_overrides({**given, **own})
    if settings.init == "lr" and kind != "hr":
        raise ValueError("baseline init: lr applies to the HR baseline only (set it under baseline.by_kind.hr)")
    return settings


def _build_baseline(
    config: dict[str, Any], dataset_spec: dict[str, Any], artifacts_dir: Path | str, progress: Callable[[str], None]
) -> dict[str, Any]:
    kind = config["kind"]
    train = TrainConfig(**config["train"])
    source = SplitTrainingImages(dataset_spec, kind, train.bf16)
    classes = source.classes
    progress(f"training the {kind.upper()} baseline on {len(source)} images, read per batch")
    torch.manual_seed(config["seed"])
    module = SegCNN(len(classes), config["arch"])
    if "init_from" in config:
        start = _baseline_artifact(config["init_from"], dataset_spec, artifacts_dir, progress)
        module.load_state_dict(start["state_dict"])
        progress(f"the {kind.upper()} baseline starts from the trained LR baseline")
    result = train_segmentation_model(
        module,
        source,
        None,
        train,
        seed=config["seed"],
        progress=progress,
        label=f"{kind.upper()} baseline ({config['arch']})",
    )
    return {
        "state_dict": module.state_dict(),
        "classes": list(classes),
        "losses": result.losses,
        "train_seconds": result.seconds,
        "seconds_per_iter": result.seconds_per_iter,
        "threads": torch.get_num_threads(),
    }


def _baseline_artifact(
    config: dict[str, Any], dataset_spec: dict[str, Any], artifacts_dir: Path | str, progress: Callable[[str], None]
) -> dict[str, Any]:
    """The trained baseline of ``config`` from the artifact cache, built (and cached) if absent."""
    return cached_artifact(
        artifacts_dir,
        "baseline",
        config,
        lambda: _build_baseline(config, dataset_spec, artifacts_dir, progress),
        progress=progress,
    )


def trained_baseline(
    kind: Kind,
    dataset_spec: dict[str, Any],
    scale: dict[str, Any],
    artifacts_dir: Path | str,
    progress: Callable[[str], None] = lambda message: None,
    arch: str = "small",
    seed: int = 2023,
) -> BaselineModel:
    """The LR or HR baseline for ``dataset_spec``, trained on its "train" split (cached).

    Training settings come from ``scale["baseline"]`` (TrainConfig fields) over the defaults; the
    cache key is the resolved configuration, so callers with equal settings share one artifact.
    """
    config = baseline_config(kind, dataset_spec, scale, arch, seed)
    artifact = _baseline_artifact(config, dataset_spec, artifacts_dir, progress)
    classes = tuple(artifact["classes"])
    module = SegCNN(len(classes), arch)
    module.load_state_dict(artifact["state_dict"])
    module.eval().to(memory_format=torch.channels_last)
    return BaselineModel(
        module=module,
        kind=kind,
        arch=arch,
        classes=classes,
        train_seconds=float(artifact["train_seconds"]),
        seconds_per_iter=float(artifact["seconds_per_iter"]),
        losses=list(artifact["losses"]),
        config=config,
    )
