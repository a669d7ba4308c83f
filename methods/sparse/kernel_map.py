"""Coordinate hashing and kernel maps for 2-D sparse convolution, in plain device-agnostic torch.

Conventions (shared by every backend):

- A site of a tensor at stride ``s`` has grid coordinates ``(b, y, x)``; it covers the pixels
  ``[y*s, (y+1)*s) x [x*s, (x+1)*s)``. The grid at stride ``s`` has ``ceil(H/s) x ceil(W/s)`` cells.
- Kernel offsets: kernel K has offsets ``d in range(-p, K-p)`` per axis with ``p = (K-1)//2``
  (K=3: -1..1, K=2: 0..1, K=1: 0), flattened row-major ``k = (dy+p)*K + (dx+p)``.
- Submanifold conv at stride s: ``out[i] = sum_k in[site(i) + d_k] @ W[k]`` (output sites = input sites).
- Down conv from stride s1 to s2 (> s1): output sites ``unique(floor(pixel / s2))`` with
  ``pixel = g * s1`` the top-left pixel of each fine site. Output site ``o`` is *anchored* at the fine
  grid cell ``a(o) = floor(o * s2 / s1)`` and ``out[o] = sum_k in[a(o) + d_k] @ W[k]``. For s2 = 2*s1 this
  is exactly ``conv2d(stride=2, padding=p)`` read at the output sites; for a non-integer ratio such as
  8 -> 12 it is a stride-1 conv on the fine grid sampled at the anchors (every fine site still lies in
  its parent's 3x3 window as long as s2/s1 <= 2).
- Transposed (up) conv from s2 back onto the cached fine set at s1 is the exact transpose:
  ``out[i] = sum_k in[o] @ W[k]`` over coarse ``o`` with ``a(o) + d_k = i``.

Every map is returned as an output-stationary neighbour table ``[N_out, K*K]`` of input row indices,
-1 where the neighbour is absent.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

KEY_MARGIN = 1  # offsets of kernels up to 3 reach at most one cell outside the grid
DIRECT_TABLE_MAX_CELLS = 1 << 26  # direct-address key tables up to 256 MB of int32


def grid_shape(spatial_shape: tuple[int, int], stride: int) -> tuple[int, int]:
    """Grid size at ``stride`` of an image of ``spatial_shape`` (H, W) pixels."""
    height, width = spatial_shape
    return (-(-height // stride), -(-width // stride))


def kernel_offsets(kernel: int) -> list[tuple[int, int]]:
    """Offsets (dy, dx) of a square kernel, row-major."""
    if kernel not in (1, 2, 3):
        raise ValueError(f"kernel size must be 1, 2 or 3, got {kernel}")
    pad = (kernel - 1) // 2
    span = range(-pad, kernel - pad)
    return list(itertools.product(span, span))


def kernel_padding(kernel: int) -> int:
    return (kernel - 1) // 2


def linear_keys(coords: Tensor, grid: tuple[int, int]) -> Tensor:
    """Unique int64 key per (b, y, x) on a grid padded by KEY_MARGIN so neighbour queries never alias."""
    rows = grid[0] + 2 * KEY_MARGIN
    cols = grid[1] + 2 * KEY_MARGIN
    coords = coords.long()
    return (coords[:, 0] * rows + coords[:, 1] + KEY_MARGIN) * cols + coords[:, 2] + KEY_MARGIN


def key_space(grid: tuple[int, int], batch_size: int) -> int:
    """Number of distinct ``linear_keys`` of a batch on ``grid`` (margin included)."""
    return batch_size * (grid[0] + 2 * KEY_MARGIN) * (grid[1] + 2 * KEY_MARGIN)


@dataclass(frozen=True)
class KeyTable:
    """Key -> row lookup. With a known, small enough key space it is a direct-address table (one
    int32 per grid cell: a lookup is a single index, about 20x faster than binary search on this
    CPU); otherwise sorted keys searched with ``torch.searchsorted``."""

    sorted_keys: Tensor
    rows: Tensor
    direct: Tensor | None = None

    @classmethod
    def build(cls, keys: Tensor, space: int | None = None) -> KeyTable:
        if space is not None and space <= DIRECT_TABLE_MAX_CELLS and keys.numel() < 2**31:
            direct = torch.full((space,), -1, dtype=torch.int32, device=keys.device)
            direct[keys] = torch.arange(keys.numel(), dtype=torch.int32, device=keys.device)
            return cls(keys, torch.empty(0, dtype=torch.long, device=keys.device), direct)
        sorted_keys, rows = torch.sort(keys)
        return cls(sorted_keys, rows)

    def lookup(self, queries: Tensor) -> Tensor:
        """Row of each query key, -1 where absent. Works for any query shape."""
        if self.direct is not None:
            inside = (queries >= 0) & (queries < self.direct.numel())
            found = self.direct[torch.where(inside, queries, torch.zeros_like(queries))].long()
            return torch.where(inside, found, torch.full_like(found, -1))
        if self.sorted_keys.numel() == 0:
            return torch.full_like(queries, -1)
        pos = torch.searchsorted(self.sorted_keys, queries).clamp_(max=self.sorted_keys.numel() - 1)
        found = self.sorted_keys[pos] == queries
        return torch.where(found, self.rows[pos], torch.full_like(pos, -1))


def _offset_tensor(kernel: int, device: torch.device) -> Tensor:
    return torch.tensor(kernel_offsets(kernel), dtype=torch.long, device=device)


def _query(table: KeyTable, base: Tensor, offsets: Tensor, grid: tuple[int, int]) -> Tensor:
    """Neighbour table: for each row of ``base`` (b, y, x) and offset, the table row at base + offset."""
    n, kk = base.shape[0], offsets.shape[0]
    shifted = base[:, None, :].expand(n, kk, 3).clone()
    shifted[:, :, 1:] += offsets[None]
    keys = linear_keys(shifted.reshape(-1, 3), grid).reshape(n, kk)
    return table.lookup(keys)


def anchors(coarse: Tensor, coarse_stride: int, fine_stride: int) -> Tensor:
    """Fine-grid cell at which each coarse site's kernel is centred: floor(o * s2 / s1)."""
    out = coarse.long().clone()
    out[:, 1:] = out[:, 1:] * coarse_stride // fine_stride
    return out


