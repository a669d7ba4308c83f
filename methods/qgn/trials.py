"""QGN trials: quadtree sparsity (Table 5), propagation-scheme grid (Table 1), cost (Tables 2 and 6)."""

from __future__ import annotations

from typing import Any

from harness.context import TrialContext
from harness.errors import Unsupported
from harness.registry import Metric, Param, scale_setting, trial
from methods.qgn.train import SCALE_KEY as TRAIN_SCALE_KEY
from methods.qgn.train import TrainSettings

SCHEME_CHOICES = ("all", "gtc", "pc")
GAMMA_CHOICES = ("0.75", "1", "1.25", "adaptive")
ARCH_CHOICES = ("small", "resnet50", "resnet101")
BACKEND_CHOICES = ("auto", "native", "dense", "spconv", "torchsparse")
MAX_LEVELS = 7
MODEL_VERSION = "1"


# --- Table 5: quadtree sparsity ---------------------------------------------------------------


@scale_setting(TRAIN_SCALE_KEY)
def _check_train_settings(value: Any) -> None:
    TrainSettings.from_scale({TRAIN_SCALE_KEY: value})


@trial(
    "qgn.sparsity",
    doc="Quadtree sparsity of the ground truth: % of pixels per leaf level (Q_L..Q0) and the ratio of "
    "quadtree leaves to dense pixels (QGN Table 5).",
    params=[
        Param("split", str, "val", doc="dataset split", choices=("train", "val")),
        Param(
            "levels", int, 5, doc="levels above the pixels (5 = the paper's 6-level quadtree)", low=0, high=MAX_LEVELS
        ),
        Param("exclude_ignore", bool, False, doc="percentages over labelled pixels only"),
        Param("max_images", int, 0, doc="use at most this many images (0 = the whole split)", low=0),
    ],
    metrics=[Metric(f"Q{level}", "%", "none", optional=level > 0) for level in range(MAX_LEVELS, -1, -1)]
    + [
        Metric("ratio", "%", "lower", doc="quadtree leaves / dense pixels, mean over images"),
        Metric("images", "", "none"),
    ],
    version="1",
)
def sparsity_trial(ctx: TrialContext) -> None:
    from methods.datasets import build_dataset
    from methods.qgn.tpyramid import QuadtreeStats, quadtree_stats

    levels = ctx.params["levels"]
    dataset = build_dataset(ctx.dataset, ctx.params["split"])
    count = len(dataset) if ctx.params["max_images"] == 0 else min(len(dataset), ctx.params["max_images"])
    total = QuadtreeStats.empty(levels)
    for index in range(count):
        if index % 10 == 0:
            ctx.progress(f"quadtree sparsity: image {index + 1}/{count}")
        sample = dataset[index]
        total.add(
            quadtree_stats(
                sample.label,
                levels,
                ignore_index=dataset.ignore_index,
                exclude_ignore=ctx.params["exclude_ignore"],
            )
        )
    for level, percent in enumerate(total.level_percentages()):
        ctx.record(f"Q{level}", percent)
    ctx.record("ratio", total.mean_ratio())
    ctx.record("images", count)
    ctx.note(
        "quadtree",
        {
            "pooled_ratio_percent": total.pooled_ratio(),
            "leaves_per_level": total.leaves_per_level,
            "pixels_per_level": total.pixels_per_level,
            "pixels": total.num_pixels,
            "ignore_handling": "ignore (255) is an ordinary value for the merge operator; padding to a "
            "multiple of 2**levels uses 255 and is not counted"
            + ("; ignore pixels excluded from the percentages" if ctx.params["exclude_ignore"] else ""),
        },
    )


# --- shared: a trained QGN from the artifact cache --------------------------------------------


def _train_settings(ctx: TrialContext) -> TrainSettings:
    return TrainSettings.from_scale(ctx.scale)


