"""Dense reference backend: ordinary conv2d on the zero-filled grid, read back at the output sites.

This is the "dense" row of SparseRefine Table 7 and the ground truth the sparse backends are tested
against. Definitions (matching ``kernel_map``):

- subm: conv2d(padding=p) then read at the input sites (= conv then mask);
- down, integer ratio r: conv2d(stride=r, padding=p) read at the coarse sites (the input is padded
  at the bottom/right so the last coarse row/column exists even for kernel 2);
  non-integer ratio: stride-1 conv2d sampled at the anchor rows/cols floor(o * s2 / s1);
- up, integer ratio r: conv_transpose2d(stride=r, padding=p, output_padding chosen to reach the fine
  grid), read at the fine sites; non-integer ratio: coarse values placed at their anchors on the fine
  grid, then stride-1 conv_transpose2d.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from methods.sparse.backends.base import ConvSpec
from methods.sparse.kernel_map import kernel_padding
from methods.sparse.tensor import SparseTensor, to_dense


def conv2d_weight(weight: Tensor) -> Tensor:
    """Canonical [K*K, C_in, C_out] -> conv2d [C_out, C_in, K, K]."""
    kk, c_in, c_out = weight.shape
    k = int(round(kk**0.5))
    return weight.reshape(k, k, c_in, c_out).permute(3, 2, 0, 1)


def conv_transpose2d_weight(weight: Tensor) -> Tensor:
    """Canonical [K*K, C_in, C_out] -> conv_transpose2d [C_in, C_out, K, K] (no flip: see kernel_map)."""
    kk, c_in, c_out = weight.shape
    k = int(round(kk**0.5))
    return weight.reshape(k, k, c_in, c_out).permute(2, 3, 0, 1)


def _read_sites(dense: Tensor, x_out: SparseTensor) -> Tensor:
    """Rows of dense [B, C, Hg, Wg] at the sites of ``x_out`` (its feats are ignored)."""
    channels = dense.shape[1]
    flat = dense.permute(0, 2, 3, 1).reshape(-1, channels)
    return torch.index_select(flat, 0, x_out.flat_index())


def _anchor_positions(count: int, coarse_stride: int, fine_stride: int, device: torch.device) -> Tensor:
    return torch.arange(count, device=device) * coarse_stride // fine_stride


def _down(grid_in: Tensor, weight: Tensor, spec: ConvSpec, coarse_grid: tuple[int, int]) -> Tensor:
    pad = kernel_padding(spec.kernel)
    w = conv2d_weight(weight)
    ratio = spec.integer_ratio
    if ratio is not None:
        need_h = (coarse_grid[0] - 1) * ratio + spec.kernel - pad
        need_w = (coarse_grid[1] - 1) * ratio + spec.kernel - pad
        extra_h = max(0, need_h - grid_in.shape[2])
        extra_w = max(0, need_w - grid_in.shape[3])
        grid_in = F.pad(grid_in, (0, extra_w, 0, extra_h))
        out = F.conv2d(grid_in, w, stride=ratio, padding=pad)
        return out[:, :, : coarse_grid[0], : coarse_grid[1]]
    tail = spec.kernel - 1 - 2 * pad  # kernel 2 has no left padding: keep the last anchors in range
    out = F.conv2d(F.pad(grid_in, (0, tail, 0, tail)), w, padding=pad)
    rows = _anchor_positions(coarse_grid[0], spec.stride_out, spec.stride_in, out.device)
    cols = _anchor_positions(coarse_grid[1], spec.stride_out, spec.stride_in, out.device)
    return out.index_select(2, rows).index_select(3, cols)


def _up(grid_in: Tensor, weight: Tensor, spec: ConvSpec, fine_grid: tuple[int, int]) -> Tensor:
    pad = kernel_padding(spec.kernel)
    w = conv_transpose2d_weight(weight)
    ratio = spec.integer_ratio
    if ratio is not None:
        base_h = (grid_in.shape[2] - 1) * ratio - 2 * pad + spec.kernel
        base_w = (grid_in.shape[3] - 1) * ratio - 2 * pad + spec.kernel
        out_pad = (min(max(0, fine_grid[0] - base_h), ratio - 1), min(max(0, fine_grid[1] - base_w), ratio - 1))
        out = F.conv_transpose2d(grid_in, w, stride=ratio, padding=pad, output_padding=out_pad)
    else:
        batch, channels = grid_in.shape[:2]
        rows = _anchor_positions(grid_in.shape[2], spec.stride_in, spec.stride_out, grid_in.device)
        cols = _anchor_positions(grid_in.shape[3], spec.stride_in, spec.stride_out, grid_in.device)
        placed = grid_in.new_zeros(batch, channels, fine_grid[0], grid_in.shape[3])
        placed = placed.index_copy(2, rows, grid_in)
        spread = grid_in.new_zeros(batch, channels, fine_grid[0], fine_grid[1])
        spread = spread.index_copy(3, cols, placed)
        out = F.conv_transpose2d(spread, w, padding=pad)
    out = out[:, :, : fine_grid[0], : fine_grid[1]]
    if out.shape[2] < fine_grid[0] or out.shape[3] < fine_grid[1]:
        out = F.pad(out, (0, fine_grid[1] - out.shape[3], 0, fine_grid[0] - out.shape[2]))
    return out


def _at_autocast_dtype(x: SparseTensor) -> SparseTensor:
    """``x`` with its features in autocast's dtype when autocast is on: the conv would cast the whole
    zero-filled grid to it anyway, so casting the N sites first saves a grid-sized copy."""
    device = x.feats.device.type
    if not torch.is_autocast_enabled(device):
        return x
    dtype = torch.get_autocast_dtype(device)
    return x if x.feats.dtype == dtype else x.with_feats(x.feats.to(dtype))


class DenseBackend:
    """conv2d / conv_transpose2d on the zero-filled dense grid (cuDNN/oneDNN/cuBLAS dense compute)."""

    name = "dense"

    def check(self) -> None:
        return None

    def conv(self, x: SparseTensor, weight: Tensor, spec: ConvSpec) -> Tensor:
        assert x.manager is not None
        grid_in = to_dense(_at_autocast_dtype(x))
        if spec.kind == "subm":
            out = F.conv2d(grid_in, conv2d_weight(weight), padding=kernel_padding(spec.kernel))
            return _read_sites(out, x)
        target_coords = (
            x.manager.down_coords(spec.stride_in, spec.stride_out)
            if spec.kind == "down"
            else x.manager.coords(spec.stride_out)
        )
        target = SparseTensor(
            target_coords,
            target_coords.new_zeros(target_coords.shape[0], 0, dtype=weight.dtype),
            spec.stride_out,
            x.spatial_shape,
            x.batch_size,
            x.manager,
        )
        if spec.kind == "down":
            out = _down(grid_in, weight, spec, target.grid)
        else:
            out = _up(grid_in, weight, spec, target.grid)
        return _read_sites(out, target)
