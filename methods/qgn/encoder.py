"""ResNet encoders for QGN (supp. A.1, Table 7) and the dilated-ResNet baseline of QGN Table 6.

Deep stem (three 3x3 convolutions, the first with stride 2) as Block0, then residual stages, each
halving the resolution, so that stage ``l`` outputs features at ``1 / 2**l`` (l = 1..5). The
dilated variant replaces the strides of the last two stages by dilation 2 and 4 (output stride 8),
as in the paper's baseline. Weights are randomly initialised (no pre-training in this harness).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class EncoderSpec:
    """Channel and unit counts; ``widths[0]`` is the stem (Block0) width, ``widths[1:]`` the stage
    output widths of Block1..Block4."""

    block: str  # "basic" | "bottleneck"
    widths: tuple[int, ...]
    units: tuple[int, ...]


ENCODER_SPECS: dict[str, EncoderSpec] = {
    # small CPU-trainable encoder for the embedded default
    "small": EncoderSpec("basic", (16, 32, 64, 128, 192), (1, 1, 1, 1)),
    # QGN Table 7 (ResNet-50) and its ResNet-101 sibling (Table 6)
    "resnet50": EncoderSpec("bottleneck", (64, 256, 512, 1024, 2048), (3, 4, 6, 3)),
    "resnet101": EncoderSpec("bottleneck", (64, 256, 512, 1024, 2048), (3, 4, 23, 3)),
}


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class BasicUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dilation: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, dilation, dilation, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, dilation, dilation, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = _shortcut(cin, cout, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class BottleneckUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dilation: int):
        super().__init__()
        mid = cout // 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, dilation, dilation, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = _shortcut(cin, cout, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if cin == cout and stride == 1:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNetEncoder(nn.Module):
    """Returns the features of Block0..Block{depth-1}: ``feats[l-1]`` at stride ``2**l``.

    ``depth`` (1..5) is the number of blocks kept, i.e. the number of quadtree levels above the
    pixels. ``dilate_last_two`` turns Block3/Block4 into stride-1 dilated stages (the baseline).
    """

    def __init__(self, spec: EncoderSpec, depth: int = 5, dilate_last_two: bool = False):
        super().__init__()
        if not 1 <= depth <= 5:
            raise ValueError(f"encoder depth must be in 1..5, got {depth}")
        self.spec = spec
        stem = spec.widths[0]
        self.block0 = nn.Sequential(
            conv_bn_relu(3, stem // 2, 2), conv_bn_relu(stem // 2, stem // 2), conv_bn_relu(stem // 2, stem)
        )
        unit_cls = BasicUnit if spec.block == "basic" else BottleneckUnit
        self.stages = nn.ModuleList()
        cin = stem
        for index in range(depth - 1):
            cout, count = spec.widths[index + 1], spec.units[index]
            dilation = 1
            stride = 2
            if dilate_last_two and index >= 2:
                stride, dilation = 1, 2 ** (index - 1)
            units: list[nn.Module] = []
            if index == 0:
                units.append(nn.MaxPool2d(3, 2, 1))
                stride = 1
            for u in range(count):
                units.append(unit_cls(cin if u == 0 else cout, cout, stride if u == 0 else 1, dilation))
            self.stages.append(nn.Sequential(*units))
            cin = cout
        self.out_channels = [spec.widths[0]] + [spec.widths[i + 1] for i in range(depth - 1)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.block0(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        return feats


class DilatedBaseline(nn.Module):
    """Dilated ResNet (output stride 8) + one 1x1 convolution + bilinear upsampling (QGN §4.4)."""

    def __init__(self, spec: EncoderSpec, num_classes: int):
        super().__init__()
        self.encoder = ResNetEncoder(spec, depth=5, dilate_last_two=True)
        self.classifier = nn.Conv2d(self.encoder.out_channels[-1], num_classes, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[-1]

    def decode(self, feats: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        logits = self.classifier(feats)
        return nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), tuple(x.shape[-2:]))
