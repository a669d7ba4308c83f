"""ESSNet trials: inference time and memory of embedding vs linear heads as the number of classes
grows (supplementary Table 1), the crossover class count, and training time per iteration."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from harness.context import TrialContext
from harness.registry import Metric, Param, coerce_scalar, scale_setting, trial

HEADS = ("linear", "embedding")
SHAPE_PARAMS = [
    Param("height", int, 512, doc="image height (the supplementary: 1024 Cityscapes, 512 otherwise)", low=8),
    Param("width", int, 512, doc="image width (2048 Cityscapes, 512 otherwise)", low=8),
    Param("embed_dim", int, 64, doc="pixel / class embedding size D", low=2),
    Param("backend", str, "faiss", doc="nearest-neighbour backend of the embedding head", choices=("faiss", "torch")),
]


@dataclass
class HeadRun:
    """A head ready to predict full-resolution labels from a fixed OS 4 feature map."""

    predict: Any
    predicted_bytes: int


def _head_run(ctx: TrialContext, head_name: str, num_classes: int, feature_channels: int) -> HeadRun:
    from methods.essnet.heads import EmbeddingHead, LinearHead

    p = ctx.params
    height, width = p["height"], p["width"]
    size = (height, width)
    torch.manual_seed(ctx.seed)
    features = torch.randn(ctx.batch_size, feature_channels, math.ceil(height / 4), math.ceil(width / 4))
    where = ctx.placement()
    features = where.tensor(features)
    elem = where.dtype.itemsize
    pixels = ctx.batch_size * height * width
    if head_name == "linear":
        head = where.model(LinearHead(feature_channels, num_classes))
        # full-resolution logits plus the low-resolution ones they are resized from
        predicted = num_classes * (pixels + features[0, 0].numel() * ctx.batch_size) * elem
        return HeadRun(lambda: head.predict(features, size), predicted)
    emb_head = EmbeddingHead(feature_channels, num_classes, p["embed_dim"])
    emb_head = where.model(emb_head)
    # built once on the head's device (a faiss GPU index on cuda), as the supplementary's FAISS index
    index = emb_head.build_index(p["backend"])
    predicted = 2 * p["embed_dim"] * pixels * elem + (64 << 20)
    return HeadRun(lambda: emb_head.predict(features, size, index), predicted)


def _check_budget(ctx: TrialContext, run: HeadRun) -> None:
    budget = float(ctx.scale.get(MEMORY_BUDGET_KEY, 4.0)) * 1e9
    if run.predicted_bytes > budget:
        # Refuse before allocating: on a shared CPU host an over-commit ends in the kernel's OOM killer.
        raise MemoryError(
            f"out of memory: the head needs about {run.predicted_bytes / 1e9:.1f} GB of tensors, "
            f"over this scale's memory_budget_gb = {budget / 1e9:.1f}"
        )


MEMORY_BUDGET_KEY = "memory_budget_gb"


@scale_setting(MEMORY_BUDGET_KEY)
def _check_memory_budget(value: Any) -> None:
    if not coerce_scalar(float, value) > 0:
        raise ValueError(f"{MEMORY_BUDGET_KEY} must be > 0, got {value}")


@trial(
    "essnet.inference",
    doc="ESSNet supp. Table 1: head inference time and peak tensor memory vs number of classes.",
    params=[
        Param("head", str, "embedding", doc="linear (1x1 conv to C) or embedding (nearest class)", choices=HEADS),
        Param("num_classes", int, 150, doc="number of classes C", low=2),
        Param("feature_channels", int, 256, doc="decoder feature width at OS 4 (DeepLabv3+: 256)", low=1),
        *SHAPE_PARAMS,
    ],
    metrics=[
        Metric("latency", "ms", "lower", doc="OS 4 features -> full-resolution labels"),
        Metric("peak_memory", "MB", "lower", doc="peak tensor storage allocated by the head"),
    ],
    axes=("precision", "batch_size", "device"),
    version="1",
)
def inference_trial(ctx: TrialContext) -> None:
    from methods.essnet.memory import peak_tensor_bytes

    p = ctx.params
    run = _head_run(ctx, p["head"], p["num_classes"], p["feature_channels"])
    _check_budget(ctx, run)
    with torch.inference_mode():
        _, peak = peak_tensor_bytes(run.predict)
    ctx.record("peak_memory", peak / 1e6)
    ctx.note("memory_method", "peak live tensor storage (TorchDispatchMode accounting), inputs excluded")
    ctx.note("timed", "decoder features at OS 4 -> labels at full resolution; backbone/decoder excluded")
    ctx.measure("latency", run.predict)


def crossover(classes: list[int], linear: list[float], embedding: list[float]) -> float | None:
    """Class count where embedding becomes cheaper than linear (log-linear interpolation of the
    cost difference between the last C where it is not and the first C where it is).

    A cost of ``inf`` means the head could not run (memory budget). None if it never crosses."""
    diff = [e - lin for e, lin in zip(embedding, linear, strict=True)]
    for i, d in enumerate(diff):
        if d < 0:
            if i == 0:
                return float(classes[0])
            prev = diff[i - 1]
            if math.isinf(d):
                return float(classes[i])
            a, b = math.log(classes[i - 1]), math.log(classes[i])
            return float(math.exp(a + (b - a) * prev / (prev - d)))
    return None


@trial(
    "essnet.crossover",
    doc="ESSNet: the class count C at which the embedding head gets cheaper than the linear head.",
    params=[
        Param("classes", str, "19,150,171,1284,5000,20000", doc="comma-separated class counts"),
        Param("feature_channels", int, 256, doc="decoder feature width at OS 4", low=1),
        *SHAPE_PARAMS,
    ],
    metrics=[
        Metric(
            "latency_crossover", "classes", "none", doc="C where embedding latency < linear (both ran)", optional=True
        ),
        Metric("memory_crossover", "classes", "none", doc="C where embedding memory < linear", optional=True),
    ],
    axes=("precision", "batch_size", "device"),
    version="1",
)
def crossover_trial(ctx: TrialContext) -> None:
    from harness.timing import measure
    from methods.essnet.memory import peak_tensor_bytes

    p = ctx.params
    counts = sorted(int(c) for c in p["classes"].split(","))
    table: dict[str, dict[str, list[float]]] = {h: {"latency_ms": [], "memory_mb": []} for h in HEADS}
    for c in counts:
        for head in HEADS:
            ctx.progress(f"{head} head, C = {c}")
            run = _head_run(ctx, head, c, p["feature_channels"])
            try:
                _check_budget(ctx, run)
            except MemoryError:
                table[head]["latency_ms"].append(math.inf)
                table[head]["memory_mb"].append(math.inf)
                continue
            with torch.inference_mode():
                _, peak = peak_tensor_bytes(run.predict)
            m = measure(run.predict, ctx.timing, device=ctx.device)
            table[head]["latency_ms"].append(m.median * 1e3)
            table[head]["memory_mb"].append(peak / 1e6)
    # latency: only where both heads ran (a linear head over the memory budget is not "slower")
    ran = [i for i, v in enumerate(table["linear"]["latency_ms"]) if not math.isinf(v)]
    lat = crossover(
        [counts[i] for i in ran],
        [table["linear"]["latency_ms"][i] for i in ran],
        [table["embedding"]["latency_ms"][i] for i in ran],
    )
    mem = crossover(counts, table["linear"]["memory_mb"], table["embedding"]["memory_mb"])
    over = [c for c, v in zip(counts, table["linear"]["latency_ms"], strict=True) if math.isinf(v)]
    ctx.note("linear_over_budget_from", min(over) if over else None)
    if lat is not None:
        ctx.record("latency_crossover", lat)
    if mem is not None:
        ctx.record("memory_crossover", mem)
    rows = {
        str(c): {h: {k: (None if math.isinf(v[i]) else round(v[i], 3)) for k, v in table[h].items()} for h in HEADS}
        for i, c in enumerate(counts)
    }
    ctx.note("per_class_count", rows)
    ctx.note("over_budget", "null = over the memory budget (the linear head's full-resolution logits)")


@trial(
    "essnet.train_step",
    doc="ESSNet supp. Table 1 training column: time per training iteration, linear vs embedding head.",
    params=[
        Param("head", str, "embedding", doc="linear or embedding", choices=HEADS),
        Param("num_classes", int, 150, doc="number of classes C", low=2),
        Param("k", int, 10, doc="nearest negatives per pixel", low=1),
        Param("sampling", str, "knn", doc="negative sampling", choices=("knn", "random")),
        Param("feature_channels", int, 64, doc="decoder width of the small segmenter", low=1),
        *SHAPE_PARAMS,
    ],
    metrics=[
        Metric("train_iter", "ms", "lower", doc="forward + backward + SGD step, one batch"),
        Metric("loss_drop", "%", "higher", doc="loss decrease over the timed iterations (sanity)"),
    ],
    axes=("precision", "batch_size"),
    version="1",
)
def train_step_trial(ctx: TrialContext) -> None:
    from methods.datasets import build_dataset, normalize
    from methods.essnet.model import Segmenter

    p = ctx.params
    dataset = build_dataset(ctx.dataset, "train")
    n = min(len(dataset), ctx.batch_size)
    batch = [dataset[i] for i in range(n)]
    height, width = min(p["height"], batch[0].label.shape[0]), min(p["width"], batch[0].label.shape[1])
    where = ctx.placement(autocast=True)  # training: fp32 weights, bf16/fp16 under autocast
    images = where.tensor(normalize(torch.stack([s.image[:, :height, :width] for s in batch])), channels_last=False)
    labels = torch.stack([s.label[:height, :width] for s in batch]).to(where.device)
    torch.manual_seed(ctx.seed)
    model = Segmenter(p["num_classes"], p["head"], p["feature_channels"], p["embed_dim"]).to(where.device).train()
    optimizer = model.optimizer()
    losses: list[float] = []

    def step() -> None:
        # ctx.measure times under inference_mode; a training step switches it off for itself
        with torch.inference_mode(False), torch.enable_grad():
            with where.running():
                loss = model.loss(images, labels, k=p["k"], sampling=p["sampling"], backend=p["backend"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        losses.append(float(loss.detach()))

    ctx.measure("train_iter", step)
    ctx.record("loss_drop", 100.0 * (losses[0] - losses[-1]) / max(abs(losses[0]), 1e-9))
    ctx.note("crop", [height, width])
