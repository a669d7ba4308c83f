"""Training (paper §4.1) and evaluation of the sparse refiner on frozen LR outputs.

Training: the extractor, the head and the gated ensembler are trained jointly with cross-entropy on
the final refined logits at the selected pixels (255 ignored); AdamW, cosine schedule; random crops
(MMSegmentation's RandomCrop + Pad: an image smaller than the crop is padded, label 255, never
selected) and horizontal flips (the paper's random rescaling is left out: it would need the LR
baseline to be re-run on every rescaled image). Both training and evaluation read the split image
by image (:meth:`SplitOutputs.stream`); evaluation runs each image at its own size.
Parameter-free ensemblers (direct, entropy, oracle) are applied
after the fact to a refiner trained with direct replacement, i.e. on its own refined logits: they
all share that one training (see ``training_config``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from harness.registry import settings_fields
from methods.artifacts import cached_artifact
from methods.datasets.loading import crop_size, pad_to
from methods.sparse.backends import BACKEND_NAMES
from methods.sparserefine.lr_outputs import SplitOutputs, upsample_nearest
from methods.sparserefine.refiner import RefinerConfig, SparseRefiner, gather_pixels
from methods.sparserefine.selection import ResolvedSelector
from methods.sparserefine.selectors import SelectionCounts, class_softmax, prediction_errors

Progress = Callable[[str], None]
SCALE_KEY = "sparserefine"  # the suite's scale settings for this package live under this key
LEARNABLE_SCALE_KEY = "learnable_selector"  # LearnableTraining settings, inside the SCALE_KEY block
ARTIFACT_VERSION = "2"


@dataclass(frozen=True)
class RefinerTraining:
    """Training hyper-parameters (paper: AdamW 3e-4, wd 0.05, cosine, 500 epochs, batch 32 of
    512x1024 crops); a suite's scale may scale epochs, batch and crop down for a CPU."""

    epochs: int = 8
    batch: int = 2
    crop: tuple[int, int] = (256, 512)
    lr: float = 3e-4
    weight_decay: float = 0.05
    bf16: bool = True
    flip: bool = True
    # Cross-entropy class weights ~ frequency ** -class_balance over the train labels (0 = the paper's
    # plain CE; a suite whose LR baseline is trained class-balanced may match it).
    class_balance: float = 0.0
    # Backend the refiner is trained and evaluated on. Every backend computes the same convolution
    # (the dense one is the reference the others are tested against), so this changes speed only; on
    # a CPU at these densities the dense reference is the fastest to train. Latency is measured on
    # the backend the trial asks for.
    backend: str = "dense"

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch": self.batch, "crop height": self.crop[0], "crop width": self.crop[1]}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{SCALE_KEY} {name} must be >= 1, got {value}")
        if not self.lr > 0 or self.weight_decay < 0 or self.class_balance < 0:
            raise ValueError(
                f"{SCALE_KEY} lr must be > 0 and weight_decay, class_balance >= 0, got lr={self.lr}, "
                f"weight_decay={self.weight_decay}, class_balance={self.class_balance}"
            )
        if self.backend not in BACKEND_NAMES:
            raise ValueError(f"{SCALE_KEY} backend must be one of {', '.join(BACKEND_NAMES)}, got {self.backend!r}")

    @classmethod
    def from_scale(cls, scale: dict[str, Any]) -> RefinerTraining:
        """The scale's ``sparserefine`` block (but its ``learnable_selector`` block): unknown keys and
        values of the wrong type or range are errors."""
        given = scale.get(SCALE_KEY)
        if isinstance(given, dict):
            given = {k: v for k, v in given.items() if k != LEARNABLE_SCALE_KEY}
        return cls(**settings_fields(cls, given, SCALE_KEY))


@dataclass
class Features:
    """The LR penultimate features of a split on their grid (for the "+features" inputs)."""

    grid: torch.Tensor
    factor: int

    def at(self, index: int | list[int], size: tuple[int, int]) -> torch.Tensor:
        """Full-resolution features [B, F, H, W] of images ``index`` of size ``size`` (an odd side's
        grid holds ceil(side / factor) cells: the upsampled grid is cropped to it)."""
        grid = self.grid[index]
        if grid.dim() == 3:
            grid = grid.unsqueeze(0)
        return upsample_nearest(grid.float(), self.factor, size)


def class_weights(labels: torch.Tensor, num_classes: int, balance: float) -> torch.Tensor | None:
    """Weights ~ frequency ** -balance, normalised to a pixel-weighted mean of 1 (None if balance 0)."""
    if balance == 0:
        return None
    return class_weights_from_counts(torch.bincount(labels.reshape(-1), minlength=256), num_classes, balance)


def class_weights_from_counts(counts: torch.Tensor, num_classes: int, balance: float) -> torch.Tensor | None:
    """:func:`class_weights` from pixel counts per label id (index 255 = void, left out)."""
    if balance == 0:
        return None
    valid = torch.cat([counts[:255], counts[256:]])
    classes = max(num_classes, int(torch.nonzero(valid).max()) + 1 if bool(valid.any()) else num_classes)
    freq = valid[:classes].double() / max(int(valid.sum()), 1)
    weights = freq.clamp(min=1e-6) ** -balance
    return (weights / (weights * freq).sum()).float()


