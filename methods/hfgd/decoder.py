"""SemanticFPN (Kirillov et al., Panoptic FPN semantic branch) and HFGD's Ultra SemanticFPN.

Both take the four pyramid levels (OS 4, 8, 16, 32), apply a leading conv per level to ``channels``,
merge top-down (FPN), and run per level a branch of "conv3x3-BN-ReLU then 2x upsample" blocks
until the target output stride, then sum the branches.

- SFPN: 1x1 leading convs, target OS = 4 (the level at OS = 4 gets one conv and no upsampling).
- U-SFPN: 3x3 leading convs and one more conv-upsample block per branch for each halving of the
  output stride below 4 (OS = 2 as in the paper; OS = 1 only for the cost analysis).
The channel width is 256 for both, as in the paper's appendix A.1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from methods.hfgd.backbone import conv_bn_relu

LEVEL_STRIDES = (4, 8, 16, 32)


class _Branch(nn.Module):
    """Conv blocks of one pyramid level; the i-th conv is followed by an upsample to ``sizes[i]``."""

    def __init__(self, channels: int, n_convs: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList([conv_bn_relu(channels, channels, 3) for _ in range(n_convs)])

    def forward(self, x: torch.Tensor, sizes: list[tuple[int, int] | None]) -> torch.Tensor:
        for conv, size in zip(self.convs, sizes, strict=True):
            x = conv(x)
            if size is not None:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x


class SemanticFPN(nn.Module):
    def __init__(
        self,
        in_channels: tuple[int, int, int, int],
        channels: int = 256,
        output_stride: int = 4,
        leading_kernel: int = 1,
    ) -> None:
        super().__init__()
        if output_stride not in (4, 2, 1):
            raise ValueError(f"SemanticFPN output stride must be 4, 2 or 1, got {output_stride}")
        self.output_stride = output_stride
        self.channels = channels
        self.extra_blocks = int(math.log2(4 // output_stride))
        self.lateral = nn.ModuleList([conv_bn_relu(c, channels, leading_kernel) for c in in_channels])
        self.branches = nn.ModuleList(
            [_Branch(channels, max(int(math.log2(s // 4)), 1) + self.extra_blocks) for s in LEVEL_STRIDES]
        )

    def forward(self, levels: list[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        lateral = [conv(x) for conv, x in zip(self.lateral, levels, strict=True)]
        for i in range(len(lateral) - 2, -1, -1):  # FPN top-down merge
            coarser = F.interpolate(lateral[i + 1], size=lateral[i].shape[-2:], mode="bilinear", align_corners=False)
            lateral[i] = lateral[i] + coarser
        level_sizes = [tuple(x.shape[-2:]) for x in lateral]
        fine_sizes = [
            (math.ceil(image_size[0] / s), math.ceil(image_size[1] / s))
            for s in (2 ** (2 - j) for j in range(1, self.extra_blocks + 1))
        ]
        out = None
        for i, (branch, x) in enumerate(zip(self.branches, lateral, strict=True)):
            # up to OS 4: the sizes of the finer pyramid levels; below OS 4: ceil(image / stride)
            targets: list[tuple[int, int] | None] = list(reversed(level_sizes[:i])) + fine_sizes
            if i == 0:
                targets = [None] + targets  # the OS 4 level starts with a conv that keeps its size
            y = branch(x, targets)
            out = y if out is None else out + y
        assert out is not None
        return out
