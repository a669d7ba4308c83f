"""Selector-like sparse masks for latency trials, at an exact target density.

An entropy selector picks pixels near label boundaries and on small objects (paper §3.2, Fig. 3).
We imitate that from a label map: every pixel is scored by its distance to the nearest label
boundary, pixels of small connected components score 0, ties are broken by seeded noise, and the
``density * H * W`` lowest-scoring pixels of each image are selected. The site pattern (clustered
bands along edges) is what matters for sparse-conv cost, so latencies on these masks transfer to
a real selector's masks at the same density far better than uniformly random masks would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

SMALL_OBJECT_FRACTION = 5e-4  # components below this fraction of the image count as small objects


def boundary_map(label: np.ndarray) -> np.ndarray:
    """Pixels whose 4-neighbourhood contains another label (255 = void counts as a label)."""
    edge = np.zeros(label.shape, dtype=bool)
    vertical = label[1:, :] != label[:-1, :]
    horizontal = label[:, 1:] != label[:, :-1]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge


def small_object_map(label: np.ndarray, max_area: int) -> np.ndarray:
    """Pixels of connected components (per label value) with at most ``max_area`` pixels."""
    small = np.zeros(label.shape, dtype=bool)
    for value in np.unique(label):
        components, count = ndimage.label(label == value)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = max_area + 1  # background of this value's mask
        small |= (sizes <= max_area)[components]
    return small


def selector_scores(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lower = selected first: distance to the nearest boundary, 0 on small objects, + noise in [0, 1)."""
    edge = boundary_map(label)
    distance = ndimage.distance_transform_edt(~edge) if edge.any() else np.full(label.shape, 1e6)
    max_area = max(1, int(SMALL_OBJECT_FRACTION * label.size))
    distance = np.where(small_object_map(label, max_area), 0.0, distance)
    return distance + rng.random(label.shape)


def threshold_to_density(scores: np.ndarray, density: float) -> np.ndarray:
    """Boolean mask of exactly round(density * size) lowest scores (at least one pixel)."""
    count = min(scores.size, max(1, int(round(density * scores.size))))
    flat = scores.ravel()
    chosen = np.argpartition(flat, count - 1)[:count]
    mask = np.zeros(flat.shape, dtype=bool)
    mask[chosen] = True
    return mask.reshape(scores.shape)


def selector_like_masks(labels: Tensor, density: float, seed: int) -> Tensor:
    """Boolean [B, H, W] masks at ``density`` (a fraction in (0, 1]) from int labels [B, H, W]."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    rng = np.random.default_rng(seed)
    masks = [threshold_to_density(selector_scores(lab.cpu().numpy(), rng), density) for lab in labels]
    return torch.from_numpy(np.stack(masks))


def synthetic_labels(batch: int, height: int, width: int, seed: int) -> Tensor:
    """Fallback label maps: seeded random regions (nearest-upsampled coarse grid) plus small boxes."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 8, (batch, 1, max(1, height // 32), max(1, width // 32)), generator=generator)
    labels = torch.nn.functional.interpolate(coarse.float(), size=(height, width), mode="nearest")[:, 0].long()
    boxes = 20
    ys = torch.randint(0, height, (batch, boxes), generator=generator)
    xs = torch.randint(0, width, (batch, boxes), generator=generator)
    for b in range(batch):
        for y, x in zip(ys[b].tolist(), xs[b].tolist(), strict=True):
            labels[b, y : y + max(2, height // 64), x : x + max(2, width // 128)] = 8
    return labels


@dataclass(frozen=True)
class MaskBatch:
    mask: Tensor  # bool [B, H, W]
    images: Tensor  # uint8 [B, 3, H, W]
    source: str  # where the labels came from


def dataset_masks(dataset_spec: dict, batch: int, height: int, width: int, density: float, seed: int) -> MaskBatch:
    """Masks from the labels of the first ``batch`` validation images of ``dataset_spec`` resized to
    (height, width); falls back to synthetic labels if methods.datasets cannot be imported."""
    try:
        from methods.datasets import build_dataset
    except ImportError as exc:
        labels = synthetic_labels(batch, height, width, seed)
        generator = torch.Generator().manual_seed(seed)
        images = torch.randint(0, 256, (batch, 3, height, width), generator=generator, dtype=torch.uint8)
        return MaskBatch(selector_like_masks(labels, density, seed), images, f"synthetic (no methods.datasets: {exc})")
    spec = {**dataset_spec, "height": height, "width": width}
    spec["num_val"] = max(int(spec.get("num_val", 0) or 0), batch)
    dataset = build_dataset(spec, "val")
    samples = [dataset[i] for i in range(batch)]
    labels = torch.stack([s.label for s in samples])
    images = torch.stack([s.image for s in samples])
    name = spec.get("name", "embedded")
    return MaskBatch(
        selector_like_masks(labels, density, seed), images, f"{name} val labels (boundaries + small objects)"
    )
