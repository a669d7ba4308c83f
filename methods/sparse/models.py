"""Sparse feature extractors of SparseRefine: MinkUNet (paper §3.2, supp. §1.2) and PointNet (Table 5d)."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from methods.sparse.nn import (
    SparseBatchNorm,
    SparseConv2d,
    SparseIdentity,
    SparseReLU,
    cat_feats,
    fold_conv_bn,
    per_site_fp32,
    weight_dtype,
)
from methods.sparse.tensor import SparseTensor

SIX_STAGE_PLANES = (32, 64, 128, 256, 512, 1024)
SIX_STAGE_STRIDES = (1, 2, 4, 8, 16, 32)
# Table 5d variants: name -> (tensor strides, planes). The 8-level set has non-power-of-2 steps
# (8 -> 12 -> 16 -> 24 -> 32): coarser sites are floor(pixel / s) of the finer sites' pixels.
VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "4stage": ((1, 2, 4, 8), (32, 64, 128, 256)),
    "5stage": ((1, 2, 4, 8, 16), (32, 64, 128, 256, 512)),
    "6stage": (SIX_STAGE_STRIDES, SIX_STAGE_PLANES),
    "8level": ((1, 2, 4, 8, 12, 16, 24, 32), (32, 64, 128, 256, 384, 512, 768, 1024)),
}


class PreActBlock(nn.Module):
    """Pre-activation residual basic block: BN-ReLU-conv3-BN-ReLU-conv3 (+ 1x1 projection of the
    input when the channel count changes)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.bn1 = SparseBatchNorm(in_channels)
        self.relu = SparseReLU()
        self.conv1 = SparseConv2d(in_channels, out_channels, 3)
        self.bn2: SparseBatchNorm | SparseIdentity = SparseBatchNorm(out_channels)
        self.conv2 = SparseConv2d(out_channels, out_channels, 3)
        self.projection = SparseConv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: SparseTensor) -> SparseTensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        shortcut = x if self.projection is None else self.projection(x)
        return out.with_feats(out.feats + shortcut.feats)

    def fold_bn(self) -> None:
        """Fold bn2 into conv1 (a conv -> BN pair). bn1 acts on a residual sum and stays."""
        self.bn2 = fold_conv_bn(self.conv1, self.bn2)


def _blocks(in_channels: int, out_channels: int, reps: int) -> nn.Sequential:
    return nn.Sequential(*[PreActBlock(in_channels if i == 0 else out_channels, out_channels) for i in range(reps)])


def _pre_activated_conv(conv: SparseConv2d, channels: int) -> nn.Sequential:
    return nn.Sequential(SparseBatchNorm(channels), SparseReLU(), conv)


