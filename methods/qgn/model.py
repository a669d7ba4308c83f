"""Quadtree Generating Network (QGN §3.2-3.3, supp. A.1).

Encoder (ResNet, stride 32) -> level-L activations A_L (dense: every cell is a root) -> prediction
Q_L. Then for j = L-1 .. 0: the propagation scheme picks the active sites of level j+1 to refine;
a decoder block (residual units of submanifold sparse 3x3 convolutions from ``methods.sparse``) runs
on those sites only, its output is upsampled 2x2 nearest (eq. 11) to level j, a 1x1 skip connection
from the encoder (gathered at the new sites) is added, and a 1x1 prediction layer gives Q_j with
k+1 outputs (index k = composite).

The encoder features at 1/2 .. 1/2**(L-1) feed the skips of levels 1..L-1; level 0 has no encoder
feature at full resolution (Block0 already subsamples), so its skip is a 1x1 projection of the
normalised input image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from methods.qgn.encoder import ENCODER_SPECS, ResNetEncoder
from methods.qgn.schemes import leaf_labels, propagation_mask
from methods.qgn.sparse_ops import SparseResidualUnit, gather_dense, upsample_sites
from methods.qgn.tpyramid import upsample_nearest

AUTO_DENSE_FRACTION = 0.05


@dataclass(frozen=True)
class DecoderSpec:
    """``root`` = channels of A_L; ``widths[i]``/``units[i]`` = block producing level L-1-i."""

    root: int
    widths: tuple[int, ...]
    units: tuple[int, ...]


DECODER_SPECS: dict[str, DecoderSpec] = {
    "small": DecoderSpec(96, (64, 48, 32, 32, 24), (1, 1, 1, 1, 1)),
    # QGN Table 7: Trans4..Trans0, 512 -> 256, 128, 64, 64, 64 with 6, 4, 3, 3, 3 units (38 layers)
    "resnet50": DecoderSpec(512, (256, 128, 64, 64, 64), (6, 4, 3, 3, 3)),
    "resnet101": DecoderSpec(512, (256, 128, 64, 64, 64), (6, 4, 3, 3, 3)),
}


@dataclass
class LevelOutput:
    """Predictions of one quadtree level at its active sites."""

    level: int
    coords: torch.Tensor  # [N, 3] (b, y, x) on the level's grid
    logits: torch.Tensor  # [N, k+1]
    propagated: torch.Tensor | None = None  # [N] bool, None at level 0


@dataclass
class QuadtreeOutput:
    levels: list[LevelOutput] = field(default_factory=list)  # from level L down to the last reached
    image_shape: tuple[int, int, int] = (0, 0, 0)  # (B, H, W) of the (padded) input

    def active_sites(self) -> dict[int, int]:
        return {out.level: int(out.coords.shape[0]) for out in self.levels}


class DecoderBlock(nn.Module):
    """Residual sparse units at level j+1 (the last changes the width), to be upsampled to level j."""

    def __init__(self, cin: int, cout: int, units: int, backend: str):
        super().__init__()
        self.units = nn.ModuleList(
            SparseResidualUnit(cin, cin if u < units - 1 else cout, backend) for u in range(units)
        )

    def forward(self, x, backend: str):  # SparseTensor -> SparseTensor
        for unit in self.units:
            unit.set_backend(backend)
            x = unit(x)
        return x


class QGN(nn.Module):
    def __init__(
        self,
        num_classes: int,
        *,
        arch: str = "small",
        levels: int = 5,
        backend: str = "auto",
    ):
        super().__init__()
        if arch not in ENCODER_SPECS:
            raise ValueError(f"unknown QGN architecture {arch!r}; known: {sorted(ENCODER_SPECS)}")
        if not 1 <= levels <= 5:
            raise ValueError(f"levels must be in 1..5, got {levels}")
        self.num_classes = num_classes
        self.composite = num_classes
        self.levels = levels
        self.backend = backend
        self.encoder = ResNetEncoder(ENCODER_SPECS[arch], depth=levels)
        dec = DECODER_SPECS[arch]
        widths = dec.widths[5 - levels :]
        units = dec.units[5 - levels :]
        enc_channels = self.encoder.out_channels  # level 1..L
        self.root = nn.Sequential(
            nn.Conv2d(enc_channels[levels - 1], dec.root, 1, bias=False), nn.BatchNorm2d(dec.root), nn.ReLU()
        )
        self.root_head = nn.Linear(dec.root, num_classes + 1)
        self.blocks = nn.ModuleList()
        self.skips = nn.ModuleList()
        self.heads = nn.ModuleList()
        cin = dec.root
        for i in range(levels):
            level = levels - 1 - i
            self.blocks.append(DecoderBlock(cin, widths[i], units[i], "native" if backend == "auto" else backend))
            skip_in = 3 if level == 0 else enc_channels[level - 1]
            self.skips.append(nn.Linear(skip_in, widths[i]))
            self.heads.append(nn.Linear(widths[i], num_classes + 1))
            cin = widths[i]

    # -- forward ---------------------------------------------------------------------------------

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features [image, level 1, ..., level L] (the image serves the level-0 skip)."""
        return [image, *self.encoder(image)]

    def decode(
        self,
        feats: list[torch.Tensor],
        scheme: str,
        targets: list[torch.Tensor] | None = None,
    ) -> QuadtreeOutput:
        """Run the decoder with propagation ``scheme``; ``targets[l]`` is the T-pyramid level l
        ``[B, H_l, W_l]`` (composite = num_classes), needed by ``gtc``."""
        image = feats[0]
        batch, _, height, width = image.shape
        root = self.root(feats[self.levels])
        b, _, hl, wl = root.shape
        coords = torch.stack(
            torch.meshgrid(*(torch.arange(n, device=root.device) for n in (b, hl, wl)), indexing="ij"), dim=-1
        ).reshape(-1, 3)
        values = root.permute(0, 2, 3, 1).reshape(-1, root.shape[1])
        out = QuadtreeOutput(image_shape=(batch, height, width))
        logits = self.root_head(values)
        level = self.levels
        for i in range(self.levels):
            target = _gather_targets(targets, level, coords)
            keep = propagation_mask(scheme, logits.detach(), target, self.composite)
            out.levels.append(LevelOutput(level, coords, logits, keep))
            if not bool(keep.any()):
                return out
            rows = torch.nonzero(keep).squeeze(1)
            density = rows.numel() / (batch * (height >> level) * (width >> level))
            coords, values = coords.index_select(0, rows), values.index_select(0, rows)
            sites = _sparse(coords, values, level, (height, width), batch)
            x = self.blocks[i](sites, self._backend_for(density))
            coords, values = upsample_sites(x.coords, x.feats)
            level -= 1
            values = values + self.skips[i](gather_dense(feats[level], coords).to(values.dtype))
            logits = self.heads[i](values)
        out.levels.append(LevelOutput(0, coords, logits, None))
        return out

    def _backend_for(self, density: float) -> str:
        """``auto``: the dense backend (conv2d on the zero-filled grid, read at the sites) when at least
        5% of the cells are active (faster on CPU at the harness's resolutions), else the native
        sparse GEMM. Both compute the same submanifold conv; only speed differs."""
        if self.backend != "auto":
            return self.backend
        return "dense" if density >= AUTO_DENSE_FRACTION else "native"

    def forward(self, image: torch.Tensor, scheme: str, targets: list[torch.Tensor] | None = None) -> QuadtreeOutput:
        return self.decode(self.encode(image), scheme, targets)

    # -- inference -------------------------------------------------------------------------------

    def dense_prediction(self, out: QuadtreeOutput) -> torch.Tensor:
        """Accumulate the leaves of the predicted quadtree into a label map [B, H, W].

        Top-down: every active site paints its cell with its leaf label (arg-max over the k real
        classes, i.e. the runner-up when composite wins); finer levels overwrite their parents, so
        each pixel keeps the label of the deepest level at which it was active (its leaf).
        """
        batch, height, width = out.image_shape
        top = out.levels[0].level
        device = out.levels[0].coords.device
        labels = torch.zeros(batch, height >> top, width >> top, dtype=torch.int64, device=device)
        for i, lv in enumerate(out.levels):
            if i > 0:
                labels = upsample_nearest(labels, 1 << (out.levels[i - 1].level - lv.level))
            c = lv.coords
            labels[c[:, 0], c[:, 1], c[:, 2]] = leaf_labels(lv.logits.float(), self.composite)
        return upsample_nearest(labels, 1 << out.levels[-1].level)


def _gather_targets(targets: list[torch.Tensor] | None, level: int, coords: torch.Tensor) -> torch.Tensor | None:
    if targets is None:
        return None
    t = targets[level]
    return t[coords[:, 0], coords[:, 1], coords[:, 2]]


def _sparse(coords: torch.Tensor, feats: torch.Tensor, level: int, shape: tuple[int, int], batch: int):
    from methods.sparse.tensor import SparseTensor

    return SparseTensor(coords, feats, stride=1 << level, spatial_shape=shape, batch_size=batch)
