"""Training (level losses, eq. 4-8) and evaluation of QGNs on CPU.

Training: SGD with momentum, polynomial decay (power 0.9) as in supp. A.2, horizontal flips,
bf16 autocast when available, seeded. Not reproduced from A.2: random scaling, the median-IoU class
weighting and the 100k-iteration schedule (the harness trains for minutes on a CPU).
The level loss L_l is the cross-entropy over k+1 classes at the level's active sites against the
T-pyramid value there (cells entirely of ignore/padding are ignored); levels without active sites
contribute nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from harness.registry import settings_fields
from methods.qgn.model import QGN, QuadtreeOutput
from methods.qgn.schemes import LevelWeights
from methods.qgn.tpyramid import IGNORE_INDEX, build_t_pyramid, pad_to_multiple

Progress = Callable[[str], None]
# Training and evaluation use one intra-op thread: on the shared 2-core machine the many small ops of
# a QGN step ran 10-25x slower with 2 OpenMP threads than with 1 whenever other processes were busy.
TRAIN_THREADS = 1
SCALE_KEY = "train"  # the suite scale's QGN training settings


@dataclass(frozen=True)
class TrainSettings:
    iters: int = 600
    batch_size: int = 4
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    bf16: bool = True
    flip: bool = True

    def __post_init__(self) -> None:
        if self.iters < 1 or self.batch_size < 1:
            raise ValueError(f"{SCALE_KEY} iters and batch_size must be >= 1, got {self.iters}, {self.batch_size}")
        if not self.lr > 0 or self.momentum < 0 or self.weight_decay < 0:
            raise ValueError(f"{SCALE_KEY} lr must be > 0 and momentum, weight_decay >= 0")

    @classmethod
    def from_scale(cls, scale: dict[str, Any]) -> TrainSettings:
        """The scale's ``train`` block (unknown keys, values of the wrong type or range: errors)."""
        return cls(**settings_fields(cls, scale.get(SCALE_KEY), SCALE_KEY))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PreparedSplit:
    """Normalised, padded images [N,3,Hp,Wp], padded labels [N,Hp,Wp] and the real (H, W)."""

    images: torch.Tensor
    labels: torch.Tensor
    size: tuple[int, int]
    num_classes: int


def prepare_split(dataset: Any, levels: int, limit: int | None = None) -> PreparedSplit:
    """Load a whole split into memory, zero-padding images / ignore-padding labels to 2**levels."""
    from methods.datasets.base import normalize

    count = len(dataset) if limit is None else min(limit, len(dataset))
    if count == 0:
        raise ValueError("the dataset split is empty")
    images, labels = [], []
    for i in range(count):
        sample = dataset[i]
        images.append(pad_to_multiple(normalize(sample.image[None])[0], levels, fill=0))
        labels.append(pad_to_multiple(sample.label, levels, fill=IGNORE_INDEX))
    sizes = {tuple(lab.shape) for lab in labels}
    if len(sizes) != 1:
        raise ValueError(f"QGN needs equally sized images (set dataset height/width), got sizes {sorted(sizes)}")
    height, width = dataset[0].label.shape
    return PreparedSplit(torch.stack(images), torch.stack(labels), (height, width), dataset.num_classes)


def pyramid_targets(labels: torch.Tensor, levels: int, num_classes: int) -> list[torch.Tensor]:
    """T-pyramid levels of ``labels [B,H,W]`` with composite = ``num_classes`` (loss index k)."""
    return build_t_pyramid(labels, levels, composite=num_classes)


def level_losses(out: QuadtreeOutput, targets: list[torch.Tensor]) -> dict[int, torch.Tensor]:
    """Eq. 4 at every level with active sites that have a non-ignored target."""
    losses: dict[int, torch.Tensor] = {}
    for lv in out.levels:
        c = lv.coords
        target = targets[lv.level][c[:, 0], c[:, 1], c[:, 2]]
        if bool((target != IGNORE_INDEX).any()):
            losses[lv.level] = F.cross_entropy(lv.logits.float(), target, ignore_index=IGNORE_INDEX)
    return losses


