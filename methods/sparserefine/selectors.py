"""Pixel selectors (paper §3.2, Table 5a, supplementary §2.1).

A selector turns the dense low-resolution outputs into a boolean mask ``[B, H, W]`` of pixels to
refine. Every selector is judged against the pixels the LR prediction gets wrong (recall, precision)
and by how many pixels it keeps (density).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

ENTROPY_EPS = 1e-5  # the official code clamps probabilities at 1e-5 before the log
SELECTORS = ("entropy", "magnitude", "random", "learnable", "oracle")


def class_softmax(logits: torch.Tensor, dim: int = -1, log: bool = False) -> torch.Tensor:
    """softmax (``log``: log_softmax) of ``logits`` along ``dim``.

    Per-pixel logits [N, C] are normalised on a transposed copy: torch's CPU kernel along a short
    contiguous last dim (C = 2..20 classes) is ~15x slower than across a long one (84k x 11 here:
    6.1 ms against 0.36 ms), and the refiner's training spends its time on exactly these."""
    fn = torch.log_softmax if log else torch.softmax
    if logits.dim() == 2 and dim in (-1, 1) and logits.device.type == "cpu":
        return fn(logits.t().contiguous(), dim=0).t()
    return fn(logits, dim=dim)


def entropy_map(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Per-pixel entropy −Σ p·log(max(p, 1e-5)) of softmax(logits) along ``dim`` (kept out)."""
    return entropy_of_probs(class_softmax(logits.float(), dim=dim), dim)


def entropy_of_probs(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``entropy_map`` from probabilities already computed (saves a softmax)."""
    return -(probs * torch.log(probs.clamp(min=ENTROPY_EPS))).sum(dim=dim)


def entropy_select(logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """Pixels whose entropy exceeds ``alpha``; logits [B, C, H, W] -> mask [B, H, W]."""
    return entropy_map(logits) > alpha


def feature_magnitude(features: torch.Tensor) -> torch.Tensor:
    """L2 norm over channels of the penultimate features [B, F, H, W] -> [B, H, W]."""
    return torch.linalg.vector_norm(features.float(), dim=1)


def magnitude_select(features: torch.Tensor, threshold: float) -> torch.Tensor:
    return feature_magnitude(features) > threshold


def random_select(shape: tuple[int, ...], density: float, generator: torch.Generator) -> torch.Tensor:
    """Each pixel independently with probability ``density``."""
    return torch.rand(shape, generator=generator) < density


def lr_errors(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Pixels the LR prediction gets wrong (ignored pixels are never errors)."""
    return prediction_errors(logits.argmax(dim=1), labels, ignore_index)


def prediction_errors(prediction: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Pixels where a class map differs from the labels (ignored pixels are never errors)."""
    return (prediction != labels) & (labels != ignore_index)


def oracle_select(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """The oracle selector: exactly the LR errors, read off the ground truth."""
    return lr_errors(logits, labels, ignore_index)


class LearnableSelector(nn.Module):
    """Supplementary §2.1: two 3×3 convs on RGB, concatenated with the logits, an MLP to one score.

    ``forward`` returns the per-pixel probability that the LR prediction is wrong, [B, H, W];
    ``select`` thresholds it. The MLP runs as 1×1 convolutions (the same per-pixel linear layers).
    """

    def __init__(
        self,
        num_classes: int,
        hidden_channels: int = 16,
        out_channels: int = 16,
        mlp_hidden: int = 32,
    ):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(3, hidden_channels, 3, 1, 1),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, out_channels, 3, 1, 1),
            nn.ReLU(),
        )
        self.mlp = nn.Sequential(
            nn.Conv2d(num_classes + out_channels, mlp_hidden, 1),
            nn.ReLU(),
            nn.Conv2d(mlp_hidden, mlp_hidden, 1),
            nn.ReLU(),
            nn.Conv2d(mlp_hidden, 1, 1),
        )

    def score_logits(self, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid scores [B, H, W]; image is normalised RGB [B, 3, H, W]."""
        feats = torch.cat([self.conv(image), logits.to(image.dtype)], dim=1)
        return self.mlp(feats)[:, 0]

    def forward(self, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.score_logits(image, logits))

    def select(self, image: torch.Tensor, logits: torch.Tensor, threshold: float) -> torch.Tensor:
        return self.forward(image, logits) > threshold


@dataclass
class SelectionCounts:
    """Running counts for density / recall / precision of a selector against the LR errors."""

    selected: int = 0
    errors: int = 0
    hits: int = 0  # selected and an error
    pixels: int = 0

    def update(self, mask: torch.Tensor, errors: torch.Tensor) -> None:
        self.selected += int(mask.sum())
        self.errors += int(errors.sum())
        self.hits += int((mask & errors).sum())
        self.pixels += mask.numel()

    @property
    def density(self) -> float:
        return 100.0 * self.selected / max(self.pixels, 1)

    @property
    def recall(self) -> float:
        return 100.0 * self.hits / max(self.errors, 1)

    @property
    def precision(self) -> float:
        return 100.0 * self.hits / max(self.selected, 1)

    def as_dict(self) -> dict[str, float]:
        return {
            "density": self.density,
            "recall": self.recall,
            "precision": self.precision,
        }


def threshold_for_density(scores: torch.Tensor, density: float, max_samples: int = 2_000_000) -> float:
    """The score threshold above which a fraction ``density`` of ``scores`` lies.

    Large inputs are subsampled with a fixed stride (deterministic), enough for a quantile.
    """
    flat = scores.reshape(-1).float()
    if flat.numel() > max_samples:
        flat = flat[:: flat.numel() // max_samples + 1]
    if density >= 1.0:
        return float(flat.min()) - 1.0
    if density <= 0.0:
        return float(flat.max())
    return float(torch.quantile(flat, 1.0 - density))
