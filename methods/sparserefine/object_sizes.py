"""mIoU by object size (SparseRefine supp. Fig. 3): the ground truth of each image is cut into objects,
the 4-connected components of each class (``scipy.ndimage.label``), and each object falls in a size bin
by the share of the frame it covers. A bin's mIoU is computed on the pixels of its objects only (every
other pixel ignored): per class present in the bin, IoU = intersection / union of the class's target
and predicted pixels within the bin, averaged over those classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from methods.metrics import ConfusionMatrix

SIZE_BINS = ("small", "medium", "large")
IGNORE = 255


def size_bins(labels: np.ndarray | torch.Tensor, small_below: float, large_above: float) -> tuple[np.ndarray, dict]:
    """Bin index per pixel of one label map [H, W]: 0 small, 1 medium, 2 large, -1 ignored; and the
    number of objects per bin. An object of share s (its pixels / H·W) is small if s < small_below,
    large if s >= large_above, medium otherwise."""
    if not 0.0 < small_below <= large_above:
        raise ValueError(f"need 0 < small_below <= large_above, got {small_below}, {large_above}")
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected one [H, W] label map, got shape {labels.shape}")
    frame = labels.size
    out = np.full(labels.shape, -1, dtype=np.int8)
    objects = dict.fromkeys(SIZE_BINS, 0)
    for cls in np.unique(labels):
        if cls == IGNORE:
            continue
        components, count = ndimage.label(labels == cls)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel(), minlength=count + 1)[1:] / frame
        bins = np.where(sizes < small_below, 0, np.where(sizes >= large_above, 2, 1)).astype(np.int8)
        where = components > 0
        out[where] = bins[components[where] - 1]
        for b, name in enumerate(SIZE_BINS):
            objects[name] += int((bins == b).sum())
    return out, objects


def bin_miou(matrix: ConfusionMatrix) -> float:
    """Mean IoU over the classes with target pixels in the matrix (nan if none)."""
    present = [
        iou for iou, acc in zip(matrix.per_class_iou(), matrix.per_class_accuracy(), strict=True) if not math.isnan(acc)
    ]
    return sum(present) / len(present) if present else float("nan")


@dataclass
class SizeBinnedScores:
    """Streaming per-bin confusion matrices of the LR and the refined predictions."""

    num_classes: int
    small_below: float
    large_above: float
    lr: dict[str, ConfusionMatrix] = field(default_factory=dict)
    refined: dict[str, ConfusionMatrix] = field(default_factory=dict)
    objects: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIZE_BINS, 0))
    pixels: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIZE_BINS, 0))

    def __post_init__(self) -> None:
        for name in SIZE_BINS:
            self.lr[name] = ConfusionMatrix(self.num_classes, IGNORE)
            self.refined[name] = ConfusionMatrix(self.num_classes, IGNORE)

    def update(self, lr_pred: torch.Tensor, refined_pred: torch.Tensor, labels: torch.Tensor) -> None:
        """Add images: predictions and labels [B, H, W] (or one [H, W])."""
        if labels.dim() == 2:
            lr_pred, refined_pred, labels = lr_pred[None], refined_pred[None], labels[None]
        for i in range(labels.shape[0]):
            bins, objects = size_bins(labels[i], self.small_below, self.large_above)
            bins_t = torch.from_numpy(bins)
            for b, name in enumerate(SIZE_BINS):
                self.objects[name] += objects[name]
                inside = bins_t == b
                self.pixels[name] += int(inside.sum())
                target = torch.where(inside, labels[i].cpu(), torch.full_like(labels[i].cpu(), IGNORE))
                self.lr[name].update(lr_pred[i].cpu(), target)
                self.refined[name].update(refined_pred[i].cpu(), target)

    def miou(self, which: str, name: str) -> float:
        return bin_miou((self.lr if which == "lr" else self.refined)[name])