def trained_qgn(ctx: TrialContext, *, arch: str, levels: int, backend: str, train_scheme: str, gamma: str):
    """The QGN trained with ``train_scheme``/``gamma`` on ``ctx.dataset`` (built once, then cached),
    set up to run with sparse-conv ``backend``."""
    import torch

    from methods.artifacts import cached_artifact
    from methods.datasets import build_dataset
    from methods.qgn.model import QGN
    from methods.qgn.train import prepare_split, train_qgn

    settings = _train_settings(ctx)
    config = {
        "version": MODEL_VERSION,
        "dataset": ctx.dataset,
        "arch": arch,
        "levels": levels,
        "train_scheme": train_scheme,
        "gamma": gamma,
        "train": settings.as_dict(),
        "seed": ctx.seed,
    }
    train_set = build_dataset(ctx.dataset, "train")
    num_classes = train_set.num_classes

    def build() -> dict[str, Any]:
        torch.manual_seed(ctx.seed)
        # training always uses the fast "auto" backend choice; ``backend`` applies to the returned model
        model = QGN(num_classes, arch=arch, levels=levels, backend="auto")
        data = prepare_split(train_set, levels)
        history = train_qgn(model, data, train_scheme, gamma, settings, ctx.seed, ctx.progress)
        return {"state_dict": model.state_dict(), "num_classes": num_classes, **history}

    artifact = cached_artifact(ctx.artifacts_dir, "qgn_model", config, build, progress=ctx.progress)
    model = QGN(artifact["num_classes"], arch=arch, levels=levels, backend=backend)
    model.load_state_dict(artifact["state_dict"])
    return model, artifact


# --- Table 1: train x eval propagation schemes --------------------------------------------------


@trial(
    "qgn.train_eval",
    doc="Train a QGN with one propagation scheme and loss weighting, evaluate it with another "
    "(QGN Table 1). The trained model is cached per training configuration.",
    params=[
        Param("train_scheme", str, "all", doc="propagation scheme in training", choices=SCHEME_CHOICES),
        Param("eval_scheme", str, "all", doc="propagation scheme at evaluation", choices=SCHEME_CHOICES),
        Param("gamma", str, "1", doc="level-loss weighting: fixed gamma or adaptive", choices=GAMMA_CHOICES),
        Param("arch", str, "small", doc="encoder/decoder configuration", choices=ARCH_CHOICES),
        Param("levels", int, 5, doc="quadtree levels above the pixels (encoder stride 2**levels)", low=1, high=5),
        Param(
            "backend",
            str,
            "auto",
            doc="sparse-conv backend of the decoder (auto: dense where >= 5% of "
            "the cells are active, native elsewhere)",
            choices=BACKEND_CHOICES,
        ),
    ],
    metrics=[
        Metric("miou", "%", "higher"),
        Metric("acc", "%", "higher", doc="pixel accuracy"),
        Metric("leaf_active", "%", "lower", doc="cells active at the pixel level (Q0)"),
        Metric("train_time", "s", "lower", doc="training time of the (cached) model"),
    ],
    version="1",
)
def train_eval_trial(ctx: TrialContext) -> None:
    from methods.datasets import build_dataset
    from methods.qgn.train import evaluate_qgn, prepare_split
    from methods.sparse import check_backend

    p = ctx.params
    if p["backend"] != "auto":
        check_backend(p["backend"])
    model, artifact = trained_qgn(
        ctx,
        arch=p["arch"],
        levels=p["levels"],
        backend=p["backend"],
        train_scheme=p["train_scheme"],
        gamma=p["gamma"],
    )
    val = prepare_split(build_dataset(ctx.dataset, "val"), p["levels"])
    ctx.progress(f"evaluating train-{p['train_scheme']} model with {p['eval_scheme']} propagation")
    result = evaluate_qgn(model, val, p["eval_scheme"], bf16=_train_settings(ctx).bf16)
    ctx.record("miou", result["miou"])
    ctx.record("acc", result["acc"])
    ctx.record("leaf_active", result["active_percent"]["Q0"])
    ctx.record("train_time", artifact["seconds"])
    ctx.note("active_cells_percent", result["active_percent"])
    ctx.note("final_level_weights", artifact["beta"])
    ctx.note("loss_curve", [(h["step"], round(h["loss"], 4)) for h in artifact["history"]])
    ctx.note(
        "training",
        {
            **_train_settings(ctx).as_dict(),
            "optimizer": "SGD momentum, poly 0.9",
            "augmentation": "horizontal flip",
            "init": "random",
        },
    )


