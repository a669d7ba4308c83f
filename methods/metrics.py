"""Segmentation metrics from a streaming confusion matrix.

``miou`` follows MMSegmentation's IoUMetric: pixels whose target is the ignore index are dropped,
per-class IoU = intersection / union, and a class absent from both target and prediction has
IoU nan and is skipped by the mean. ``miou_absent_as_zero`` is the plain mean used by the official
SparseRefine code: union clamped at 1e-5, so an absent class counts as 0. The two differ whenever a
class is absent from an evaluation set; both are reported under their own names.
"""

from __future__ import annotations

import math

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray


def class_map(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The predicted class of each pixel: ``logits.argmax(dim)``, as ``max(dim).indices`` (the same
    indices, ties to the first maximum; on a CPU NCHW tensor argmax over the channels is far slower)."""
    return logits.max(dim=dim).indices


def _as_flat_int64(values: ArrayLike) -> torch.Tensor:
    if isinstance(values, np.ndarray):
        values = torch.from_numpy(np.ascontiguousarray(values))
    if values.is_floating_point():
        raise TypeError("labels and predictions must be integer class maps, not floats (take argmax first)")
    return values.reshape(-1).to(device="cpu", dtype=torch.int64)


class ConfusionMatrix:
    """Accumulates ``counts[target, pred]`` over any number of ``update`` calls.

    The matrix has ``num_classes + 1`` columns: the last one counts valid target pixels whose
    prediction is outside ``[0, num_classes)`` (they are wrong and count in the target's area, as in
    MMSegmentation, but in no class's predicted area).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = torch.zeros(num_classes, num_classes + 1, dtype=torch.int64)

    def reset(self) -> None:
        self.counts.zero_()

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Add one batch. ``pred`` and ``target`` are integer maps of the same shape (any rank)."""
        pred_flat = _as_flat_int64(pred)
        target_flat = _as_flat_int64(target)
        if pred_flat.shape != target_flat.shape:
            raise ValueError(f"pred and target differ in size: {tuple(pred.shape)} vs {tuple(target.shape)}")
        valid = target_flat != self.ignore_index
        target_flat = target_flat[valid]
        pred_flat = pred_flat[valid]
        if target_flat.numel() == 0:
            return
        low, high = int(target_flat.min()), int(target_flat.max())
        if low < 0 or high >= self.num_classes:
            bad = low if low < 0 else high
            raise ValueError(
                f"target holds class {bad}, outside [0, {self.num_classes}) and not the ignore index "
                f"{self.ignore_index}"
            )
        c = self.num_classes
        pred_flat = torch.where((pred_flat >= 0) & (pred_flat < c), pred_flat, torch.full_like(pred_flat, c))
        index = target_flat * (c + 1) + pred_flat
        self.counts += torch.bincount(index, minlength=c * (c + 1)).reshape(c, c + 1)

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another matrix's counts (e.g. from another worker)."""
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge confusion matrices with different class counts")
        self.counts += other.counts

    # Per-class areas (float64 numpy, length num_classes).
    def _areas(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        counts = self.counts.numpy().astype(np.float64)
        square = counts[:, : self.num_classes]
        intersect = np.diag(square).copy()
        area_target = counts.sum(axis=1)
        area_pred = square.sum(axis=0)
        return intersect, area_target, area_pred

    def total_pixels(self) -> int:
        """Number of non-ignored target pixels seen so far."""
        return int(self.counts.sum())

    def per_class_iou(self) -> list[float]:
        """IoU of every class in %, nan for a class absent from both target and prediction."""
        intersect, area_target, area_pred = self._areas()
        union = area_target + area_pred - intersect
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, intersect / np.where(union > 0, union, 1.0), np.nan)
        return [float(v) * 100.0 for v in iou]

    def miou(self) -> float:
        """MMSegmentation's mIoU in %: nan-mean over classes (nan if no class was ever seen)."""
        present = [v for v in self.per_class_iou() if not math.isnan(v)]
        return sum(present) / len(present) if present else float("nan")

    def miou_absent_as_zero(self) -> float:
        """Official SparseRefine mIoU in %: mean over ALL classes of i / max(u, 1e-5)."""
        intersect, area_target, area_pred = self._areas()
        union = np.maximum(area_target + area_pred - intersect, 1e-5)
        return float(np.mean(intersect / union)) * 100.0

    def pixel_accuracy(self) -> float:
        """Overall pixel accuracy (MMSegmentation's aAcc) in %, nan before any pixel was seen."""
        intersect, area_target, _ = self._areas()
        total = area_target.sum()
        return float(intersect.sum() / total) * 100.0 if total > 0 else float("nan")

    def per_class_accuracy(self) -> list[float]:
        """Recall of every class in %, nan for a class absent from the target."""
        intersect, area_target, _ = self._areas()
        return [float(i / t) * 100.0 if t > 0 else float("nan") for i, t in zip(intersect, area_target, strict=True)]

    def mean_accuracy(self) -> float:
        """MMSegmentation's mAcc in %: nan-mean of per-class accuracy."""
        present = [v for v in self.per_class_accuracy() if not math.isnan(v)]
        return sum(present) / len(present) if present else float("nan")

    def summary(self, class_names: tuple[str, ...] | None = None) -> dict[str, float | dict[str, float]]:
        """All headline numbers in one JSON-friendly dict."""
        names = class_names or tuple(str(i) for i in range(self.num_classes))
        return {
            "miou": self.miou(),
            "miou_absent_as_zero": self.miou_absent_as_zero(),
            "aacc": self.pixel_accuracy(),
            "macc": self.mean_accuracy(),
            "per_class_iou": dict(zip(names, self.per_class_iou(), strict=True)),
        }
