"""spconv 2.x backend (the "SpConv" row of SparseRefine Table 7), CPU build.

Known problems of the CPU wheel and how they are handled here, in this one place:

- with more than one thread its CPU scatter-add shares buffers across OpenMP threads and gives
  wrong results: every spconv call, forward *and* backward, runs inside ``single_thread()``, which
  sets one thread in torch *and* in the OpenMP runtime bundled with the wheel (spconv.libs/libgomp:
  a separate copy that ``torch.set_num_threads`` does not reach);
- its backward calls ``ops.get_current_stream``, which needs CUDA: patched to return 0 at import;
- coordinates must be a C-contiguous int32 tensor (``torch.nonzero`` is column-major here).

Semantics are the project's (see ``kernel_map``): submanifold convs use ``SubMConv2d`` with one
indice key per (stride, kernel); integer-ratio down convs use ``SparseConv2d`` — whose output set
(every cell some kernel tap reaches) is a superset of ours (floor), so the rows of our set are
picked from it — and up convs use ``SparseInverseConv2d`` on the down conv's indice key (our coarse
features are placed into its output set, zeros at the extra cells, which contribute nothing).
Non-integer stride ratios (8 -> 12) have no spconv layer: those convs run spconv's gather-GEMM-
scatter kernel (``indice_conv``) on our kernel maps.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from harness.errors import Unavailable, Unsupported
from methods.sparse.backends.base import ConvSpec
from methods.sparse.kernel_map import KeyTable, kernel_padding, linear_keys, pairs_from_table
from methods.sparse.tensor import SparseTensor

_PATCHED = False
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.float64)


def _spconv() -> Any:
    """Import spconv.pytorch (patched once); raise Unavailable if it cannot be imported."""
    global _PATCHED
    try:
        import spconv.pytorch as spt
        from spconv.pytorch import ops
    except Exception as exc:  # ImportError, or a broken binary raising OSError/RuntimeError
        raise Unavailable(f"spconv is not importable: {exc}") from exc
    if not _PATCHED:
        if not torch.cuda.is_available():
            ops.get_current_stream = lambda: 0  # CPU-only torch: backward asks for a CUDA stream
        _PATCHED = True
    return spt


_OPENMP: list[Any] = []  # [ctypes library] once found; [None] if spconv has no bundled runtime


def spconv_openmp() -> Any:
    """The OpenMP runtime bundled with the spconv wheel (ctypes handle), or None if there is none."""
    if not _OPENMP:
        import spconv

        libs = Path(spconv.__file__).resolve().parent.parent / "spconv.libs"
        found = sorted(libs.glob("libgomp*.so*")) if libs.is_dir() else []
        _OPENMP.append(ctypes.CDLL(str(found[0])) if found else None)
    return _OPENMP[0]


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One thread in torch and in spconv's OpenMP runtime; both restored afterwards (even on error)."""
    openmp = spconv_openmp()
    previous = torch.get_num_threads()
    previous_openmp = openmp.omp_get_max_threads() if openmp is not None else None
    torch.set_num_threads(1)
    if openmp is not None:
        openmp.omp_set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
        if openmp is not None:
            openmp.omp_set_num_threads(previous_openmp)


class _GuardedCall(torch.autograd.Function):
    """Runs ``fn(*inputs)`` single-threaded and its backward single-threaded too (autograd runs the
    backward later, outside any ``with`` block around the forward)."""

    @staticmethod
    def forward(ctx: Any, fn: Callable[..., Tensor], *inputs: Tensor) -> Tensor:
        ctx.needs = [t.requires_grad for t in inputs]
        ctx.graph_inputs = [t.detach().requires_grad_(t.requires_grad) for t in inputs]
        with torch.enable_grad(), single_thread():
            ctx.graph_output = fn(*ctx.graph_inputs)
        return ctx.graph_output.detach()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        wanted = [t for t, need in zip(ctx.graph_inputs, ctx.needs, strict=True) if need]
        with single_thread():
            grads = iter(torch.autograd.grad(ctx.graph_output, wanted, grad, allow_unused=True))
        ctx.graph_inputs = ctx.graph_output = None
        return (None, *[next(grads) if need else None for need in ctx.needs])


