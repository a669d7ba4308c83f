"""PatchRefine (SparseRefine Table 4): refine, densely, every square patch of a fixed grid that holds a
selected pixel, with the same extractor, instead of the selected pixels alone."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


def patch_mask(mask: torch.Tensor, patch: int) -> torch.Tensor:
    """Every pixel of each ``patch`` x ``patch`` cell (a grid from the top-left corner; partial cells
    at the right and bottom edges) that holds a selected pixel of ``mask`` [B, H, W] (bool)."""
    if patch < 1:
        raise ValueError(f"patch must be >= 1, got {patch}")
    b, h, w = mask.shape
    ph, pw = math.ceil(h / patch), math.ceil(w / patch)
    padded = F.pad(mask.float()[:, None], (0, pw * patch - w, 0, ph * patch - h))
    hit = F.max_pool2d(padded, patch) > 0
    return hit.repeat_interleave(patch, -2).repeat_interleave(patch, -1)[:, 0, :h, :w]


class PatchSelector:
    """A resolved selector whose masks are widened to the patches they touch (trained and evaluated
    alike: the refiner of a PatchRefine row sees patch pixels in training too)."""

    def __init__(self, inner: Any, patch: int):
        self.inner = inner
        self.patch = patch

    def mask(self, split: Any, index: int, salt: int = 0) -> torch.Tensor:
        return patch_mask(self.inner.mask(split, index, salt), self.patch)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "patch": self.patch}

    def __getattr__(self, name: str) -> Any:  # spec, threshold, alpha, target_density...
        return getattr(self.inner, name)
