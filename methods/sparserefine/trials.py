"""SparseRefine trials: selectors (Table 5a/5b, supp. Table 1, Figure 3), the trained pipeline
(Table 5), the cost breakdown (Tables 6 and 7) and end-to-end latency (supp. Table 3)."""

from __future__ import annotations

import math
from typing import Any

import torch

from harness.context import TrialContext
from harness.devices import Placement
from harness.registry import Metric, Param, scale_setting, trial
from methods.mmseg_models.models import MMSEG_MODEL_NAMES
from methods.sparserefine.selection import SELECTOR_KINDS
from methods.sparserefine.training import SCALE_KEY

SELECTOR_CHOICES = tuple(SELECTOR_KINDS)
ENSEMBLER_CHOICES = ("direct", "entropy", "gated", "oracle")
ARCH_CHOICES = ("minkunet4", "minkunet5", "minkunet6", "minkunet8", "pointnet")
INPUT_CHOICES = ("rgb", "rgb+logits", "rgb+features", "rgb+logits+features")
BACKEND_CHOICES = ("dense", "spconv", "torchsparse", "native")
PAPER_DENSITY = 0.118  # HRNet-W48 on Cityscapes at alpha 0.3 (supp. Table 1)
PAPER_GRID = (1024, 2048)

SELECTION_PARAMS = [
    Param("selector", str, "entropy", doc="pixel selector", choices=SELECTOR_CHOICES),
    Param(
        "alpha",
        float,
        0.3,
        doc="entropy threshold α (entropy selector); also defines the matched density of the others; "
        "a negative α selects every pixel",
    ),
    Param(
        "density",
        float,
        0.0,
        doc="target density (fraction), calibrated on the train split: the entropy selector's α, the "
        "magnitude/learnable threshold, the random rate; 0 = α as given (entropy) / match the entropy "
        "selector's density on the train split (the others)",
        low=0.0,
        high=1.0,
    ),
    Param(
        "recall",
        float,
        0.0,
        doc="> 0: α is calibrated on the train split as the largest that selects this fraction of the LR "
        "errors (the paper's rule, supp. §1.1); overrides alpha",
        low=0.0,
        high=1.0,
    ),
    Param(
        "threshold",
        float,
        -1.0,
        doc="explicit threshold for magnitude (feature L2) / learnable (probability); < 0 = calibrate "
        "to the density on the train split",
    ),
]
REFINER_PARAMS = [
    Param("inputs", str, "rgb", doc="per-pixel extractor inputs (Table 5c)", choices=INPUT_CHOICES),
    Param("arch", str, "minkunet6", doc="sparse feature extractor (Table 5d)", choices=ARCH_CHOICES),
    Param("width_mult", float, 1.0, doc="channel multiplier of the extractor (1 = the paper's)", low=0.01),
    Param("reps", int, 2, doc="residual blocks per UNet level before and after the skip", low=1),
    Param("ensembler", str, "gated", doc="ensembler (Table 5e)", choices=ENSEMBLER_CHOICES),
    Param("backend", str, "native", doc="sparse conv backend (methods.sparse)", choices=BACKEND_CHOICES),
]


def _experiment(ctx: TrialContext):
    from methods.sparserefine.experiment import Experiment

    return Experiment.of(ctx)


# --- selectors --------------------------------------------------------------------------------


def _selector_latency_fn(ctx: TrialContext, exp, selector) -> Any:
    """A callable running the selector on ``ctx.batch_size`` val images, from the LR outputs as the
    LR model produces them (on its grid) to the full-resolution mask, in ``ctx.precision``."""
    from methods.sparserefine.selection import TimingBatch

    idx = exp.val.stackable(ctx.batch_size)
    batch = TimingBatch(exp.val, idx, ctx.placement(), ctx.seed, lambda: exp.features("val").grid[idx])
    return selector.timed_call(batch)


def _selection_stats(exp, selector, split: str):
    from methods.sparserefine.selectors import SelectionCounts

    data = exp.split(split)
    counts = SelectionCounts()
    for i in data.stream(range(len(data))):
        counts.update(selector.mask(data, i), data.errors(i))
    return counts


@scale_setting(SCALE_KEY)
def _check_scale_settings(value: Any) -> None:
    from methods.sparserefine.experiment import check_scale_settings

    check_scale_settings(value)


