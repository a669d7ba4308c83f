"""QGN's operations on active sites, on top of ``methods.sparse`` (the project's one sparse conv).

- :func:`upsample_sites`: 2x2 nearest upsampling of active sites (QGN eq. 11);
- :func:`gather_dense`: read a dense encoder map at active sites (for the 1x1 skip connections);
- :class:`SparseResidualUnit`: two submanifold 3x3 sparse convs with BN/ReLU and a shortcut, the
  unit of the transposed-ResNet decoder (supp. A.1).
"""

from __future__ import annotations

import torch
from torch import nn

CHILD_OFFSETS = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])


def upsample_sites(coords: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 11: every site (b, y, x) becomes its four children (b, 2y+dy, 2x+dx) with the same value.

    Children of a site are consecutive rows (order dy, dx = 00, 01, 10, 11).
    """
    n = coords.shape[0]
    children = coords.long()[:, None, :].repeat(1, 4, 1)
    children[:, :, 1:] = children[:, :, 1:] * 2 + CHILD_OFFSETS.to(coords.device)[None]
    values = feats[:, None, :].expand(n, 4, feats.shape[1]).reshape(n * 4, feats.shape[1])
    return children.reshape(n * 4, 3), values


def gather_dense(dense: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Rows ``dense[b, :, y, x]`` for every site: [B, C, H, W] x [N, 3] -> [N, C]."""
    batch, channels, height, width = dense.shape
    flat = dense.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    rows = (coords[:, 0] * height + coords[:, 1]) * width + coords[:, 2]
    return torch.index_select(flat, 0, rows)


class SparseResidualUnit(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut (identity or 1x1 linear+BN), then ReLU; submanifold."""

    def __init__(self, cin: int, cout: int, backend: str):
        super().__init__()
        from methods.sparse.nn import SparseBatchNorm, SparseConv2d, SparseReLU

        self.conv1 = SparseConv2d(cin, cout, 3, backend=backend)
        self.bn1 = SparseBatchNorm(cout)
        self.relu = SparseReLU()
        self.conv2 = SparseConv2d(cout, cout, 3, backend=backend)
        self.bn2 = SparseBatchNorm(cout)
        self.project = None
        if cin != cout:
            self.project = nn.Sequential(nn.Linear(cin, cout, bias=False), nn.BatchNorm1d(cout))

    def set_backend(self, name: str) -> None:
        self.conv1.backend = name
        self.conv2.backend = name

    def forward(self, x):  # SparseTensor -> SparseTensor
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        shortcut = x.feats if self.project is None else self.project(x.feats)
        return y.with_feats(torch.relu(y.feats + shortcut.to(y.feats.dtype)))

    @torch.no_grad()
    def fold_bn(self) -> None:
        """Fold the eval-mode batch norms into the convs / the projection (exact in eval mode)."""
        from methods.sparse.nn import fold_conv_bn

        self.bn1 = fold_conv_bn(self.conv1, self.bn1)
        self.bn2 = fold_conv_bn(self.conv2, self.bn2)
        if self.project is not None and isinstance(self.project[1], nn.BatchNorm1d):
            linear, bn = self.project[0], self.project[1]
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            fused = nn.Linear(linear.in_features, linear.out_features, bias=True)
            fused.weight.copy_(linear.weight * scale[:, None])
            fused.bias.copy_(bn.bias - bn.running_mean * scale)
            self.project = nn.Sequential(fused)