def training_config(config: RefinerConfig) -> RefinerConfig:
    """The configuration actually trained: parameter-free ensemblers train as direct replacement."""
    return config if config.ensembler == "gated" else replace(config, ensembler="direct")


def _normalize(images: torch.Tensor) -> torch.Tensor:
    from methods.datasets import normalize

    return normalize(images)


@dataclass(frozen=True)
class _Window:
    """A training crop of one image: ``size`` at (top, left), padded to the batch's ``padded`` size
    (bottom/right), optionally flipped. ``scale`` > 1 takes it from a grid ``scale`` times smaller."""

    top: int
    left: int
    height: int
    width: int
    padded: tuple[int, int]
    flip: bool

    def take(
        self,
        x: torch.Tensor,
        scale: int = 1,
        value: float = 0.0,
        prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The window of ``x``; ``prepare`` (e.g. normalisation) runs on the crop, before padding."""
        rows = slice(self.top // scale, (self.top + self.height) // scale)
        cols = slice(self.left // scale, (self.left + self.width) // scale)
        x = x[..., rows, cols]
        if prepare is not None:
            x = prepare(x)
        x = pad_to(x, (self.padded[0] // scale, self.padded[1] // scale), value)
        return x.flip(-1) if self.flip else x


def _crop_batch(
    train: SplitOutputs,
    selector: ResolvedSelector,
    features: Features | None,
    indices: list[int],
    settings: RefinerTraining,
    gen: torch.Generator,
):
    f = train.factor
    # The batch's crop: the setting, clipped to the first image, on the LR grid (multiples of f).
    batch_crop = crop_size(settings.crop, train.size(indices[0]), f)
    parts: dict[str, list[torch.Tensor]] = {"image": [], "logits": [], "labels": [], "mask": [], "feats": []}
    for i in indices:
        h, w = train.size(i)
        ch, cw = crop_size(batch_crop, (h, w), f)
        # Crops start on the LR grid, so the LR outputs are cropped on their grid before upsampling.
        top = int(torch.randint((h - ch) // f + 1, (1,), generator=gen)) * f
        left = int(torch.randint((w - cw) // f + 1, (1,), generator=gen)) * f
        flip = settings.flip and bool(torch.rand((), generator=gen) < 0.5)

        window = _Window(top, left, ch, cw, batch_crop, flip)
        parts["image"].append(window.take(train.images[i : i + 1], prepare=_normalize))
        parts["logits"].append(upsample_nearest(window.take(train.logits_grid[i : i + 1], f).float(), f))
        parts["labels"].append(window.take(train.labels[i : i + 1], value=255))
        parts["mask"].append(window.take(selector.mask(train, i), value=False))
        if features is not None:
            assert features.factor == f
            parts["feats"].append(upsample_nearest(window.take(features.grid[i : i + 1], f).float(), f))
    return {k: torch.cat(v) for k, v in parts.items() if v}


def train_refiner(
    config: RefinerConfig,
    selector: ResolvedSelector,
    train: SplitOutputs,
    features: Features | None,
    settings: RefinerTraining,
    seed: int,
    progress: Progress,
) -> dict[str, Any]:
    """Train a refiner; returns its state dict, per-step losses and timing."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = SparseRefiner(replace(config, backend=settings.backend)).train()
    # fused: one kernel over all parameters instead of a dozen small ops per tensor (~120 tensors)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, fused=True)
    steps_per_epoch = math.ceil(len(train) / settings.batch)
    total = settings.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))))
    weights = None
    if settings.class_balance != 0:
        weights = class_weights_from_counts(train.label_counts(), config.num_classes, settings.class_balance)
    losses: list[float] = []
    sites: list[int] = []
    t0 = time.perf_counter()
    for epoch in range(settings.epochs):
        order = torch.randperm(len(train), generator=gen).tolist()
        reading = train.stream(order)  # reads ahead; each image is loaded once per epoch
        for step in range(steps_per_epoch):
            indices = order[step * settings.batch : (step + 1) * settings.batch]
            for index in indices:
                assert next(reading) == index
            crop = _crop_batch(train, selector, features, indices, settings, gen)
            pixels = gather_pixels(
                crop["mask"], crop["image"], crop["logits"], config, crop.get("feats"), crop["labels"]
            )
            assert pixels.labels is not None
            if pixels.coords.shape[0] == 0 or bool((pixels.labels == 255).all()):
                sched.step()
                continue
            try:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16):
                    y, _ = model(pixels)
            except ValueError as exc:
                # A crop so sparse that a coarse level holds one site: batch norm cannot train on it.
                # Skipped like an empty crop (only very low densities on tiny crops get here).
                if "Expected more than 1 value per channel" not in str(exc):
                    raise
                sched.step()
                continue
            log_probs = class_softmax(y.float(), log=True)  # = F.cross_entropy, minus its slow log_softmax
            loss = F.nll_loss(log_probs, pixels.labels, weight=weights, ignore_index=255)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            sites.append(int(pixels.coords.shape[0]))
        recent = losses[-steps_per_epoch:] or [float("nan")]
        progress(f"sparserefine: refiner epoch {epoch + 1}/{settings.epochs} loss {sum(recent) / len(recent):.3f}")
    seconds = time.perf_counter() - t0
    return {
        "state_dict": model.state_dict(),
        "losses": losses,
        "seconds": seconds,
        "steps": len(losses),
        "mean_sites": sum(sites) / max(len(sites), 1),
        "threads": torch.get_num_threads(),
    }


