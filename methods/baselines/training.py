"""Seeded CPU training of a segmentation CNN, reading its images one batch at a time.

The training images are a :class:`TrainingImages` source: stacked tensors (:class:`StackedImages`)
or images read and prepared on demand (the baselines' streamed split), so a split is never held in
memory and its images may differ in size.

bf16 autocast and channels_last (for these small networks on this 2-core AMX CPU only ~15% faster
than fp32 per step, and the first bf16 steps pay a kernel-creation cost). Augmentation (MMSegmentation's
RandomCrop + Pad + RandomFlip): a crop of a fixed fraction of the reference image side (the first
image's) at a random offset, padded bottom/right (input 0, label 255) on a smaller image, and
horizontal flips. Optimiser: AdamW, linear warm-up then
cosine decay. Loss: cross-entropy ignoring 255, optionally class-balanced.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from harness.registry import settings_fields
from methods.datasets.loading import pad_to

IGNORE_INDEX = 255


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters. ``crop_fraction`` is the crop side over the image side (model input)."""

    iters: int = 1000
    batch_size: int = 2
    crop_fraction: float = 0.5
    # MMSeg's RandomResize ratio_range, e.g. [0.5, 2.0]: each training image is first rescaled by a
    # random ratio in this range (input bilinear, label nearest). None: no rescaling.
    scale_range: tuple[float, float] | None = None
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_iters: int = 50
    flip: bool = True
    bf16: bool = True
    # Cross-entropy class weights ~ frequency ** -class_balance (0: plain CE, 0.5: inverse sqrt).
    class_balance: float = 0.5
    # "lr": the HR baseline starts from the trained LR baseline's weights (same network; a CPU-scale
    # schedule choice: the LR model has learnt the classes, the HR steps learn the full-res detail).
    init: str | None = None

    def __post_init__(self) -> None:
        if self.iters < 1 or self.batch_size < 1:
            raise ValueError("baseline training iters and batch_size must be >= 1")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f"baseline crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if self.scale_range is not None:
            low, high = self.scale_range
            if not 0.0 < low <= high:
                raise ValueError(
                    f"baseline scale_range must be [low, high] with 0 < low <= high, got {self.scale_range}"
                )
            object.__setattr__(self, "scale_range", (float(low), float(high)))
        if self.init not in (None, "lr"):
            raise ValueError(f"baseline init must be 'lr' (start from the LR baseline) or unset, got {self.init!r}")

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any] | None) -> TrainConfig:
        return cls(**settings_fields(cls, overrides, "baseline"))

    def as_dict(self) -> dict[str, Any]:
        """The settings (a cache key): ``scale_range`` and ``init`` only when set, so older keys stay valid."""
        settings = asdict(self)
        if settings["scale_range"] is None:
            del settings["scale_range"]
        else:
            settings["scale_range"] = list(settings["scale_range"])
        if settings["init"] is None:
            del settings["init"]
        return settings


def class_weights(labels: torch.Tensor, num_classes: int, exponent: float) -> torch.Tensor | None:
    """Per-class loss weights ``freq ** -exponent`` from the training labels (see
    :func:`class_weights_from_counts`). None if ``exponent`` is 0."""
    if exponent == 0.0:
        return None
    return class_weights_from_counts(label_counts(labels, num_classes), exponent)


def label_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Pixels of each class id 0..num_classes-1 (void and out-of-range ids left out)."""
    valid = labels[labels != IGNORE_INDEX].long()
    return torch.bincount(valid.reshape(-1), minlength=num_classes)[:num_classes]


def class_weights_from_counts(counts: torch.Tensor, exponent: float) -> torch.Tensor | None:
    """``freq ** -exponent`` scaled so that the pixel-averaged weight is 1; classes absent from the
    labels get the largest weight. None if ``exponent`` is 0."""
    if exponent == 0.0:
        return None
    counts = counts.double()
    freq = counts / counts.sum()
    weights = torch.where(counts > 0, freq.clamp_min(1e-12) ** -exponent, torch.zeros_like(freq))
    weights = weights / (weights * freq).sum()
    weights[counts == 0] = weights.max()
    return weights.float()


class TrainingImages(Protocol):
    """Training data read on demand: model inputs [3,h,w] and labels [h,w] (uint8, 255 = void)."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def reference_size(self) -> tuple[int, int]: ...

    def class_counts(self, num_classes: int) -> torch.Tensor: ...


