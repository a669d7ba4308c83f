"""Seeded CPU training of a segmentation CNN on preloaded tensors.

bf16 autocast and channels_last (for these small networks on this 2-core AMX CPU only ~15% faster
than fp32 per step, and the first bf16 steps pay a kernel-creation cost). Augmentation: random crops
(a fixed fraction of the image side) and horizontal flips. Optimiser: AdamW, linear warm-up then
cosine decay. Loss: cross-entropy ignoring 255, optionally class-balanced.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = 255


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters. ``crop_fraction`` is the crop side over the image side (model input)."""

    iters: int = 1000
    batch_size: int = 2
    crop_fraction: float = 0.5
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_iters: int = 50
    flip: bool = True
    bf16: bool = True
    # Cross-entropy class weights ~ frequency ** -class_balance (0: plain CE, 0.5: inverse sqrt).
    class_balance: float = 0.5

    def __post_init__(self) -> None:
        if self.iters < 1 or self.batch_size < 1:
            raise ValueError("baseline training iters and batch_size must be >= 1")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f"baseline crop_fraction must be in (0, 1], got {self.crop_fraction}")

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any] | None) -> TrainConfig:
        overrides = dict(overrides or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown baseline training settings {unknown}; known: {sorted(known)}")
        return cls(**overrides)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def class_weights(labels: torch.Tensor, num_classes: int, exponent: float) -> torch.Tensor | None:
    """Per-class loss weights ``freq ** -exponent`` from the training labels, scaled so that the
    pixel-averaged weight is 1; classes absent from the labels get the largest weight. None if
    ``exponent`` is 0."""
    if exponent == 0.0:
        return None
    valid = labels[labels != IGNORE_INDEX].long()
    counts = torch.bincount(valid, minlength=num_classes)[:num_classes].double()
    freq = counts / counts.sum()
    weights = torch.where(counts > 0, freq.clamp_min(1e-12) ** -exponent, torch.zeros_like(freq))
    weights = weights / (weights * freq).sum()
    weights[counts == 0] = weights.max()
    return weights.float()


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
    inputs: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images, random crops and flips: (float inputs [B,3,h,w], int64 labels [B,h,w])."""
    n, _, height, width = inputs.shape
    crop_h = max(8, round(height * config.crop_fraction))
    crop_w = max(8, round(width * config.crop_fraction))
    crop_h, crop_w = min(crop_h, height), min(crop_w, width)
    index = torch.randint(0, n, (config.batch_size,), generator=generator)
    tops = torch.randint(0, height - crop_h + 1, (config.batch_size,), generator=generator)
    lefts = torch.randint(0, width - crop_w + 1, (config.batch_size,), generator=generator)
    flips = torch.rand(config.batch_size, generator=generator) < 0.5
    xs, ys = [], []
    for i, top, left, flip in zip(index.tolist(), tops.tolist(), lefts.tolist(), flips.tolist(), strict=True):
        x = inputs[i, :, top : top + crop_h, left : left + crop_w]
        y = labels[i, top : top + crop_h, left : left + crop_w]
        if config.flip and flip:
            x, y = x.flip(-1), y.flip(-1)
        xs.append(x)
        ys.append(y)
    batch = torch.stack(xs).float().contiguous(memory_format=torch.channels_last)
    return batch, torch.stack(ys).long()


def train_segmentation_model(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    seed: int,
    progress: Callable[[str], None] = lambda message: None,
    label: str = "baseline",
    num_classes: int | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``inputs`` (normalised, [N,3,H,W]) and ``labels`` ([N,H,W], 255 =
    ignore). ``num_classes`` defaults to ``model.num_classes``. Deterministic given ``seed`` (and
    the thread count)."""
    generator = torch.Generator().manual_seed(seed)
    model.train()
    model.to(memory_format=torch.channels_last)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    weights = class_weights(labels, num_classes or model.num_classes, config.class_balance)
    losses: list[float] = []
    report_every = max(1, config.iters // 50)
    t0 = time.perf_counter()
    for step in range(config.iters):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        x, y = sample_batch(inputs, labels, config, generator)
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
