"""Our own sparse convolution in plain torch ops (CPU and CUDA alike), differentiable by autograd.

Three algorithms over the same kernel maps (built once per forward by the coordinate manager):

- ``gemm`` (output-stationary implicit GEMM): gather, for every output site, its K*K neighbour rows
  (a zero row where absent) into one [N_out, K*K*C_in] matrix and multiply once by the stacked
  weight. One gather + one large GEMM; wasted FLOPs on absent neighbours.
- ``scatter`` (gather-GEMM-scatter per offset): for each offset, gather the present input rows,
  multiply by W[k], ``index_add_`` into the output. No wasted FLOPs but K small GEMMs + scatters.
- ``hybrid`` (default): per offset, whichever of the two is cheaper by a simple cost model — offsets
  present at nearly every output (the submanifold centre, deep nearly-dense levels) go into one
  implicit GEMM, the rest (e.g. 3 of 4 taps of a stride-2 transposed conv are absent) are scattered.
  Cost per output row and output channel, in multiply-adds: dense tap ``C_in + ADD_COST``, scattered
  tap ``fill * (C_in + SCATTER_COST)`` (``index_add_`` costs ~18 MACs per element on this CPU, an
  elementwise add ~3; measured with 1 thread).
"""

from __future__ import annotations

import torch
from torch import Tensor

from methods.sparse.backends.base import ConvSpec
from methods.sparse.kernel_map import pairs_from_table
from methods.sparse.tensor import SparseTensor

ALGORITHMS = ("hybrid", "gemm", "scatter")
ADD_COST = 3.0
SCATTER_COST = 18.0
GATHER_BLOCK_BYTES = 4 << 20  # bound of the gathered [rows, K*K*C] block of implicit_gemm


def _output_rows(x: SparseTensor, spec: ConvSpec) -> int:
    assert x.manager is not None
    if spec.kind == "subm":
        return x.num_sites
    if spec.kind == "down":
        return int(x.manager.down_coords(spec.stride_in, spec.stride_out).shape[0])
    return int(x.manager.coords(spec.stride_out).shape[0])


