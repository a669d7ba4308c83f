"""Selectors resolved on a dataset: thresholds calibrated on the train split, masks per image.

Every selector except the oracle scores pixels and keeps those above a threshold. The entropy
selector's threshold is α: given, or calibrated on the train split (never on the split a result is
reported on) either to a recall of the LR errors (the paper's rule, supp. §1.1) or, for the entropy
selector itself, to a target density. The magnitude and learnable selectors take an explicit
threshold, or one calibrated on the train split to a target density; the random selector keeps
each pixel with that density. A target density of 0 means "match the entropy selector at its α on
the train split", the matched-density comparison of Table 5a.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from methods.artifacts import cached_artifact
from methods.sparserefine.lr_outputs import SplitOutputs
from methods.sparserefine.selectors import (
    SELECTORS,
    LearnableSelector,
    lr_errors,
    threshold_for_density,
)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SelectionSpec:
    selector: str = "entropy"
    alpha: float = 0.3
    density: float = 0.0
    threshold: float = -1.0
    recall: float = 0.0  # > 0: α is the largest that reaches this recall of the train split's LR errors

    def __post_init__(self) -> None:
        if self.selector not in SELECTORS:
            raise ValueError(f"unknown selector {self.selector!r}; known: {SELECTORS}")


def _normalized(images_uint8: torch.Tensor) -> torch.Tensor:
    from methods.datasets import normalize

    return normalize(images_uint8)


@dataclass(frozen=True)
class LearnableTraining:
    steps: int = 150
    batch: int = 2
    crop: tuple[int, int] = (256, 512)
    lr: float = 1e-3


def train_learnable_selector(
    train: SplitOutputs, settings: LearnableTraining, seed: int, progress: Progress
) -> dict[str, Any]:
    """Train the learnable selector on its own (paper §4.3): BCE against the LR errors of the train
    split, on random crops. Positives are rare, so they are up-weighted to balance the classes."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = LearnableSelector(train.num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.steps)
    h, w = train.images.shape[-2:]
    ch, cw = min(settings.crop[0], h), min(settings.crop[1], w)
    losses = []
    for step in range(settings.steps):
        idx = torch.randint(len(train), (settings.batch,), generator=gen).tolist()
        top = int(torch.randint(h - ch + 1, (1,), generator=gen))
        left = int(torch.randint(w - cw + 1, (1,), generator=gen))
        window = (..., slice(top, top + ch), slice(left, left + cw))
        image = _normalized(train.images[idx][window])
        logits = train.logits(idx)[window]
        target = lr_errors(logits, train.labels[idx][window]).float()
        valid = (train.labels[idx][window] != 255).float()
        pos = target.sum().clamp(min=1.0)
        pos_weight = ((valid.sum() - pos) / pos).clamp(max=50.0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            scores = model.score_logits(image, logits)
        loss = F.binary_cross_entropy_with_logits(scores.float(), target, weight=valid, pos_weight=pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 25 == 0:
            progress(f"sparserefine: learnable selector step {step}/{settings.steps} loss {loss.item():.3f}")
    return {"state_dict": model.state_dict(), "losses": losses}


def learnable_selector(
    train: SplitOutputs,
    baseline_config: dict[str, Any],
    settings: LearnableTraining,
    seed: int,
    artifacts_dir: Path,
    progress: Progress,
) -> LearnableSelector:
    config = {"baseline": baseline_config, "settings": settings.__dict__, "seed": seed, "version": 1}
    art = cached_artifact(
        artifacts_dir,
        "sparserefine-learnable-selector",
        config,
        lambda: train_learnable_selector(train, settings, seed, progress),
        progress,
    )
    model = LearnableSelector(train.num_classes)
    model.load_state_dict(art["state_dict"])
    return model.eval()


class ResolvedSelector:
    """A selector with its threshold fixed; ``mask(split, index)`` gives [1, H, W]."""

    def __init__(
        self,
        spec: SelectionSpec,
        train: SplitOutputs,
        learnable: LearnableSelector | None = None,
        seed: int = 0,
    ):
        self.spec = spec
        self.learnable = learnable
        self.seed = seed
        self._learnable_scores: dict[tuple[int, int], torch.Tensor] = {}
        if spec.selector == "learnable" and learnable is None:
            raise ValueError("the learnable selector needs its trained model")
        self.alpha = self._entropy_alpha(train)
        self.target_density = self._target_density(train)
        self.threshold = self._threshold(train)

    def _entropy_alpha(self, train: SplitOutputs) -> float:
        """α of the entropy selector (this one, or the one the others are matched to)."""
        if self.spec.selector == "entropy" and self.spec.density > 0:
            entropies = torch.cat([train.entropy(i).reshape(-1) for i in range(len(train))])
            return threshold_for_density(entropies, self.spec.density)
        if self.spec.recall > 0:
            return alpha_for_recall(train, self.spec.recall)
        return self.spec.alpha

    def _target_density(self, train: SplitOutputs) -> float:
        if self.spec.selector in ("entropy", "oracle"):
            return float("nan")
        if self.spec.density > 0:
            return self.spec.density
        selected = sum(int((train.entropy(i) > self.alpha).sum()) for i in range(len(train)))
        return selected / train.labels.numel()

    def _threshold(self, train: SplitOutputs) -> float:
        if self.spec.selector == "entropy":
            return self.alpha
        if self.spec.selector in ("random", "oracle"):
            return float("nan")
        if self.spec.threshold >= 0:
            return self.spec.threshold
        scores = torch.cat([self.scores(train, i).reshape(-1) for i in range(len(train))])
        return threshold_for_density(scores, self.target_density)

    def scores(self, split: SplitOutputs, index: int) -> torch.Tensor:
        """Selector scores [1, H, W] (higher = more likely selected)."""
        kind = self.spec.selector
        if kind == "entropy":
            return split.entropy(index)
        if kind == "magnitude":
            return split.magnitude(index)
        if kind == "learnable":
            assert self.learnable is not None
            key = (id(split), index)  # the threshold calibration and the training masks both need them
            if key not in self._learnable_scores:
                with torch.inference_mode():
                    image = _normalized(split.images[index : index + 1])
                    self._learnable_scores[key] = self.learnable(image, split.logits(index))
            return self._learnable_scores[key]
        raise ValueError(f"selector {kind!r} has no scores")

    def mask(self, split: SplitOutputs, index: int, salt: int = 0) -> torch.Tensor:
        kind = self.spec.selector
        if kind == "oracle":
            return split.errors(index)
        if kind == "random":
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index * 7919 + salt)
            shape = (1, *split.labels.shape[-2:])
            return torch.rand(shape, generator=gen) < self.target_density
        return self.scores(split, index) > self.threshold

    def describe(self) -> dict[str, Any]:
        return {
            "selector": self.spec.selector,
            "threshold": self.threshold,
            "target_density": self.target_density,
            "entropy_alpha": self.alpha,
            "calibrated_on": "train" if self._calibrated() else "not calibrated (given)",
        }

    def _calibrated(self) -> bool:
        spec = self.spec
        if spec.selector == "entropy":
            return spec.density > 0 or spec.recall > 0
        if spec.selector in ("magnitude", "learnable"):
            return spec.threshold < 0
        return spec.selector == "random" and spec.density == 0  # matched to the entropy selector on train


def alpha_for_recall(train: SplitOutputs, recall: float) -> float:
    """The largest entropy threshold α whose selection (entropy > α) holds at least ``recall`` of the
    pixels the LR prediction gets wrong on ``train``."""
    error_entropies = torch.cat([train.entropy(i)[train.errors(i)] for i in range(len(train))])
    if error_entropies.numel() == 0:
        return float("inf")
    ranked = torch.sort(error_entropies.float(), descending=True).values
    need = min(max(int(math.ceil(recall * ranked.numel())), 1), ranked.numel())
    return float(torch.nextafter(ranked[need - 1], torch.tensor(float("-inf"))))
