"""Extra encoding modules applied to the OS = 32 backbone features (HFGD Table 1 variants).

Each encoder maps backbone C5 features to ``out_channels`` and returns ``(features, regularized)``
where ``regularized`` is the tensor the class-aware regularization acts on (None if it has none).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods.hfgd.attention import SelfAttention2d
from methods.hfgd.backbone import conv_bn_relu

ENCODERS = ("identity", "aspp", "self_attention", "cae")
EncoderOutput = tuple[torch.Tensor, torch.Tensor | None]


class IdentityEncoder(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.out_channels = in_channels

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        return x, None


class ASPPEncoder(nn.Module):
    """DeepLabv3+ ASPP: 1x1, three dilated 3x3 and image pooling branches, concatenated and projected.

    The dilation rates are DeepLab's OS = 16 rates (6, 12, 18) halved, since the input is at OS = 32.
    """

    def __init__(self, in_channels: int, out_channels: int, rates: tuple[int, ...] = (3, 6, 9)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, out_channels, 1)]
            + [conv_bn_relu(in_channels, out_channels, 3, dilation=r) for r in rates]
        )
        self.pool_branch = conv_bn_relu(in_channels, out_channels, 1)
        self.project = conv_bn_relu(out_channels * (len(rates) + 2), out_channels, 1)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        pooled = self.pool_branch(F.adaptive_avg_pool2d(x, 1)).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1)), None


class SelfAttentionEncoder(nn.Module):
    """Non-local self-attention on a 1x1-projected feature map, followed by a 1x1 output conv."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int) -> None:
        super().__init__()
        self.lead = conv_bn_relu(in_channels, hidden, 1)
        self.attention = SelfAttention2d(hidden)
        self.trail = conv_bn_relu(hidden, out_channels, 1)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        return self.trail(self.attention(self.lead(x))), None


class ContextAugmentedEncoder(nn.Module):
    """HFGD's CAE: two leading 1x1 convs to ``hidden`` (512 in the paper), full self-attention whose
    output is regularized by class-aware regularization (CAR), and a trailing 1x1 conv."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int) -> None:
        super().__init__()
        self.lead = nn.Sequential(conv_bn_relu(in_channels, hidden, 1), conv_bn_relu(hidden, hidden, 1))
        self.attention = SelfAttention2d(hidden)
        self.trail = conv_bn_relu(hidden, out_channels, 1)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        attended = self.attention(self.lead(x))
        return self.trail(attended), attended


def build_encoder(name: str, in_channels: int, hidden: int, out_channels: int) -> nn.Module:
    if name == "identity":
        return IdentityEncoder(in_channels)
    if name == "aspp":
        return ASPPEncoder(in_channels, out_channels)
    if name == "self_attention":
        return SelfAttentionEncoder(in_channels, hidden, out_channels)
    if name == "cae":
        return ContextAugmentedEncoder(in_channels, hidden, out_channels)
    raise ValueError(f"unknown encoder {name!r}; known: {ENCODERS}")


def class_aware_regularization(
    features: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Class-aware regularization of pixel features (after CAR, Huang et al. ECCV 2022).

    HFGD only says the CAE self-attention is "regularized by CAR"; we implement CAR's two
    centre-based terms on L2-normalised features, with class centres taken from the ground truth
    of the batch (nearest-resized to the feature map):
    - intra-class: 1 - cos(pixel, centre of its class), averaged over labelled pixels;
    - inter-class: relu(cos(centre_a, centre_b)) averaged over pairs of present classes
      (centres of different classes are pushed to be at least orthogonal).
    """
    b, c, h, w = features.shape
    small = F.interpolate(label[:, None].float(), size=(h, w), mode="nearest")[:, 0].long().flatten()
    feats = F.normalize(features.float().permute(0, 2, 3, 1).reshape(-1, c), dim=1)
    valid = (small != ignore_index) & (small >= 0) & (small < num_classes)
    if not bool(valid.any()):
        return features.sum() * 0.0
    feats, small = feats[valid], small[valid]
    onehot = F.one_hot(small, num_classes).to(feats.dtype)  # [N, K]
    counts = onehot.sum(0)
    present = counts > 0
    centres = F.normalize((onehot.t() @ feats)[present] / counts[present, None], dim=1)
    remap = torch.cumsum(present.long(), 0) - 1
    intra = (1.0 - (feats * centres[remap[small]]).sum(1)).mean()
    k = centres.shape[0]
    if k < 2:
        return intra
    similarity = centres @ centres.t()
    off_diagonal = ~torch.eye(k, dtype=torch.bool, device=similarity.device)
    inter = similarity[off_diagonal].clamp(min=0).mean()
    return intra + inter