def downsample_coords(coords: Tensor, stride: int, coarse_stride: int, grid_coarse: tuple[int, int]) -> Tensor:
    """Coarse site set: unique floor(g * s1 / s2), sorted by (b, y, x)."""
    if coarse_stride <= stride:
        raise ValueError(f"coarse stride {coarse_stride} must exceed {stride}")
    coarse = coords.long().clone()
    coarse[:, 1:] = coarse[:, 1:] * stride // coarse_stride
    keys = torch.unique(linear_keys(coarse, grid_coarse))
    rows = grid_coarse[0] + 2 * KEY_MARGIN
    cols = grid_coarse[1] + 2 * KEY_MARGIN
    x = keys % cols - KEY_MARGIN
    y = (keys // cols) % rows - KEY_MARGIN
    b = keys // (cols * rows)
    return torch.stack([b, y, x], dim=1)


def submanifold_map(coords: Tensor, table: KeyTable, grid: tuple[int, int], kernel: int) -> Tensor:
    """[N, K*K] rows of the neighbours of each site within the same set."""
    return _query(table, coords.long(), _offset_tensor(kernel, coords.device), grid)


def down_map(
    fine_table: KeyTable,
    fine_grid: tuple[int, int],
    fine_stride: int,
    coarse: Tensor,
    coarse_stride: int,
    kernel: int,
) -> Tensor:
    """[N_coarse, K*K] rows of fine sites feeding each coarse site."""
    base = anchors(coarse, coarse_stride, fine_stride)
    return _query(fine_table, base, _offset_tensor(kernel, coarse.device), fine_grid)


def up_map(
    coarse: Tensor,
    coarse_stride: int,
    fine: Tensor,
    fine_stride: int,
    fine_grid: tuple[int, int],
    kernel: int,
    batch_size: int | None = None,
) -> Tensor:
    """[N_fine, K*K] rows of coarse sites feeding each fine site (transpose of ``down_map``).
    ``batch_size`` (images in the batch) enables a direct-address table."""
    anchor_keys = linear_keys(anchors(coarse, coarse_stride, fine_stride), fine_grid)
    space = key_space(fine_grid, batch_size) if batch_size is not None else None
    anchor_table = KeyTable.build(anchor_keys, space)
    return _query(anchor_table, fine.long(), -_offset_tensor(kernel, fine.device), fine_grid)


def pairs_from_table(neighbours: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Per kernel offset, (input rows, output rows) of the present neighbours (gather-scatter form)."""
    out = []
    for k in range(neighbours.shape[1]):
        column = neighbours[:, k]
        out_rows = torch.nonzero(column >= 0).squeeze(1)
        out.append((column.index_select(0, out_rows), out_rows))
    return out