@trial(
    "sparserefine.selector",
    doc="Pixel selector on the frozen LR outputs: density, recall and precision against the pixels the "
    "LR prediction gets wrong, and the selector's own latency.",
    params=[
        *SELECTION_PARAMS,
        Param("split", str, "val", doc="split the statistics are measured on", choices=("train", "val")),
        Param("measure_latency", bool, True, doc="time the selector (skip for pure statistics)"),
    ],
    metrics=[
        Metric("density", "%", "none", doc="selected pixels / all pixels"),
        Metric("recall", "%", "higher", doc="LR errors selected / LR errors"),
        Metric("precision", "%", "higher", doc="LR errors selected / selected"),
        Metric(
            "threshold", "", "none", doc="threshold in force (α for entropy; none for random/oracle)", optional=True
        ),
        Metric("latency", "ms", "lower", doc="measure_latency only", optional=True),
    ],
    axes=("precision", "batch_size", "device"),
    version="2",
)
def selector_trial(ctx: TrialContext) -> None:
    from methods.sparserefine.experiment import selection_spec

    exp = _experiment(ctx)
    selector = exp.selector(selection_spec(ctx.params))
    counts = _selection_stats(exp, selector, ctx.params["split"])
    for name, value in counts.as_dict().items():
        ctx.record(name, value)
    if not math.isnan(selector.threshold):
        ctx.record("threshold", selector.threshold)
    ctx.note("selector", selector.describe())
    ctx.note("counts", {"selected": counts.selected, "errors": counts.errors, "pixels": counts.pixels})
    if ctx.params["measure_latency"]:
        ctx.measure("latency", _selector_latency_fn(ctx, exp, selector))


CURVE_ENTROPY_POINTS = 24


def _interpolate(xs: list[float], ys: list[float], x: float) -> float:
    pts = sorted(zip(xs, ys, strict=True))
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return float("nan")


@trial(
    "sparserefine.selector_curve",
    doc="Recall and precision against density for one selector (Figure 3b/c, supp. Figure 1): a "
    "sweep of α (entropy) or of target densities (the others), measured on the val split.",
    params=[
        Param(
            "selector",
            str,
            "entropy",
            doc="pixel selector",
            choices=tuple(kind for kind, cls in SELECTOR_KINDS.items() if cls.sweepable),
        ),
        Param("points", int, CURVE_ENTROPY_POINTS, doc="α values of the entropy sweep (log-spaced)", low=2),
    ],
    metrics=[
        Metric("recall_at_paper_density", "%", "higher", doc="recall at 11.8% density (interpolated)"),
        Metric("precision_at_paper_density", "%", "higher"),
        Metric("recall_at_5pct", "%", "higher", doc="recall at 5% density (interpolated)"),
    ],
    version="2",
)
def selector_curve_trial(ctx: TrialContext) -> None:
    exp = _experiment(ctx)
    kind = ctx.params["selector"]
    points: list[dict[str, float]] = []
    for spec in SELECTOR_KINDS[kind].curve_specs(ctx.params["points"], exp.val.num_classes):
        selector = exp.selector(spec)
        c = _selection_stats(exp, selector, "val")
        target = {} if math.isnan(selector.target_density) else {"target_density": selector.target_density}
        points.append({"threshold": selector.threshold, **target, **c.as_dict()})
        ctx.progress(f"sparserefine: {kind} curve at threshold {selector.threshold:.4g}")
    densities = [p["density"] for p in points]
    ctx.record("recall_at_paper_density", _interpolate(densities, [p["recall"] for p in points], 11.8))
    ctx.record("precision_at_paper_density", _interpolate(densities, [p["precision"] for p in points], 11.8))
    ctx.record("recall_at_5pct", _interpolate(densities, [p["recall"] for p in points], 5.0))
    ctx.note("curve", points)


# --- the trained pipeline -----------------------------------------------------------------------


def _trained_and_evaluated(ctx: TrialContext, exp, selector) -> tuple[Any, dict[str, Any], Any]:
    """The refiner for ``ctx.params`` trained on ``selector``'s train pixels (cached), and its val
    evaluation; the extractor is left on the trial's backend for timing."""
    from methods.sparserefine.training import evaluate

    config = exp.refiner_config(ctx.params)
    model, record = exp.refiner(config, selector)
    features = exp.features("val") if config.uses_features else None
    result = evaluate(
        model, selector, exp.val, features, ctx.progress, backend=exp.training.backend, bf16=exp.training.bf16
    )
    if config.arch != "pointnet":
        from methods.sparse import set_backend

        set_backend(model.extractor, config.backend)
    return model, record, result


def _record_gap(ctx: TrialContext, exp, result) -> Any:
    """Record refined, LR and HR mIoU and the share of the LR->HR gap closed; returns the HR matrix."""
    from methods.metrics import ConfusionMatrix

    hr = exp.hr_reference()
    hr_cm = ConfusionMatrix(hr["num_classes"])
    hr_cm.counts = hr["counts"].clone()
    miou, lr, hr_miou = result.refined.miou(), result.lr.miou(), hr_cm.miou()
    ctx.record("miou", miou)
    ctx.record("miou_lr", lr)
    ctx.record("miou_hr", hr_miou)
    ctx.record("gap_closed", 100.0 * (miou - lr) / (hr_miou - lr) if hr_miou != lr else float("nan"))
    return hr_cm