class MinkUNet(nn.Module):
    """Sparse UNet over the active pixels.

    stem conv3 (in -> planes[0]); per level ``reps`` pre-activation blocks; BN-ReLU-conv3 down to the
    next level's stride (channels kept; the next level's first block projects to its planes);
    recursively; back up with BN-ReLU-transposed conv3 onto the cached finer sites, concatenate the
    skip (channels double) and ``reps`` blocks back to the level's planes; final BN-ReLU.
    Output: features with ``planes[0] * width_mult`` channels at the input sites.
    """

    def __init__(
        self,
        in_channels: int = 3,
        planes: tuple[int, ...] = SIX_STAGE_PLANES,
        reps: int = 2,
        width_mult: float = 1.0,
        strides: tuple[int, ...] | None = None,
    ):
        super().__init__()
        strides = tuple(strides) if strides is not None else tuple(2**i for i in range(len(planes)))
        if len(strides) != len(planes):
            raise ValueError(f"{len(strides)} strides for {len(planes)} planes")
        if strides[0] != 1 or any(b <= a for a, b in itertools.pairwise(strides)):
            raise ValueError(f"strides must start at 1 and increase, got {strides}")
        if any(b > 2 * a for a, b in itertools.pairwise(strides)):
            raise ValueError(f"a level may at most double the stride (kernel 3 coverage), got {strides}")
        self.strides = strides
        self.planes = tuple(max(1, int(round(p * width_mult))) for p in planes)
        self.out_channels = self.planes[0]
        p = self.planes
        self.stem = SparseConv2d(in_channels, p[0], 3)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i, stride in enumerate(strides):
            self.encoders.append(_blocks(p[i - 1] if i > 0 else p[0], p[i], reps))
            if i + 1 < len(strides):
                steps = (stride, strides[i + 1])
                down = SparseConv2d(p[i], p[i], 3, stride=2, tensor_strides=steps)
                up = SparseConv2d(p[i + 1], p[i], 3, stride=2, transposed=True, tensor_strides=steps)
                self.downs.append(_pre_activated_conv(down, p[i]))
                self.ups.append(_pre_activated_conv(up, p[i + 1]))
                self.decoders.append(_blocks(2 * p[i], p[i], reps))
        self.final = nn.Sequential(SparseBatchNorm(p[0]), SparseReLU())

    def _level(self, i: int, x: SparseTensor) -> SparseTensor:
        skip = self.encoders[i](x)
        if i == len(self.strides) - 1:
            return skip
        coarse = self._level(i + 1, self.downs[i](skip))
        return self.decoders[i](cat_feats([self.ups[i](coarse), skip]))

    def forward(self, x: SparseTensor) -> SparseTensor:
        if x.stride != 1:
            raise ValueError("MinkUNet expects a stride-1 input")
        return self.final(self._level(0, self.stem(x)))

    def fold_bn(self) -> None:
        for module in self.modules():
            if isinstance(module, PreActBlock):
                module.fold_bn()


def minkunet_variant(name: str, in_channels: int = 3, reps: int = 2, width_mult: float = 1.0) -> MinkUNet:
    """A Table 5d MinkUNet variant by name (see ``VARIANTS``)."""
    try:
        strides, planes = VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown MinkUNet variant {name!r}; known: {sorted(VARIANTS)}") from None
    return MinkUNet(in_channels, planes, reps, width_mult, strides)


class PointNet(nn.Module):
    """PointNet-segmentation-style extractor: shared per-point MLP, a per-image global max-pool of the
    last hidden layer concatenated back to the first layer's point features, then a per-point head.
    No spatial neighbourhood at all (the Table 5d contrast to MinkUNet)."""

    def __init__(self, in_channels: int = 3, hidden: tuple[int, ...] = (64, 128, 256), out: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        widths = (in_channels, *hidden)
        self.encoder = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU())
            for a, b in itertools.pairwise(widths)
        )
        head_in = hidden[0] + hidden[-1]
        head_mid = hidden[1] if len(hidden) > 1 else hidden[0]
        layers = [
            nn.Linear(head_in, head_mid, bias=False),
            nn.BatchNorm1d(head_mid),
            nn.ReLU(),
            nn.Linear(head_mid, out, bias=False),
            nn.BatchNorm1d(out),
            nn.ReLU(),
        ]
        self.head = nn.Sequential(*layers)
        self.out_channels = out

    def forward(self, x: SparseTensor) -> SparseTensor:
        with per_site_fp32(x.feats):
            return self._forward(x)

    def _forward(self, x: SparseTensor) -> SparseTensor:
        feats = x.feats.to(weight_dtype(self.encoder))
        local = None
        for layer in self.encoder:
            feats = layer(feats)
            local = feats if local is None else local
        batch = x.coords[:, 0].long()
        index = batch[:, None].expand(-1, feats.shape[1])
        pooled = feats.new_zeros(x.batch_size, feats.shape[1])
        pooled = pooled.scatter_reduce(0, index, feats, reduce="amax", include_self=False)
        assert local is not None
        return x.with_feats(self.head(torch.cat([local, pooled.index_select(0, batch)], dim=1)))
