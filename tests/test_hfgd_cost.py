"""The MAC counter (fvcore: one multiply-add = one flop) against hand counts."""

from __future__ import annotations

import torch
from torch import nn

from methods.hfgd.attention import AxialAttention2d, SelfAttention2d
from methods.hfgd.backbone import build_backbone
from methods.hfgd.cost import count_macs


def test_conv_and_linear_macs_match_a_hand_count() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4 * 100, 7)
    )
    total, _ = count_macs(model, torch.zeros(1, 3, 10, 10))
    assert total == 100 * 8 * 3 * 9 + 100 * 4 * 8 + 400 * 7


def test_self_attention_macs_match_a_hand_count() -> None:
    n, c, key = 9, 4, 2  # a 3x3 map, 4 channels, 2 key channels
    total, _ = count_macs(SelfAttention2d(c, key), torch.zeros(1, c, 3, 3))
    projections = n * c * key * 2 + n * c * c * 2  # q, k; v, out (BN folded into out)
    attention = n * n * key + n * n * c  # scores, weighted sum
    assert total == projections + attention


def test_axial_attention_macs_match_a_hand_count() -> None:
    c, h, w = 32, 5, 7
    total, _ = count_macs(AxialAttention2d(c), torch.zeros(1, c, h, w))
    per_axis_projections = h * w * (3 * c * c + c * c)
    attention = h * w * (h * c * 2) + h * w * (w * c * 2)  # column pass, row pass: scores + sum
    assert total == 2 * per_axis_projections + attention


def test_resnet50_at_224_is_the_well_known_4_1_gmacs() -> None:
    total, _ = count_macs(build_backbone("resnet50"), torch.zeros(1, 3, 224, 224))
    # 4.09 G with the 2048x1000 classifier (2.05 M) that a segmentation backbone does not have
    assert abs(total / 1e9 - 4.089) < 0.01
