"""PointRend as SparseRefine Table 3b's comparator: refine the most uncertain points of a reduced-resolution
grid with a point-wise MLP on the coarse logits and the baseline's features, both bilinearly
interpolated from the frozen LR outputs (the image itself is never seen at high resolution: the
information lost by downsampling stays lost, which is the paper's argument).

- The point grid is ``scale`` x the full resolution (the paper runs PointRend at 704x1408 of
  1024x2048: 0.6875); its prediction is nearest-upsampled to full resolution for evaluation.
- Uncertainty is PointRend's: minus the gap between the two largest coarse logits; the ``density``
  share of the grid's points with the highest uncertainty is refined (top-k per image, no threshold).
- The head is PointRend's MLP (``layers`` 1x1 layers of ``hidden`` channels, the coarse logits
  concatenated again before every layer), trained with cross-entropy on the same top-k points of the
  train split, AdamW, the refiner's epochs and learning rate.
- Every image has its own grid (its own size x ``scale``) and its own top-k; a split's images may
  differ in size, and training reads one image per step (nothing of a split is held in memory).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = 255


@dataclass(frozen=True)
class PointRendConfig:
    num_classes: int
    feature_channels: int
    hidden: int = 256
    layers: int = 3
    scale: float = 0.6875
    density: float = 0.118


class PointHead(nn.Module):
    def __init__(self, config: PointRendConfig):
        super().__init__()
        c, f, h = config.num_classes, config.feature_channels, config.hidden
        self.layers = nn.ModuleList(nn.Conv1d((f if i == 0 else h) + c, h, 1) for i in range(config.layers))
        self.out = nn.Conv1d(h + c, c, 1)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """Logits [B, C, P] of points with features ``fine`` [B, F, P] and coarse logits [B, C, P]."""
        x = fine
        for layer in self.layers:
            x = F.relu(layer(torch.cat([x, coarse], 1)))
        return self.out(torch.cat([x, coarse], 1))


def reduced_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return max(1, round(height * scale)), max(1, round(width * scale))


@dataclass
class Points:
    index: torch.Tensor  # [B, K] flat indices into the reduced grid
    coarse_map: torch.Tensor  # [B, C, h, w] coarse logits on the reduced grid
    coarse: torch.Tensor  # [B, C, K]
    fine: torch.Tensor  # [B, F, K]


def resample(grid: torch.Tensor, size: tuple[int, int], covered: tuple[int, int] | None = None) -> torch.Tensor:
    """``grid`` [B, C, h0, w0] bilinearly sampled at the pixel centres of a ``size`` grid laid over
    the ``covered`` cells (default: all of them, F.interpolate's own mapping). An odd-sided image's
    LR grid holds ceil(side / factor) cells and its last cell reaches past the image: ``covered`` is
    then the image's extent in cells (side / factor), so the point grid spans the image itself."""
    full = tuple(grid.shape[-2:])
    if covered is None or tuple(covered) == full:
        return F.interpolate(grid.float(), size=size, mode="bilinear", align_corners=False)
    axes = []
    for n, extent, cells in zip(size, covered, full, strict=True):
        centres = (torch.arange(n, dtype=torch.float64) + 0.5) * extent / n  # in LR cells
        axes.append((2.0 * centres / cells - 1.0).float())
    ys, xs = torch.meshgrid(axes[0], axes[1], indexing="ij")
    where = torch.stack([xs, ys], dim=-1).expand(grid.shape[0], -1, -1, -1)
    return F.grid_sample(grid.float(), where, mode="bilinear", padding_mode="border", align_corners=False)


def select_points(
    logits_grid: torch.Tensor,
    features_grid: torch.Tensor,
    size: tuple[int, int],
    k: int,
    covered: tuple[int, int] | None = None,
) -> Points:
    """The ``k`` most uncertain points of the reduced grid and their inputs, from the LR-grid logits
    [B, C, h0, w0] and features [B, F, h0, w0] (bilinear, pixel centres; ``covered`` as
    :func:`resample`)."""
    coarse_map = resample(logits_grid, size, covered)
    top2 = coarse_map.topk(2, dim=1).values
    uncertainty = (top2[:, 1] - top2[:, 0]).flatten(1)
    index = uncertainty.topk(k, dim=1).indices
    fine_map = resample(features_grid, size, covered)
    gather = index[:, None, :]
    coarse = coarse_map.flatten(2).gather(2, gather.expand(-1, coarse_map.shape[1], -1))
    fine = fine_map.flatten(2).gather(2, gather.expand(-1, fine_map.shape[1], -1))
    return Points(index, coarse_map, coarse, fine)


def grid_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Full-resolution labels [B, H, W] at the reduced grid's pixel centres (nearest) [B, h, w]."""
    height, width = labels.shape[-2:]
    ys = ((torch.arange(size[0]) + 0.5) * height / size[0]).long().clamp(max=height - 1)
    xs = ((torch.arange(size[1]) + 0.5) * width / size[1]).long().clamp(max=width - 1)
    return labels[:, ys][:, :, xs]


def predict(head: PointHead, points: Points, full_size: tuple[int, int]) -> torch.Tensor:
    """Refined class map [B, H, W]: the coarse argmax on the reduced grid with the points' head
    argmax written in, nearest-upsampled to ``full_size``."""
    grid = points.coarse_map.argmax(1).flatten(1)
    refined = head(points.fine, points.coarse).argmax(1)
    grid = grid.scatter(1, points.index, refined)
    h, w = points.coarse_map.shape[-2:]
    out = F.interpolate(grid.view(-1, 1, h, w).float(), size=full_size, mode="nearest")
    return out[:, 0].long()


def points_per_image(size: tuple[int, int], density: float) -> int:
    return max(1, min(size[0] * size[1], round(density * size[0] * size[1])))


@dataclass(frozen=True)
class ImageGrid:
    """The point grid of one image: its full size, the reduced grid, the top-k and the extent of
    the image on its LR grid (cells, fractional for an odd side)."""

    full: tuple[int, int]
    size: tuple[int, int]
    k: int
    covered: tuple[float, float]

    @classmethod
    def of(cls, full: tuple[int, int], config: PointRendConfig, factor: int) -> ImageGrid:
        size = reduced_size(full[0], full[1], config.scale)
        covered = (full[0] / factor, full[1] / factor)
        return cls(tuple(full), size, points_per_image(size, config.density), covered)  # type: ignore[arg-type]

    def points(self, logits_grid: torch.Tensor, features_grid: torch.Tensor) -> Points:
        return select_points(logits_grid, features_grid, self.size, self.k, self.covered)


def image_points(split, features_grid, index: int, config: PointRendConfig) -> tuple[ImageGrid, Points]:
    """Image ``index`` of ``split``: its grid and its most uncertain points."""
    grid = ImageGrid.of(split.size(index), config, split.factor)
    return grid, grid.points(split.logits_grid[index : index + 1], features_grid[index : index + 1])


def train_head(
    config: PointRendConfig,
    train,
    features_grid,
    epochs: int,
    lr: float,
    seed: int,
    progress,
) -> tuple[PointHead, dict]:
    """Train the point head on the top-k uncertain points of every train image, one image per step
    (its points recomputed from the frozen LR outputs each time it comes up: cheap, and the split
    is never held in memory)."""
    torch.manual_seed(seed)
    head = PointHead(config)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.05)
    steps = max(1, epochs * len(train))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    points_per: list[int] = []
    start = time.perf_counter()
    head.train()
    for epoch in range(max(1, epochs)):
        order = torch.randperm(len(train), generator=gen).tolist()
        for j in train.stream(order):
            with torch.no_grad():
                grid, pts = image_points(train, features_grid, j, config)
                target = grid_labels(train.labels[j : j + 1], grid.size).flatten(1).gather(1, pts.index)
            if epoch == 0:
                points_per.append(grid.k)
            if bool((target == IGNORE).all()):
                continue
            loss = F.cross_entropy(head(pts.fine, pts.coarse), target, ignore_index=IGNORE)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        progress(f"pointrend: epoch {epoch + 1}/{epochs}")
    head.eval()
    return head, {
        "seconds": time.perf_counter() - start,
        "steps": len(losses),
        "points_per_image": points_per[0] if len(set(points_per)) == 1 else sorted(set(points_per)),
        "final_loss": sum(losses[-10:]) / max(1, len(losses[-10:])),
    }