def run_single_threaded(fn: Callable[..., Tensor], *inputs: Tensor) -> Tensor:
    """``fn(*inputs)`` under spconv's thread guard, in the forward and in the backward."""
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in inputs):
        with single_thread():
            return fn(*inputs)
    return _GuardedCall.apply(fn, *inputs)


def krsc_weight(weight: Tensor) -> Tensor:
    """Canonical [K*K, C_in, C_out] -> spconv (out, kh, kw, in)."""
    kk, c_in, c_out = weight.shape
    k = int(round(kk**0.5))
    return weight.reshape(k, k, c_in, c_out).permute(3, 0, 1, 2).contiguous()


class _State:
    """Per-forward spconv state kept on the coordinate manager."""

    def __init__(self) -> None:
        self.indice_dict: dict[str, Any] = {}
        self.int_coords: dict[int, Tensor] = {}
        self.down_outputs: dict[str, tuple[Tensor, Tensor, list[int]]] = {}  # key -> (indices, rows, shape)


class SpconvBackend:
    name = "spconv"

    def __init__(self) -> None:
        self._modules: dict[tuple[Any, ...], Any] = {}

    def check(self) -> None:
        _spconv()

    # -- helpers ------------------------------------------------------------------------------
    def _module(self, kind: str, kernel: int, ratio: int, key: str) -> Any:
        """A weightless spconv module of the right kind (we pass our weight to ``_conv_forward``).
        Channel counts are checked by spconv against the input, so they are set per call."""
        spt = _spconv()
        cache_key = (kind, kernel, ratio, key)
        if cache_key not in self._modules:
            pad = kernel_padding(kernel)
            if kind == "subm":
                module = spt.SubMConv2d(1, 1, kernel, bias=False, indice_key=key)
            elif kind == "down":
                module = spt.SparseConv2d(1, 1, kernel, stride=ratio, padding=pad, bias=False, indice_key=key)
            else:
                module = spt.SparseInverseConv2d(1, 1, kernel, bias=False, indice_key=key)
            del module.weight
            self._modules[cache_key] = module
        return self._modules[cache_key]

    @staticmethod
    def _state(x: SparseTensor) -> _State:
        assert x.manager is not None
        return x.manager.backend_state.setdefault("spconv", _State())

    @staticmethod
    def _int_coords(x: SparseTensor, state: _State, stride: int) -> Tensor:
        assert x.manager is not None
        if stride not in state.int_coords:
            state.int_coords[stride] = x.manager.coords(stride).to(torch.int32).contiguous()
        return state.int_coords[stride]

    def _forward(
        self, module: Any, feats: Tensor, weight: Tensor, indices: Tensor, shape: list[int], x: SparseTensor
    ) -> Any:
        spt = _spconv()
        state = self._state(x)
        module.in_channels, module.out_channels = weight.shape[1], weight.shape[2]
        tensor = spt.SparseConvTensor(feats.contiguous(), indices, shape, x.batch_size)
        tensor.indice_dict = state.indice_dict
        out = module._conv_forward(torch.is_grad_enabled(), tensor, krsc_weight(weight), None)
        state.indice_dict.update(out.indice_dict)
        return out

    # -- convs --------------------------------------------------------------------------------
    def conv(self, x: SparseTensor, weight: Tensor, spec: ConvSpec) -> Tensor:
        if x.feats.dtype not in SUPPORTED_DTYPES:
            raise Unsupported(f"spconv has no {x.feats.dtype} kernels (supports {sorted(map(str, SUPPORTED_DTYPES))})")
        if spec.kind == "subm" and spec.kernel == 1:
            return x.feats @ weight[0]
        if spec.kind != "subm" and spec.integer_ratio is None:
            return run_single_threaded(lambda f, w: self._conv_on_our_map(x, f, w, spec), x.feats, weight)
        if spec.kind == "subm":
            return run_single_threaded(lambda f, w: self._subm(x, f, w, spec), x.feats, weight)
        if spec.kind == "down":
            return run_single_threaded(lambda f, w: self._down(x, f, w, spec), x.feats, weight)
        return run_single_threaded(lambda f, w: self._up(x, f, w, spec), x.feats, weight)

    def _subm(self, x: SparseTensor, feats: Tensor, weight: Tensor, spec: ConvSpec) -> Tensor:
        key = f"subm_s{spec.stride_in}_k{spec.kernel}"
        module = self._module("subm", spec.kernel, 1, key)
        indices = self._int_coords(x, self._state(x), spec.stride_in)
        return self._forward(module, feats, weight, indices, list(x.grid), x).features

    @staticmethod
    def _down_key(fine: int, coarse: int, kernel: int) -> str:
        return f"down_s{fine}_s{coarse}_k{kernel}"

    def _down(self, x: SparseTensor, feats: Tensor, weight: Tensor, spec: ConvSpec) -> Tensor:
        out_features, rows = self._run_down(x, feats, weight, spec.stride_in, spec.stride_out, spec.kernel)
        # A coarse site of ours that spconv lacks has no input in its window (possible when the
        # ratio exceeds the kernel's reach): its value is zero.
        padded = torch.cat([out_features, out_features.new_zeros(1, out_features.shape[1])])
        return padded.index_select(0, torch.where(rows < 0, out_features.shape[0], rows))

    def _run_down(
        self, x: SparseTensor, feats: Tensor, weight: Tensor, fine: int, coarse: int, kernel: int
    ) -> tuple[Tensor, Tensor]:
        assert x.manager is not None
        state = self._state(x)
        ratio = coarse // fine
        key = self._down_key(fine, coarse, kernel)
        module = self._module("down", kernel, ratio, key)
        coarse_grid = x.manager.grid(coarse)
        # spconv's output size is floor((n + 2p - k) / r) + 1: give it a fine extent of r * coarse
        # cells so the last coarse row/column exists for every kernel.
        shape = [coarse_grid[0] * ratio, coarse_grid[1] * ratio]
        out = self._forward(module, feats, weight, self._int_coords(x, state, fine), shape, x)
        ours = x.manager.down_coords(fine, coarse)
        table = KeyTable.build(linear_keys(out.indices, coarse_grid))
        rows = table.lookup(linear_keys(ours, coarse_grid))  # -1: a site of ours spconv does not have
        state.down_outputs[key] = (out.indices, rows, list(coarse_grid))
        return out.features, rows

    def _up(self, x: SparseTensor, feats: Tensor, weight: Tensor, spec: ConvSpec) -> Tensor:
        assert x.manager is not None
        state = self._state(x)
        fine, coarse = spec.stride_out, spec.stride_in
        key = self._down_key(fine, coarse, spec.kernel)
        if key not in state.down_outputs:
            # The down conv ran on another backend (or not at all): build spconv's pairs for it.
            fine_feats = feats.new_zeros(x.manager.coords(fine).shape[0], 1)
            self._run_down(x, fine_feats, feats.new_zeros(spec.kernel**2, 1, 1), fine, coarse, spec.kernel)
        indices, rows, shape = state.down_outputs[key]
        present = torch.nonzero(rows >= 0).squeeze(1)  # absent ones have no fine site in reach
        placed = feats.new_zeros(indices.shape[0], feats.shape[1])
        placed = placed.index_copy(0, rows.index_select(0, present), feats.index_select(0, present))
        module = self._module("up", spec.kernel, coarse // fine, key)
        return self._forward(module, placed, weight, indices, shape, x).features

    def _conv_on_our_map(self, x: SparseTensor, feats: Tensor, weight: Tensor, spec: ConvSpec) -> Tensor:
        """spconv's gather-GEMM-scatter kernel over our kernel map (non-integer stride ratios)."""
        import spconv.pytorch.functional as spf
        from spconv.core import ConvAlgo

        assert x.manager is not None
        _spconv()
        table = x.manager.neighbours(spec.kind, spec.stride_in, spec.stride_out, spec.kernel)
        pairs = pairs_from_table(table)
        longest = max(1, max(int(p[0].numel()) for p in pairs))
        indice_pairs = torch.full((2, len(pairs), longest), -1, dtype=torch.int32, device=feats.device)
        for k, (in_rows, out_rows) in enumerate(pairs):
            indice_pairs[0, k, : in_rows.numel()] = in_rows.to(torch.int32)
            indice_pairs[1, k, : out_rows.numel()] = out_rows.to(torch.int32)
        counts = torch.tensor([p[0].numel() for p in pairs], dtype=torch.int32)
        return spf.indice_conv(
            feats.contiguous(), krsc_weight(weight), indice_pairs, counts, table.shape[0], ConvAlgo.Native
        )
