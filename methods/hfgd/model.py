"""The HFGD segmentation model (Huang et al., "HFGD: High-level Feature Guided Decoder").

backbone -> encoder (CAE or an alternative) on OS = 32 -> class kernels give OS = 32 logits;
optionally an upsampling head (SFPN / U-SFPN) produces OS = n features. With HFGM:
- the head sees the backbone levels and the encoder output only through ``detach()`` (the stop
  gradients on the OS = n paths of Fig. 3: the head never updates backbone or encoder);
- the head is followed by axial attention (optional) and classified with the *same* class kernels,
  applied with detached weights (the stop gradient inside HFGM: the kernels learn only from the
  OS = 32 path and guide the head, not vice versa).
Without HFGM the head has its own classifier and gradients flow everywhere (plain SFPN + encoder).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from methods.hfgd.attention import AxialAttention2d
from methods.hfgd.backbone import build_backbone
from methods.hfgd.decoder import SemanticFPN
from methods.hfgd.encoders import build_encoder, class_aware_regularization

UPSAMPLERS = ("none", "sfpn", "usfpn")


@dataclass(frozen=True)
class HFGDConfig:
    num_classes: int
    backbone: str = "resnet_small"
    encoder: str = "cae"  # identity | aspp | self_attention | cae
    upsampler: str = "usfpn"  # none | sfpn | usfpn
    output_stride: int = 4  # 32 (no upsampler), 4 (SFPN / U-SFPN), 2 or 1 (U-SFPN)
    hfgm: bool = True
    axial: bool = True
    decoder_channels: int = 256
    encoder_hidden: int = 512
    car_weight: float = 1.0
    os32_weight: float = 1.0

    def validate(self) -> None:
        if self.upsampler not in UPSAMPLERS:
            raise ValueError(f"unknown upsampler {self.upsampler!r}; known: {UPSAMPLERS}")
        if (self.upsampler == "none") != (self.output_stride == 32):
            raise ValueError("output stride 32 means no upsampler, and no upsampler means output stride 32")
        if self.upsampler == "sfpn" and self.output_stride != 4:
            raise ValueError("SemanticFPN produces output stride 4 only; use U-SFPN for OS 2 or 1")
        if self.upsampler == "usfpn" and self.output_stride not in (4, 2, 1):
            raise ValueError("U-SFPN output stride must be 4, 2 or 1")
        if self.hfgm and self.upsampler == "none":
            raise ValueError("HFGM guides an upsampling head; it needs upsampler sfpn or usfpn")
        if self.hfgm and self.encoder == "identity":
            raise ValueError("HFGM shares the class kernels of the encoder output; identity has no projection")
        if self.axial and self.upsampler == "none":
            raise ValueError("axial attention sits on the upsampled path; it needs an upsampler")


class HFGD(nn.Module):
    def __init__(self, config: HFGDConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.backbone = build_backbone(config.backbone)
        c2, c3, c4, c5 = self.backbone.channels
        self.encoder = build_encoder(config.encoder, c5, config.encoder_hidden, config.decoder_channels)
        enc_ch = self.encoder.out_channels
        # The class kernels: OS = 32 classifier, shared with the upsampled path under HFGM.
        self.class_kernels = nn.Conv2d(enc_ch, config.num_classes, 1)
        self.head: SemanticFPN | None = None
        self.axial: nn.Module = nn.Identity()
        self.head_classifier: nn.Conv2d | None = None
        if config.upsampler != "none":
            self.head = SemanticFPN(
                (c2, c3, c4, enc_ch),
                channels=config.decoder_channels,
                output_stride=config.output_stride,
                leading_kernel=3 if config.upsampler == "usfpn" else 1,
            )
            if config.axial:
                self.axial = AxialAttention2d(config.decoder_channels)
            if not config.hfgm:
                self.head_classifier = nn.Conv2d(config.decoder_channels, config.num_classes, 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Returns ``logits`` (final, at the output stride), ``logits32`` (OS = 32 class-kernel
        logits, when they are trained: no upsampler or HFGM) and ``regularized`` (CAE features
        for CAR, or None)."""
        c2, c3, c4, c5 = self.backbone(images)
        encoded, regularized = self.encoder(c5)
        out: dict[str, torch.Tensor | None] = {"regularized": regularized, "logits32": None}
        if self.head is None:
            out["logits"] = self.class_kernels(encoded)
            return out
        levels = [c2, c3, c4, encoded]
        if self.config.hfgm:
            levels = [x.detach() for x in levels]
        features = self.axial(self.head(levels, tuple(images.shape[-2:])))
        if self.config.hfgm:
            out["logits32"] = self.class_kernels(encoded)
            out["logits"] = F.conv2d(features, self.class_kernels.weight.detach(), self.class_kernels.bias.detach())
        else:
            assert self.head_classifier is not None
            out["logits"] = self.head_classifier(features)
        return out

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits resized (bilinear) to the input resolution."""
        logits = self.forward(images)["logits"]
        assert logits is not None
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def loss(
        self, outputs: dict[str, torch.Tensor | None], label: torch.Tensor, ignore_index: int = 255
    ) -> torch.Tensor:
        """Cross-entropy on the final logits, plus (HFGM) on the OS = 32 logits, plus CAR."""
        size = label.shape[-2:]

        def ce(logits: torch.Tensor) -> torch.Tensor:
            up = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
            return F.cross_entropy(up, label, ignore_index=ignore_index)

        logits = outputs["logits"]
        assert logits is not None
        total = ce(logits)
        if outputs["logits32"] is not None:
            total = total + self.config.os32_weight * ce(outputs["logits32"])
        if outputs["regularized"] is not None and self.config.car_weight > 0:
            reg = class_aware_regularization(outputs["regularized"], label, self.config.num_classes, ignore_index)
            total = total + self.config.car_weight * reg
        return total
