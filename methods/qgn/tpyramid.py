"""Quadtrees and T-pyramids of label maps (QGN §3.1, eq. 2-3), vectorised with tensor reshapes.

Conventions
-----------
- The paper numbers the classes 1..k and gives the composite class the value 0. Here the label
  values are left untouched (classes 0..k-1, ignore 255) and the composite value is an argument:
  ``-1`` by default for statistics, ``num_classes`` when the pyramid feeds a (k+1)-way loss.
- Level 0 is the pixel grid; level ``l`` has cells of ``2**l x 2**l`` pixels. A quadtree with
  ``levels + 1`` levels (the paper's 6-level tree: ``levels = 5``, Q5..Q0) has roots of
  ``2**levels`` pixels a side.
- Ignore-labelled pixels (255) are an ordinary value for the merge operator: a cell entirely of
  ignore pixels is a leaf with value 255, a cell mixing ignore and a class is composite. So the
  quadtree stays a lossless code of the label map, ignore regions included. Statistics count them
  like any other pixel unless ``exclude_ignore`` is set (then the percentages are over labelled
  pixels only; the leaf count still includes every leaf needed to code the map).
- Sizes not divisible by ``2**levels`` are padded at the bottom and right to the next multiple, as
  the paper's supplementary (A.2) pads images to a multiple of 32. Label padding uses the ignore
  value, so padding behaves like an ignore region; statistics count only real (unpadded) pixels and
  only leaves that cover at least one real pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255
DEFAULT_COMPOSITE = -1


def padded_size(size: int, levels: int) -> int:
    """``size`` rounded up to a multiple of ``2**levels``."""
    cell = 1 << levels
    return (size + cell - 1) // cell * cell


def pad_to_multiple(label: torch.Tensor, levels: int, fill: int = IGNORE_INDEX) -> torch.Tensor:
    """Pad the last two dims of ``label`` at bottom/right with ``fill`` to multiples of ``2**levels``."""
    h, w = label.shape[-2:]
    ph, pw = padded_size(h, levels) - h, padded_size(w, levels) - w
    if ph == 0 and pw == 0:
        return label
    return F.pad(label, (0, pw, 0, ph), value=fill)


def merge_2x2(level: torch.Tensor, composite: int = DEFAULT_COMPOSITE) -> torch.Tensor:
    """The merge operator M (eq. 2) on every 2x2 patch of the last two dims.

    A patch whose four values are equal keeps that value (so four composite children give a
    composite parent); any other patch becomes ``composite``.
    """
    h, w = level.shape[-2:]
    if h % 2 or w % 2:
        raise ValueError(f"merge_2x2 needs even sizes, got {h}x{w}")
    patches = level.reshape(*level.shape[:-2], h // 2, 2, w // 2, 2)
    top_left = patches[..., :, 0:1, :, 0:1]
    uniform = (patches == top_left).all(dim=-1).all(dim=-2)
    return torch.where(uniform, top_left[..., :, 0, :, 0], torch.full_like(uniform, composite, dtype=level.dtype))


def build_t_pyramid(label: torch.Tensor, levels: int, composite: int = DEFAULT_COMPOSITE) -> list[torch.Tensor]:
    """``[T_0, T_1, ..., T_levels]`` with ``T_0 = label`` and ``T_{l+1} = M(T_l)`` (eq. 3).

    ``label``: integer tensor ``[..., H, W]`` with H and W multiples of ``2**levels`` (see
    :func:`pad_to_multiple`). ``composite`` must not be a value of ``label``.
    """
    if levels < 0:
        raise ValueError("levels must be >= 0")
    h, w = label.shape[-2:]
    cell = 1 << levels
    if h % cell or w % cell:
        raise ValueError(f"label size {h}x{w} is not a multiple of 2**{levels}; pad it first")
    pyramid = [label]
    for _ in range(levels):
        pyramid.append(merge_2x2(pyramid[-1], composite))
    return pyramid


def upsample_nearest(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Repeat every cell of the last two dims ``factor x factor`` times (any dtype)."""
    if factor == 1:
        return x
    h, w = x.shape[-2:]
    lead = x.shape[:-2]
    grid = x[..., :, None, :, None].expand(*lead, h, factor, w, factor)
    return grid.reshape(*lead, h * factor, w * factor)


def leaf_level_map(pyramid: list[torch.Tensor], composite: int = DEFAULT_COMPOSITE) -> torch.Tensor:
    """Per pixel, the level of the quadtree leaf that holds it (0..levels), shape of ``T_0``.

    A uniform cell has uniform sub-cells, so non-composite-ness is monotone down the pyramid and the
    leaf level is the number of levels ``l >= 1`` whose cell over the pixel is not composite.
    """
    leaf = torch.zeros(pyramid[0].shape, dtype=torch.int64)
    for level in range(1, len(pyramid)):
        leaf += upsample_nearest((pyramid[level] != composite).to(torch.int64), 1 << level)
    return leaf


