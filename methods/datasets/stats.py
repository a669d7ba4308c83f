"""Dataset statistics: per-class pixel shares (SparseRefine supp. Table 2) and what a down/up-sampling
round trip of the label map destroys, per class and per object-size bin (supp. Fig. 3 bins objects by
the share of the frame they occupy)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

# Object-size bins as a share of the frame: small < 0.1 % <= medium < 1 % <= large.
SIZE_BINS = (("small", 0.0, 0.001), ("medium", 0.001, 0.01), ("large", 0.01, 1.01))


def downsample_roundtrip(label: np.ndarray, factor: int) -> np.ndarray:
    """Nearest downsampling by ``factor`` (keep every factor-th pixel, as torch's nearest does) and
    nearest upsampling back to the original size."""
    small = label[::factor, ::factor]
    up = np.repeat(np.repeat(small, factor, axis=0), factor, axis=1)
    return up[: label.shape[0], : label.shape[1]]


@dataclass
class BinCounts:
    instances: int = 0
    lost_instances: int = 0
    pixels: int = 0
    changed_pixels: int = 0


@dataclass
class DownsampleLoss:
    """Accumulates, over label maps, class pixel counts and the pixels/objects a round trip loses.

    Objects are the connected components (8-connectivity) of each thing class; an object is lost
    when none of its pixels keeps its class after the round trip.
    """

    num_classes: int
    thing_classes: tuple[int, ...]
    factor: int = 2
    ignore_index: int = 255
    class_pixels: np.ndarray = field(init=False)
    class_changed: np.ndarray = field(init=False)
    ignored_pixels: int = 0
    total_pixels: int = 0
    bins: dict[str, BinCounts] = field(init=False)
    images: int = 0

    def __post_init__(self) -> None:
        self.class_pixels = np.zeros(self.num_classes, dtype=np.int64)
        self.class_changed = np.zeros(self.num_classes, dtype=np.int64)
        self.bins = {name: BinCounts() for name, _, _ in SIZE_BINS}

    def update(self, label: np.ndarray) -> None:
        label = np.asarray(label)
        roundtrip = downsample_roundtrip(label, self.factor)
        valid = label != self.ignore_index
        changed = valid & (roundtrip != label)
        n = self.num_classes
        self.class_pixels += np.bincount(label[valid].ravel().astype(np.int64), minlength=n)[:n]
        self.class_changed += np.bincount(label[changed].ravel().astype(np.int64), minlength=n)[:n]
        self.ignored_pixels += int((~valid).sum())
        self.total_pixels += label.size
        self.images += 1
        frame = float(label.size)
        eight = np.ones((3, 3), dtype=bool)
        for cls in self.thing_classes:
            mask = label == cls
            if not mask.any():
                continue
            components, count = ndimage.label(mask, structure=eight)
            area = np.bincount(components.ravel(), minlength=count + 1)[1:]
            kept = np.bincount(components[mask & (roundtrip == cls)], minlength=count + 1)[1:]
            share = area / frame
            for name, low, high in SIZE_BINS:
                in_bin = (share >= low) & (share < high)
                counts = self.bins[name]
                counts.instances += int(in_bin.sum())
                counts.lost_instances += int((in_bin & (kept == 0)).sum())
                counts.pixels += int(area[in_bin].sum())
                counts.changed_pixels += int((area - kept)[in_bin].sum())

    # --- summaries (percent) -----------------------------------------------------------------
    def class_share(self) -> np.ndarray:
        """Share of every class in % of all pixels (void included in the denominator)."""
        return 100.0 * self.class_pixels / max(self.total_pixels, 1)

    def class_changed_share(self) -> np.ndarray:
        """% of each class's pixels whose label changes in the round trip (nan if absent)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.class_pixels > 0, 100.0 * self.class_changed / self.class_pixels, np.nan)

    def pixel_error(self) -> float:
        """% of non-void pixels whose label changes."""
        return 100.0 * float(self.class_changed.sum()) / max(int(self.class_pixels.sum()), 1)

    def thing_pixel_loss(self) -> float:
        things = list(self.thing_classes)
        return 100.0 * float(self.class_changed[things].sum()) / max(int(self.class_pixels[things].sum()), 1)

    def bin_pixel_loss(self, name: str) -> float:
        counts = self.bins[name]
        return 100.0 * counts.changed_pixels / counts.pixels if counts.pixels else float("nan")

    def bin_instance_loss(self, name: str) -> float:
        counts = self.bins[name]
        return 100.0 * counts.lost_instances / counts.instances if counts.instances else float("nan")