@trial(
    "sparserefine.pipeline",
    doc="SparseRefine on the frozen LR baseline: train the refiner (cached, keyed by its full "
    "configuration) on the selected pixels of the train split, evaluate on val against the LR and HR "
    "dense baselines.",
    params=[
        *SELECTION_PARAMS,
        *REFINER_PARAMS,
        Param("measure_latency", bool, False, doc="time selection + extractor + ensembler on val images"),
    ],
    metrics=[
        Metric("miou", "%", "higher", doc="refined, mmseg nan-mean"),
        Metric("miou_absent_as_zero", "%", "higher", doc="refined, official mean (absent classes = 0)"),
        Metric("miou_lr", "%", "none", doc="LR dense baseline on the same val images"),
        Metric("miou_hr", "%", "none", doc="HR dense baseline on the same val images"),
        Metric("gap_closed", "%", "higher", doc="(refined − LR) / (HR − LR)"),
        Metric("pixel_accuracy", "%", "higher", doc="refined"),
        Metric("pixel_accuracy_lr", "%", "none"),
        Metric("density", "%", "none"),
        Metric("recall", "%", "higher"),
        Metric("precision", "%", "higher"),
        Metric("train_seconds", "s", "none", doc="refiner training time when it was built"),
        Metric("latency", "ms", "lower", doc="selector + extractor + ensembler (measure_latency)", optional=True),
        Metric(
            "iou_{class}",
            "%",
            "higher",
            doc="refined IoU of each class present in val (class name, spaces as _), as baseline.evaluate's",
            optional=True,
        ),
    ],
    axes=("precision", "batch_size", "device"),
    version="2",
)
def pipeline_trial(ctx: TrialContext) -> None:
    from methods.sparserefine.experiment import selection_spec

    exp = _experiment(ctx)
    selector = exp.selector(selection_spec(ctx.params))
    model, record, result = _trained_and_evaluated(ctx, exp, selector)
    hr_cm = _record_gap(ctx, exp, result)
    ctx.record("miou_absent_as_zero", result.refined.miou_absent_as_zero())
    ctx.record("pixel_accuracy", result.refined.pixel_accuracy())
    ctx.record("pixel_accuracy_lr", result.lr.pixel_accuracy())
    for name, value in result.selection.as_dict().items():
        ctx.record(name, value)
    ctx.record("train_seconds", record["seconds"])
    ctx.note("selector", selector.describe())
    ctx.note(
        "training",
        {
            "trained_ensembler": "gated" if ctx.params["ensembler"] == "gated" else "direct",
            "shared_refiner": record["shared_training"],
            "steps": record["steps"],
            "mean_sites_per_step": record["mean_sites"],
            "final_loss": sum(record["losses"][-10:]) / max(len(record["losses"][-10:]), 1),
            **exp.training.__dict__,
        },
    )
    ctx.note("miou_absent_as_zero_lr", result.lr.miou_absent_as_zero())
    ctx.note("miou_absent_as_zero_hr", hr_cm.miou_absent_as_zero())
    ctx.note("per_class_iou", {"refined": result.refined.per_class_iou(), "lr": result.lr.per_class_iou()})
    classes = _class_names(ctx, result.refined.num_classes)
    ctx.note("classes", list(classes))
    for name, iou in zip(classes, result.refined.per_class_iou(), strict=True):
        if not math.isnan(iou):
            ctx.record(per_class_metric(name), iou, unit="%", better="higher")
    ctx.note("val_sites", result.sites)
    if ctx.params["measure_latency"]:
        _measure_refinement(ctx, exp, model, selector)


@trial(
    "sparserefine.patchrefine",
    doc="Table 4: PatchRefine, the pipeline with every patch x patch cell that holds a selected pixel "
    "refined densely by the same extractor (trained on such patches), on the frozen LR baseline.",
    params=[
        *SELECTION_PARAMS,
        *REFINER_PARAMS,
        Param(
            "patch", int, 256, doc="patch side in pixels of the unit's images (paper: 256 or 512 at 1024x2048)", low=1
        ),
        Param("measure_latency", bool, False, doc="time the refinement of the patch pixels (as the pipeline's)"),
    ],
    metrics=[
        Metric("miou", "%", "higher", doc="refined, mmseg nan-mean"),
        Metric("miou_lr", "%", "none", doc="LR dense baseline on the same val images"),
        Metric("miou_hr", "%", "none", doc="HR dense baseline on the same val images"),
        Metric("gap_closed", "%", "higher", doc="(refined - LR) / (HR - LR)"),
        Metric("density", "%", "none", doc="refined pixels (the patches) / all pixels, val"),
        Metric("selected_density", "%", "none", doc="pixels the selector picks / all pixels, val"),
        Metric("train_seconds", "s", "none", doc="refiner training time when it was built"),
        Metric("latency", "ms", "lower", doc="as the pipeline's latency, on the patch pixels", optional=True),
    ],
    axes=("precision", "batch_size", "device"),
    version="1",
)
def patchrefine_trial(ctx: TrialContext) -> None:
    from methods.sparserefine.experiment import selection_spec
    from methods.sparserefine.patches import PatchSelector

    exp = _experiment(ctx)
    inner = exp.selector(selection_spec(ctx.params))
    selector = PatchSelector(inner, ctx.params["patch"])
    model, record, result = _trained_and_evaluated(ctx, exp, selector)
    _record_gap(ctx, exp, result)
    ctx.record("density", result.selection.as_dict()["density"])
    val = exp.val
    selected = sum(int(inner.mask(val, i).sum()) for i in range(len(val)))
    ctx.record("selected_density", 100.0 * selected / val.labels.numel())
    ctx.record("train_seconds", record["seconds"])
    ctx.note("selector", selector.describe())
    ctx.note("val_sites", result.sites)
    if ctx.params["measure_latency"]:
        _measure_refinement(ctx, exp, model, selector)