def leaf_masks(pyramid: list[torch.Tensor], composite: int = DEFAULT_COMPOSITE) -> list[torch.Tensor]:
    """Per level, a bool map of the cells that are quadtree leaves: not composite, and either at the
    root level or with a composite parent."""
    top = len(pyramid) - 1
    masks = []
    for level, cells in enumerate(pyramid):
        is_leaf = cells != composite
        if level < top:
            is_leaf &= upsample_nearest(pyramid[level + 1] == composite, 2)
        masks.append(is_leaf)
    return masks


def real_cell_mask(height: int, width: int, padded_h: int, padded_w: int, level: int) -> torch.Tensor:
    """Bool map at ``level`` of the cells covering at least one real (unpadded) pixel."""
    cell = 1 << level
    rows = torch.arange(padded_h // cell) * cell < height
    cols = torch.arange(padded_w // cell) * cell < width
    return rows[:, None] & cols[None, :]


@dataclass
class QuadtreeStats:
    """Counts for one or more label maps: pixels per leaf level, leaves per level, pixel total.

    ``pixels_per_level[l]`` is the number of (counted) pixels whose leaf is at level ``l``;
    ``leaves_per_level[l]`` the number of leaves at level ``l``; ``num_pixels`` the number of real
    pixels (the dense map's size); ``ratio_sum``/``num_maps`` accumulate per-map ratios.
    """

    levels: int
    pixels_per_level: list[int]
    leaves_per_level: list[int]
    counted_pixels: int
    num_pixels: int
    ratio_sum: float = 0.0
    num_maps: int = 0

    @classmethod
    def empty(cls, levels: int) -> QuadtreeStats:
        return cls(levels, [0] * (levels + 1), [0] * (levels + 1), 0, 0)

    def add(self, other: QuadtreeStats) -> None:
        if other.levels != self.levels:
            raise ValueError("cannot add stats of quadtrees with different depths")
        self.pixels_per_level = [a + b for a, b in zip(self.pixels_per_level, other.pixels_per_level, strict=True)]
        self.leaves_per_level = [a + b for a, b in zip(self.leaves_per_level, other.leaves_per_level, strict=True)]
        self.counted_pixels += other.counted_pixels
        self.num_pixels += other.num_pixels
        self.ratio_sum += other.ratio_sum
        self.num_maps += other.num_maps

    def level_percentages(self) -> list[float]:
        """% of counted pixels per leaf level, index = level (Q0 first)."""
        total = max(self.counted_pixels, 1)
        return [100.0 * n / total for n in self.pixels_per_level]

    @property
    def num_leaves(self) -> int:
        return sum(self.leaves_per_level)

    def pooled_ratio(self) -> float:
        """Leaves of all maps / pixels of all maps, in % (memory of the quadtree vs the dense map)."""
        return 100.0 * self.num_leaves / max(self.num_pixels, 1)

    def mean_ratio(self) -> float:
        """Mean over maps of the per-map ratio leaves / pixels, in % (QGN Table 5's 'average ratio')."""
        return self.ratio_sum / max(self.num_maps, 1)


def quadtree_stats(
    label: torch.Tensor,
    levels: int,
    *,
    ignore_index: int = IGNORE_INDEX,
    exclude_ignore: bool = False,
) -> QuadtreeStats:
    """Quadtree statistics of one label map ``[H, W]`` (any size; padded as documented above).

    The compression ratio counts one stored entry per leaf, as in QGN Table 5, where
    ratio = sum_l pct_l / 4**l (e.g. Cityscapes train: 3.07 %).
    """
    if label.dim() != 2:
        raise ValueError(f"expected one label map [H, W], got shape {tuple(label.shape)}")
    height, width = label.shape
    # int16 holds every label value, 255 and the composite -1, with 4x less traffic than int64
    padded = pad_to_multiple(label.to(torch.int16), levels, fill=ignore_index)
    ph, pw = padded.shape
    pyramid = build_t_pyramid(padded, levels, DEFAULT_COMPOSITE)
    counted = padded != ignore_index if exclude_ignore else torch.ones_like(padded, dtype=torch.bool)
    counted[height:, :] = False
    counted[:, width:] = False
    # counted pixels per cell, level by level (2x2 sums), instead of full-resolution leaf maps
    cell_counts = counted.to(torch.int32)
    pixels, leaves = [], []
    for level, mask in enumerate(leaf_masks(pyramid, DEFAULT_COMPOSITE)):
        if level > 0:
            h, w = cell_counts.shape
            cell_counts = cell_counts.reshape(h // 2, 2, w // 2, 2).sum(dim=(1, 3))
        pixels.append(int(cell_counts[mask].sum()))
        leaves.append(int((mask & real_cell_mask(height, width, ph, pw, level)).sum()))
    num_pixels = height * width
    return QuadtreeStats(
        levels=levels,
        pixels_per_level=pixels,
        leaves_per_level=leaves,
        counted_pixels=int(counted.sum()),
        num_pixels=num_pixels,
        ratio_sum=100.0 * sum(leaves) / num_pixels,
        num_maps=1,
    )
