"""Sparse layers with one canonical weight per conv, so a model switches backend without new weights."""

from __future__ import annotations

import math

import torch
from torch import nn

from methods.sparse.backends import ConvSpec, check_backend, get_backend, output_tensor
from methods.sparse.tensor import SparseTensor

DEFAULT_BACKEND = "native"


def per_site_fp32(like: torch.Tensor) -> torch.autocast:
    """Autocast off, for small per-site matmuls ([N, few] x [few, few]: 1x1 convs in training,
    PointNet, SparseRefine's head and ensembler). Under bf16 autocast oneDNN compiles a new kernel
    for every new number of sites, i.e. on every training step and every image; in fp32 these
    products are cheap and use no per-shape kernel. Inside, inputs go to the layers' own dtype
    (``weight_dtype``): fp32 under autocast, the precision a timed model was cast to otherwise."""
    return torch.autocast(like.device.type, enabled=False)


def weight_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of ``module``'s first parameter (its layers' inputs must match it)."""
    return next(module.parameters()).dtype


class SparseConv2d(nn.Module):
    """Sparse 2-D conv: submanifold (stride 1), strided down (stride > 1) or transposed up.

    ``weight`` has the canonical shape [K*K, in, out] (offsets row-major, see ``kernel_map``).
    ``stride`` is the integer stride ratio; ``tensor_strides=(fine, coarse)`` instead fixes the two
    tensor strides explicitly, which allows non-integer steps such as 8 -> 12.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 3,
        stride: int = 1,
        transposed: bool = False,
        bias: bool = False,
        tensor_strides: tuple[int, int] | None = None,
        backend: str = DEFAULT_BACKEND,
    ):
        super().__init__()
        if transposed and stride == 1 and tensor_strides is None:
            raise ValueError("a transposed conv needs stride > 1 or tensor_strides")
        if tensor_strides is not None and not tensor_strides[0] < tensor_strides[1]:
            raise ValueError(f"tensor_strides must be (fine, coarse), got {tensor_strides}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel = kernel
        self.stride = stride
        self.transposed = transposed
        self.tensor_strides = tensor_strides
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(kernel * kernel, in_channels, out_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        bound = 1.0 / math.sqrt(kernel * kernel * in_channels)
        nn.init.uniform_(self.weight, -bound * math.sqrt(3.0), bound * math.sqrt(3.0))

    def spec_for(self, x: SparseTensor) -> ConvSpec:
        if self.transposed:
            out = self.tensor_strides[0] if self.tensor_strides else x.stride // self.stride
            return ConvSpec("up", self.kernel, x.stride, out)
        if self.stride == 1 and self.tensor_strides is None:
            return ConvSpec("subm", self.kernel, x.stride, x.stride)
        out = self.tensor_strides[1] if self.tensor_strides else x.stride * self.stride
        return ConvSpec("down", self.kernel, x.stride, out)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if x.channels != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.channels}")
        if self.tensor_strides is not None:
            expected = self.tensor_strides[1] if self.transposed else self.tensor_strides[0]
            if x.stride != expected:
                raise ValueError(f"conv for tensor strides {self.tensor_strides} got a stride-{x.stride} input")
        spec = self.spec_for(x)
        if self.training and spec.kind == "subm" and self.kernel == 1:
            # A 1x1 submanifold conv is the same per-site matmul in every backend. In training only the
            # speed depends on the backend, and the dense reference would run this one on the whole
            # zero-filled grid; inference keeps each backend's own path, as Table 7 times it.
            with per_site_fp32(x.feats):
                feats = x.feats.to(self.weight.dtype) @ self.weight[0]
        else:
            feats = get_backend(self.backend).conv(x, self.weight, spec)
        if self.bias is not None:
            feats = feats + self.bias
        return output_tensor(x, feats, spec)

    @torch.no_grad()
    def fold_following_bn(self, bn: nn.BatchNorm1d) -> None:
        """Absorb an eval-mode BatchNorm that directly follows this conv (exact in eval mode)."""
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = self.bias if self.bias is not None else torch.zeros_like(bn.running_mean)
        self.weight.mul_(scale)
        new_bias = (bias - bn.running_mean) * scale + bn.bias
        if self.bias is None:
            self.bias = nn.Parameter(new_bias.clone())
        else:
            self.bias.copy_(new_bias)

    def extra_repr(self) -> str:
        kind = "transposed" if self.transposed else ("strided" if self.stride > 1 or self.tensor_strides else "subm")
        strides = f", tensor_strides={self.tensor_strides}" if self.tensor_strides else ""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel={self.kernel}, stride={self.stride}, {kind}"
            f"{strides}, bias={self.bias is not None}, backend={self.backend}"
        )


class SparseBatchNorm(nn.Module):
    """BatchNorm over the features of the active sites (BatchNorm1d on [N, C])."""

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.bn = nn.BatchNorm1d(channels, eps=eps, momentum=momentum)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.with_feats(self.bn(x.feats))


class SparseReLU(nn.Module):
    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.with_feats(torch.relu(x.feats))


class SparseIdentity(nn.Module):
    """Placeholder left where a BatchNorm was folded away."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x


def fold_conv_bn(conv: SparseConv2d, bn: SparseBatchNorm | SparseIdentity) -> SparseIdentity:
    """Fold ``bn`` (which directly follows ``conv``) into ``conv``; return what replaces ``bn``."""
    if isinstance(bn, SparseBatchNorm):
        if bn.training:
            raise RuntimeError("fold batch norm in eval mode only")
        conv.fold_following_bn(bn.bn)
    return SparseIdentity()


def set_backend(model: nn.Module, name: str) -> nn.Module:
    """Make every SparseConv2d in ``model`` use backend ``name`` (checked first: may raise Unavailable)."""
    check_backend(name)
    for module in model.modules():
        if isinstance(module, SparseConv2d):
            module.backend = name
    return model


def cat_feats(tensors: list[SparseTensor]) -> SparseTensor:
    """Concatenate the features of tensors on the same site set (e.g. a UNet skip)."""
    first = tensors[0]
    for t in tensors[1:]:
        if t.stride != first.stride or t.num_sites != first.num_sites:
            raise ValueError("can only concatenate tensors on the same site set")
    return first.with_feats(torch.cat([t.feats for t in tensors], dim=1))