def _gathered_blocks(padded: Tensor, index: Tensor):
    """(first row, padded[index[rows]].flatten(1)) for consecutive blocks of rows of ``index``, each
    gathered block at most GATHER_BLOCK_BYTES (see ``implicit_gemm``)."""
    width = index.shape[1] * padded.shape[1]
    rows_per_block = max(1, GATHER_BLOCK_BYTES // (width * padded.element_size()))
    for start in range(0, index.shape[0], rows_per_block):
        chunk = index[start : start + rows_per_block]
        yield start, torch.index_select(padded, 0, chunk.reshape(-1)).view(-1, width)


def _gemm_blocks(padded: Tensor, index: Tensor, stacked: Tensor, out: Tensor) -> Tensor:
    """out[rows] = padded[index[rows]].flatten(1) @ stacked, block by block."""
    for start, block in _gathered_blocks(padded, index):
        torch.mm(block, stacked, out=out[start : start + block.shape[0]])
    return out


def _padded_index(feats: Tensor, neighbours: Tensor) -> tuple[Tensor, Tensor]:
    """(feats with a trailing zero row, neighbours with absent (-1) pointing at that row)."""
    padded = torch.cat([feats, feats.new_zeros(1, feats.shape[1])], dim=0)
    index = torch.where(neighbours < 0, torch.full_like(neighbours, feats.shape[0]), neighbours)
    return padded, index


def transpose_table(neighbours: Tensor, num_in: int) -> Tensor:
    """The neighbour table of the transposed conv: T[j, k] = i where neighbours[i, k] = j (-1 if none).

    Unique because every conv kind maps (output site, offset) to a distinct input site per offset."""
    table = neighbours.new_full((num_in, neighbours.shape[1]), -1)
    rows = torch.arange(neighbours.shape[0], device=neighbours.device)
    for k in range(neighbours.shape[1]):
        column = neighbours[:, k]
        present = column >= 0
        table[column[present], k] = rows[present]
    return table


class _ImplicitGemm(torch.autograd.Function):
    """Implicit GEMM whose backward is two more implicit GEMMs instead of autograd's scatter-adds:
    grad_feats gathers grad_out through the transposed table with the transposed weights, and
    grad_weight accumulates gathered-block^T @ grad_out block by block."""

    @staticmethod
    def forward(ctx, feats: Tensor, weight: Tensor, neighbours: Tensor, transposed: Tensor) -> Tensor:
        kk, c_in, c_out = weight.shape
        padded, index = _padded_index(feats, neighbours)
        out = _gemm_blocks(padded, index, weight.reshape(kk * c_in, c_out), feats.new_empty(index.shape[0], c_out))
        ctx.save_for_backward(feats, weight, neighbours, transposed)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        feats, weight, neighbours, transposed = ctx.saved_tensors
        kk, c_in, c_out = weight.shape
        grad_out = grad_out.contiguous()
        grad_feats = grad_weight = None
        if ctx.needs_input_grad[0]:
            padded, index = _padded_index(grad_out, transposed)
            stacked = weight.transpose(1, 2).reshape(kk * c_out, c_in)
            grad_feats = _gemm_blocks(padded, index, stacked, grad_out.new_empty(feats.shape[0], c_in))
        if ctx.needs_input_grad[1]:
            padded, index = _padded_index(feats, neighbours)
            grad = weight.new_zeros(kk * c_in, c_out)
            for start, block in _gathered_blocks(padded, index):
                grad.addmm_(block.t(), grad_out[start : start + block.shape[0]])
            grad_weight = grad.view(kk, c_in, c_out)
        return grad_feats, grad_weight, None, None


def implicit_gemm(feats: Tensor, weight: Tensor, neighbours: Tensor, transposed: Tensor | None = None) -> Tensor:
    """out[i] = sum_k feats[neighbours[i, k]] @ weight[k] (absent = -1 contributes nothing).

    Blocked over output rows so the gathered [rows, K*K*C] block stays a few MB: one large gather
    buffer is a fresh allocation per call, and first-touching its pages cost more than the GEMM
    (measured 2.5x slower for a 62k-site 32-channel conv on this CPU). Under autograd, the backward
    runs through ``transposed`` (``transpose_table(neighbours, len(feats))``, built if not given)."""
    device_type = feats.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        feats, weight = feats.to(dtype), weight.to(dtype)
    else:
        weight = weight.to(feats.dtype)
    if torch.is_grad_enabled() and (feats.requires_grad or weight.requires_grad):
        if transposed is None:
            transposed = transpose_table(neighbours, feats.shape[0])
        with torch.autocast(device_type, enabled=False):
            return _ImplicitGemm.apply(feats, weight, neighbours, transposed)
    kk, c_in, c_out = weight.shape
    padded, index = _padded_index(feats, neighbours)
    return _gemm_blocks(padded, index, weight.reshape(kk * c_in, c_out), feats.new_empty(index.shape[0], c_out))


def gather_scatter(
    feats: Tensor,
    weight: Tensor,
    pairs: list[tuple[Tensor, Tensor]],
    num_out: int,
    identity: int | None,
    out: Tensor | None = None,
) -> Tensor:
    """Per offset: out[out_rows] += feats[in_rows] @ weight[k]. ``identity``: an offset known to map
    every site onto itself (submanifold centre), done as one plain GEMM. Offsets with empty pairs are
    skipped. ``out``: a partial result to accumulate into (modified in place). Under autocast the
    products and the sum are in the autocast dtype, as in ``implicit_gemm``."""
    device_type = feats.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        feats, weight = feats.to(dtype), weight.to(dtype)
    if out is None:
        out = feats @ weight[identity] if identity is not None else feats.new_zeros(num_out, weight.shape[2])
    for k, (in_rows, out_rows) in enumerate(pairs):
        if k == identity or in_rows.numel() == 0:
            continue
        # in place: ``out`` is our own buffer and no autograd node needs its old value
        out.index_add_(0, out_rows, torch.index_select(feats, 0, in_rows) @ weight[k])
    return out


def hybrid_plan(neighbours: Tensor, c_in: int) -> tuple[list[int], list[int]]:
    """Split kernel offsets into (GEMM offsets, scattered offsets) by the cost model above."""
    fills = (neighbours >= 0).float().mean(dim=0).tolist() if neighbours.shape[0] else [0.0] * neighbours.shape[1]
    dense = [k for k, f in enumerate(fills) if c_in + ADD_COST <= f * (c_in + SCATTER_COST)]
    sparse = [k for k, f in enumerate(fills) if k not in dense and f > 0]
    return dense, sparse


class NativeBackend:
    """Pure-PyTorch sparse conv; ``algorithm``: ``hybrid`` (default), ``gemm`` or ``scatter``."""

    name = "native"

    def __init__(self, algorithm: str = "hybrid"):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"native algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        self.algorithm = algorithm

    def check(self) -> None:
        return None

    def conv(self, x: SparseTensor, weight: Tensor, spec: ConvSpec) -> Tensor:
        assert x.manager is not None
        if spec.kind == "subm" and spec.kernel == 1:
            return x.feats @ weight[0]
        table = x.manager.neighbours(spec.kind, spec.stride_in, spec.stride_out, spec.kernel)
        map_key = (spec.kind, spec.stride_in, spec.stride_out, spec.kernel)
        if self.algorithm == "gemm":
            return implicit_gemm(x.feats, weight, table, self._transposed(x, map_key, table, None))
        pairs = x.manager.derived(("pairs", *map_key), lambda: pairs_from_table(table))
        if self.algorithm == "scatter":
            identity = (spec.kernel * spec.kernel) // 2 if spec.kind == "subm" else None
            return gather_scatter(x.feats, weight, pairs, _output_rows(x, spec), identity)
        plan_key = ("hybrid", *map_key, x.channels)
        dense, sparse = x.manager.derived(plan_key, lambda: hybrid_plan(table, x.channels))
        if len(dense) == table.shape[1]:
            return implicit_gemm(x.feats, weight, table, self._transposed(x, map_key, table, None))
        out = None
        if dense:
            columns = x.manager.derived(
                ("columns", *map_key, tuple(dense)), lambda: torch.tensor(dense, device=table.device)
            )
            subset = x.manager.derived(("subset", *map_key, tuple(dense)), lambda: table.index_select(1, columns))
            transposed = self._transposed(x, map_key, subset, tuple(dense))
            out = implicit_gemm(x.feats, weight.index_select(0, columns), subset, transposed)
        sparse_pairs = [pairs[k] if k in sparse else (pairs[k][0][:0], pairs[k][1][:0]) for k in range(len(pairs))]
        return gather_scatter(x.feats, weight, sparse_pairs, _output_rows(x, spec), None, out)

    @staticmethod
    def _transposed(x: SparseTensor, map_key: tuple, table: Tensor, columns: tuple[int, ...] | None) -> Tensor | None:
        """The transposed table for the backward pass (cached per forward; None when no grad is needed)."""
        if not torch.is_grad_enabled():
            return None
        assert x.manager is not None
        return x.manager.derived(("transposed", *map_key, columns), lambda: transpose_table(table, x.num_sites))
