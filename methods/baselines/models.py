"""A small family of CPU-trainable segmentation CNNs.

Encoder: a strided 3x3 stem (OS 2), then residual stages to OS 4, 8 and 16. Decoder: FPN-style
top-down path (1x1 laterals, bilinear upsampling, sums) to OS 4, one 3x3 fusion conv (its output is
the "penultimate feature" map) and a 1x1 classifier; logits are bilinearly upsampled to the input.
Every conv is followed by its BN inside an ``nn.Sequential`` so ``harness.devices.fold_batchnorm``
folds all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ArchSpec:
    """Channel widths of the stem, of the three stages (OS 4, 8, 16) and of the decoder."""

    stem: int
    widths: tuple[int, int, int]
    blocks: tuple[int, int, int]
    decoder: int


ARCHS: dict[str, ArchSpec] = {
    "tiny": ArchSpec(stem=16, widths=(24, 48, 96), blocks=(1, 1, 1), decoder=32),
    "small": ArchSpec(stem=24, widths=(32, 64, 128), blocks=(1, 2, 2), decoder=48),
    "base": ArchSpec(stem=32, widths=(48, 96, 192), blocks=(2, 2, 2), decoder=64),
}
ARCH_NAMES = tuple(ARCHS)


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> optional ReLU, as a Sequential so the BN can be folded."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, act: bool = True):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """Basic ResNet block; a strided 1x1 projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.branch = nn.Sequential(ConvBNAct(cin, cout, 3, stride), ConvBNAct(cout, cout, 3, act=False))
        self.shortcut: nn.Module = (
            nn.Identity() if stride == 1 and cin == cout else ConvBNAct(cin, cout, 1, stride, act=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.branch(x) + self.shortcut(x))


def _stage(cin: int, cout: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(cin, cout, 2), *(ResidualBlock(cout, cout) for _ in range(blocks - 1)))


class SegCNN(nn.Module):
    """Compact encoder-decoder; ``forward`` gives logits at the input resolution."""

    def __init__(self, num_classes: int, arch: str = "small"):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown baseline arch {arch!r}; known: {', '.join(ARCH_NAMES)}")
        spec = ARCHS[arch]
        self.arch = arch
        self.num_classes = num_classes
        self.feature_channels = spec.decoder
        self.stem = ConvBNAct(3, spec.stem, 3, 2)
        ins = (spec.stem, *spec.widths[:-1])
        self.stages = nn.ModuleList(_stage(i, o, n) for i, o, n in zip(ins, spec.widths, spec.blocks, strict=True))
        self.laterals = nn.ModuleList(ConvBNAct(w, spec.decoder, 1) for w in spec.widths)
        self.fuse = ConvBNAct(spec.decoder, spec.decoder, 3)
        self.classifier = nn.Conv2d(spec.decoder, num_classes, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features at OS 4 of the input."""
        skips = []
        y = self.stem(x)
        for stage in self.stages:
            y = stage(y)
            skips.append(y)
        top = self.laterals[-1](skips[-1])
        for lateral, skip in zip(reversed(self.laterals[:-1]), reversed(skips[:-1]), strict=True):
            top = lateral(skip) + F.interpolate(top, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(top)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, features), both bilinearly upsampled to the input resolution."""
        feats = self.features(x)
        logits = self.classifier(feats)
        size = x.shape[-2:]
        return (
            F.interpolate(logits, size=size, mode="bilinear", align_corners=False),
            F.interpolate(feats, size=size, mode="bilinear", align_corners=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.features(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
