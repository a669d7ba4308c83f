"""HFGD trials: computational cost (Table 5) and trained ablations (Tables 1-4, 8)."""

from __future__ import annotations

from typing import Any

import torch

from harness.context import TrialContext
from harness.errors import Unsupported
from harness.registry import Metric, Param, coerce_scalar, scale_setting, settings_fields, trial
from methods.hfgd.model import HFGDConfig
from methods.hfgd.training import SCALE_KEY as TRAIN_SCALE_KEY
from methods.hfgd.training import TrainSettings

ENCODER_CHOICES = ("identity", "aspp", "self_attention", "cae")
UPSAMPLER_CHOICES = ("none", "sfpn", "usfpn")

# HFGD Table 5 and Sec. 9 (ResNet-50, 513 x 513 input, Pascal Context = 59 classes): paper GFLOPs
# keyed by (encoder, upsampler, output_stride, hfgm, axial).
PAPER_GFLOPS_513 = {
    ("identity", "sfpn", 4, False, False): 45.65,  # SemanticFPN
    ("cae", "usfpn", 4, True, True): 71.63,  # HFGD (OS = 4)
    ("cae", "usfpn", 2, True, True): 153.62,  # HFGD (OS = 2)
    ("cae", "usfpn", 1, True, True): 593.77,  # HFGD (OS = 1), Sec. 9 "Limitation"
}

ARCH_PARAMS = [
    Param("encoder", str, "cae", doc="extra encoding on OS 32 features (CAE = ours)", choices=ENCODER_CHOICES),
    Param("upsampler", str, "usfpn", doc="upsampling head (none = OS 32 output)", choices=UPSAMPLER_CHOICES),
    Param("output_stride", int, 4, doc="output stride of the final logits", choices=(32, 4, 2, 1)),
    Param("hfgm", bool, True, doc="high-level feature guided module (shared kernels + stop gradients)"),
    Param("axial", bool, True, doc="axial attention on the upsampled path"),
]


def _config(params: dict[str, Any], num_classes: int, model_settings: dict[str, Any]) -> Any:
    config = HFGDConfig(
        num_classes=num_classes,
        encoder=params["encoder"],
        upsampler=params["upsampler"],
        output_stride=params["output_stride"],
        hfgm=params["hfgm"],
        axial=params["axial"],
        car_weight=params.get("car_weight", 1.0),
        **model_settings,
    )
    try:
        config.validate()
    except ValueError as exc:
        raise Unsupported(str(exc)) from None
    return config


def _latency(ctx: TrialContext, model: torch.nn.Module, height: int, width: int) -> None:
    ctx.time_model("latency", model, torch.randn(ctx.batch_size, 3, height, width))


MODEL_SCALE_KEY = "hfgd_model"  # the model-size settings a scale may set (the rest are trial parameters)
MODEL_SCALE_SETTINGS = ("backbone", "decoder_channels", "encoder_hidden")
LATENCY_SIZE_KEY = "latency_size"


@scale_setting(TRAIN_SCALE_KEY)
def _check_train_settings(value: Any) -> None:
    TrainSettings.from_scale({TRAIN_SCALE_KEY: value})


@scale_setting(MODEL_SCALE_KEY)
def _check_model_settings(value: Any) -> None:
    settings = settings_fields(HFGDConfig, value, MODEL_SCALE_KEY, allowed=MODEL_SCALE_SETTINGS)
    for key in ("decoder_channels", "encoder_hidden"):
        if settings.get(key, 1) < 1:
            raise ValueError(f"{MODEL_SCALE_KEY}.{key} must be >= 1, got {settings[key]}")


@scale_setting(LATENCY_SIZE_KEY)
def _check_latency_size(value: Any) -> None:
    if coerce_scalar(int, value) < 1:
        raise ValueError(f"{LATENCY_SIZE_KEY} must be >= 1, got {value}")


