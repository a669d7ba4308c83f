"""Attention layers: full (non-local) self-attention for the OS = 32 encoder and axial attention
for the high-resolution upsampled path of HFGM.

Both use plain ``matmul`` so that fvcore counts their multiply-adds.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _heads_split(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[N, L, C] -> [N, heads, L, C / heads]."""
    n, length, c = x.shape
    return x.reshape(n, length, heads, c // heads).transpose(1, 2)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Scaled dot-product attention over sequences [N, L, C]; returns [N, L, Cv]."""
    qh, kh, vh = (_heads_split(t, heads) for t in (q, k, v))
    scores = torch.matmul(qh, kh.transpose(-1, -2)) / math.sqrt(qh.shape[-1])
    out = torch.matmul(scores.softmax(dim=-1), vh)
    n, _, length, _ = out.shape
    return out.transpose(1, 2).reshape(n, length, -1)


class SelfAttention2d(nn.Module):
    """Non-local block: every pixel attends to every pixel; 1x1 q/k/v/out projections, residual."""

    def __init__(self, channels: int, key_channels: int | None = None, heads: int = 1) -> None:
        super().__init__()
        key_channels = key_channels or channels // 2
        self.heads = heads
        self.query = nn.Conv2d(channels, key_channels, 1)
        self.key = nn.Conv2d(channels, key_channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.out = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.out[1].weight)  # starts as identity; attention is learned as a residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape

        def seq(t: torch.Tensor) -> torch.Tensor:
            return t.flatten(2).transpose(1, 2)

        attended = _attend(seq(self.query(x)), seq(self.key(x)), seq(self.value(x)), self.heads)
        attended = attended.transpose(1, 2).reshape(b, c, h, w)
        return x + self.out(attended)


class AxialAttention2d(nn.Module):
    """Axial attention (Ho et al. 2019): attention along the height axis, then along the width
    axis, each a full-width q/k/v + output projection with a residual connection."""

    def __init__(self, channels: int, heads: int | None = None) -> None:
        super().__init__()
        self.heads = heads or max(1, min(8, channels // 32))  # head width >= 32 channels
        self.qkv = nn.ModuleList([nn.Conv2d(channels, 3 * channels, 1) for _ in range(2)])
        self.out = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels)) for _ in range(2)]
        )
        for proj in self.out:
            nn.init.zeros_(proj[1].weight)

    def _along(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv[axis](x).chunk(3, dim=1)
        if axis == 0:  # sequences are columns: [B*W, H, C]

            def seq(t: torch.Tensor) -> torch.Tensor:
                return t.permute(0, 3, 2, 1).reshape(b * w, h, c)

            out = _attend(seq(q), seq(k), seq(v), self.heads)
            out = out.reshape(b, w, h, c).permute(0, 3, 2, 1)
        else:  # sequences are rows: [B*H, W, C]

            def seq(t: torch.Tensor) -> torch.Tensor:
                return t.permute(0, 2, 3, 1).reshape(b * h, w, c)

            out = _attend(seq(q), seq(k), seq(v), self.heads)
            out = out.reshape(b, h, w, c).permute(0, 3, 1, 2)
        return x + self.out[axis](out.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._along(self._along(x, 0), 1)
