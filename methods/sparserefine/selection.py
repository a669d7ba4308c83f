"""Selectors resolved on a dataset: thresholds calibrated on the train split, masks per image.

One class per selector kind (:data:`SELECTOR_KINDS`, the one place a kind is looked up): it
calibrates itself on the train split, gives the mask of one image and builds the call that times it.
Every selector except the oracle scores pixels and keeps those above a threshold. The entropy
selector's threshold is α: given, or calibrated on the train split (never on the split a result is
reported on) either to a recall of the LR errors (the paper's rule, supp. §1.1) or, for the entropy
selector itself, to a target density. The magnitude and learnable selectors take an explicit
threshold, or one calibrated on the train split to a target density; the random selector keeps
each pixel with that density. A target density of 0 means "match the entropy selector at its α on
the train split", the matched-density comparison of Table 5a.

Calibration streams the train split (:meth:`SplitOutputs.stream`): densities are summed and
thresholds are exact order statistics found in two passes over per-image maps
(:func:`methods.sparserefine.selectors.order_statistics`), so its memory does not grow with the split.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from harness.devices import Placement
from harness.registry import settings_fields
from methods.artifacts import cached_artifact
from methods.datasets.loading import crop_size, pad_label, pad_to
from methods.memory_cache import BoundedLRU
from methods.metrics import class_map
from methods.sparserefine.lr_outputs import SplitOutputs, upsample_nearest
from methods.sparserefine.selectors import (
    Chunks,
    LearnableSelector,
    feature_magnitude,
    lr_errors,
    order_statistics,
    streamed_threshold_for_density,
)

Progress = Callable[[str], None]
Mask = torch.Tensor
CURVE_DENSITIES = (0.01, 0.02, 0.034, 0.05, 0.069, 0.09, 0.118, 0.15, 0.19, 0.25, 0.35, 0.5, 0.7, 1.0)


@dataclass(frozen=True)
class SelectionSpec:
    selector: str = "entropy"
    alpha: float = 0.3
    density: float = 0.0
    threshold: float = -1.0
    recall: float = 0.0  # > 0: α is the largest that reaches this recall of the train split's LR errors

    def __post_init__(self) -> None:
        if self.selector not in SELECTOR_KINDS:
            raise ValueError(f"unknown selector {self.selector!r}; known: {tuple(SELECTOR_KINDS)}")


def _normalized(images_uint8: torch.Tensor) -> torch.Tensor:
    from methods.datasets import normalize

    return normalize(images_uint8)


@dataclass(frozen=True)
class LearnableTraining:
    steps: int = 150
    batch: int = 2
    crop: tuple[int, int] = (256, 512)
    lr: float = 1e-3

    def __post_init__(self) -> None:
        for name, value in {
            "steps": self.steps,
            "batch": self.batch,
            "crop height": self.crop[0],
            "crop width": self.crop[1],
        }.items():
            if value < 1:
                raise ValueError(f"learnable selector {name} must be >= 1, got {value}")
        if not self.lr > 0:
            raise ValueError(f"learnable selector lr must be > 0, got {self.lr}")

    @classmethod
    def from_settings(cls, given: Any, block: str) -> LearnableTraining:
        """From a suite's settings mapping named ``block`` (unknown keys, wrong types: errors)."""
        return cls(**settings_fields(cls, given, block))


def train_learnable_selector(
    train: SplitOutputs, settings: LearnableTraining, seed: int, progress: Progress
) -> dict[str, Any]:
    """Train the learnable selector on its own (paper §4.3): BCE against the LR errors of the train
    split, on random crops. Positives are rare, so they are up-weighted to balance the classes."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = LearnableSelector(train.num_classes).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.steps)
    losses = []
    for step in range(settings.steps):
        idx = torch.randint(len(train), (settings.batch,), generator=gen).tolist()
        image, logits, labels = _learnable_crops(train, idx, settings.crop, gen)
        target = lr_errors(logits, labels).float()
        valid = (labels != 255).float()
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


def _learnable_crops(
    train: SplitOutputs, idx: list[int], crop: tuple[int, int], gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised images and full-resolution LR logits (channels_last) and labels of random crops
    of images ``idx``, padded at the bottom/right to one batch size (image and logits 0, label 255:
    never a target).
    Images of one size share one window (a stacked batch of equal images is cropped as one); each
    is cropped to ``crop`` clipped to its own size."""
    windows: dict[tuple[int, int], tuple[slice, slice]] = {}
    for size in (train.size(i) for i in idx):
        if size not in windows:
            (h, w), (ch, cw) = size, crop_size(crop, size)
            top = int(torch.randint(h - ch + 1, (1,), generator=gen))
            left = int(torch.randint(w - cw + 1, (1,), generator=gen))
            windows[size] = (slice(top, top + ch), slice(left, left + cw))
    sides = [(rows.stop - rows.start, cols.stop - cols.start) for rows, cols in windows.values()]
    padded = (max(h for h, _ in sides), max(w for _, w in sides))
    images, logits, labels = [], [], []
    for i in idx:
        rows, cols = windows[train.size(i)]
        images.append(pad_to(_normalized(train.images[i : i + 1][..., rows, cols]), padded, 0.0))
        logits.append(pad_to(train.logits(i)[..., rows, cols], padded, 0.0))
        labels.append(pad_label(train.labels[i : i + 1][..., rows, cols], padded))
    channels_last = torch.channels_last
    image_batch = torch.cat(images).contiguous(memory_format=channels_last)
    return image_batch, torch.cat(logits).contiguous(memory_format=channels_last), torch.cat(labels)