@trial(
    "sparserefine.pointrend",
    doc="Table 3b: PointRend on the frozen LR baseline: the most uncertain points of a reduced-resolution "
    "grid refined by a point-wise MLP on interpolated coarse logits and LR features (no high-resolution "
    "image), trained on the train split, evaluated on val at full resolution.",
    params=[
        Param(
            "scale",
            float,
            0.6875,
            doc="point grid / full resolution (paper: 704x1408 of 1024x2048)",
            low=0.01,
            high=1.0,
        ),
        Param(
            "density",
            float,
            0.118,
            doc="share of the grid's points refined per image (top-k uncertainty)",
            low=0.0,
            high=1.0,
        ),
        Param("hidden", int, 256, doc="MLP width (PointRend: 256)", low=1),
        Param("layers", int, 3, doc="MLP layers (PointRend: 3)", low=1),
        Param("measure_latency", bool, False, doc="time point selection + MLP + write-back + upsampling"),
    ],
    metrics=[
        Metric("miou", "%", "higher", doc="PointRend, mmseg nan-mean, full resolution"),
        Metric("miou_lr", "%", "none", doc="LR dense baseline on the same val images"),
        Metric("miou_hr", "%", "none", doc="HR dense baseline on the same val images"),
        Metric("gap_closed", "%", "higher", doc="(PointRend - LR) / (HR - LR)"),
        Metric("density", "%", "none", doc="refined points / full-resolution pixels"),
        Metric("train_seconds", "s", "none"),
        Metric("latency", "ms", "lower", doc="from the LR-grid logits and features (measure_latency)", optional=True),
    ],
    axes=("precision", "batch_size", "device"),
    version="1",
)
def pointrend_trial(ctx: TrialContext) -> None:
    from methods.metrics import ConfusionMatrix
    from methods.sparserefine import pointrend as pr

    p = ctx.params
    exp = _experiment(ctx)
    if exp.lr_model.feature_channels is None:
        from harness.errors import Unavailable

        model = exp.lr_model.config.get("model", "")
        raise Unavailable(
            f"PointRend's point head reads the LR baseline's features; {model} has no per-pixel classifier to "
            "take them from"
        )
    train, val = exp.train, exp.val
    config = pr.PointRendConfig(
        train.num_classes, int(exp.lr_model.feature_channels), p["hidden"], p["layers"], p["scale"], p["density"]
    )
    head, record = pr.train_head(
        config, train, exp.features("train").grid, exp.training.epochs, exp.training.lr, ctx.seed, ctx.progress
    )
    feats = exp.features("val").grid
    refined, lr = ConfusionMatrix(val.num_classes), ConfusionMatrix(val.num_classes)
    points = pixels = 0
    with torch.inference_mode():
        for i in val.stream(range(len(val))):
            grid, selected = pr.image_points(val, feats, i, config)
            refined.update(pr.predict(head, selected, grid.full), val.labels[i : i + 1])
            lr.update(val.prediction(i), val.labels[i : i + 1])
            points += grid.k
            pixels += grid.full[0] * grid.full[1]
    hr = exp.hr_reference()
    hr_cm = ConfusionMatrix(hr["num_classes"])
    hr_cm.counts = hr["counts"].clone()
    miou, lr_miou, hr_miou = refined.miou(), lr.miou(), hr_cm.miou()
    ctx.record("miou", miou)
    ctx.record("miou_lr", lr_miou)
    ctx.record("miou_hr", hr_miou)
    ctx.record("gap_closed", 100.0 * (miou - lr_miou) / (hr_miou - lr_miou) if hr_miou != lr_miou else float("nan"))
    ctx.record("density", 100.0 * points / pixels)
    ctx.record("train_seconds", record["seconds"])
    sizes = sorted({pr.reduced_size(*val.size(i), config.scale) for i in range(len(val))})
    grids = [list(s) for s in sizes]
    grid_note = grids[0] if len(grids) == 1 else grids
    ctx.note("training", {**record, "grid": grid_note, "epochs": exp.training.epochs, "lr": exp.training.lr})
    if p["measure_latency"]:
        idx = val.stackable(ctx.batch_size)
        timed = pr.ImageGrid.of(val.size(idx[0]), config, val.factor)
        dtype = ctx.placement().dtype

        def run(model: torch.nn.Module, logits: torch.Tensor, grid_feats: torch.Tensor) -> torch.Tensor:
            points = timed.points(logits, grid_feats)
            points.fine, points.coarse = points.fine.to(dtype), points.coarse.to(dtype)
            return pr.predict(model, points, timed.full)

        ctx.time_model("latency", head, val.logits_grid[idx], feats[idx], call=run, channels_last=False)


