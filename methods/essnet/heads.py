"""Classification heads on decoder features (ESSNet, Jain et al., "Scaling Semantic Segmentation
Beyond 1K Classes on a Single GPU").

- ``LinearHead``: the ordinary baseline, a 1x1 conv to C logits at the feature resolution, logits
  resized (bilinear) to the image and arg-maxed: memory and upsampling work grow with C.
- ``EmbeddingHead``: a 1x1 conv to a D-dimensional pixel embedding, resized to the image and
  L2-normalised; a pixel's class is its nearest class embedding (class embeddings are learned,
  L2-normalised too), found through a :mod:`methods.essnet.knn` index.
Training uses the k-nearest negative sampling loss of :func:`knn_sampled_loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods.essnet.knn import ClassIndex, build_index


class LinearHead(nn.Module):
    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)
        self.num_classes = num_classes

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Full-resolution logits [B, C, H, W]."""
        return F.interpolate(self.classifier(features), size=size, mode="bilinear", align_corners=False)

    def predict(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.forward(features, size).argmax(1)


class EmbeddingHead(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, embed_dim: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(in_channels, embed_dim, 1)
        self.class_embeddings = nn.Parameter(F.normalize(torch.randn(num_classes, embed_dim), dim=1))
        self.num_classes = num_classes

    def normalized_classes(self) -> torch.Tensor:
        return F.normalize(self.class_embeddings, dim=1)

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Full-resolution, L2-normalised pixel embeddings [B, D, H, W]."""
        up = F.interpolate(self.project(features), size=size, mode="bilinear", align_corners=False)
        return F.normalize(up, dim=1)

    def build_index(self, backend: str, chunk_bytes: int = 64 << 20) -> ClassIndex:
        return build_index(self.normalized_classes().detach(), backend, chunk_bytes)

    def predict(self, features: torch.Tensor, size: tuple[int, int], index: ClassIndex) -> torch.Tensor:
        emb = self.forward(features, size)
        b, d, h, w = emb.shape
        _, nearest = index.search(emb.permute(0, 2, 3, 1).reshape(-1, d), 1)
        return nearest.view(b, h, w)


def knn_sampled_loss(
    pixels: torch.Tensor,
    labels: torch.Tensor,
    classes: torch.Tensor,
    k: int,
    temperature: float = 0.1,
    sampling: str = "knn",
    backend: str = "torch",
    generator: torch.Generator | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Softmax cross-entropy of each pixel over its true class and k sampled negative classes.

    ``pixels`` [N, D] and ``classes`` [C, D] are L2-normalised. With ``sampling="knn"`` the
    negatives are the k class embeddings nearest to the pixel embedding other than its own class
    (found without gradient through a knn index: the hardest negatives); ``"random"`` draws them
    uniformly (the ablation in the supplementary). Logits are cosine similarities / temperature.
    """
    valid = labels != ignore_index
    pixels, labels = pixels[valid], labels[valid]
    if labels.numel() == 0:
        return pixels.sum() * 0.0
    num_classes = classes.shape[0]
    k = min(k, num_classes - 1)
    with torch.no_grad():
        if sampling == "knn":
            _, nearest = build_index(classes.detach(), backend).search(pixels.detach(), k + 1)
            is_true = nearest == labels[:, None]
            # drop the true class where it was found, else the farthest of the k + 1
            keep = ~is_true
            keep[:, -1] &= is_true.any(1)
            negatives = nearest[keep].view(-1, k)
        elif sampling == "random":
            offsets = torch.randint(1, num_classes, (labels.numel(), k), generator=generator).to(labels.device)
            negatives = (labels[:, None] + offsets) % num_classes  # never the true class
        else:
            raise ValueError(f"unknown negative sampling {sampling!r}; known: knn, random")
    candidates = torch.cat([labels[:, None], negatives], dim=1)  # [N, k + 1], true class first
    logits = torch.einsum("nd,nkd->nk", pixels, classes[candidates]) / temperature
    return F.cross_entropy(logits.float(), torch.zeros_like(labels))


def spread_regularizer(classes: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Keeps class embeddings apart: mean squared positive cosine between the given classes.

    ESSNet's supplementary reports that removing its regularization loss costs accuracy but does not
    give the formula; this is our stand-in, applied to the classes that take part in a batch.
    """
    chosen = classes[which.unique()]
    if chosen.shape[0] < 2:
        return classes.sum() * 0.0
    similarity = chosen @ chosen.t()
    off_diagonal = ~torch.eye(chosen.shape[0], dtype=torch.bool, device=classes.device)
    return similarity[off_diagonal].clamp(min=0).square().mean()