# --- Tables 2 and 6: memory, MACs, latency ------------------------------------------------------


@trial(
    "qgn.cost",
    doc="Forward activation memory (encoder / decoder), multiply-accumulates and latency of a QGN "
    "with a propagation scheme, or of the dilated-ResNet baseline (QGN Tables 2 and 6).",
    params=[
        Param("model", str, "qgn", doc="QGN or the dilated ResNet + 1x1 conv baseline", choices=("qgn", "dilated")),
        Param("arch", str, "small", doc="encoder (and decoder) configuration", choices=ARCH_CHOICES),
        Param("scheme", str, "all", doc="QGN propagation scheme at inference", choices=SCHEME_CHOICES),
        Param(
            "train_scheme",
            str,
            "none",
            doc="'none': random weights (memory/MACs of all and gtc do not depend on them); otherwise "
            "the cached trained QGN (needed for pc) whose mIoU is recorded too",
            choices=("none", *SCHEME_CHOICES),
        ),
        Param("gamma", str, "adaptive", doc="loss weighting of the trained model", choices=GAMMA_CHOICES),
        Param("levels", int, 5, doc="quadtree levels above the pixels", low=1, high=5),
        Param("images", int, 4, doc="validation images to average memory and MACs over", low=1),
        Param(
            "backend",
            str,
            "native",
            doc="sparse-conv backend of the decoder (memory depends on it)",
            choices=BACKEND_CHOICES,
        ),
    ],
    metrics=[
        Metric("mem_decoder", "MB", "lower", doc="decoder activation memory (Table 6 'Decoder Only')"),
        Metric("mem_encoder", "MB", "lower"),
        Metric("mem_total", "MB", "lower", doc="encoder-decoder activation memory"),
        Metric("maps_decoder", "MB", "lower", doc="decoder feature maps (layer outputs) only"),
        Metric("maps_total", "MB", "lower", doc="encoder-decoder feature maps (layer outputs) only"),
        Metric("gmacs", "GMAC", "lower", doc="multiply-accumulates of the whole forward"),
        Metric("gmacs_decoder", "GMAC", "lower"),
        Metric("latency", "ms", "lower"),
        Metric("miou", "%", "higher", doc="trained QGN only", optional=True),
        Metric("acc", "%", "higher", doc="trained QGN only", optional=True),
    ],
    axes=("precision", "batch_size", "device"),
    version="1",
)
def cost_trial(ctx: TrialContext) -> None:
    import torch

    from methods.datasets import build_dataset
    from methods.qgn.cost import activation_memory, forward_macs
    from methods.qgn.encoder import ENCODER_SPECS, DilatedBaseline
    from methods.qgn.model import QGN
    from methods.qgn.train import evaluate_qgn, prepare_split, pyramid_targets

    p = ctx.params
    if p["model"] == "dilated" and p["train_scheme"] != "none":
        raise Unsupported("the dilated baseline is not trained by this trial (memory, MACs and latency only)")
    if p["model"] == "qgn" and p["scheme"] == "pc" and p["train_scheme"] == "none":
        raise Unsupported("predicted-composite propagation needs a trained model (set train_scheme)")
    levels = p["levels"] if p["model"] == "qgn" else 5
    val_set = build_dataset(ctx.dataset, "val")
    val = prepare_split(val_set, levels, limit=max(p["images"], ctx.batch_size))
    torch.manual_seed(ctx.seed)
    if p["model"] == "dilated":
        model: torch.nn.Module = DilatedBaseline(ENCODER_SPECS[p["arch"]], val_set.num_classes)
        size = tuple(val.images.shape[-2:])

        def encode(x):
            return model.encode(x)

        def decode_for(labels):
            return lambda feats: model.decode(feats, size)

    else:
        if p["train_scheme"] == "none":
            model = QGN(val_set.num_classes, arch=p["arch"], levels=levels, backend=p["backend"])
        else:
            model, _ = trained_qgn(
                ctx,
                arch=p["arch"],
                levels=levels,
                backend=p["backend"],
                train_scheme=p["train_scheme"],
                gamma=p["gamma"],
            )

        def encode(x):
            return model.encode(x)

        def decode_for(labels):
            targets = pyramid_targets(labels, levels, val_set.num_classes)
            return lambda feats: model.decode(feats, p["scheme"], targets)

    n = min(p["images"], val.images.shape[0])
    ctx.progress(f"measuring activation memory and MACs over {n} images")
    mem_enc = mem_dec = maps_enc = maps_dec = macs_enc = macs_dec = 0.0
    for i in range(n):
        image, labels = val.images[i : i + 1], val.labels[i : i + 1]
        mem = activation_memory(model, image, encode, decode_for(labels))
        mem_enc += mem.encoder_bytes / 1e6
        mem_dec += mem.decoder_bytes / 1e6
        maps_enc += mem.encoder_map_bytes / 1e6
        maps_dec += mem.decoder_map_bytes / 1e6
        macs = forward_macs(model, image, encode, decode_for(labels))
        macs_enc += macs["encoder"] / 1e9
        macs_dec += macs["decoder"] / 1e9
    ctx.record("mem_encoder", mem_enc / n)
    ctx.record("mem_decoder", mem_dec / n)
    ctx.record("mem_total", (mem_enc + mem_dec) / n)
    ctx.record("maps_decoder", maps_dec / n)
    ctx.record("maps_total", (maps_enc + maps_dec) / n)
    ctx.record("gmacs", (macs_enc + macs_dec) / n)
    ctx.record("gmacs_decoder", macs_dec / n)
    ctx.note(
        "memory_method",
        "fp32 training-mode forward, batch 1; bytes of distinct storages saved by autograd for backward "
        "(saved_tensors_hooks) plus the pass's outputs, excluding parameters and the input image; "
        "attributed to the phase (encoder/decoder) that first kept them; mean over images. maps_*: the "
        "distinct storages of every module output (feature maps / active-site features) in the same pass",
    )
    ctx.note("macs_method", "Conv2d/Linear MACs; sparse convs count present neighbour pairs only")
    ctx.note("input_size", list(val.size))

    if p["model"] == "qgn" and p["train_scheme"] != "none":
        full_val = val if val.images.shape[0] == len(val_set) else prepare_split(val_set, levels)
        # accuracy as in qgn.train_eval (same backend choice, so the same figures); memory used p["backend"]
        model.backend, measured_backend = "auto", model.backend
        result = evaluate_qgn(model, full_val, p["scheme"], bf16=_train_settings(ctx).bf16)
        model.backend = measured_backend
        ctx.record("miou", result["miou"])
        ctx.record("acc", result["acc"])
        ctx.note("active_cells_percent", result["active_percent"])

    batch = val.images[: ctx.batch_size]
    if batch.shape[0] < ctx.batch_size:
        batch = batch.repeat((ctx.batch_size + batch.shape[0] - 1) // batch.shape[0], 1, 1, 1)[: ctx.batch_size]
    labels = val.labels[: batch.shape[0]]
    if labels.shape[0] < batch.shape[0]:
        labels = labels.repeat((batch.shape[0] + labels.shape[0] - 1) // labels.shape[0], 1, 1)[: batch.shape[0]]
    decode = decode_for(labels.to(ctx.placement().device))
    # encode/decode close over ``model``, which preparation moves and casts in place
    if p["model"] == "dilated":
        ctx.time_model("latency", model, batch, call=lambda m, x: decode(encode(x)).argmax(dim=1))
    else:
        ctx.time_model("latency", model, batch, call=lambda m, x: m.dense_prediction(decode(encode(x))))
    ctx.note("latency_covers", "image -> label map (QGN: leaves accumulated; dilated: arg-max of upsampled logits)")
