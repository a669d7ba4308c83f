"""The dataset interface every method codes against: samples of uint8 images and int64 labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

IGNORE_INDEX = 255
# MMSegmentation's ImageNet statistics, in RGB order on the 0..255 scale.
MMSEG_MEAN = (123.675, 116.28, 103.53)
MMSEG_STD = (58.395, 57.12, 57.375)


@dataclass
class SegSample:
    """One labelled image: ``image`` uint8 [3,H,W] (RGB), ``label`` int64 [H,W] (255 = ignore)."""

    image: torch.Tensor
    label: torch.Tensor
    name: str


class SegDataset(Dataset):
    """Base class of all datasets: a sized, indexable collection of :class:`SegSample`."""

    classes: tuple[str, ...] = ()
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> SegSample:
        raise NotImplementedError

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Samples ``indices`` stacked: images uint8 [B,3,H,W], labels int64 [B,H,W], names."""
        return collate([self[i] for i in indices])


def collate(samples: Sequence[SegSample]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack samples of equal size (usable as a DataLoader ``collate_fn``)."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    sizes = {tuple(s.label.shape) for s in samples}
    if len(sizes) > 1:
        raise ValueError(f"cannot stack samples of different sizes: {sorted(sizes)}")
    images = torch.stack([s.image for s in samples])
    labels = torch.stack([s.label for s in samples])
    return images, labels, [s.name for s in samples]


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB images [B,3,H,W] (or [3,H,W]) -> float32, normalised with MMSegmentation's mean/std."""
    if images.dim() not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"expected [B,3,H,W] or [3,H,W] RGB images, got shape {tuple(images.shape)}")
    shape = (3, 1, 1)
    mean = torch.tensor(MMSEG_MEAN, dtype=torch.float32, device=images.device).view(shape)
    std = torch.tensor(MMSEG_STD, dtype=torch.float32, device=images.device).view(shape)
    return (images.to(torch.float32) - mean) / std
