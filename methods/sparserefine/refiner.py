"""The sparse refiner: per-pixel inputs of the selected pixels -> sparse feature extractor ->
linear head (refined logits y2) -> ensembler with the LR logits y1 (paper §3.2, Tables 5c-5e).

The extractor is the project's one sparse-convolution implementation (``methods.sparse``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from methods.sparse.nn import per_site_fp32, weight_dtype
from methods.sparserefine.ensemblers import build_ensembler
from methods.sparserefine.selectors import class_softmax

# Table 5d rows -> methods.sparse MinkUNet variants ("minkunet6" is the paper's default, strides
# {1,...,32}; "minkunet5" its Mask2Former-T variant of supp. §1.2), or PointNet.
ARCHS: dict[str, str] = {
    "minkunet4": "4stage",
    "minkunet5": "5stage",
    "minkunet6": "6stage",
    "minkunet8": "8level",
    "pointnet": "pointnet",
}
POINTNET_HIDDEN = (64, 128, 256)
INPUTS = ("rgb", "rgb+logits", "rgb+features", "rgb+logits+features")


@dataclass(frozen=True)
class RefinerConfig:
    num_classes: int
    arch: str = "minkunet6"
    width_mult: float = 1.0
    reps: int = 2
    inputs: str = "rgb"
    feature_channels: int = 0  # channels of the LR penultimate features (for "+features")
    ensembler: str = "gated"
    backend: str = "native"

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown extractor arch {self.arch!r}; known: {tuple(ARCHS)}")
        if self.inputs not in INPUTS:
            raise ValueError(f"unknown extractor inputs {self.inputs!r}; known: {INPUTS}")

    @property
    def uses_logits(self) -> bool:
        return "logits" in self.inputs

    @property
    def uses_features(self) -> bool:
        return "features" in self.inputs

    @property
    def in_channels(self) -> int:
        return 3 + (self.num_classes if self.uses_logits else 0) + (self.feature_channels if self.uses_features else 0)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class PixelBatch:
    """The selected pixels of a batch of images: sparse coordinates and per-pixel inputs."""

    coords: torch.Tensor  # int32 [N, 3] (batch, y, x)
    feats: torch.Tensor  # float [N, Cin]
    y1: torch.Tensor  # LR logits [N, C]
    labels: torch.Tensor | None  # int64 [N]
    spatial_shape: tuple[int, int]
    batch_size: int


def gather_pixels(
    mask: torch.Tensor,
    image: torch.Tensor,
    logits: torch.Tensor,
    config: RefinerConfig,
    features: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> PixelBatch:
    """Per-pixel inputs at ``mask`` [B, H, W]: normalised RGB [B,3,H,W], then (by ``config.inputs``)
    the LR class probabilities (softmax of the logits, as the official "p" input) and the LR
    penultimate features, concatenated per pixel."""
    b, y, x = mask.nonzero(as_tuple=True)
    rgb = image.permute(0, 2, 3, 1)[b, y, x]
    y1 = logits.permute(0, 2, 3, 1)[b, y, x]
    parts = [rgb]
    if config.uses_logits:
        parts.append(class_softmax(y1.float()).to(rgb.dtype))
    if config.uses_features:
        if features is None:
            raise ValueError("inputs with '+features' need the LR features")
        parts.append(features.permute(0, 2, 3, 1)[b, y, x].to(rgb.dtype))
    return PixelBatch(
        coords=torch.stack([b, y, x], dim=1).to(torch.int32),
        feats=torch.cat(parts, dim=1),
        y1=y1,
        labels=None if labels is None else labels[b, y, x],
        spatial_shape=(mask.shape[1], mask.shape[2]),
        batch_size=mask.shape[0],
    )


def build_extractor(config: RefinerConfig) -> tuple[nn.Module, int]:
    """(extractor, its output channels). Widths are the paper's times ``width_mult``; the extractor
    runs on ``config.backend``."""
    from methods.sparse import PointNet, minkunet_variant, set_backend

    if config.arch == "pointnet":
        hidden = tuple(max(4, round(h * config.width_mult)) for h in POINTNET_HIDDEN)
        net: nn.Module = PointNet(config.in_channels, hidden, max(4, round(32 * config.width_mult)))
    else:
        net = minkunet_variant(ARCHS[config.arch], config.in_channels, config.reps, config.width_mult)
        set_backend(net, config.backend)
    return net, int(net.out_channels)


class SparseRefiner(nn.Module):
    """Extractor + linear classification head + ensembler."""

    def __init__(self, config: RefinerConfig):
        super().__init__()
        self.config = config
        self.extractor, out_channels = build_extractor(config)
        self.head = nn.Linear(out_channels, config.num_classes)
        self.ensembler = build_ensembler(config.ensembler, config.num_classes)

    def extract(self, pixels: PixelBatch) -> torch.Tensor:
        """Extractor output features [N, F], in the order of ``pixels.coords``."""
        from methods.sparse import SparseTensor

        x = SparseTensor(
            pixels.coords,
            pixels.feats,
            stride=1,
            spatial_shape=pixels.spatial_shape,
            batch_size=pixels.batch_size,
        )
        return self.extractor(x).feats

    def refine(self, pixels: PixelBatch) -> torch.Tensor:
        """Refined logits y2 [N, C]."""
        feats = self.extract(pixels)
        with per_site_fp32(feats):
            return self.head(feats.to(weight_dtype(self.head)))

    def forward(self, pixels: PixelBatch, use_labels: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(ensembled logits y, refined logits y2). ``use_labels`` feeds the ground truth to the
        oracle ensembler (evaluation only)."""
        y2 = self.refine(pixels)
        with per_site_fp32(y2):
            y = self.ensembler(pixels.y1.float(), y2, pixels.labels if use_labels else None)
        return y, y2