def autocast_context(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


@contextlib.contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """Run with ``count`` torch intra-op threads, restoring the previous count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_qgn(
    model: QGN,
    data: PreparedSplit,
    scheme: str,
    gamma: str,
    settings: TrainSettings,
    seed: int,
    progress: Progress = lambda message: None,
) -> dict[str, Any]:
    """Train in place; return a history (loss per logged step, final beta, seconds)."""
    with intra_op_threads(TRAIN_THREADS):
        return _train(model, data, scheme, gamma, settings, seed, progress)


def _train(
    model: QGN,
    data: PreparedSplit,
    scheme: str,
    gamma: str,
    settings: TrainSettings,
    seed: int,
    progress: Progress,
) -> dict[str, Any]:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    weights = LevelWeights(model.levels, gamma)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    targets_all = pyramid_targets(data.labels, model.levels, model.num_classes)
    model.train()
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    n = data.images.shape[0]
    for step in range(settings.iters):
        lr = settings.lr * (1 - step / settings.iters) ** 0.9
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = torch.randint(0, n, (settings.batch_size,), generator=generator)
        images = data.images[index]
        labels = data.labels[index]
        if settings.flip:
            flip = torch.rand(settings.batch_size, generator=generator) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            labels = torch.where(flip[:, None, None], labels.flip(-1), labels)
            targets = pyramid_targets(labels, model.levels, model.num_classes)
        else:
            targets = [t[index] for t in targets_all]
        with autocast_context(settings.bf16):
            out = model(images, scheme, targets)
        losses = level_losses(out, targets)
        total = sum(weights.weight(level) * loss for level, loss in losses.items())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        weights.update({level: float(loss.detach()) for level, loss in losses.items()})
        if step % 20 == 0 or step == settings.iters - 1:
            history.append({"step": step, "loss": float(total.detach()), "sites": out.active_sites()})
            loss_value = float(total.detach())
            progress(f"QGN train-{scheme} gamma={gamma}: iter {step + 1}/{settings.iters} loss {loss_value:.3f}")
    return {"history": history, "beta": list(weights.beta), "seconds": time.perf_counter() - start}


@torch.no_grad()
def evaluate_qgn(
    model: QGN,
    data: PreparedSplit,
    scheme: str,
    bf16: bool,
    batch_size: int = 2,
) -> dict[str, Any]:
    """mIoU / pixel accuracy of the accumulated leaf predictions with propagation ``scheme``, plus
    the mean fraction of cells active per level (how sparse the decoder ran)."""
    with intra_op_threads(TRAIN_THREADS):
        return _evaluate(model, data, scheme, bf16, batch_size)


def _evaluate(model: QGN, data: PreparedSplit, scheme: str, bf16: bool, batch_size: int) -> dict[str, Any]:
    from methods.metrics import ConfusionMatrix

    model.eval()
    matrix = ConfusionMatrix(model.num_classes, IGNORE_INDEX)
    height, width = data.size
    active = torch.zeros(model.levels + 1, dtype=torch.float64)
    for start in range(0, data.images.shape[0], batch_size):
        images = data.images[start : start + batch_size]
        labels = data.labels[start : start + batch_size]
        targets = pyramid_targets(labels, model.levels, model.num_classes)
        with autocast_context(bf16):
            out = model(images, scheme, targets)
        pred = model.dense_prediction(out)
        matrix.update(pred[:, :height, :width], labels[:, :height, :width])
        for level, count in out.active_sites().items():
            cells = images.shape[0] * (images.shape[2] >> level) * (images.shape[3] >> level)
            active[level] += count / cells * images.shape[0]
    active /= data.images.shape[0]
    return {
        "miou": matrix.miou(),
        "acc": matrix.pixel_accuracy(),
        "active_percent": {f"Q{level}": round(100.0 * float(active[level]), 3) for level in range(model.levels + 1)},
    }
