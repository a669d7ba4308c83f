"""Reading a split batch by batch: a ``torch.utils.data.DataLoader`` over a :class:`SegDataset`, so no
split is ever held in memory, images of different sizes pass through unchanged (a batch is a list of
samples), and file decoding can run in worker processes.

The worker count is the scale setting ``workers`` (``scales: {default: {workers: 4}}``); 0 (the
default) reads in the trial's own process. Workers change speed only, never a result: batches come
back in index order.

Training crops follow MMSegmentation's RandomCrop + Pad: a window of the crop size at a random
offset, padded at the bottom/right (image 0 after normalisation, label 255) when the image is
smaller than the crop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset

from harness.errors import UserError
from methods.datasets.base import IGNORE_INDEX, SegSample

WORKERS_KEY = "workers"
T = TypeVar("T")


def worker_count(scale: dict[str, Any]) -> int:
    """The scale's ``workers`` setting (default 0: read in this process)."""
    value = scale.get(WORKERS_KEY, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"scale setting {WORKERS_KEY!r} must be an integer >= 0, got {value!r}")
    return value


def _as_list(samples: list[Any]) -> list[Any]:
    return samples


@dataclass(frozen=True)
class _ReadError:
    """A UserError raised while an item was read (say, a corrupt image), carried back as data: raised
    in a DataLoader worker it would reach the trial wrapped in the worker's traceback text, not as
    the one line that names the file."""

    message: str


class _Indexed(Dataset):
    """``dataset`` restricted to ``indices``; item k is ``(indices[k], dataset[indices[k]])``, or
    ``(indices[k], _ReadError)`` when reading it raised a UserError."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[int, Any]:
        index = self.indices[position]
        try:
            return index, self.dataset[index]
        except UserError as exc:
            return index, _ReadError(str(exc))


def iterate_batches(
    dataset: Dataset, indices: Iterable[int], batch_size: int = 1, workers: int = 0
) -> Iterator[list[tuple[int, Any]]]:
    """``[(index, dataset[index]), ...]`` in order of ``indices``, ``batch_size`` at a time, read by
    a DataLoader with ``workers`` processes. Items may differ in size: a batch is a plain list."""
    subset = _Indexed(dataset, list(indices))
    if len(subset) == 0:
        return
    loader = DataLoader(
        subset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_list,
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
    )
    for batch in loader:
        for _, item in batch:
            if isinstance(item, _ReadError):
                raise UserError(item.message)
        yield batch


def iterate_samples(
    dataset: Dataset, indices: Iterable[int], batch_size: int = 1, workers: int = 0
) -> Iterator[list[SegSample]]:
    """Like :func:`iterate_batches`, the samples only."""
    for batch in iterate_batches(dataset, indices, batch_size, workers):
        yield [sample for _, sample in batch]


def _label_size(sample: SegSample) -> Any:
    return sample.label.shape


def same_size_runs(items: Sequence[T], size: Callable[[T], Any] = _label_size) -> list[list[T]]:
    """Consecutive items (samples by default) grouped while their ``size`` stays the same: each
    group can be stacked into one batch."""
    runs: list[list[T]] = []
    for item in items:
        if runs and size(runs[-1][0]) == size(item):
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def crop_size(wanted: tuple[int, int], size: tuple[int, int], multiple: int = 1) -> tuple[int, int]:
    """The crop actually taken from an image of ``size``: ``wanted`` clipped to the image, rounded down
    to ``multiple`` (at least ``multiple``)."""
    return tuple(max(min(w, s) // multiple * multiple, multiple) for w, s in zip(wanted, size, strict=True))  # type: ignore[return-value]


def pad_to(x: torch.Tensor, size: tuple[int, int], value: float) -> torch.Tensor:
    """``x`` [..., h, w] padded at the bottom/right to ``size`` with ``value`` (unchanged if it fits)."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if h > size[0] or w > size[1]:
        raise ValueError(f"cannot pad {h}x{w} to the smaller {size[0]}x{size[1]}")
    out = x.new_full((*x.shape[:-2], size[0], size[1]), value)
    out[..., :h, :w] = x
    return out


def pad_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return pad_to(label, size, IGNORE_INDEX)
