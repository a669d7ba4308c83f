"""Frozen dense-baseline outputs, computed once per image, cached on disk and read back per batch.

SparseRefine trains and evaluates on the outputs of a frozen LR baseline (paper §3, "the model used
in the dense low-resolution inference is trained in advance and keeps frozen"). One LR pass over a
split writes, per image, the logits on the LR grid (fp16; nearest-upsampled on use, ``factor``
times) with the L2 norm of the penultimate features (the magnitude selector's score), and, when the
baseline has them, the features themselves on the same grid (fp16, for the "+features" inputs).
A baseline whose features are too large to store (an mmseg checkpoint: ``caches_features`` False)
gives them on demand instead: reading image i's features runs the frozen LR network on that image
(:func:`lr_features`; a few images kept in memory, nothing written).
Each image is one artifact (:func:`methods.artifacts.cached_artifact`: checksummed, atomic),
keyed by the baseline's identity, the dataset's identity (without its size limits, so a larger
``num_train`` reuses the images already done), the split and the image; a small manifest per split
records names, sizes and the grid factor so later runs read nothing else up front.

:class:`SplitOutputs` indexes a split like stacked tensors (``split.images[i]``, ``[i:j]``,
``[[i, j]]``, ``.shape``, ``.numel()``) but holds only a few images at a time: each per-image field
is either a tensor (in memory: tests, toy splits) or a :class:`PerImage` that reads on demand.
:meth:`SplitOutputs.stream` reads ahead through a DataLoader (``workers`` processes) and keeps the
images it yields in a small in-memory cache, so loops over a split touch the disk once per image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from methods.artifacts import artifact_paths, cached_artifact
from methods.memory_cache import BoundedLRU
from methods.metrics import class_map
from methods.sparserefine.selectors import entropy_map, prediction_errors

Progress = Callable[[str], None]
PREDICT_BATCH = 4
FORMAT = 2
# Bytes of per-image records kept in memory (least recently used dropped first): a training loop
# re-reads every image each epoch (the embedded default-scale train split: ~250 MB; Cityscapes
# ~25 MB per image, so ~20 of them).
RECORD_CACHE_BYTES = 512 << 20
# Bytes of LR feature maps kept in memory per split, stored or computed on demand (least recently
# used dropped first): training re-reads every image each epoch (embedded default-scale train split:
# ~600 MB; an HRNet-W48 image of VOC: ~70 MB in fp16).
FEATURE_CACHE_BYTES = 1 << 30
OUTPUTS_KIND = "sparserefine-lr-outputs"
FEATURES_KIND = "sparserefine-lr-features"
MANIFEST_KIND = "sparserefine-lr-manifest"
# Dataset settings that choose how many images are used, not what an image is.
_NOT_IMAGE_IDENTITY = ("num_train", "num_val", "cache_dir", "workers")

Index = int | slice | Sequence[int]


def upsample_nearest(grid: torch.Tensor, factor: int, size: Sequence[int] | None = None) -> torch.Tensor:
    """``grid`` repeated ``factor`` times along its last two dims, cropped to ``size`` if given (an
    odd-sized image has a grid of ceil(side / factor))."""
    if factor == 1:
        full = grid
    else:  # one broadcast copy (two repeat_interleave calls are slower on float maps)
        *lead, h, w = grid.shape
        full = grid[..., :, None, :, None].expand(*lead, h, factor, w, factor).reshape(*lead, h * factor, w * factor)
    if size is not None and tuple(full.shape[-2:]) != tuple(size):
        full = full[..., : size[0], : size[1]]
    return full


class PerImage:
    """One field of a split, read per image by ``read(index)``, indexed like the stacked tensor:
    ``[i]`` -> the item, ``[i:j]`` / ``[[i, j]]`` -> items stacked (equal sizes only)."""

    def __init__(self, read: Callable[[int], torch.Tensor], shapes: Sequence[tuple[int, ...]]):
        self._read = read
        self._shapes = [tuple(s) for s in shapes]

    def __len__(self) -> int:
        return len(self._shapes)

    def _positions(self, index: slice | Sequence[int]) -> list[int]:
        if isinstance(index, slice):
            return list(range(len(self)))[index]
        if isinstance(index, torch.Tensor):
            return [int(i) for i in index.reshape(-1).tolist()]
        return [int(i) for i in index]

    def __getitem__(self, index: Index) -> torch.Tensor:
        if isinstance(index, int):
            if not -len(self) <= index < len(self):
                raise IndexError(f"image {index} out of range for a split of {len(self)}")
            return self._read(index % len(self))
        positions = self._positions(index)
        sizes = {self._shapes[i] for i in positions}
        if len(sizes) > 1:
            raise ValueError(f"cannot stack images of different sizes {sorted(sizes)}; index them one by one")
        return torch.stack([self._read(i) for i in positions])

    @property
    def shape(self) -> torch.Size:
        """(N, *item shape) when every item has the same shape (as a stacked tensor's)."""
        sizes = set(self._shapes)
        if len(sizes) != 1:
            raise ValueError(f"the split's images differ in size ({len(sizes)} sizes): no single shape")
        return torch.Size((len(self), *self._shapes[0]))

    def numel(self) -> int:
        return sum(math.prod(s) for s in self._shapes)

    def item_shape(self, index: int) -> tuple[int, ...]:
        return self._shapes[index]


Field = torch.Tensor | PerImage


@dataclass
class SplitOutputs:
    """One split with its frozen LR outputs. Each per-image field is a stacked tensor (in memory) or a
    :class:`PerImage` (read from disk on demand); both index the same way."""

    images: Field  # uint8 [N, 3, H, W]
    labels: Field  # int64 [N, H, W]
    logits_grid: Field  # fp16 [N, C, ceil(H/f), ceil(W/f)]
    magnitude_grid: Field  # fp32 [N, ceil(H/f), ceil(W/f)], L2 norm of the penultimate features
    factor: int
    num_classes: int
    names: list[str]
    reader: SplitReader | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def size(self, index: int) -> tuple[int, int]:
        """(H, W) of image ``index`` (images of a split may differ in size)."""
        if isinstance(self.labels, PerImage):
            return self.labels.item_shape(index)  # type: ignore[return-value]
        return tuple(self.labels.shape[-2:])  # type: ignore[return-value]

    def stackable(self, count: int) -> list[int]:
        """``count`` image indices that stack into one batch (a timed call's input): the images of
        the first image's size, in order and cycled (``i % len(split)`` when all sizes agree)."""
        first = self.size(0)
        same = [i for i in range(len(self)) if self.size(i) == first]
        return [same[k % len(same)] for k in range(count)]

    def _full_size(self, index: Index) -> tuple[int, int]:
        if isinstance(index, int):
            return self.size(index)
        positions = range(len(self))[index] if isinstance(index, slice) else index
        return self.size(int(positions[0]))

    def _logits_on_grid(self, index: Index) -> torch.Tensor:
        """LR logits [B, C, H/f, W/f] (fp32) of the given images."""
        grid = self.logits_grid[index]
        return (grid.unsqueeze(0) if grid.dim() == 3 else grid).float()

    def logits(self, index: Index) -> torch.Tensor:
        """Full-resolution LR logits (fp32) of the given images, [B, C, H, W]."""
        return upsample_nearest(self._logits_on_grid(index), self.factor, self._full_size(index))

    def prediction(self, index: Index) -> torch.Tensor:
        """Full-resolution LR class map [B, H, W]: the argmax on the LR grid, nearest-upsampled (equal
        to the argmax of ``logits``, at 1/factor² of its cost)."""
        return upsample_nearest(class_map(self._logits_on_grid(index)), self.factor, self._full_size(index))

    def entropy(self, index: Index) -> torch.Tensor:
        """Full-resolution entropy of the LR prediction [B, H, W], computed on the LR grid and
        nearest-upsampled: ``entropy_map(logits)`` at 1/factor² of its cost, equal up to the last bit
        of a vectorised tail (bit-identical on the embedded 512x1024 splits, checked)."""
        return upsample_nearest(entropy_map(self._logits_on_grid(index)), self.factor, self._full_size(index))

    def errors(self, index: int) -> torch.Tensor:
        """Pixels [1, H, W] the LR prediction of image ``index`` gets wrong (void never counts)."""
        return prediction_errors(self.prediction(index), self.labels[index : index + 1])

    def magnitude(self, index: Index) -> torch.Tensor:
        grid = self.magnitude_grid[index]
        if grid.dim() == 2:
            grid = grid.unsqueeze(0)
        return upsample_nearest(grid.unsqueeze(1), self.factor, self._full_size(index))[:, 0]

    def stream(self, indices: Iterable[int]) -> Iterator[int]:
        """``indices`` in order; a disk-backed split reads them ahead (DataLoader workers) so each
        image is loaded once for the loop body that indexes it."""
        if self.reader is None:
            yield from indices
            return
        yield from self.reader.stream(indices)

    def label_counts(self) -> torch.Tensor:
        """Pixels per class id over the split (int64 [256]; 255 = void), read image by image."""
        counts = torch.zeros(256, dtype=torch.int64)
        for i in self.stream(range(len(self))):
            counts += torch.bincount(self.labels[i].reshape(-1), minlength=256)[:256]
        return counts


@dataclass(frozen=True)
class OutputsKey:
    """Where one split's per-image outputs live: the artifact configs are built from this."""

    artifacts_dir: Path
    split_identity: dict[str, Any]
    names: tuple[str, ...]

    def config(self, index: int) -> dict[str, Any]:
        return {**self.split_identity, "index": index, "name": self.names[index]}

    def exists(self, kind: str, index: int) -> bool:
        pt, sidecar = artifact_paths(self.artifacts_dir, kind, self.config(index))
        return pt.is_file() and sidecar.is_file()


class SplitReader(Dataset):
    """Reads image ``index`` of a split with its cached LR outputs (a DataLoader-able dataset); keeps
    the records it handed out within :data:`RECORD_CACHE_BYTES`."""

    def __init__(self, dataset: Any, key: OutputsKey, rebuild: Callable[[int], dict[str, Any]], workers: int = 0):
        self.dataset = dataset
        self.key = key
        self.rebuild = rebuild  # recomputes one image's outputs if its artifact vanished
        self.workers = workers
        self._records: BoundedLRU[dict[str, torch.Tensor]] = BoundedLRU(RECORD_CACHE_BYTES)

    def __len__(self) -> int:
        return len(self.key.names)

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers get no cached records and no model
        return {**self.__dict__, "_records": BoundedLRU(RECORD_CACHE_BYTES), "rebuild": None}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.dataset[index]
        outputs = self._outputs(index)
        return {
            "image": sample.image,
            "label": sample.label.to(torch.uint8),
            "logits_grid": outputs["logits_grid"],
            "magnitude_grid": outputs["magnitude_grid"],
        }

    def _outputs(self, index: int) -> dict[str, Any]:
        def build() -> dict[str, Any]:
            if self.rebuild is None:
                raise RuntimeError(f"LR outputs of image {index} ({self.key.names[index]}) are missing from the cache")
            return self.rebuild(index)

        return cached_artifact(self.key.artifacts_dir, OUTPUTS_KIND, self.key.config(index), build)

    def record(self, index: int) -> dict[str, torch.Tensor]:
        return self._records.get(index, lambda: self[index])

    def stream(self, indices: Iterable[int]) -> Iterator[int]:
        from methods.datasets.loading import iterate_batches

        wanted = list(indices)
        missing = [i for i in wanted if i not in self._records]
        if self.workers == 0 or len(missing) < 2:
            yield from wanted
            return
        for batch in iterate_batches(self, wanted, batch_size=1, workers=self.workers):
            for index, record in batch:
                self._records.put(index, record)
                yield index

    def field(self, name: str, dtype: torch.dtype | None = None) -> Callable[[int], torch.Tensor]:
        def read(index: int) -> torch.Tensor:
            value = self.record(index)[name]
            return value if dtype is None else value.to(dtype)

        return read


# --- building ------------------------------------------------------------------------------------


def _dataset(dataset: dict[str, Any], split: str):
    from methods.datasets import build_dataset

    return build_dataset(dataset, split)


def image_identity(dataset: dict[str, Any]) -> dict[str, Any]:
    """What determines the images of a dataset spec, without how many of them are used."""
    from methods.datasets import dataset_identity

    identity = dataset_identity(dataset)
    return {k: v for k, v in identity.items() if k not in _NOT_IMAGE_IDENTITY}


def to_fp16(x: torch.Tensor) -> torch.Tensor:
    """``x`` stored in fp16, clamped to its finite range (a poorly scaled checkpoint's logits may
    exceed 65504; inf would turn every softmax and entropy into nan)."""
    limit = torch.finfo(torch.float16).max
    return x.clamp(-limit, limit).to(torch.float16).clone()


def _predict_images(
    model: Any, indexed: Sequence[tuple[int, Any]], keep_features: bool
) -> list[tuple[int, dict[str, Any], dict[str, Any] | None]]:
    """Per-image outputs of equal-size samples ``[(index, sample), ...]`` run as one batch."""
    images = torch.stack([s.image for _, s in indexed])
    with torch.inference_mode():
        grid = model.predict_grid(images)
    logits, mags, factor = grid.logits, grid.magnitude, grid.factor
    feats = grid.features if keep_features else None
    out = []
    for k, (index, sample) in enumerate(indexed):
        outputs = {
            "logits_grid": to_fp16(logits[k]),
            "magnitude_grid": mags[k].clone(),
            "factor": int(factor),
            "size": list(sample.label.shape),
        }
        features = None
        if feats is not None:
            features = {"features_grid": to_fp16(feats[k]), "factor": int(factor)}
        out.append((index, outputs, features))
    return out


def _store(key: OutputsKey, kind: str, index: int, value: dict[str, Any]) -> None:
    cached_artifact(key.artifacts_dir, kind, key.config(index), lambda: value)


def _write_outputs(
    model: Any, data: Any, key: OutputsKey, split: str, progress: Progress, workers: int, keep_features: bool
) -> dict[str, Any]:
    """Run the LR model over every image not cached yet (batches of equal-size images) and store
    each image's outputs; returns the split's manifest (names, sizes, factor)."""
    from methods.datasets.loading import iterate_batches, same_size_runs

    sizes: list[list[int]] = []
    names: list[str] = []
    factors: set[int] = set()
    for batch in iterate_batches(data, range(len(data)), batch_size=PREDICT_BATCH, workers=workers):
        progress(f"sparserefine: LR outputs on {split} {batch[0][0]}/{len(data)}")
        todo = [
            (i, s)
            for i, s in batch
            if not key.exists(OUTPUTS_KIND, i) or (keep_features and not key.exists(FEATURES_KIND, i))
        ]
        sizes.extend(list(s.label.shape) for _, s in batch)
        names.extend(s.name for _, s in batch)
        for run in same_size_runs(todo, size=lambda item: item[1].label.shape):
            for index, outputs, features in _predict_images(model, run, keep_features):
                factors.add(outputs["factor"])
                _store(key, OUTPUTS_KIND, index, outputs)
                if features is not None:
                    _store(key, FEATURES_KIND, index, features)
    if len(factors) > 1:
        raise RuntimeError(f"the LR baseline's output grid factor varies over {split}: {sorted(factors)}")
    factor = factors.pop() if factors else model.grid_factor
    return {"names": names, "sizes": sizes, "factor": int(factor), "num_classes": int(data.num_classes)}


def stores_features(model: Any) -> bool:
    """Whether the LR pass writes ``model``'s penultimate features per image (the embedded CNNs) or
    they are computed on demand (``caches_features`` False: mmseg checkpoints)."""
    return model.feature_channels is not None and bool(getattr(model, "caches_features", True))


@dataclass
class LROutputsSource:
    """What an LR-outputs cache needs to know about the frozen baseline: the model (``predict_grid``,
    ``config``, ``feature_channels``) and the data."""

    model: Any
    dataset: dict[str, Any]
    artifacts_dir: Path
    progress: Progress
    workers: int = 0


def _prepare(source: LROutputsSource, split: str) -> tuple[Any, OutputsKey, dict[str, Any]]:
    data = _dataset(source.dataset, split)
    key = OutputsKey(
        Path(source.artifacts_dir),
        {"baseline": source.model.config, "data": image_identity(source.dataset), "split": split, "format": FORMAT},
        _names(data),
    )
    keep_features = stores_features(source.model)
    manifest_config = {**key.split_identity, "names": list(key.names), "features": keep_features}
    manifest = cached_artifact(
        source.artifacts_dir,
        MANIFEST_KIND,
        manifest_config,
        lambda: _write_outputs(source.model, data, key, split, source.progress, source.workers, keep_features),
        source.progress,
    )
    return data, key, manifest


def _names(data: Any) -> tuple[str, ...]:
    """Sample names without decoding images where the dataset can say (file lists, embedded)."""
    files = getattr(data, "files", None)
    if files is not None:
        return tuple(f.name for f in files)
    name_of = getattr(data, "name_of", None)
    if name_of is not None:
        return tuple(name_of(i) for i in range(len(data)))
    return tuple(f"{split_index:05d}" for split_index in range(len(data)))


def _rebuild_one(source: LROutputsSource, data: Any, key: OutputsKey, keep_features: bool) -> Callable[[int], dict]:
    def rebuild(index: int) -> dict[str, Any]:
        ((_, outputs, features),) = _predict_images(source.model, [(index, data[index])], keep_features)
        if features is not None:
            _store(key, FEATURES_KIND, index, features)
        return outputs

    return rebuild


def lr_outputs(source: LROutputsSource, split: str) -> SplitOutputs:
    """Images, labels and frozen LR outputs of ``split``, streamed from the per-image cache (built on
    first use in one LR pass)."""
    data, key, manifest = _prepare(source, split)
    keep_features = stores_features(source.model)
    reader = SplitReader(data, key, _rebuild_one(source, data, key, keep_features), workers=source.workers)
    sizes = [tuple(s) for s in manifest["sizes"]]
    factor = int(manifest["factor"])
    grid = [(math.ceil(h / factor), math.ceil(w / factor)) for h, w in sizes]
    classes = int(manifest["num_classes"])
    return SplitOutputs(
        images=PerImage(reader.field("image"), [(3, *s) for s in sizes]),
        labels=PerImage(reader.field("label", torch.int64), sizes),
        logits_grid=PerImage(reader.field("logits_grid"), [(classes, *g) for g in grid]),
        magnitude_grid=PerImage(reader.field("magnitude_grid"), grid),
        factor=factor,
        num_classes=classes,
        names=list(manifest["names"]),
        reader=reader,
    )


def lr_features(source: LROutputsSource, split: str) -> tuple[PerImage, int]:
    """The LR penultimate features of ``split`` on the logits' grid (fp16 [F, h, w] on the CPU, read
    per image) and the grid factor: stored by the same LR pass as :func:`lr_outputs`, or computed on
    demand for a baseline that does not store them."""
    if source.model.feature_channels is None:
        from harness.errors import Unavailable

        raise Unavailable(f"the LR baseline {source.model.config.get('model', '')} exposes no penultimate features")
    data, key, manifest = _prepare(source, split)
    factor = int(manifest["factor"])
    channels = int(source.model.feature_channels)
    shapes = [(channels, math.ceil(h / factor), math.ceil(w / factor)) for h, w in manifest["sizes"]]
    if not stores_features(source.model):
        return PerImage(_features_on_demand(source.model, data), shapes), factor
    rebuild = _rebuild_one(source, data, key, keep_features=True)
    kept: BoundedLRU[torch.Tensor] = BoundedLRU(FEATURE_CACHE_BYTES)

    def stored(index: int) -> torch.Tensor:
        def build() -> dict[str, Any]:
            rebuild(index)
            from methods.safe_load import load_weights_only

            return load_weights_only(artifact_paths(key.artifacts_dir, FEATURES_KIND, key.config(index))[0])

        return cached_artifact(key.artifacts_dir, FEATURES_KIND, key.config(index), build)["features_grid"]

    return PerImage(lambda index: kept.get(index, lambda: stored(index)), shapes), factor


def _features_on_demand(model: Any, data: Any) -> Callable[[int], torch.Tensor]:
    """``read(i)``: image i's LR features, from a run of the frozen ``model`` on that image alone (as
    stored ones would be: fp16, on the CPU); kept within :data:`FEATURE_CACHE_BYTES`."""
    kept: BoundedLRU[torch.Tensor] = BoundedLRU(FEATURE_CACHE_BYTES)

    def computed(index: int) -> torch.Tensor:
        grid = model.predict_grid(data[index].image.unsqueeze(0), features=True)
        if grid.features is None:
            raise RuntimeError(f"the LR baseline {model.config.get('model', '')} gave no features for image {index}")
        with torch.inference_mode(False):  # a plain tensor, as one read from disk (usable by autograd)
            return to_fp16(grid.features[0].cpu())

    return lambda index: kept.get(index, lambda: computed(index))


def hr_evaluation(
    model: Any, dataset: dict[str, Any], artifacts_dir: Path, progress: Progress, workers: int = 0
) -> dict[str, Any]:
    """Confusion-matrix counts of the HR dense baseline on the val split, each image at its own size
    (cached)."""
    from methods.datasets.loading import iterate_samples, same_size_runs
    from methods.metrics import ConfusionMatrix

    def build() -> dict[str, Any]:
        data = _dataset(dataset, "val")
        cm = ConfusionMatrix(data.num_classes, data.ignore_index)
        done = 0
        for batch in iterate_samples(data, range(len(data)), batch_size=PREDICT_BATCH, workers=workers):
            progress(f"sparserefine: HR baseline on val {done}/{len(data)}")
            for run in same_size_runs(batch):
                with torch.inference_mode():
                    logits, _ = model.predict(torch.stack([s.image for s in run]))
                cm.update(class_map(logits), torch.stack([s.label for s in run]))
            done += len(batch)
        return {"counts": cm.counts.clone(), "num_classes": data.num_classes}

    config = {
        "baseline": model.config,
        "data": image_identity(dataset),
        "count": dataset.get("num_val"),
        "split": "val",
        "format": FORMAT,
    }
    return cached_artifact(artifacts_dir, "sparserefine-hr-eval", config, build, progress)