@dataclass
class StackedImages:
    """Training data already in memory: inputs [N,3,H,W] and labels [N,H,W]."""

    inputs: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.labels[index]

    def reference_size(self) -> tuple[int, int]:
        return tuple(self.inputs.shape[-2:])  # type: ignore[return-value]

    def class_counts(self, num_classes: int) -> torch.Tensor:
        return label_counts(self.labels, num_classes)


@dataclass
class TrainResult:
    losses: list[float]
    seconds: float
    seconds_per_iter: float


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup_iters``, then cosine decay to zero at ``iters``."""
    if step < config.warmup_iters:
        return config.lr * (step + 1) / config.warmup_iters
    span = max(config.iters - config.warmup_iters, 1)
    progress = (step - config.warmup_iters) / span
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def sample_batch(
    source: TrainingImages,
    config: TrainConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images, random crops and flips: (float inputs [B,3,h,w], int64 labels [B,h,w])."""
    n = len(source)
    height, width = source.reference_size()
    crop_h = min(max(8, round(height * config.crop_fraction)), height)
    crop_w = min(max(8, round(width * config.crop_fraction)), width)
    index = torch.randint(0, n, (config.batch_size,), generator=generator)
    items = [source.load(i) for i in index.tolist()]
    if config.scale_range is not None:
        items = [random_rescale(x, y, config.scale_range, generator) for x, y in items]
    # One draw per image (the same stream as one vectorised draw when all images share a size).
    tops = [int(torch.randint(0, max(x.shape[-2] - crop_h, 0) + 1, (1,), generator=generator)) for x, _ in items]
    lefts = [int(torch.randint(0, max(x.shape[-1] - crop_w, 0) + 1, (1,), generator=generator)) for x, _ in items]
    flips = torch.rand(config.batch_size, generator=generator) < 0.5
    xs, ys = [], []
    for (image, label), top, left, flip in zip(items, tops, lefts, flips.tolist(), strict=True):
        x = pad_to(image[:, top : top + crop_h, left : left + crop_w], (crop_h, crop_w), 0.0)
        y = pad_to(label[top : top + crop_h, left : left + crop_w], (crop_h, crop_w), IGNORE_INDEX)
        if config.flip and flip:
            x, y = x.flip(-1), y.flip(-1)
        xs.append(x)
        ys.append(y)
    batch = torch.stack(xs).float().contiguous(memory_format=torch.channels_last)
    return batch, torch.stack(ys).long()


def random_rescale(
    image: torch.Tensor, label: torch.Tensor, scale_range: tuple[float, float], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image [3,H,W] (bilinear) and label [H,W] (nearest) rescaled by a ratio drawn in ``scale_range``."""
    low, high = scale_range
    ratio = low + (high - low) * float(torch.rand((), generator=generator))
    size = (max(1, round(image.shape[-2] * ratio)), max(1, round(image.shape[-1] * ratio)))
    resized = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0].to(image.dtype)
    labels = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].to(label.dtype)
    return resized, labels


def train_segmentation_model(
    model: nn.Module,
    inputs: torch.Tensor | TrainingImages,
    labels: torch.Tensor | None,
    config: TrainConfig,
    seed: int,
    progress: Callable[[str], None] = lambda message: None,
    label: str = "baseline",
    num_classes: int | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``inputs`` (normalised, [N,3,H,W]) and ``labels`` ([N,H,W], 255 =
    ignore), or on a :class:`TrainingImages` source (``labels`` None). ``num_classes`` defaults to
    ``model.num_classes``. Deterministic given ``seed`` (and the thread count)."""
    source = inputs if labels is None else StackedImages(inputs, labels)  # type: ignore[arg-type]
    classes = num_classes or model.num_classes
    generator = torch.Generator().manual_seed(seed)
    model.train()
    model.to(memory_format=torch.channels_last)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    weights = None
    if config.class_balance != 0.0:
        weights = class_weights_from_counts(source.class_counts(classes), config.class_balance)
    losses: list[float] = []
    report_every = max(1, config.iters // 50)
    t0 = time.perf_counter()
    for step in range(config.iters):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        x, y = sample_batch(source, config, generator)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, weight=weights, ignore_index=IGNORE_INDEX)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if (step + 1) % report_every == 0 or step + 1 == config.iters:
            elapsed = time.perf_counter() - t0
            recent = losses[-report_every:]
            eta = elapsed / (step + 1) * (config.iters - step - 1)
            progress(
                f"training {label}: iter {step + 1}/{config.iters} "
                f"loss {sum(recent) / len(recent):.3f} ({elapsed:.0f}s, eta {eta:.0f}s)"
            )
    seconds = time.perf_counter() - t0
    model.eval()
    return TrainResult(losses=losses, seconds=seconds, seconds_per_iter=seconds / config.iters)
