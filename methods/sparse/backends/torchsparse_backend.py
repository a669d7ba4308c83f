"""TorchSparse backend (the "TorchSparse" row of SparseRefine Table 7): CUDA only, not on PyPI.

Available only when ``import torchsparse`` works *and* a CUDA device is present; otherwise
``check()`` raises Unavailable with the reason. Because TorchSparse's API and conventions changed
between releases (coordinate column order, kernel-offset order, strided output sets), the first
``check()`` on a CUDA machine calibrates against the dense backend on a small random problem: it
picks the kernel-offset order that reproduces our submanifold conv and verifies down and up convs;
if nothing matches, the backend is reported Unavailable with the mismatch instead of giving wrong
numbers. 2-D pixels are lifted to 3-D coordinates (z = 0) with (K, K, 1) kernels, as the official
SparseRefine code does. Non-integer stride ratios are Unsupported here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from harness.errors import Unavailable, Unsupported
from methods.sparse.backends.base import ConvSpec
from methods.sparse.kernel_map import KeyTable, linear_keys
from methods.sparse.tensor import SparseTensor

CALIBRATION_TOLERANCE = 1e-3
_calibration: dict[str, Any] = {}


def _import() -> Any:
    try:
        import torchsparse
    except Exception as exc:  # ImportError or a broken CUDA extension
        raise Unavailable(f"torchsparse is not importable ({exc}); it is not on PyPI and needs a CUDA build") from exc
    return torchsparse


def _batch_first(module: Any) -> bool:
    """TorchSparse >= 2.1 puts the batch index first in the coordinates; 2.0 puts it last."""
    version = str(getattr(module, "__version__", "2.1"))
    return not version.startswith(("1.", "2.0"))


def _coords4(coords: Tensor, stride: int, batch_first: bool) -> Tensor:
    """(b, y, x) grid coords at ``stride`` -> TorchSparse pixel coords with z = 0."""
    c = coords.int()
    zeros = torch.zeros_like(c[:, :1])
    if batch_first:
        return torch.cat([c[:, :1], c[:, 1:] * stride, zeros], dim=1).contiguous()
    return torch.cat([c[:, 1:] * stride, zeros, c[:, :1]], dim=1).contiguous()


def _grid_coords(coords4: Tensor, stride: int, batch_first: bool) -> Tensor:
    """Inverse of ``_coords4``."""
    c = coords4.long()
    if batch_first:
        return torch.stack([c[:, 0], c[:, 1] // stride, c[:, 2] // stride], dim=1)
    return torch.stack([c[:, 3], c[:, 0] // stride, c[:, 1] // stride], dim=1)


def _share_caches(source: Any, target: Any) -> None:
    """Make ``target`` reuse the kernel-map caches of ``source`` (attribute names differ by version)."""
    for name in ("_caches", "cmaps", "kmaps"):
        if hasattr(source, name):
            setattr(target, name, getattr(source, name))


class TorchsparseBackend:
    name = "torchsparse"

    def __init__(self, offset_order: str = "row") -> None:
        self.offset_order = offset_order

    def check(self) -> None:
        module = _import()
        if not torch.cuda.is_available():
            raise Unavailable("torchsparse runs on CUDA only and no CUDA device is present")
        if "offset_order" not in _calibration:
            _calibration.update(_calibrate(module))
        if _calibration.get("error"):
            raise Unavailable(_calibration["error"])
        self.offset_order = _calibration["offset_order"]

    def _weight(self, weight: Tensor) -> Tensor:
        """Canonical [K*K, in, out] (row-major (dy, dx)) -> TorchSparse kernel-volume order."""
        if self.offset_order == "row":
            return weight.contiguous()
        kk, c_in, c_out = weight.shape
        k = int(round(kk**0.5))
        return weight.reshape(k, k, c_in, c_out).transpose(0, 1).reshape(kk, c_in, c_out).contiguous()

    def conv(self, x: SparseTensor, weight: Tensor, spec: ConvSpec) -> Tensor:
        module = _import()
        from torchsparse.nn import functional as tsf

        if x.feats.device.type != "cuda":
            raise Unsupported("torchsparse runs on CUDA tensors only")
        if spec.kind != "subm" and spec.integer_ratio is None:
            raise Unsupported(f"torchsparse has no stride ratio {spec.ratio:g} ({spec.stride_in} -> {spec.stride_out})")
        assert x.manager is not None
        state: dict[str, Any] = x.manager.backend_state.setdefault("torchsparse", {})
        batch_first = _batch_first(module)
        kernel = (spec.kernel, spec.kernel, 1)
        w = self._weight(weight)
        if spec.kind == "subm" and spec.kernel == 1:
            return x.feats @ weight[0]

        def tensor(feats: Tensor, coords4: Tensor, stride: int) -> Any:
            t = module.SparseTensor(feats.contiguous(), coords4, stride=stride)
            if "root" in state:
                _share_caches(state["root"], t)
            else:
                state["root"] = t
            return t

        if spec.kind == "subm":
            t = tensor(x.feats, _coords4(x.coords, x.stride, batch_first), x.stride)
            return tsf.conv3d(t, w, kernel).feats
        ratio = spec.integer_ratio
        assert ratio is not None
        if spec.kind == "down":
            t = tensor(x.feats, _coords4(x.coords, x.stride, batch_first), x.stride)
            out = tsf.conv3d(t, w, kernel, stride=(ratio, ratio, 1))
            state[("coarse", spec.stride_in, spec.stride_out)] = out.coords
            return _pick_rows(
                out.feats,
                _grid_coords(out.coords, spec.stride_out, batch_first),
                x.manager.down_coords(spec.stride_in, spec.stride_out),
                x.manager.grid(spec.stride_out),
            )
        theirs = state.get(("coarse", spec.stride_out, spec.stride_in))
        if theirs is None:
            raise RuntimeError("torchsparse up conv needs the matching torchsparse down conv in the same forward")
        their_grid = _grid_coords(theirs, spec.stride_in, batch_first)
        rows = KeyTable.build(linear_keys(their_grid, x.grid)).lookup(linear_keys(x.coords, x.grid))
        present = torch.nonzero(rows >= 0).squeeze(1)
        placed = x.feats.new_zeros(theirs.shape[0], x.channels)
        placed = placed.index_copy(0, rows.index_select(0, present), x.feats.index_select(0, present))
        out = tsf.conv3d(tensor(placed, theirs, spec.stride_in), w, kernel, stride=(ratio, ratio, 1), transposed=True)
        fine = x.manager.coords(spec.stride_out)
        return _pick_rows(
            out.feats, _grid_coords(out.coords, spec.stride_out, batch_first), fine, x.manager.grid(spec.stride_out)
        )


def _pick_rows(feats: Tensor, their_coords: Tensor, our_coords: Tensor, grid: tuple[int, int]) -> Tensor:
    """Rows of ``feats`` (on ``their_coords``) at ``our_coords``; zeros where they have no site."""
    rows = KeyTable.build(linear_keys(their_coords, grid)).lookup(linear_keys(our_coords, grid))
    padded = torch.cat([feats, feats.new_zeros(1, feats.shape[1])])
    return padded.index_select(0, torch.where(rows < 0, feats.shape[0], rows))


def _calibrate(module: Any) -> dict[str, Any]:
    """Find the offset order that makes TorchSparse agree with the dense backend, or say why none does."""
    from methods.sparse.backends.dense import DenseBackend
    from methods.sparse.tensor import from_dense

    generator = torch.Generator().manual_seed(0)
    dense = torch.randn(2, 4, 12, 14, generator=generator)
    mask = torch.rand(2, 12, 14, generator=generator) < 0.4
    weight = torch.randn(9, 4, 4, generator=generator)
    failures = []
    for order in ("row", "column"):
        backend = TorchsparseBackend(order)
        try:
            worst = 0.0
            x_ref = from_dense(dense, mask)
            x_ts = from_dense(dense.cuda(), mask.cuda())
            for spec in (ConvSpec("subm", 3, 1, 1), ConvSpec("down", 3, 1, 2)):
                ours = DenseBackend().conv(x_ref, weight, spec)
                theirs = backend.conv(x_ts, weight.cuda(), spec).cpu()
                worst = max(worst, float((ours - theirs).abs().max()))
            coarse_ref = x_ref.at_stride(2, torch.randn(x_ref.manager.coords(2).shape[0], 4, generator=generator))
            coarse_ts = x_ts.at_stride(2, coarse_ref.feats.cuda())
            up = ConvSpec("up", 3, 2, 1)
            ours = DenseBackend().conv(coarse_ref, weight, up)
            worst = max(worst, float((ours - backend.conv(coarse_ts, weight.cuda(), up).cpu()).abs().max()))
        except Exception as exc:  # API differences show up as exceptions
            failures.append(f"{order}-major offsets: {type(exc).__name__}: {exc}")
            continue
        if worst <= CALIBRATION_TOLERANCE:
            return {"offset_order": order, "error": ""}
        failures.append(f"{order}-major offsets: max deviation {worst:.3g} from the dense reference")
    version = getattr(module, "__version__", "?")
    return {
        "offset_order": "row",
        "error": f"torchsparse {version} does not match our conv semantics: " + "; ".join(failures),
    }