@trial(
    "hfgd.cost",
    doc="HFGD Table 5: GMACs (fvcore, = the paper's GFLOPs) and latency of an HFGD/SemanticFPN variant.",
    params=[
        *ARCH_PARAMS,
        Param("backbone", str, "resnet50", doc="ResNet backbone", choices=("resnet50", "resnet_small")),
        Param("num_classes", int, 59, doc="classes of the classifier (Pascal Context: 59)", low=1),
        Param("size", int, 513, doc="square input side for the MAC count", low=32),
        Param("decoder_channels", int, 256, doc="SFPN / U-SFPN width", low=8),
        Param("encoder_hidden", int, 512, doc="CAE width", low=8),
    ],
    metrics=[
        Metric("gmacs", "G", "lower", doc="multiply-adds of one forward pass (batch 1)"),
        Metric("paper_gflops", "G", "none", doc="the paper's figure for this row, if it has one", optional=True),
        Metric("gmacs_vs_paper", "%", "none", doc="(ours - paper) / paper", optional=True),
        Metric("params", "M", "lower"),
        Metric("latency", "ms", "lower"),
    ],
    axes=("precision", "batch_size", "device"),
    version="1",
)
def cost_trial(ctx: TrialContext) -> None:
    from methods.hfgd.cost import count_macs, count_params
    from methods.hfgd.model import HFGD

    p = ctx.params
    settings = {
        "backbone": p["backbone"],
        "decoder_channels": p["decoder_channels"],
        "encoder_hidden": p["encoder_hidden"],
    }
    config = _config(p, p["num_classes"], settings)
    torch.manual_seed(ctx.seed)
    model = HFGD(config)
    ctx.record("params", count_params(model) / 1e6)
    ctx.progress(f"counting MACs at {p['size']}x{p['size']}")
    total, by_module = count_macs(model, torch.zeros(1, 3, p["size"], p["size"]))
    ctx.record("gmacs", total / 1e9)
    ctx.note("gmacs_by_module", {k: round(v / 1e9, 3) for k, v in by_module.items()})
    key = (p["encoder"], p["upsampler"], p["output_stride"], p["hfgm"], p["axial"])
    paper = PAPER_GFLOPS_513.get(key)
    if paper is not None and p["backbone"] == "resnet50" and p["size"] == 513 and p["num_classes"] == 59:
        if p["decoder_channels"] == 256 and p["encoder_hidden"] == 512:
            ctx.record("paper_gflops", paper)
            ctx.record("gmacs_vs_paper", 100.0 * (total / 1e9 - paper) / paper)
    side = int(ctx.scale.get(LATENCY_SIZE_KEY, p["size"]))
    ctx.progress(f"latency at {side}x{side}")
    ctx.note("latency_size", side)
    _latency(ctx, model, side, side)


@trial(
    "hfgd.train",
    doc="HFGD ablations (Tables 1-4, 8): train a variant on the suite's dataset, report mIoU and cost.",
    params=[
        *ARCH_PARAMS,
        Param("car_weight", float, 1.0, doc="weight of the class-aware regularization (CAE only)", low=0.0),
    ],
    metrics=[
        Metric("miou", "%", "higher", doc="validation mIoU of the final logits"),
        Metric(
            "miou_os32", "%", "higher", doc="validation mIoU of the OS 32 class-kernel logits (HFGM)", optional=True
        ),
        Metric("train_time", "s", "lower"),
        Metric("gmacs", "G", "lower", doc="MACs of one forward pass at the validation resolution"),
        Metric("latency", "ms", "lower", doc="forward pass at the validation resolution"),
    ],
    axes=("precision", "batch_size", "device"),
    version="1",
)
def train_trial(ctx: TrialContext) -> None:
    from methods.artifacts import cached_artifact
    from methods.datasets import build_dataset
    from methods.hfgd.cost import count_macs
    from methods.hfgd.model import HFGD
    from methods.hfgd.training import evaluate, preload, train_hfgd

    train_set = build_dataset(ctx.dataset, "train")
    val_set = build_dataset(ctx.dataset, "val")
    model_settings = dict(ctx.scale.get(MODEL_SCALE_KEY, {}))
    config = _config(ctx.params, train_set.num_classes, model_settings)
    settings = TrainSettings.from_scale(ctx.scale)
    ctx.progress("loading data")
    train_images, train_labels = preload(train_set)
    key = {
        "model": {k: v for k, v in vars(config).items()},
        "train": settings.as_dict(),
        "dataset": ctx.dataset,
        "seed": ctx.seed,
    }

    def build() -> dict[str, Any]:
        return train_hfgd(config, train_images, train_labels, settings, ctx.seed, ctx.progress)

    artifact = cached_artifact(ctx.artifacts_dir, "hfgd_model", key, build, progress=ctx.progress)
    model = HFGD(config)
    model.load_state_dict(artifact["state_dict"])
    ctx.record("train_time", artifact["seconds"])
    losses = artifact["losses"]
    ctx.note("loss_first_last", [round(losses[0], 4), round(sum(losses[-10:]) / len(losses[-10:]), 4)])
    ctx.progress("evaluating")
    val_images, val_labels = preload(val_set)
    result = evaluate(model, val_images, val_labels, val_set.num_classes, bf16=settings.bf16)
    ctx.record("miou", result["miou"])
    if result["miou_os32"] is not None:
        ctx.record("miou_os32", result["miou_os32"])
    ctx.note("per_class_iou", {c: round(v, 2) for c, v in zip(val_set.classes, result["per_class_iou"], strict=True)})
    height, width = val_images.shape[-2:]
    total, _ = count_macs(model, torch.zeros(1, 3, height, width))
    ctx.record("gmacs", total / 1e9)
    _latency(ctx, model, height, width)