SIZE_METRICS = [
    m
    for name in ("small", "medium", "large")
    for m in (
        Metric(f"size_miou_lr_{name}", "%", "none", doc=f"LR mIoU on the {name} objects' pixels", optional=True),
        Metric(f"size_miou_sr_{name}", "%", "higher", doc=f"refined mIoU on the {name} objects' pixels", optional=True),
        Metric(f"size_gain_{name}", "pt", "higher", doc=f"refined - LR mIoU, {name} objects", optional=True),
        Metric(f"size_objects_{name}", "", "none", doc=f"{name} objects in val (0: no mIoU for the bin)"),
    )
]


@trial(
    "sparserefine.object_sizes",
    doc="Supp. Fig. 3: mIoU of the LR baseline and of LR + SparseRefine on the val pixels of small, medium "
    "and large objects (4-connected ground-truth components of each class, binned by their share of the "
    "frame); the refiner is the pipeline's (same cache).",
    params=[
        *SELECTION_PARAMS,
        *REFINER_PARAMS,
        Param(
            "small_below",
            float,
            0.001,
            doc="an object covering less than this share of the frame is small",
            low=0.0,
            high=1.0,
        ),
        Param(
            "large_above",
            float,
            0.01,
            doc="an object covering at least this share of the frame is large",
            low=0.0,
            high=1.0,
        ),
    ],
    metrics=[
        *SIZE_METRICS,
        Metric("miou", "%", "higher", doc="refined, all pixels (as the pipeline's)"),
        Metric("miou_lr", "%", "none", doc="LR, all pixels"),
    ],
    axes=("precision", "batch_size", "device"),
    version="1",
)
def object_sizes_trial(ctx: TrialContext) -> None:
    from methods.sparserefine.experiment import selection_spec
    from methods.sparserefine.object_sizes import SIZE_BINS, SizeBinnedScores
    from methods.sparserefine.training import evaluate

    p = ctx.params
    exp = _experiment(ctx)
    selector = exp.selector(selection_spec(p))
    config = exp.refiner_config(p)
    model, _ = exp.refiner(config, selector)
    features = exp.features("val") if config.uses_features else None
    scores = SizeBinnedScores(exp.val.num_classes, p["small_below"], p["large_above"])
    result = evaluate(
        model,
        selector,
        exp.val,
        features,
        ctx.progress,
        backend=exp.training.backend,
        on_image=scores.update,
        bf16=exp.training.bf16,
    )
    ctx.record("miou", result.refined.miou())
    ctx.record("miou_lr", result.lr.miou())
    for name in SIZE_BINS:
        ctx.record(f"size_objects_{name}", scores.objects[name])
        if scores.objects[name] == 0:
            continue
        lr, sr = scores.miou("lr", name), scores.miou("refined", name)
        ctx.record(f"size_miou_lr_{name}", lr)
        ctx.record(f"size_miou_sr_{name}", sr)
        ctx.record(f"size_gain_{name}", sr - lr)
    ctx.note("selector", selector.describe())
    ctx.note("size_pixels", dict(scores.pixels))
    ctx.note(
        "size_bins",
        {"small": f"< {p['small_below']:.2%}", "medium": "between", "large": f">= {p['large_above']:.2%}"},
    )


def per_class_metric(name: str) -> str:
    """The metric of one class's IoU, as baseline.evaluate names it: ``iou_traffic_light``."""
    return f"iou_{name.replace(' ', '_')}"


def _class_names(ctx: TrialContext, num_classes: int) -> tuple[str, ...]:
    from methods.datasets import build_dataset

    classes = tuple(build_dataset(ctx.dataset, "val").classes)
    if len(classes) != num_classes:
        raise ValueError(f"the val split names {len(classes)} classes, the LR outputs have {num_classes}")
    return classes