def trained_refiner(
    config: RefinerConfig,
    selector: ResolvedSelector,
    train: SplitOutputs,
    features: Features | None,
    settings: RefinerTraining,
    baseline_config: dict[str, Any],
    seed: int,
    artifacts_dir: Path,
    progress: Progress,
) -> tuple[SparseRefiner, dict[str, Any]]:
    """The refiner for ``config`` trained on ``selector``'s pixels (cached by the full config).

    Returns the model with ``config``'s ensembler (which may differ from the trained one when it is
    parameter-free) and the training record (losses, seconds, cache key config).
    """
    trained = training_config(config)
    key = {
        "version": ARTIFACT_VERSION,
        # The backend is left out: backends compute the same convolution, so a refiner trained on one
        # serves them all (Table 7 times one set of weights on each).
        "refiner": {k: v for k, v in trained.as_dict().items() if k != "backend"},
        "selection": {**asdict(selector.spec), **selector.describe()},
        "training": {k: v for k, v in asdict(settings).items() if k != "backend"},
        "baseline": baseline_config,
        "seed": seed,
    }
    art = cached_artifact(
        artifacts_dir,
        "sparserefine-refiner",
        key,
        lambda: train_refiner(trained, selector, train, features, settings, seed, progress),
        progress,
    )
    model = SparseRefiner(trained)
    model.load_state_dict(art["state_dict"])
    if trained.ensembler != config.ensembler:
        model = _swap_ensembler(model, config)
    record = {k: v for k, v in art.items() if k != "state_dict"}
    record["shared_training"] = trained.ensembler != config.ensembler
    return model.eval(), record


def _swap_ensembler(model: SparseRefiner, config: RefinerConfig) -> SparseRefiner:
    from methods.sparserefine.ensemblers import build_ensembler

    model.config = config
    model.ensembler = build_ensembler(config.ensembler, config.num_classes)
    return model


@dataclass
class EvalResult:
    refined: Any  # ConfusionMatrix
    lr: Any  # ConfusionMatrix
    selection: SelectionCounts
    sites: int
    images: int


@torch.inference_mode()
def evaluate(
    model: SparseRefiner,
    selector: ResolvedSelector,
    val: SplitOutputs,
    features: Features | None,
    progress: Progress,
    backend: str | None = None,
    on_image: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
    bf16: bool = False,
) -> EvalResult:
    """Refined and LR confusion matrices on ``val`` and the selection statistics; the extractor runs
    on ``backend`` (default: its own) for the evaluation only, under bf16 autocast if ``bf16`` (as it
    was trained). ``on_image(lr_pred, refined_pred, labels)`` (each [1, H, W]) sees every image's
    maps, for metrics beyond the confusion matrices."""
    from methods.metrics import ConfusionMatrix
    from methods.sparse import set_backend

    if backend is not None and model.config.arch != "pointnet":
        set_backend(model.extractor, backend)

    model.eval()
    refined = ConfusionMatrix(val.num_classes)
    lr = ConfusionMatrix(val.num_classes)
    counts = SelectionCounts()
    sites = 0
    use_labels = model.config.ensembler == "oracle"
    for i in val.stream(range(len(val))):
        logits = val.logits(i)
        labels = val.labels[i : i + 1]
        lr_pred = val.prediction(i)
        mask = selector.mask(val, i)
        counts.update(mask, prediction_errors(lr_pred, labels))  # val.errors(i) without a second argmax
        pixels = gather_pixels(
            mask,
            _normalize(val.images[i : i + 1]),
            logits,
            model.config,
            None if features is None else features.at(i, val.size(i)),
            labels if use_labels else None,
        )
        # the final map differs from the LR one only at the refined pixels
        refined_pred = lr_pred.clone()
        if pixels.coords.shape[0] > 0:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y, _ = model(pixels, use_labels=use_labels)
            b, yy, xx = pixels.coords.long().unbind(1)
            refined_pred[b, yy, xx] = y.argmax(dim=-1)
        sites += int(pixels.coords.shape[0])
        refined.update(refined_pred, labels)
        lr.update(lr_pred, labels)
        if on_image is not None:
            on_image(lr_pred, refined_pred, labels)
        progress(f"sparserefine: evaluating {i + 1}/{len(val)}")
    return EvalResult(refined, lr, counts, sites, len(val))
