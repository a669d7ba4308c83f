"""Frozen dense-baseline outputs, computed once per (dataset, baseline) and cached.

SparseRefine trains and evaluates on the outputs of a frozen LR baseline (paper §3, "the model used
in the dense low-resolution inference is trained in advance and keeps frozen"). The LR logits are
nearest-upsampled from the LR grid, so they are stored on that grid (``factor`` times smaller) in
fp16; the penultimate features, needed only by the magnitude selector (their L2 norm, stored with
the logits) and the "+features" input variant, are a separate artifact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from methods.artifacts import cached_artifact
from methods.sparserefine.selectors import entropy_map, prediction_errors

Progress = Callable[[str], None]
PREDICT_BATCH = 4


@dataclass
class SplitOutputs:
    """One split with its frozen LR outputs. Per-image tensors, stacked along dim 0."""

    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: torch.Tensor  # int64 [N, H, W]
    logits_grid: torch.Tensor  # fp16 [N, C, H/f, W/f]
    magnitude_grid: torch.Tensor  # fp32 [N, H/f, W/f], L2 norm of the penultimate features
    factor: int
    num_classes: int
    names: list[str]

    def __len__(self) -> int:
        return self.images.shape[0]

    def _logits_on_grid(self, index: int | slice | list[int]) -> torch.Tensor:
        """LR logits [B, C, H/f, W/f] (fp32) of the given images."""
        grid = self.logits_grid[index]
        return (grid.unsqueeze(0) if grid.dim() == 3 else grid).float()

    def logits(self, index: int | slice | list[int]) -> torch.Tensor:
        """Full-resolution LR logits (fp32) of the given images, [B, C, H, W]."""
        return upsample_nearest(self._logits_on_grid(index), self.factor)

    def prediction(self, index: int | slice | list[int]) -> torch.Tensor:
        """Full-resolution LR class map [B, H, W]: the argmax on the LR grid, nearest-upsampled (equal
        to the argmax of ``logits``, at 1/factor² of its cost)."""
        return upsample_nearest(self._logits_on_grid(index).argmax(dim=1), self.factor)

    def entropy(self, index: int | slice | list[int]) -> torch.Tensor:
        """Full-resolution entropy of the LR prediction [B, H, W], computed on the LR grid and
        nearest-upsampled: ``entropy_map(logits)`` at 1/factor² of its cost, equal up to the last bit
        of a vectorised tail (bit-identical on the embedded 512x1024 splits, checked)."""
        return upsample_nearest(entropy_map(self._logits_on_grid(index)), self.factor)

    def errors(self, index: int) -> torch.Tensor:
        """Pixels [1, H, W] the LR prediction of image ``index`` gets wrong (void never counts)."""
        return prediction_errors(self.prediction(index), self.labels[index : index + 1])

    def magnitude(self, index: int | slice | list[int]) -> torch.Tensor:
        grid = self.magnitude_grid[index]
        if grid.dim() == 2:
            grid = grid.unsqueeze(0)
        return upsample_nearest(grid.unsqueeze(1), self.factor)[:, 0]


def upsample_nearest(grid: torch.Tensor, factor: int) -> torch.Tensor:
    if factor == 1:
        return grid
    return grid.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def detect_grid_factor(full: torch.Tensor) -> int:
    """The largest f in (4, 2) such that ``full`` is exactly a nearest f× upsampling of its
    f-strided subsample; 1 if none."""
    h, w = full.shape[-2:]
    for f in (4, 2):
        if h % f or w % f:
            continue
        if torch.equal(upsample_nearest(full[..., ::f, ::f], f), full):
            return f
    return 1


def load_baseline(
    kind: str,
    dataset: dict[str, Any],
    scale: dict[str, Any],
    artifacts_dir: Path,
    progress: Progress,
    seed: int,
):
    """The BASELINES helper's trained LR/HR model (trained and cached by it on first use)."""
    from methods.baselines import trained_baseline

    return trained_baseline(kind, dataset, scale, artifacts_dir, progress, seed=seed)


def _dataset(dataset: dict[str, Any], split: str):
    from methods.datasets import build_dataset

    return build_dataset(dataset, split)


