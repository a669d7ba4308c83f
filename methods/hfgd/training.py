"""Seeded CPU training and evaluation of HFGD models on a segmentation dataset.

Training follows the paper's ablation recipe where it fits a from-scratch CPU run: poly learning
rate decay, weight decay 1e-4, random crops and flips. The optimiser is AdamW rather than the
paper's SGD (0.01) because a randomly initialised network trained for a few hundred iterations
converges far better with it. bf16 autocast (the paper trains with mixed precision too).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from harness.registry import settings_fields
from methods.hfgd.model import HFGD, HFGDConfig
from methods.metrics import class_map

Progress = Callable[[str], None]
SCALE_KEY = "hfgd_train"


@dataclass(frozen=True)
class TrainSettings:
    iters: int = 300
    batch_size: int = 4
    crop: tuple[int, int] = (256, 512)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    bf16: bool = True

    def __post_init__(self) -> None:
        if min(self.iters, self.batch_size, *self.crop) < 1:
            raise ValueError(f"{SCALE_KEY} iters, batch_size and crop must be >= 1")
        if not self.lr > 0 or self.weight_decay < 0 or self.poly_power < 0:
            raise ValueError(f"{SCALE_KEY} lr must be > 0 and weight_decay, poly_power >= 0")

    @classmethod
    def from_scale(cls, scale: dict[str, Any]) -> TrainSettings:
        """Settings from the suite scale's ``hfgd_train`` mapping (unknown keys, wrong types: errors)."""
        return cls(**settings_fields(cls, scale.get(SCALE_KEY), SCALE_KEY))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def preload(dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """All samples stacked: uint8 images [N,3,H,W], int64 labels [N,H,W]."""
    samples = [dataset[i] for i in range(len(dataset))]
    return torch.stack([s.image for s in samples]), torch.stack([s.label for s in samples])


def random_crops(
    images: torch.Tensor, labels: torch.Tensor, settings: TrainSettings, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    n, _, height, width = images.shape
    ch, cw = min(settings.crop[0], height), min(settings.crop[1], width)
    picks = torch.randint(0, n, (settings.batch_size,), generator=generator)
    batch_images, batch_labels = [], []
    for i in picks.tolist():
        y = int(torch.randint(0, height - ch + 1, (1,), generator=generator))
        x = int(torch.randint(0, width - cw + 1, (1,), generator=generator))
        img, lab = images[i, :, y : y + ch, x : x + cw], labels[i, y : y + ch, x : x + cw]
        if bool(torch.rand(1, generator=generator) < 0.5):
            img, lab = img.flip(-1), lab.flip(-1)
        batch_images.append(img)
        batch_labels.append(lab)
    return torch.stack(batch_images), torch.stack(batch_labels)


def train_hfgd(
    config: HFGDConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: TrainSettings,
    seed: int,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train from a seeded random init; returns {"state_dict", "losses", "seconds"}."""
    from methods.datasets import normalize

    torch.manual_seed(seed)
    model = HFGD(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(settings.iters):
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * (1 - step / settings.iters) ** settings.poly_power
        batch_images, batch_labels = random_crops(images, labels, settings, generator)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16):
            outputs = model(normalize(batch_images))
        loss = model.loss(outputs, batch_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress is not None and (step % 25 == 0 or step == settings.iters - 1):
            progress(f"hfgd train {step + 1}/{settings.iters} loss {losses[-1]:.3f}")
    return {"state_dict": model.state_dict(), "losses": losses, "seconds": time.perf_counter() - start}


@torch.no_grad()
def evaluate(
    model: HFGD, images: torch.Tensor, labels: torch.Tensor, num_classes: int, bf16: bool = True, batch: int = 2
) -> dict[str, Any]:
    """mIoU of the final logits and, when the model has them, of the OS = 32 class-kernel logits."""
    from methods.datasets import normalize
    from methods.metrics import ConfusionMatrix

    model.eval()
    final, coarse = ConfusionMatrix(num_classes), ConfusionMatrix(num_classes)
    has_coarse = False
    for i in range(0, len(images), batch):
        x = normalize(images[i : i + batch])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outputs = model(x)
        size = x.shape[-2:]
        logits = outputs["logits"]
        assert logits is not None
        final.update(class_map(F.interpolate(logits.float(), size=size, mode="bilinear")), labels[i : i + batch])
        if outputs["logits32"] is not None:
            has_coarse = True
            up = F.interpolate(outputs["logits32"].float(), size=size, mode="bilinear")
            coarse.update(class_map(up), labels[i : i + batch])
    return {
        "miou": final.miou(),
        "per_class_iou": final.per_class_iou(),
        "miou_os32": coarse.miou() if has_coarse else None,
    }