def _measure_refinement(ctx: TrialContext, exp, model, selector) -> None:
    """Latency of selection + extractor + ensembler on ``ctx.batch_size`` val images (the LR logits
    given), in the trial's precision on its device."""
    from methods.datasets import normalize
    from methods.sparserefine.refiner import gather_pixels

    val = exp.val
    idx = val.stackable(ctx.batch_size)
    where = ctx.placement()
    # images and logits channels_last (placed here, they stay so); the sparse refiner is not
    images = where.tensor(normalize(val.images[idx]))
    logits = where.tensor(val.logits(idx))
    masks = torch.cat([selector.mask(val, i) for i in idx])
    config = model.config
    # the "+features" inputs are gathered from the LR features; the oracle ensembler reads the labels
    features = where.tensor(exp.features("val").at(idx, val.size(idx[0]))) if config.uses_features else None
    labels = val.labels[idx].to(where.device) if config.ensembler == "oracle" else None

    def run(refiner, masks: torch.Tensor, images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        pixels = gather_pixels(masks, images, logits, refiner.config, features, labels)
        return refiner(pixels, use_labels=labels is not None)[0]

    ctx.time_model("latency", model, masks, images, logits, call=run, channels_last=False)


# --- costs ------------------------------------------------------------------------------------


def _main_refiner(ctx: TrialContext, exp):
    """The default refiner (entropy selector, RGB, gated) and the entropy α in force."""
    from methods.sparserefine.selection import SelectionSpec

    selector = exp.selector(SelectionSpec("entropy", ctx.params["alpha"], recall=ctx.params["recall"]))
    ctx.note("selector", selector.describe())
    params = {**ctx.params, "inputs": "rgb", "ensembler": "gated"}
    model, _ = exp.refiner(exp.refiner_config(params), selector)
    return model, selector.threshold


def _dense_macs(module: torch.nn.Module, height: int, width: int) -> float:
    """MACs of a dense network by fvcore (nan if fvcore is missing)."""
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError:
        return float("nan")
    analysis = FlopCountAnalysis(module.eval(), torch.zeros(1, 3, height, width))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    with torch.no_grad():
        return float(analysis.total())


def _pipeline_inputs(ctx: TrialContext, exp):
    from methods.datasets import normalize

    val = exp.val
    idx = val.stackable(ctx.batch_size)
    return _dense_placement(ctx, exp).tensor(normalize(val.images[idx]))


def _paper_grid_pixels(exp, model, batch_size: int, where: Placement):
    """Selected pixels on the paper's 1024×2048 grid at the paper's 11.8% density: the val images'
    LR entropy maps, bilinearly resized to that grid, thresholded at their 88.2% quantile (so the
    selection has the spatial structure of real entropy maps); inputs are the resized images."""
    import torch.nn.functional as F

    from methods.datasets import normalize
    from methods.sparserefine.refiner import gather_pixels
    from methods.sparserefine.selectors import threshold_for_density

    val = exp.val
    idx = val.stackable(batch_size)
    entropy = F.interpolate(val.entropy(idx).unsqueeze(1), size=PAPER_GRID, mode="bilinear")[:, 0]
    mask = entropy > threshold_for_density(entropy, PAPER_DENSITY)
    images = F.interpolate(normalize(val.images[idx]), size=PAPER_GRID, mode="bilinear")
    logits = F.interpolate(val.logits(idx), size=PAPER_GRID, mode="nearest")
    images = where.tensor(images, channels_last=False)
    logits = where.tensor(logits, channels_last=False)
    return gather_pixels(mask.to(images.device), images, logits, model.config)


@trial(
    "sparserefine.breakdown",
    doc="Table 6/7: #MACs (sparse convs counted from the actual kernel-map pairs) and latency of the "
    "entropy selector, sparse extractor and gated ensembler, the LR dense pass, the end-to-end "
    "SparseRefine total and the HR dense baseline (same precision/device); speedup = HR / total. "
    "Also the extractor at the paper's 11.8% density on a 1024x2048 grid.",
    params=[
        Param("alpha", float, 0.3, doc="entropy threshold α"),
        next(p for p in SELECTION_PARAMS if p.name == "recall"),
        *[p for p in REFINER_PARAMS if p.name in ("arch", "width_mult", "reps", "backend")],
        Param("paper_grid", bool, True, doc="also time the extractor on the paper's 1024x2048 grid"),
    ],
    metrics=[
        Metric("selector_latency", "ms", "lower"),
        Metric("extractor_latency", "ms", "lower", doc="extractor + linear head, kernel maps included"),
        Metric("ensembler_latency", "ms", "lower"),
        Metric("lr_latency", "ms", "lower", doc="LR dense pass (x2 downsampled) incl. downsampling"),
        Metric("total_latency", "ms", "lower", doc="LR pass + selector + extractor + ensembler + write-back"),
        Metric("hr_latency", "ms", "lower", doc="HR dense baseline at full resolution"),
        Metric("speedup", "x", "higher", doc="hr_latency / total_latency"),
        Metric("extractor_gmacs", "G", "lower"),
        Metric("head_gmacs", "G", "lower"),
        Metric("ensembler_gmacs", "G", "lower"),
        Metric("lr_gmacs", "G", "lower"),
        Metric("hr_gmacs", "G", "lower"),
        Metric("density", "%", "none"),
        Metric("extractor_latency_paper_grid", "ms", "lower", doc="at 11.8% of 1024x2048 (paper_grid)", optional=True),
        Metric("extractor_gmacs_paper_grid", "G", "lower", doc="paper_grid only", optional=True),
    ],
    axes=("precision", "batch_size", "device"),
    version="2",
)
def breakdown_trial(ctx: TrialContext) -> None:
    from methods.sparserefine.costs import SparseRefinePipeline, count_macs

    exp = _experiment(ctx)
    model, alpha = _main_refiner(ctx, exp)
    lr_net, hr_net = _dense_network(exp.lr_model), _dense_network(exp.hr_model)
    # MACs first, in fp32 on the CPU, before the modules are folded and cast for timing.
    images_fp32 = _pipeline_inputs(ctx, exp).float().cpu()
    h, w = images_fp32.shape[-2:]
    with torch.inference_mode():
        probe = SparseRefinePipeline(lr_net, model, alpha)
        macs = count_macs(model, probe.select(images_fp32, probe.dense(images_fp32)))
        grid_macs = None
        if ctx.params["paper_grid"]:
            cpu_fp32 = Placement(torch.device("cpu"))
            grid_macs = count_macs(model, _paper_grid_pixels(exp, model, ctx.batch_size, cpu_fp32))
    ctx.record("extractor_gmacs", macs.extractor / 1e9)
    ctx.record("head_gmacs", macs.head / 1e9)
    ctx.record("ensembler_gmacs", macs.ensembler / 1e9)
    lr_h, lr_w = -(-h // 2), -(-w // 2)  # the LR grid: ceil(side / 2)
    ctx.record("lr_gmacs", ctx.batch_size * _dense_macs(lr_net, lr_h, lr_w) / 1e9)
    ctx.record("hr_gmacs", ctx.batch_size * _dense_macs(hr_net, h, w) / 1e9)
    ctx.note("sparse_convs", [list(c) for c in macs.convs])

    where = _dense_placement(ctx, exp)
    lr_module = where.model(lr_net)
    refiner = where.model(model, channels_last=False)
    pipeline = SparseRefinePipeline(lr_module, refiner, alpha, factor=2)
    images = _pipeline_inputs(ctx, exp)
    with torch.inference_mode(), where.running():
        logits_lr = pipeline.dense(images)
        pixels = pipeline.select(images, logits_lr)
        y2 = refiner.refine(pixels)
    ctx.record("density", 100.0 * pixels.coords.shape[0] / (ctx.batch_size * h * w))
    ctx.measure("lr_latency", _running(where, lambda: pipeline.dense(images)))
    ctx.measure("selector_latency", _running(where, lambda: pipeline.select(images, logits_lr)))
    ctx.measure("extractor_latency", _running(where, lambda: refiner.refine(pixels)))
    ctx.measure("ensembler_latency", _running(where, lambda: refiner.ensembler(pixels.y1, y2)))
    ctx.measure("total_latency", _running(where, lambda: pipeline(images)))
    ctx.time_model("hr_latency", hr_net, images, autocast=_is_checkpoint(exp.hr_model))
    ctx.record("speedup", ctx.metrics["hr_latency"].value / ctx.metrics["total_latency"].value)
    parts = ("lr_latency", "selector_latency", "extractor_latency", "ensembler_latency")
    ctx.note("component_sum_ms", sum(ctx.metrics[k].value for k in parts))
    if grid_macs is not None:
        grid_pixels = _paper_grid_pixels(exp, refiner, ctx.batch_size, where)
        ctx.measure("extractor_latency_paper_grid", _running(where, lambda: refiner.refine(grid_pixels)))
        ctx.record("extractor_gmacs_paper_grid", grid_macs.extractor / 1e9)
        ctx.note("paper_grid_sites", int(grid_pixels.coords.shape[0]))


def _is_checkpoint(baseline) -> bool:
    from methods.baselines.frozen import CheckpointBaseline

    return isinstance(baseline, CheckpointBaseline)


def _dense_network(baseline) -> torch.nn.Module:
    """The network of a frozen baseline to count and time: an embedded CNN's module (loaded for this
    unit), or a checkpoint's network built afresh (the one that computes LR outputs is shared by the
    process's units and must not be BN-folded or cast in place by a timing placement)."""
    return baseline.build() if _is_checkpoint(baseline) else baseline.module


def _dense_placement(ctx: TrialContext, exp) -> Placement:
    """Where the LR pipeline is timed: mmseg networks build fp32 tensors inside their forward, so
    with a checkpoint LR baseline weights stay fp32 and reduced precision runs under autocast (as
    baseline.latency runs them)."""
    return ctx.placement(autocast=_is_checkpoint(exp.lr_model))


def _running(where: Placement, fn):
    def run():
        with where.running():
            return fn()

    return run


@trial(
    "sparserefine.latency",
    doc="End-to-end latency of LR dense pass + SparseRefine (entropy selector, sparse extractor, gated "
    "ensembler) on full-resolution val images (supplementary Table 3's '+ SparseRefine' rows).",
    params=[
        Param("alpha", float, 0.3, doc="entropy threshold α"),
        next(p for p in SELECTION_PARAMS if p.name == "recall"),
        *[p for p in REFINER_PARAMS if p.name in ("arch", "width_mult", "reps", "backend")],
    ],
    metrics=[Metric("latency", "ms", "lower"), Metric("density", "%", "none")],
    axes=("precision", "batch_size", "device"),
    version="2",
)
def latency_trial(ctx: TrialContext) -> None:
    from methods.sparserefine.costs import SparseRefinePipeline

    exp = _experiment(ctx)
    model, alpha = _main_refiner(ctx, exp)
    where = _dense_placement(ctx, exp)
    lr_module = where.model(_dense_network(exp.lr_model))
    pipeline = SparseRefinePipeline(lr_module, where.model(model, channels_last=False), alpha)
    images = _pipeline_inputs(ctx, exp)
    with torch.inference_mode(), where.running():
        pixels = pipeline.select(images, pipeline.dense(images))
    h, w = images.shape[-2:]
    ctx.record("density", 100.0 * pixels.coords.shape[0] / (ctx.batch_size * h * w))
    ctx.measure("latency", _running(where, lambda: pipeline(images)))


@trial(
    "sparserefine.paper_model_latency",
    doc="End-to-end latency of the paper's own configuration, random weights: an mmseg baseline "
    "(default HRNet-W48) on the full grid against the same model on the x2-downsampled image + "
    "entropy selector + the paper-size MinkUNet at the paper's density + gated ensembler.",
    params=[
        Param("model", str, "hrnet_w48", doc="mmseg baseline (methods.mmseg_models)", choices=MMSEG_MODEL_NAMES),
        Param("height", int, PAPER_GRID[0], doc="full-resolution grid height", low=32),
        Param("width", int, PAPER_GRID[1], doc="full-resolution grid width", low=32),
        Param(
            "density", float, round(100 * PAPER_DENSITY, 6), doc="refined pixels, % of the grid", low=0.01, high=100.0
        ),
        *[p for p in REFINER_PARAMS if p.name in ("arch", "width_mult", "reps", "backend")],
        Param("num_classes", int, 19, doc="classes of the baseline and the refiner", low=2),
    ],
    metrics=[
        Metric("hr_latency", "ms", "lower", doc="baseline on the full grid"),
        Metric("lr_latency", "ms", "lower", doc="baseline on the x2 area-downsampled image"),
        Metric("selector_latency", "ms", "lower", doc="entropy + threshold on the LR logits, x2 mask"),
        Metric("extractor_latency", "ms", "lower", doc="sparse extractor + linear head, kernel maps included"),
        Metric("ensembler_latency", "ms", "lower"),
        Metric("total_latency", "ms", "lower", doc="LR pass + selector + gather + extractor + ensembler + write-back"),
        Metric("speedup", "x", "higher", doc="hr_latency / total_latency"),
        Metric("extractor_gmacs", "G", "lower"),
        Metric("density", "%", "none"),
    ],
    axes=("precision", "batch_size", "device"),
    version="1",
)
def paper_model_latency_trial(ctx: TrialContext) -> None:
    """Latency does not depend on the weights, but the selected set does: random weights give no
    meaningful entropy map, so the refined pixels are selector-like masks at ``density`` (label
    boundaries and small objects of embedded val images, as in suites/table7.yaml) while the selector's
    own cost is still paid in the total (its mask is computed, then replaced)."""
    from methods.baselines.trials import build_model, mmseg_model_names
    from methods.datasets import normalize
    from methods.sparse.masks import dataset_masks
    from methods.sparserefine.costs import SparseRefinePipeline, count_macs
    from methods.sparserefine.refiner import RefinerConfig, SparseRefiner, gather_pixels

    p = ctx.params
    if p["model"] not in mmseg_model_names():
        raise ValueError(f"model must be an mmseg baseline ({', '.join(mmseg_model_names())}), got {p['model']!r}")
    where = ctx.placement()
    height, width = p["height"], p["width"]
    ctx.progress(f"building {p['density']}% masks on {height}x{width}")
    masks = dataset_masks(ctx.dataset, ctx.batch_size, height, width, p["density"] / 100.0, ctx.seed)
    ctx.note("mask_source", masks.source)
    torch.manual_seed(ctx.seed)
    config = RefinerConfig(p["num_classes"], p["arch"], p["width_mult"], p["reps"], backend=p["backend"])
    refiner = SparseRefiner(config).eval()
    images = normalize(masks.images)
    with torch.inference_mode():
        probe_logits = torch.zeros(ctx.batch_size, p["num_classes"], height, width)
        macs = count_macs(refiner, gather_pixels(masks.mask, images, probe_logits, config))
    ctx.record("extractor_gmacs", macs.extractor / 1e9)
    ctx.record("density", 100.0 * float(masks.mask.float().mean()))

    ctx.progress(f"building {p['model']}")
    dense_model = where.model(build_model(p["model"], p["num_classes"]))
    refiner = where.model(refiner, channels_last=False)
    images = where.tensor(images)
    pipeline = SparseRefinePipeline(dense_model, refiner, alpha=0.3, factor=2, fixed_mask=masks.mask.to(where.device))
    with torch.inference_mode():
        logits_lr = pipeline.dense(images)
        pixels = pipeline.select(images, logits_lr)
        y2 = refiner.refine(pixels)

    ctx.progress(f"timing {p['model']} at {height}x{width}")
    ctx.measure("hr_latency", lambda: dense_model(images))
    ctx.measure("lr_latency", lambda: pipeline.dense(images))
    ctx.measure("selector_latency", lambda: pipeline.select(images, logits_lr))
    ctx.measure("extractor_latency", lambda: refiner.refine(pixels))
    ctx.measure("ensembler_latency", lambda: refiner.ensembler(pixels.y1, y2))
    ctx.measure("total_latency", lambda: pipeline(images))
    ctx.record("speedup", ctx.metrics["hr_latency"].value / ctx.metrics["total_latency"].value)