def _predict_split(model, data, split: str, progress: Progress, keep_features: bool) -> dict[str, Any]:
    images, labels, grids, mags, feature_grids, names = [], [], [], [], [], []
    factor = 1
    for start in range(0, len(data), PREDICT_BATCH):
        progress(f"sparserefine: LR outputs on {split} {start}/{len(data)}")
        batch = [data[i] for i in range(start, min(start + PREDICT_BATCH, len(data)))]
        imgs = torch.stack([s.image for s in batch])
        with torch.inference_mode():
            logits, feats = model.predict(imgs)
        if start == 0:
            factor = min(detect_grid_factor(logits), detect_grid_factor(feats))
        images.append(imgs)
        labels.append(torch.stack([s.label for s in batch]).to(torch.uint8))
        grids.append(logits[..., ::factor, ::factor].to(torch.float16).clone())
        mags.append(torch.linalg.vector_norm(feats, dim=1)[..., ::factor, ::factor].clone())
        if keep_features:
            feature_grids.append(feats[..., ::factor, ::factor].to(torch.float16).clone())
        names.extend(s.name for s in batch)
    out = {
        "images": torch.cat(images),
        "labels": torch.cat(labels),
        "logits_grid": torch.cat(grids),
        "magnitude_grid": torch.cat(mags),
        "factor": int(factor),
        "num_classes": int(data.num_classes),
        "names": names,
    }
    if keep_features:
        out["features_grid"] = torch.cat(feature_grids)
    return out


def lr_outputs(
    dataset: dict[str, Any],
    scale: dict[str, Any],
    split: str,
    artifacts_dir: Path,
    progress: Progress,
    seed: int,
) -> SplitOutputs:
    """Images, labels and frozen LR logits of ``split`` (cached, keyed by the baseline's config)."""
    model = load_baseline("lr", dataset, scale, artifacts_dir, progress, seed)
    config = {"baseline": model.config, "split": split, "format": 1}
    art = cached_artifact(
        artifacts_dir,
        "sparserefine-lr-outputs",
        config,
        lambda: _predict_split(model, _dataset(dataset, split), split, progress, keep_features=False),
        progress,
    )
    return SplitOutputs(
        images=art["images"],
        labels=art["labels"].to(torch.int64),
        logits_grid=art["logits_grid"],
        magnitude_grid=art["magnitude_grid"],
        factor=art["factor"],
        num_classes=art["num_classes"],
        names=list(art["names"]),
    )


def lr_features(
    dataset: dict[str, Any],
    scale: dict[str, Any],
    split: str,
    artifacts_dir: Path,
    progress: Progress,
    seed: int,
) -> tuple[torch.Tensor, int]:
    """The LR penultimate features of ``split`` on their grid (fp16) and the grid factor (cached)."""
    model = load_baseline("lr", dataset, scale, artifacts_dir, progress, seed)
    config = {"baseline": model.config, "split": split, "format": 1}

    def build() -> dict[str, Any]:
        art = _predict_split(model, _dataset(dataset, split), split, progress, keep_features=True)
        return {"features_grid": art["features_grid"], "factor": art["factor"]}

    art = cached_artifact(artifacts_dir, "sparserefine-lr-features", config, build, progress)
    return art["features_grid"], art["factor"]


def hr_evaluation(
    dataset: dict[str, Any],
    scale: dict[str, Any],
    artifacts_dir: Path,
    progress: Progress,
    seed: int,
) -> dict[str, Any]:
    """Confusion-matrix counts of the HR dense baseline on the val split (cached)."""
    from methods.metrics import ConfusionMatrix

    model = load_baseline("hr", dataset, scale, artifacts_dir, progress, seed)

    def build() -> dict[str, Any]:
        data = _dataset(dataset, "val")
        cm = ConfusionMatrix(data.num_classes, data.ignore_index)
        for start in range(0, len(data), PREDICT_BATCH):
            progress(f"sparserefine: HR baseline on val {start}/{len(data)}")
            batch = [data[i] for i in range(start, min(start + PREDICT_BATCH, len(data)))]
            with torch.inference_mode():
                logits, _ = model.predict(torch.stack([s.image for s in batch]))
            cm.update(logits.argmax(1), torch.stack([s.label for s in batch]))
        return {"counts": cm.counts.clone(), "num_classes": data.num_classes}

    config = {"baseline": model.config, "split": "val", "format": 1}
    return cached_artifact(artifacts_dir, "sparserefine-hr-eval", config, build, progress)


def features_at(features_grid: torch.Tensor, factor: int, index: int) -> torch.Tensor:
    """Full-resolution features [1, F, H, W] (fp32) of image ``index``."""
    return upsample_nearest(features_grid[index : index + 1].float(), factor)