def learnable_selector(
    train: SplitOutputs,
    baseline_config: dict[str, Any],
    settings: LearnableTraining,
    seed: int,
    artifacts_dir: Path,
    progress: Progress,
) -> LearnableSelector:
    config = {"baseline": baseline_config, "settings": settings.__dict__, "seed": seed, "version": 2}
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


@dataclass(frozen=True)
class TimingBatch:
    """What a selector's timed call starts from: ``idx`` images of ``val`` with their LR outputs as
    the LR model gives them (on its grid), put on the unit's device in its precision."""

    val: SplitOutputs
    idx: list[int]
    placement: Placement
    seed: int
    features_grid: Callable[[], torch.Tensor]  # the LR features [B, F, h, w] of ``idx`` (read on demand)

    @cached_property
    def logits_lr(self) -> torch.Tensor:
        return self.placement.tensor(self.val.logits_grid[self.idx], channels_last=False)

    @property
    def factor(self) -> int:
        return self.val.factor

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the batch's images (one size: a timed batch is stacked)."""
        return self.val.size(self.idx[0])


class ResolvedSelector:
    """A selector of one kind with its threshold fixed on the train split.

    ``mask(split, index)`` gives [1, H, W]; ``timed_call(batch)`` the callable a latency trial times,
    from the LR outputs on their grid to the full-resolution mask. Every kind calibrates α of the
    entropy selector (its own threshold, or the density the others are matched to).
    """

    kind: ClassVar[str]
    sweepable: ClassVar[bool] = True  # has a recall/precision-against-density curve

    def __init__(
        self,
        spec: SelectionSpec,
        train: SplitOutputs,
        *,
        seed: int = 0,
        learnable: Callable[[], LearnableSelector] | None = None,
    ):
        self.spec = spec
        self.seed = seed
        self.alpha = self._entropy_alpha(train)
        self.target_density = self._target_density(train)
        self.threshold = self._threshold(train)

    def _entropy_alpha(self, train: SplitOutputs) -> float:
        if self.spec.recall > 0:
            return alpha_for_recall(train, self.spec.recall)
        return self.spec.alpha

    def _target_density(self, train: SplitOutputs) -> float:
        return float("nan")

    def _threshold(self, train: SplitOutputs) -> float:
        return float("nan")

    def mask(self, split: SplitOutputs, index: int, salt: int = 0) -> Mask:
        raise NotImplementedError

    def timed_call(self, batch: TimingBatch) -> Callable[[], Mask]:
        raise NotImplementedError

    def calibrated(self) -> bool:
        return False

    @classmethod
    def curve_specs(cls, points: int, num_classes: int) -> list[SelectionSpec]:
        """The selections of this kind's recall/precision curve: calibrated to a sweep of densities."""
        return [SelectionSpec(cls.kind, 0.3, density=d) for d in CURVE_DENSITIES]

    def describe(self) -> dict[str, Any]:
        return {
            "selector": self.spec.selector,
            "threshold": self.threshold,
            "target_density": self.target_density,
            "entropy_alpha": self.alpha,
            "calibrated_on": "train" if self.calibrated() else "not calibrated (given)",
        }


def per_image(split: SplitOutputs, values: Callable[[int], torch.Tensor]) -> Chunks:
    """``values(i)`` of every image of ``split`` in order, streamed (one image at a time, re-iterable):
    what a calibration reads instead of concatenating the split."""
    return lambda: (values(i) for i in split.stream(range(len(split))))


def _matched_density(selector: ResolvedSelector, train: SplitOutputs) -> float:
    """The target density of a selector matched to the entropy one: given, or (0) the entropy
    selector's density at α on the train split."""
    if selector.spec.density > 0:
        return selector.spec.density
    selected = sum(int((entropy > selector.alpha).sum()) for entropy in per_image(train, train.entropy)())
    return selected / train.labels.numel()


