"""ResNet backbones written for this project (torchvision is not available).

``resnet50()`` follows the common PyTorch layout (ResNet v1.5: the stride of a down-sampling
bottleneck sits in its 3x3 convolution). ``resnet_small()`` is a narrow, shallow ResNet with basic
blocks that trains in minutes on a laptop CPU. Both return the four stage outputs at output strides
4, 8, 16 and 32, which is what the SemanticFPN-style decoders consume. Weights are randomly
initialised; ``load_backbone_weights`` loads a user-supplied state dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from methods.safe_load import safe_torch_load


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = _shortcut(cin, cout, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        # Zero-init of the last BN makes every residual block start as identity: stabler from scratch.
        nn.init.zeros_(self.body[-1].weight)
        self.shortcut = _shortcut(cin, cout, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


@dataclass(frozen=True)
class ResNetConfig:
    block: Literal["basic", "bottleneck"]
    layers: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]
    stem_width: int = 64


RESNET50 = ResNetConfig("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), 64)
RESNET_SMALL = ResNetConfig("basic", (1, 1, 1, 1), (16, 32, 64, 128), 16)


class ResNet(nn.Module):
    """Stem (7x7/2 conv + 3x3/2 max-pool) and four stages; returns [OS4, OS8, OS16, OS32] features."""

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        block = Bottleneck if config.block == "bottleneck" else BasicBlock
        self.stem = nn.Sequential(conv_bn_relu(3, config.stem_width, 7, stride=2), nn.MaxPool2d(3, stride=2, padding=1))
        stages = []
        cin = config.stem_width
        for i, (depth, width) in enumerate(zip(config.layers, config.widths, strict=True)):
            blocks = []
            for j in range(depth):
                stride = 2 if (j == 0 and i > 0) else 1
                blocks.append(block(cin, width, stride))
                cin = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.channels = tuple(w * block.expansion for w in config.widths)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


def build_backbone(name: str) -> ResNet:
    configs = {"resnet50": RESNET50, "resnet_small": RESNET_SMALL}
    if name not in configs:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(configs)}")
    return ResNet(configs[name])


def load_backbone_weights(backbone: ResNet, path: Path | str, *, trusted: bool = False) -> None:
    """Load a state dict saved from this module's ResNet (strict, so a mismatch is reported), under
    the rule of :func:`methods.safe_load.safe_torch_load` (``trusted``: the user's --trust-checkpoints)."""
    state = safe_torch_load(path, trusted=trusted)
    backbone.load_state_dict(state.get("state_dict", state), strict=True)
