"""Low- and high-resolution dense baselines (SparseRefine §3.1), trained once and cached.

- "hr": trained and run at full resolution.
- "lr": trained and run on images downsampled x2 (area averaging of the normalised image; labels
  downsampled by nearest neighbour); its logits and features are upsampled x2 with NEAREST
  interpolation to full resolution, so every 2x2 block of the output is constant.
Both kinds use the same architecture.
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

Kind = Literal["lr", "hr"]
KINDS: tuple[str, ...] = ("lr", "hr")
LR_FACTOR = 2
# Bump when a code change alters what a cached baseline contains.
ARTIFACT_VERSION = "1"
# Key in a suite scale dict holding TrainConfig overrides, e.g. ``baseline: {iters: 10}``.
SCALE_KEY = "baseline"


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
        if height % LR_FACTOR or width % LR_FACTOR:
            raise ValueError(f"LR baseline needs an image size divisible by {LR_FACTOR}, got {height}x{width}")
        x = F.avg_pool2d(x, LR_FACTOR)
    return x


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

    @torch.inference_mode()
    def predict(self, images_uint8: torch.Tensor, bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images [B,3,H,W] -> (logits [B,C,H,W], penultimate features [B,F,H,W]), float32, at
        full resolution. LR outputs are nearest-upsampled from half resolution."""
        self.module.eval()
        x = model_input(images_uint8, self.kind).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, feats = self.module.forward_with_features(x)
        logits, feats = logits.float(), feats.float()
        if self.kind == "lr":
            size = images_uint8.shape[-2:]
            logits = F.interpolate(logits, size=size, mode="nearest")
            feats = F.interpolate(feats, size=size, mode="nearest")
        return logits.contiguous(), feats.contiguous()


def load_split(dataset_spec: dict[str, Any], split: str) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """All samples of a split stacked: (uint8 images [N,3,H,W], int64 labels [N,H,W], class names)."""
    from methods.datasets import build_dataset

    dataset = build_dataset(dataset_spec, split)
    images, labels, _ = dataset.batch(range(len(dataset)))
    return images, labels, tuple(dataset.classes)


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
    train = TrainConfig.from_overrides(scale.get(SCALE_KEY))
    return {
        "version": ARTIFACT_VERSION,
        "kind": kind,
        "arch": arch,
        "dataset": dataset_identity(dataset_spec),
        "train": train.as_dict(),
        "seed": seed,
    }


def _build_baseline(
    config: dict[str, Any], dataset_spec: dict[str, Any], progress: Callable[[str], None]
) -> dict[str, Any]:
    kind = config["kind"]
    progress(f"loading training split for the {kind.upper()} baseline")
    images, labels, classes = load_split(dataset_spec, "train")
    inputs = torch.cat([model_input(images[i : i + 4], kind) for i in range(0, len(images), 4)])
    # Inputs are cast to bf16 by autocast at the first conv anyway; storing them so halves memory.
    train = TrainConfig(**config["train"])
    inputs = inputs.to(torch.bfloat16 if train.bf16 else torch.float32)
    targets = model_labels(labels, kind).to(torch.uint8)
    del images, labels
    torch.manual_seed(config["seed"])
    module = SegCNN(len(classes), config["arch"])
    result = train_segmentation_model(
        module,
        inputs,
        targets,
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
    artifact = cached_artifact(
        artifacts_dir, "baseline", config, lambda: _build_baseline(config, dataset_spec, progress), progress=progress
    )
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
