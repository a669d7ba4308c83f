"""Dataset trials: class statistics and what downsampling the label map destroys."""

from __future__ import annotations

import math

import numpy as np

from harness.context import TrialContext
from harness.registry import Metric, Param, trial
from methods.datasets.embedded import EMBEDDED_CLASSES, EMBEDDED_THING_CLASSES

_THINGS_BY_DATASET = {
    "embedded": EMBEDDED_THING_CLASSES,
    "cityscapes": (
        "pole", "traffic light", "traffic sign", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
        "bicycle",
    ),
}  # fmt: skip


def metric_key(class_name: str) -> str:
    return class_name.replace(" ", "_").replace("-", "_")


def _thing_ids(name: str, classes: tuple[str, ...]) -> tuple[int, ...]:
    if name in _THINGS_BY_DATASET:
        return tuple(classes.index(c) for c in _THINGS_BY_DATASET[name])
    if name == "voc":
        return tuple(range(1, len(classes)))  # every class but background is an object
    return tuple(range(len(classes)))  # ADE20K: no stuff/thing split here, every class counts


@trial(
    "data.class_stats",
    doc="Per-class pixel share (as SparseRefine supp. Table 2) and the share of small-object pixels and "
    "objects lost when the label map is downsampled (nearest) and upsampled back; generation speed.",
    params=[
        Param("split", str, "val", doc="which split to measure", choices=("train", "val")),
        Param("factor", int, 2, doc="downsampling factor of the label round trip", low=2, high=8),
    ],
    metrics=[
        *(
            Metric(f"size_{metric_key(c)}", "%", "none", doc=f"share of pixels labelled {c}", optional=True)
            for c in EMBEDDED_CLASSES
        ),
        Metric("void_share", "%", "none", doc="share of ignored (255) pixels"),
        Metric("downsample_pixel_error", "%", "none", doc="non-void pixels whose label changes in the round trip"),
        Metric("lost_pixels_things", "%", "none", doc="thing-class pixels whose label changes"),
        Metric(
            "lost_pixels_small",
            "%",
            "none",
            doc="pixels of small objects (< 0.1 % of the frame) that change",
            optional=True,
        ),
        Metric(
            "lost_instances_small",
            "%",
            "none",
            doc="small objects with no pixel left after the round trip",
            optional=True,
        ),
        Metric(
            "lost_pixels_large",
            "%",
            "none",
            doc="pixels of large objects (>= 1 % of the frame) that change",
            optional=True,
        ),
        Metric("small_objects_per_image", "", "none", doc="thing components below 0.1 % of the frame"),
        Metric("load_latency", "ms", "lower", doc="time to produce one sample (generation for embedded)"),
        Metric("images_per_s", "img/s", "higher", doc="1000 / load_latency"),
    ],
    version="1",
)
def class_stats(ctx: TrialContext) -> None:
    from methods.datasets import build_dataset
    from methods.datasets.embedded import EmbeddedDataset, generate_scene
    from methods.datasets.stats import SIZE_BINS, DownsampleLoss

    split, factor = ctx.params["split"], ctx.params["factor"]
    dataset = build_dataset(ctx.dataset, split)
    name = ctx.dataset.get("name", "embedded")
    stats = DownsampleLoss(len(dataset.classes), _thing_ids(name, dataset.classes), factor, dataset.ignore_index)
    for index in range(len(dataset)):
        ctx.progress(f"{name} {split}: image {index + 1}/{len(dataset)}")
        stats.update(dataset[index].label.numpy())

    if isinstance(dataset, EmbeddedDataset):
        config, seed = dataset.config, dataset.seed_of(0)
        timing = ctx.measure("load_latency", lambda: generate_scene(seed, config.height, config.width))
    else:
        timing = ctx.measure("load_latency", lambda: dataset[0])
    ctx.record("images_per_s", 1.0 / timing.median)

    shares = stats.class_share()
    for cls, share in zip(dataset.classes, shares, strict=True):
        ctx.record(f"size_{metric_key(cls)}", float(share), unit="%")
    ctx.record("void_share", 100.0 * stats.ignored_pixels / max(stats.total_pixels, 1))
    ctx.record("downsample_pixel_error", stats.pixel_error())
    ctx.record("lost_pixels_things", stats.thing_pixel_loss())
    for metric, value in (
        ("lost_pixels_small", stats.bin_pixel_loss("small")),
        ("lost_instances_small", stats.bin_instance_loss("small")),
        ("lost_pixels_large", stats.bin_pixel_loss("large")),
    ):
        if not math.isnan(value):
            ctx.record(metric, value)
    ctx.record("small_objects_per_image", stats.bins["small"].instances / max(stats.images, 1))

    changed = stats.class_changed_share()
    ctx.note(
        "per_class",
        {
            cls: {"size_pct": round(float(s), 4), "changed_pct": None if np.isnan(c) else round(float(c), 3)}
            for cls, s, c in zip(dataset.classes, shares, changed, strict=True)
        },
    )
    ctx.note(
        "size_bins",
        {
            bin_name: {
                "frame_share": [low, high],
                "objects": stats.bins[bin_name].instances,
                "lost_objects": stats.bins[bin_name].lost_instances,
                "pixels": stats.bins[bin_name].pixels,
                "changed_pixels": stats.bins[bin_name].changed_pixels,
            }
            for bin_name, low, high in SIZE_BINS
        },
    )
    ctx.note("images", stats.images)
