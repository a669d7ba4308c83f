"""SparseRefine Table 1 on the paper's own baselines (random weights): for one MMSegmentation model,
#Params, #MACs and latency of the HR dense pass, of the LR dense pass (any LR input size: SegNeXt-L's
is 640x1280, not half of 1024x2048) and of LR + SparseRefine with the paper-size MinkUNet refining a
given share of the full-resolution grid.

Cost does not depend on the weights; accuracy does, so mIoU is not measured here (random weights)."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from harness.context import TrialContext
from harness.registry import Metric, Param, trial
from methods.mmseg_models.models import MMSEG_MODEL_NAMES
from methods.sparserefine.costs import SparseRefinePipeline, count_macs, lr_grid_entropy_mask
from methods.sparserefine.refiner import PixelBatch, gather_pixels
from methods.sparserefine.trials import REFINER_PARAMS

DEFAULT_ALPHA = 0.3  # the selector's threshold; its mask is replaced (random weights), its cost is paid


class ResizedLRPipeline(SparseRefinePipeline):
    """SparseRefinePipeline whose LR pass runs at an explicit ``lr_size`` (area-resized input), not
    necessarily 1/factor of the full grid; the LR logits and the selector's mask are resized NEAREST
    to the full grid. At an exact x2 it computes what SparseRefinePipeline(factor=2) computes."""

    def __init__(
        self,
        lr_module: nn.Module,
        refiner: nn.Module,
        alpha: float,
        lr_size: tuple[int, int],
        fixed_mask: torch.Tensor | None = None,
    ):
        super().__init__(lr_module, refiner, alpha, factor=1, fixed_mask=fixed_mask)
        self.lr_size = lr_size

    def dense(self, images: torch.Tensor) -> torch.Tensor:
        return self.lr_module(F.interpolate(images, size=self.lr_size, mode="area"))

    def _to_full(self, logits_lr: torch.Tensor, full_size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(logits_lr, size=full_size, mode="nearest")

    def select(self, images: torch.Tensor, logits_lr: torch.Tensor) -> PixelBatch:
        full_size = (int(images.shape[-2]), int(images.shape[-1]))
        mask_lr = lr_grid_entropy_mask(logits_lr, self.alpha, 1)
        mask = F.interpolate(mask_lr[:, None].to(torch.uint8), size=full_size, mode="nearest")[:, 0].bool()
        if self.fixed_mask is not None:
            mask = self.fixed_mask  # the selector's cost is paid; its mask is replaced
        return gather_pixels(mask, images, self._to_full(logits_lr, full_size), self.refiner.config)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits_lr = self.dense(images)
        pixels = self.select(images, logits_lr)
        out = self._to_full(logits_lr, (int(images.shape[-2]), int(images.shape[-1])))
        if pixels.coords.shape[0]:
            y, _ = self.refiner(pixels)
            b, yy, xx = pixels.coords.long().unbind(1)
            out.permute(0, 2, 3, 1)[b, yy, xx] = y.to(out.dtype)
        return out


def _params_m(module: nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def _dense_gmacs(name: str, model: nn.Module, height: int, width: int) -> tuple[float, dict[str, int]]:
    from methods.mmseg_models import complexity

    with warnings.catch_warnings():  # fvcore traces with torch.jit, which warns that it is deprecated
        warnings.simplefilter("ignore")
        counted = complexity(name, height, width, model=model)
    return float(counted["gmacs"]), {op: int(n) for op, n in counted["uncounted_ops"].items()}


@trial(
    "sparserefine.table1_cost",
    doc="Table 1 cost of an mmseg baseline (random weights): #Params, #MACs (fvcore) and latency of the "
    "HR dense pass, of the LR dense pass at lr_height x lr_width, and of LR + SparseRefine (entropy "
    "selector, paper-size MinkUNet on `density` % of the full grid, gated ensembler).",
    params=[
        Param("model", str, "hrnet_w48", doc="mmseg baseline (methods.mmseg_models)", choices=MMSEG_MODEL_NAMES),
        Param("height", int, 1024, doc="full-resolution grid height", low=32),
        Param("width", int, 2048, doc="full-resolution grid width", low=32),
        Param("lr_height", int, 512, doc="LR input height (paper: 512; SegNeXt-L 640)", low=16),
        Param("lr_width", int, 1024, doc="LR input width (paper: 1024; SegNeXt-L 1280)", low=16),
        Param(
            "density",
            float,
            11.8,
            doc="refined pixels, % of the full grid (paper, supp. Table 1: the baseline's measured density)",
            low=0.01,
            high=100.0,
        ),
        *[p for p in REFINER_PARAMS if p.name in ("arch", "width_mult", "reps", "backend")],
        Param("num_classes", int, 19, doc="classes of the baseline and the refiner", low=2),
        Param("count_macs", bool, True, doc="count #MACs with fvcore (slow at 1024x2048 for Swin-L)"),
    ],
    metrics=[
        Metric("params_m", "M", "none", doc="dense baseline (the HR and LR rows)"),
        Metric("refiner_params_m", "M", "none", doc="sparse extractor + head + gated ensembler"),
        Metric("sr_params_m", "M", "none", doc="LR baseline + refiner (the +SparseRefine row)"),
        Metric("backbone_params_m", "M", "none", doc="the segmentor's backbone"),
        Metric("head_params_m", "M", "none", doc="decode (+ auxiliary) heads, neck"),
        Metric("hr_gmacs", "G", "lower", doc="dense pass on the full grid (count_macs)", optional=True),
        Metric("lr_gmacs", "G", "lower", doc="dense pass on the LR input (count_macs)", optional=True),
        Metric("refine_gmacs", "G", "lower", doc="sparse extractor + head + ensembler at the density"),
        Metric("sr_gmacs", "G", "lower", doc="lr_gmacs + refine_gmacs (count_macs)", optional=True),
        Metric("macs_reduction", "x", "higher", doc="hr_gmacs / sr_gmacs (count_macs)", optional=True),
        Metric("hr_latency", "ms", "lower", doc="dense baseline on the full grid"),
        Metric("lr_latency", "ms", "lower", doc="dense baseline on the area-resized LR input"),
        Metric(
            "sr_latency",
            "ms",
            "lower",
            doc="LR pass + selector + gather + extractor + ensembler + write-back (end to end)",
        ),
        Metric("speedup", "x", "higher", doc="hr_latency / sr_latency"),
        Metric("density", "%", "none", doc="refined pixels / full-grid pixels (measured on the masks)"),
    ],
    axes=("precision", "batch_size", "device"),
    version="1",
)
def table1_cost_trial(ctx: TrialContext) -> None:
    """Random weights give no meaningful entropy map, so the refined pixels are selector-like masks
    at ``density`` (label boundaries + small objects of the suite's val images, as
    sparserefine.paper_model_latency) while the selector's own cost is still in the total."""
    from methods.baselines.trials import build_model, mmseg_model_names
    from methods.datasets import normalize
    from methods.mmseg_models.complexity import parameter_breakdown
    from methods.sparse.masks import dataset_masks
    from methods.sparserefine.refiner import RefinerConfig, SparseRefiner

    p = ctx.params
    if p["model"] not in mmseg_model_names():
        raise ValueError(f"model must be an mmseg baseline ({', '.join(mmseg_model_names())}), got {p['model']!r}")
    if p["lr_height"] > p["height"] or p["lr_width"] > p["width"]:
        raise ValueError(f"the LR input {p['lr_height']}x{p['lr_width']} exceeds the grid {p['height']}x{p['width']}")
    # mmseg models build fp32 tensors inside their forward: weights stay fp32 and reduced precision
    # runs under autocast (as baseline.latency runs them); the refiner runs the same way.
    where = ctx.placement(autocast=True)
    full, low = (p["height"], p["width"]), (p["lr_height"], p["lr_width"])

    ctx.progress(f"building {p['model']}")
    dense_model = build_model(p["model"], p["num_classes"])
    torch.manual_seed(ctx.seed)
    config = RefinerConfig(p["num_classes"], p["arch"], p["width_mult"], p["reps"], backend=p["backend"])
    refiner = SparseRefiner(config).eval()
    parts = parameter_breakdown(dense_model)
    ctx.record("params_m", parts["total"])
    ctx.record("backbone_params_m", parts["backbone"])
    ctx.record("head_params_m", parts["total"] - parts["backbone"])
    ctx.note("params_by_module_m", parts)
    ctx.record("refiner_params_m", _params_m(refiner))
    ctx.record("sr_params_m", parts["total"] + _params_m(refiner))

    ctx.progress(f"building {p['density']}% masks on {full[0]}x{full[1]}")
    masks = dataset_masks(ctx.dataset, ctx.batch_size, *full, p["density"] / 100.0, ctx.seed)
    ctx.note("mask_source", masks.source)
    ctx.record("density", 100.0 * float(masks.mask.float().mean()))
    images = normalize(masks.images)
    with torch.inference_mode():
        probe_logits = torch.zeros(ctx.batch_size, p["num_classes"], *full)
        refine_macs = count_macs(refiner, gather_pixels(masks.mask, images, probe_logits, config))
    ctx.record("refine_gmacs", refine_macs.total / 1e9)
    if p["count_macs"]:
        ctx.progress(f"counting MACs of {p['model']} at {full[0]}x{full[1]} and {low[0]}x{low[1]}")
        hr_gmacs, uncounted = _dense_gmacs(p["model"], dense_model, *full)
        lr_gmacs, _ = _dense_gmacs(p["model"], dense_model, *low)
        batch_gmacs = ctx.batch_size * lr_gmacs + refine_macs.total / 1e9
        ctx.record("hr_gmacs", ctx.batch_size * hr_gmacs)
        ctx.record("lr_gmacs", ctx.batch_size * lr_gmacs)
        ctx.record("sr_gmacs", batch_gmacs)
        ctx.record("macs_reduction", ctx.batch_size * hr_gmacs / batch_gmacs)
        ctx.note("uncounted_ops", uncounted)

    dense_model = where.model(dense_model)
    refiner = where.model(refiner, channels_last=False)
    images = where.tensor(images)
    pipeline = ResizedLRPipeline(dense_model, refiner, DEFAULT_ALPHA, low, fixed_mask=masks.mask.to(where.device))

    def timed(fn):
        def run() -> torch.Tensor:
            with where.running():
                return fn()

        return run

    ctx.progress(f"timing {p['model']}: HR {full[0]}x{full[1]}, LR {low[0]}x{low[1]}, +SparseRefine")
    ctx.measure("hr_latency", timed(lambda: dense_model(images)))
    ctx.measure("lr_latency", timed(lambda: pipeline.dense(images)))
    ctx.measure("sr_latency", timed(lambda: pipeline(images)))
    ctx.record("speedup", ctx.metrics["hr_latency"].value / ctx.metrics["sr_latency"].value)
    ctx.note("lr_input", list(low))
    ctx.note("refiner", config.as_dict())
