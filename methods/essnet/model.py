"""A small DeepLabv3+-style segmenter with a swappable head, for ESSNet training-time trials.

The backbone is HFGD's small ResNet; the decoder fuses the OS 32 features (1x1 conv, upsampled)
with the OS 4 features (1x1 conv to 48 channels) through a 3x3 conv, as DeepLabv3+ does, giving
``feature_channels`` features at OS 4 on which either head works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods.essnet.heads import EmbeddingHead, LinearHead, knn_sampled_loss, spread_regularizer
from methods.hfgd.backbone import build_backbone, conv_bn_relu


class Segmenter(nn.Module):
    def __init__(self, num_classes: int, head: str, feature_channels: int = 64, embed_dim: int = 64) -> None:
        super().__init__()
        self.backbone = build_backbone("resnet_small")
        c2, _, _, c5 = self.backbone.channels
        self.context = conv_bn_relu(c5, feature_channels, 1)
        self.low_level = conv_bn_relu(c2, 48, 1)
        self.fuse = conv_bn_relu(feature_channels + 48, feature_channels, 3)
        self.head: LinearHead | EmbeddingHead
        if head == "linear":
            self.head = LinearHead(feature_channels, num_classes)
        elif head == "embedding":
            self.head = EmbeddingHead(feature_channels, num_classes, embed_dim)
        else:
            raise ValueError(f"unknown head {head!r}; known: linear, embedding")

    def features(self, images: torch.Tensor) -> torch.Tensor:
        c2, _, _, c5 = self.backbone(images)
        context = F.interpolate(self.context(c5), size=c2.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([context, self.low_level(c2)], dim=1))

    def loss(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        k: int = 10,
        sampling: str = "knn",
        backend: str = "torch",
        regularizer_weight: float = 1.0,
    ) -> torch.Tensor:
        size = tuple(labels.shape[-2:])
        features = self.features(images)
        if isinstance(self.head, LinearHead):
            return F.cross_entropy(self.head(features, size).float(), labels, ignore_index=255)
        emb = self.head(features, size)
        pixels = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1]).float()
        classes = self.head.normalized_classes()
        loss = knn_sampled_loss(pixels, labels.flatten(), classes, k, sampling=sampling, backend=backend)
        present = labels[labels != 255]
        return loss + regularizer_weight * spread_regularizer(classes, present)

    def optimizer(self, lr: float = 1e-2) -> torch.optim.Optimizer:
        """SGD with weight decay 1e-4; momentum 0.9 for the network and 0.95 for the class embedding
        matrix (ESSNet supplementary, Sec. A)."""
        embeddings = [p for n, p in self.named_parameters() if n.endswith("class_embeddings")]
        rest = [p for n, p in self.named_parameters() if not n.endswith("class_embeddings")]
        groups = [{"params": rest, "momentum": 0.9}]
        if embeddings:
            groups.append({"params": embeddings, "momentum": 0.95})
        return torch.optim.SGD(groups, lr=lr, weight_decay=1e-4)
