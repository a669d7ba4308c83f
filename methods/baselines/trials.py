"""Trials of the dense baselines: accuracy of the LR/HR baselines, latency and complexity of the
embedded CNNs and of the MMSegmentation models of SparseRefine Table 1."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.context import TrialContext
from harness.errors import Unavailable
from harness.registry import Metric, Param, trial
from methods.baselines.baseline import KINDS, LR_FACTOR, trained_baseline
from methods.baselines.models import ARCH_NAMES, SegCNN
from methods.metrics import class_map

EVAL_BATCH = 2
LATENCY_NUM_CLASSES = 19
MODEL_DOC = f"embedded arch ({', '.join(ARCH_NAMES)}) or an mmseg model name (methods.mmseg_models)"


def mmseg_model_names() -> tuple[str, ...]:
    """Names from methods.mmseg_models; Unavailable if that package cannot be imported."""
    try:
        from methods.mmseg_models import MMSEG_MODEL_NAMES
    except ImportError as exc:
        raise Unavailable(f"methods.mmseg_models is not importable: {exc}") from exc
    return tuple(MMSEG_MODEL_NAMES)


def build_model(name: str, num_classes: int = LATENCY_NUM_CLASSES) -> nn.Module:
    """A randomly initialised network by name: an embedded arch or an mmseg model."""
    if name in ARCH_NAMES:
        torch.manual_seed(0)
        return SegCNN(num_classes, name).eval()
    names = mmseg_model_names()
    if name not in names:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(ARCH_NAMES + names)}")
    try:
        from methods.mmseg_models import build_mmseg_model
    except ImportError as exc:
        raise Unavailable(f"methods.mmseg_models is not importable: {exc}") from exc
    return build_mmseg_model(name, num_classes=num_classes)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- accuracy ----------------------------------------------------------------------------------


@trial(
    "baseline.evaluate",
    doc="Train (cached) the LR (x2 downsampled, nearest-upsampled logits) or HR dense baseline and "
    "evaluate it on the val split.",
    params=[
        Param("kind", str, "hr", doc="lr: trained and run at half resolution; hr: full resolution", choices=KINDS),
        Param("arch", str, "small", doc="embedded CNN size", choices=ARCH_NAMES),
    ],
    metrics=[
        Metric("miou", "%", "higher", doc="mmseg mIoU (nan-mean over classes present)"),
        Metric("miou_absent_as_zero", "%", "higher", doc="official SparseRefine mean: absent classes count 0"),
        Metric("pixel_accuracy", "%", "higher"),
        Metric("train_seconds", "s", "none", doc="training wall time when the artifact was built"),
        Metric("train_seconds_per_iter", "s", "none"),
        Metric(
            "iou_{class}",
            "%",
            "higher",
            doc="IoU of each class present in val (class name, spaces as _; absent classes: note absent_classes)",
            optional=True,
        ),
    ],
    version="1",
)
def evaluate_trial(ctx: TrialContext) -> None:
    from methods.datasets import build_dataset
    from methods.datasets.loading import iterate_samples, same_size_runs, worker_count
    from methods.metrics import ConfusionMatrix

    kind, arch = ctx.params["kind"], ctx.params["arch"]
    model = _evaluated_baseline(ctx, kind, arch)
    dataset = build_dataset(ctx.dataset, "val")
    matrix = ConfusionMatrix(dataset.num_classes, dataset.ignore_index)
    done = 0
    batches = iterate_samples(dataset, range(len(dataset)), EVAL_BATCH, worker_count(ctx.scale))
    for batch in batches:
        ctx.progress(f"evaluating {kind.upper()} baseline: image {done + 1}/{len(dataset)}")
        for run in same_size_runs(batch):  # each image at its own size
            logits, _ = model.predict(torch.stack([s.image for s in run]))
            matrix.update(class_map(logits), torch.stack([s.label for s in run]))
        done += len(batch)
    ctx.record("miou", matrix.miou())
    ctx.record("miou_absent_as_zero", matrix.miou_absent_as_zero())
    ctx.record("pixel_accuracy", matrix.pixel_accuracy())
    absent = []
    for name, iou in zip(dataset.classes, matrix.per_class_iou(), strict=True):
        if math.isnan(iou):
            absent.append(name)
        else:
            ctx.record(f"iou_{name.replace(' ', '_')}", iou, unit="%", better="higher")
    ctx.record("train_seconds", getattr(model, "train_seconds", float("nan")))  # nan: trained elsewhere
    ctx.record("train_seconds_per_iter", getattr(model, "seconds_per_iter", float("nan")))
    ctx.note("absent_classes", absent)
    if "train" in model.config:
        ctx.note("training", {**model.config["train"], "final_loss": _mean_tail(model.losses)})
    else:  # a checkpoint baseline: trained elsewhere
        ctx.note("baseline", model.config)
    ctx.note("val_images", len(dataset))


def _named_baseline(ctx: TrialContext, kind: str) -> bool:
    """Whether the suite's ``baselines:`` block names the ``kind`` baseline (else the trial's own
    parameters choose it)."""
    return bool((getattr(ctx, "baselines", {}) or {}).get(kind))


def _evaluated_baseline(ctx: TrialContext, kind: str, arch: str):
    if not _named_baseline(ctx, kind):
        return trained_baseline(kind, ctx.dataset, ctx.scale, ctx.artifacts_dir, ctx.progress, arch=arch, seed=ctx.seed)
    from methods.baselines.frozen import frozen_baseline_of

    return frozen_baseline_of(kind, ctx)


def _mean_tail(values: list[float], fraction: float = 0.1) -> float:
    tail = values[-max(1, int(len(values) * fraction)) :]
    return sum(tail) / len(tail) if tail else float("nan")


# --- latency -----------------------------------------------------------------------------------


class LowResolutionRunner(nn.Module):
    """Runs ``model`` on an x2-downsampled input and upsamples its logits NEAREST to full size,
    as the LR baseline does (the downsampling itself is outside: the input is already small)."""

    def __init__(self, model: nn.Module, full_size: tuple[int, int]):
        super().__init__()
        self.model = model
        self.full_size = full_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.model(x), size=self.full_size, mode="nearest")


def _input_size(kind: str, height: int, width: int) -> tuple[int, int]:
    return (height // LR_FACTOR, width // LR_FACTOR) if kind == "lr" else (height, width)


@trial(
    "baseline.latency",
    doc="Latency of a dense baseline (embedded CNN or mmseg model, random init, BN folded, "
    "channels_last) at full resolution (hr) or on the x2-downsampled image with nearest upsampling (lr).",
    params=[
        Param("model", str, "small", doc=MODEL_DOC),
        Param("height", int, 512, doc="full-resolution image height", low=16),
        Param("width", int, 1024, doc="full-resolution image width", low=16),
        Param("kind", str, "hr", doc="lr: run at half resolution + nearest upsampling", choices=KINDS),
    ],
    metrics=[Metric("latency", "ms", "lower"), Metric("params_m", "M", "none")],
    axes=("precision", "batch_size", "device"),
    version="2",
)
def latency_trial(ctx: TrialContext) -> None:
    name, kind = ctx.params["model"], ctx.params["kind"]
    height, width = ctx.params["height"], ctx.params["width"]
    if _named_baseline(ctx, kind):  # the suite's frozen baseline, with its checkpoint's weights
        frozen = _evaluated_baseline(ctx, kind, "small")
        name = getattr(frozen, "arch", None) or str(frozen.config["model"])
        model = frozen.module
        ctx.note("baseline", frozen.config.get("model", f"embedded:{name}"))
    else:
        ctx.progress(f"building {name}")
        model = build_model(name)
    ctx.record("params_m", parameter_count(model) / 1e6)
    in_h, in_w = _input_size(kind, height, width)
    runner = LowResolutionRunner(model, (height, width)) if kind == "lr" else model
    # The embedded CNNs run with weights and input cast to the precision. mmseg models build fp32
    # tensors inside their forward (position encodings, NMF bases), so they keep fp32 weights and run
    # under autocast, which is how mmseg itself runs reduced precision.
    use_autocast = name not in ARCH_NAMES and ctx.precision != "fp32"
    generator = torch.Generator().manual_seed(ctx.seed)
    x = torch.randn(ctx.batch_size, 3, in_h, in_w, generator=generator)
    ctx.progress(f"timing {name} ({kind}, {in_h}x{in_w}, {ctx.precision}, batch {ctx.batch_size})")
    ctx.time_model("latency", runner, x, autocast=use_autocast)
    ctx.note("input_size", [in_h, in_w])
    ctx.note("precision_mode", "autocast" if use_autocast else "cast")
    ctx.note("threads", torch.get_num_threads())


# --- complexity --------------------------------------------------------------------------------


@trial(
    "baseline.complexity",
    doc="#Params and #MACs (fvcore; one multiply-add counted once) of a dense baseline at a resolution.",
    params=[
        Param("model", str, "small", doc=MODEL_DOC),
        Param("height", int, 1024, doc="input height", low=16),
        Param("width", int, 2048, doc="input width", low=16),
    ],
    metrics=[Metric("params_m", "M", "none"), Metric("gmacs", "G", "lower")],
    version="1",
)
def complexity_trial(ctx: TrialContext) -> None:
    try:
        with warnings.catch_warnings():  # fvcore's import calls torch.jit.script, which is deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            from fvcore.nn import FlopCountAnalysis
    except ImportError as exc:
        raise Unavailable(f"fvcore is not installed: {exc}") from exc
    name, height, width = ctx.params["model"], ctx.params["height"], ctx.params["width"]
    ctx.progress(f"building {name}")
    model = build_model(name).eval()
    ctx.record("params_m", parameter_count(model) / 1e6)
    x = torch.zeros(1, 3, height, width)
    ctx.progress(f"counting MACs of {name} at {height}x{width}")
    analysis = FlopCountAnalysis(model, x)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    # fvcore traces with torch.jit: no inference tensors, and jit warns that it is deprecated.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        total = analysis.total()
    ctx.record("gmacs", total / 1e9)
    ctx.note("uncounted_ops", {op: int(n) for op, n in analysis.unsupported_ops().items()})
    ctx.note("paper_reference", _paper_reference(name))


def _paper_reference(name: str) -> dict[str, Any]:
    """SparseRefine Table 1's #Params and #MACs for an mmseg model, if that package says so."""
    if name in ARCH_NAMES:
        return {}
    try:
        from methods.mmseg_models.models import model_spec
    except ImportError:
        return {}
    spec = model_spec(name)
    return {"params_m": spec.paper_params_m, "tmacs": spec.paper_tmacs}