class EntropySelector(ResolvedSelector):
    """Pixels whose LR entropy exceeds α (paper §3.2)."""

    kind = "entropy"

    def _entropy_alpha(self, train: SplitOutputs) -> float:
        if self.spec.density > 0:
            entropies = per_image(train, train.entropy)
            return streamed_threshold_for_density(entropies, train.labels.numel(), self.spec.density)
        return super()._entropy_alpha(train)

    def _threshold(self, train: SplitOutputs) -> float:
        return self.alpha

    def mask(self, split: SplitOutputs, index: int, salt: int = 0) -> Mask:
        return split.entropy(index) > self.threshold

    def timed_call(self, batch: TimingBatch) -> Callable[[], Mask]:
        from methods.sparserefine.costs import lr_grid_entropy_mask

        logits_lr, alpha, factor = batch.logits_lr, self.threshold, batch.factor
        h, w = batch.size  # an odd side has a grid of ceil(side / factor): the mask is cropped to it
        return lambda: lr_grid_entropy_mask(logits_lr, alpha, factor)[..., :h, :w]

    def calibrated(self) -> bool:
        return self.spec.density > 0 or self.spec.recall > 0

    @classmethod
    def curve_specs(cls, points: int, num_classes: int) -> list[SelectionSpec]:
        """A log-spaced sweep of α up to the largest entropy, log(classes)."""
        alphas = torch.logspace(-4, math.log10(math.log(num_classes)), points).tolist()
        return [SelectionSpec(cls.kind, alpha) for alpha in alphas]


class ScoredSelector(ResolvedSelector):
    """Pixels whose score exceeds a threshold: given, or calibrated on train to the target density."""

    def _target_density(self, train: SplitOutputs) -> float:
        return _matched_density(self, train)

    def _threshold(self, train: SplitOutputs) -> float:
        if self.spec.threshold >= 0:
            return self.spec.threshold
        scores = per_image(train, lambda i: self.scores(train, i))
        return streamed_threshold_for_density(scores, train.labels.numel(), self.target_density)

    def scores(self, split: SplitOutputs, index: int) -> torch.Tensor:
        """Selector scores [1, H, W] (higher = more likely selected)."""
        raise NotImplementedError

    def mask(self, split: SplitOutputs, index: int, salt: int = 0) -> Mask:
        return self.scores(split, index) > self.threshold

    def calibrated(self) -> bool:
        return self.spec.threshold < 0


class MagnitudeSelector(ScoredSelector):
    """Pixels whose LR penultimate features have a large L2 norm (supp. §2.1)."""

    kind = "magnitude"

    def scores(self, split: SplitOutputs, index: int) -> torch.Tensor:
        return split.magnitude(index)

    def timed_call(self, batch: TimingBatch) -> Callable[[], Mask]:
        from harness.errors import Unavailable

        threshold, factor, size = self.threshold, batch.factor, batch.size
        try:
            feats = batch.placement.tensor(batch.features_grid(), channels_last=False)
        except Unavailable:
            # A checkpoint baseline keeps no features: its LR pass computes the norm (a hook on the
            # head's classifier input), so the selector's own work is the threshold and upsampling.
            norm = batch.placement.tensor(batch.val.magnitude_grid[batch.idx], channels_last=False)
            return lambda: upsample_nearest(norm > threshold, factor, size)
        return lambda: upsample_nearest(feature_magnitude(feats) > threshold, factor, size)


class PackedMasks:
    """Boolean masks kept bit-packed (1 bit per pixel) in a size-bounded LRU: a selector whose mask
    costs a network pass is asked for the same image's mask every epoch."""

    def __init__(self, max_bytes: int):
        self._packed: BoundedLRU[tuple[torch.Tensor, tuple[int, ...]]] = BoundedLRU(max_bytes)

    def get(self, key: tuple[int, int], compute: Callable[[], Mask]) -> Mask:
        computed: list[Mask] = []

        def packed() -> tuple[torch.Tensor, tuple[int, ...]]:
            computed.append(compute())
            return torch.from_numpy(np.packbits(computed[0].cpu().numpy())), tuple(computed[0].shape)

        bits, shape = self._packed.get(key, packed)
        if computed:
            return computed[0]
        return torch.from_numpy(np.unpackbits(bits.numpy(), count=math.prod(shape)).reshape(shape).astype(bool))


class LearnedSelector(ScoredSelector):
    """The learnable selector's probability that the LR prediction is wrong (supp. §2.1)."""

    kind = "learnable"
    MASK_CACHE_BYTES = 256 << 20  # ~1000 Cityscapes-size masks; every embedded default-scale one

    def __init__(
        self,
        spec: SelectionSpec,
        train: SplitOutputs,
        *,
        seed: int = 0,
        learnable: Callable[[], LearnableSelector] | None = None,
    ):
        if learnable is None:
            raise ValueError("the learnable selector needs its trained model")
        self.model = learnable().to(memory_format=torch.channels_last)
        self._masks = PackedMasks(self.MASK_CACHE_BYTES)
        self._splits: dict[int, SplitOutputs] = {}
        super().__init__(spec, train, seed=seed)

    def mask(self, split: SplitOutputs, index: int, salt: int = 0) -> Mask:
        # the same split object within a process: the refiner's epochs and the evaluation ask again
        self._splits[id(split)] = split  # held, so that no other split can take its id
        return self._masks.get((id(split), index), lambda: super(LearnedSelector, self).mask(split, index, salt))

    def scores(self, split: SplitOutputs, index: int) -> torch.Tensor:
        # Recomputed on each call (deterministic): keeping them would hold a score map per image.
        # channels_last (NCHW is the slow path) and fp32: the same computation as the fp32 timed call.
        image = _normalized(split.images[index : index + 1]).contiguous(memory_format=torch.channels_last)
        logits = split.logits(index).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self.model(image, logits)

    def timed_call(self, batch: TimingBatch) -> Callable[[], Mask]:
        where = batch.placement
        model = where.model(self.model, channels_last=True)
        image = where.tensor(_normalized(batch.val.images[batch.idx]))
        logits = where.tensor(upsample_nearest(batch.logits_lr, batch.factor, batch.size))
        threshold = self.threshold
        return lambda: model(image, logits) > threshold


class RandomSelector(ResolvedSelector):
    """Each pixel independently with the target density (seeded per image)."""

    kind = "random"

    def _target_density(self, train: SplitOutputs) -> float:
        return _matched_density(self, train)

    def mask(self, split: SplitOutputs, index: int, salt: int = 0) -> Mask:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index * 7919 + salt)
        shape = (1, *split.labels[index].shape[-2:])
        return torch.rand(shape, generator=gen) < self.target_density

    def timed_call(self, batch: TimingBatch) -> Callable[[], Mask]:
        device = batch.placement.device
        shape = (len(batch.idx), *batch.val.labels[batch.idx[0]].shape[-2:])
        density = self.target_density
        gen = torch.Generator(device=device).manual_seed(batch.seed)
        return lambda: torch.rand(shape, generator=gen, device=device) < density

    def calibrated(self) -> bool:
        return self.spec.density == 0  # matched to the entropy selector on train


class OracleSelector(ResolvedSelector):
    """Exactly the pixels the LR prediction gets wrong, read off the ground truth."""

    kind = "oracle"
    sweepable = False

    def mask(self, split: SplitOutputs, index: int, salt: int = 0) -> Mask:
        return split.errors(index)

    def timed_call(self, batch: TimingBatch) -> Callable[[], Mask]:
        logits_lr, factor, size = batch.logits_lr, batch.factor, batch.size
        labels = batch.val.labels[batch.idx].to(batch.placement.device)
        return lambda: class_map(upsample_nearest(logits_lr, factor, size)) != labels


SELECTOR_KINDS: dict[str, type[ResolvedSelector]] = {
    cls.kind: cls for cls in (EntropySelector, MagnitudeSelector, RandomSelector, LearnedSelector, OracleSelector)
}


def build_selector(
    spec: SelectionSpec,
    train: SplitOutputs,
    *,
    seed: int = 0,
    learnable: Callable[[], LearnableSelector] | None = None,
) -> ResolvedSelector:
    """The selector of ``spec``, calibrated on ``train``; ``learnable`` gives the trained model of the
    learnable selector (called only by that kind)."""
    return SELECTOR_KINDS[spec.selector](spec, train, seed=seed, learnable=learnable)


def alpha_for_recall(train: SplitOutputs, recall: float) -> float:
    """The largest entropy threshold α whose selection (entropy > α) holds at least ``recall`` of the
    pixels the LR prediction gets wrong on ``train``."""
    error_entropies = per_image(train, lambda i: train.entropy(i)[train.errors(i)])

    def rank_of_needed(n: int) -> list[int]:
        """Ascending rank of the ``need``-th largest entropy, ``need`` the errors the recall takes."""
        if n == 0:
            return []
        need = min(max(int(math.ceil(recall * n)), 1), n)
        return [n - need]

    _, needed = order_statistics(error_entropies, rank_of_needed)
    if not needed:
        return float("inf")
    entropy = torch.tensor(needed[0], dtype=torch.float32)
    return float(torch.nextafter(entropy, torch.tensor(float("-inf"))))
