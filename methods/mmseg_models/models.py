"""The five MMSegmentation baselines of SparseRefine Table 1, built from the configs shipped in the
installed mmseg wheel, randomly initialised, wrapped so that ``forward`` maps a normalised image
batch to per-class logits at input resolution."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from methods.mmseg_models.compat import ensure_mmseg_stack

MMSEG_MODEL_NAMES = ("hrnet_w48", "segformer_b5", "segnext_l", "mask2former_t", "mask2former_l")

# Mask2Former scores are sums of (class probability x mask probability); the official SparseRefine
# code turns them into logits with log(clip(p, 1e-10)).
MASK_SCORE_FLOOR = 1e-10
# SegNeXt's Hamburger head draws its NMF bases with torch.rand on every forward (also at inference,
# as in mmseg). We draw them from a fixed seed in a forked RNG so outputs are reproducible and the
# caller's global RNG stream is left untouched.
NMF_BASES_SEED = 0


@dataclass(frozen=True)
class MMSegModelSpec:
    """One baseline: where its mmseg config lives and what SparseRefine Table 1 reports for it."""

    name: str
    title: str
    config: str  # relative to mmseg's bundled configs directory
    config_note: str  # how the config relates to the one the official SparseRefine code used
    paper_params_m: float  # Table 1, "#Params (M)"
    paper_tmacs: float  # Table 1, "#MACs (T)" at 1024x2048
    mask_classification: bool = False
    random_nmf_bases: bool = False


MODEL_SPECS: dict[str, MMSegModelSpec] = {
    spec.name: spec
    for spec in (
        MMSegModelSpec(
            "hrnet_w48",
            "HRNet-W48 (FCN)",
            "hrnet/fcn_hr48_4xb2-80k_cityscapes-512x1024.py",
            "same config as the official code",
            paper_params_m=65.9,
            paper_tmacs=0.75,
        ),
        MMSegModelSpec(
            "segformer_b5",
            "SegFormer-B5",
            "segformer/segformer_mit-b5_8xb1-160k_cityscapes-1024x1024.py",
            "official code used a 512x1024 variant; only crop/schedule differ, the network is identical",
            paper_params_m=82.0,
            paper_tmacs=1.16,
        ),
        MMSegModelSpec(
            "segnext_l",
            "SegNeXt-L",
            "segnext/segnext_mscan-l_1xb16-adamw-160k_ade20k-512x512.py",
            "mmseg ships no Cityscapes SegNeXt config (official code: cityscapes-640x1280); the ADE20K "
            "MSCAN-L config with the head set to the dataset's classes is the same network",
            paper_params_m=48.8,
            paper_tmacs=0.53,
            random_nmf_bases=True,
        ),
        MMSegModelSpec(
            "mask2former_t",
            "Mask2Former-T (Swin-T)",
            "mask2former/mask2former_swin-t_8xb2-90k_cityscapes-512x1024.py",
            "Cityscapes Swin-T config",
            paper_params_m=36.7,
            paper_tmacs=0.62,
            mask_classification=True,
        ),
        MMSegModelSpec(
            "mask2former_l",
            "Mask2Former-L (Swin-L)",
            "mask2former/mask2former_swin-l-in22k-384x384-pre_8xb2-90k_cityscapes-512x1024.py",
            "same config as the official code (mask2former-swinl-8xb2-512x1024-90k)",
            paper_params_m=207.0,
            paper_tmacs=1.99,
            mask_classification=True,
        ),
    )
}


def model_spec(name: str) -> MMSegModelSpec:
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown mmseg model {name!r}; known: {', '.join(MMSEG_MODEL_NAMES)}") from None


def mmseg_configs_dir() -> Path:
    ensure_mmseg_stack()
    import mmseg

    return Path(mmseg.__file__).parent / ".mim" / "configs"


def _without_pretrained_weights(node: Any) -> Any:
    """Copy of a config tree with every init_cfg / pretrained cleared and SyncBN turned into BN.

    SyncBN only matters for multi-GPU training; BN has the same parameters and folds for latency.
    """
    if isinstance(node, dict):
        cleaned = {}
        for key, value in node.items():
            if key in ("init_cfg", "pretrained"):
                cleaned[key] = None
            elif key == "type" and value == "SyncBN":
                cleaned[key] = "BN"
            else:
                cleaned[key] = _without_pretrained_weights(value)
        return cleaned
    if isinstance(node, (list, tuple)):
        return type(node)(_without_pretrained_weights(value) for value in node)
    return node


def _set_num_classes(model_cfg: dict[str, Any], num_classes: int, mask_classification: bool) -> None:
    heads = [model_cfg["decode_head"]]
    auxiliary = model_cfg.get("auxiliary_head")
    if auxiliary:
        heads += auxiliary if isinstance(auxiliary, list) else [auxiliary]
    for head in heads:
        head["num_classes"] = num_classes
    if mask_classification:
        # Mask2Former weights the extra "no object" class by 0.1, every real class by 1.
        model_cfg["decode_head"]["loss_cls"]["class_weight"] = [1.0] * num_classes + [0.1]


def random_init_model_config(name: str, num_classes: int = 19) -> dict[str, Any]:
    """The mmseg model config of ``name`` as a plain dict, without pretrained weights."""
    spec = model_spec(name)
    from mmengine.config import Config

    config = Config.fromfile(str(mmseg_configs_dir() / spec.config))
    model_cfg = _without_pretrained_weights(copy.deepcopy(config.to_dict()["model"]))
    model_cfg.pop("data_preprocessor", None)  # inputs arrive normalised; padding is ours
    _set_num_classes(model_cfg, num_classes, spec.mask_classification)
    return model_cfg


def _pretrained_init_cfgs(module: nn.Module) -> list[str]:
    found = []
    for module_name, child in module.named_modules():
        init_cfgs = getattr(child, "init_cfg", None)
        init_cfgs = init_cfgs if isinstance(init_cfgs, list) else [init_cfgs]
        if any(isinstance(cfg, dict) and cfg.get("type") == "Pretrained" for cfg in init_cfgs):
            found.append(module_name or "<root>")
    return found


class MMSegLogitsModel(nn.Module):
    """Normalised images [B,3,H,W] -> per-class logits [B,C,H,W] through mmseg's predict path.

    Inputs are zero-padded (bottom/right, as mmseg's data preprocessor pads after normalising) to a
    multiple of ``size_divisor`` and the logits cropped back. ``segmentor`` is the mmseg
    ``EncoderDecoder``; its state_dict keys are those of mmseg checkpoints.
    """

    def __init__(self, spec: MMSegModelSpec, segmentor: nn.Module, num_classes: int, size_divisor: int = 32):
        super().__init__()
        self.spec = spec
        self.segmentor = segmentor
        self.num_classes = num_classes
        self.size_divisor = size_divisor

    @property
    def name(self) -> str:
        return self.spec.name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name} expects images [B,3,H,W], got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        padded = self._pad(images)
        padded_shape = (int(padded.shape[-2]), int(padded.shape[-1]))
        image_metas = [
            {"img_shape": padded_shape, "pad_shape": padded_shape, "ori_shape": (int(height), int(width))}
            for _ in range(images.shape[0])
        ]
        with self._rng_scope(images.device):
            scores = self.segmentor.encode_decode(padded, image_metas)
        if self.spec.mask_classification:
            scores = torch.log(scores.float().clamp_min(MASK_SCORE_FLOOR)).to(scores.dtype)
        return scores[..., :height, :width]

    def _pad(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        pad_bottom = -height % self.size_divisor
        pad_right = -width % self.size_divisor
        if pad_bottom == 0 and pad_right == 0:
            return images
        return F.pad(images, (0, pad_right, 0, pad_bottom), value=0.0)

    @contextlib.contextmanager
    def _rng_scope(self, device: torch.device) -> Iterator[None]:
        if not self.spec.random_nmf_bases:
            yield
            return
        cuda_devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(NMF_BASES_SEED)
            yield


def build_mmseg_model(name: str, num_classes: int = 19) -> MMSegLogitsModel:
    """Build baseline ``name`` (one of MMSEG_MODEL_NAMES), randomly initialised, in eval mode."""
    spec = model_spec(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    model_cfg = random_init_model_config(name, num_classes)
    from mmengine.config import ConfigDict
    from mmengine.logging import MMLogger
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    with DefaultScope.overwrite_default_scope("mmseg"):
        segmentor = MODELS.build(ConfigDict(model_cfg))
    leftovers = _pretrained_init_cfgs(segmentor)
    if leftovers:
        raise RuntimeError(f"{name}: pretrained init_cfg left in modules {leftovers}; the config changed?")
    # The architectures' own random-init schemes (trunc-normal ViT blocks, Kaiming convs, ...).
    logger = MMLogger.get_current_instance()
    previous_level = logger.level
    logger.setLevel("WARNING")  # init_weights logs every parameter's initialiser at INFO
    try:
        segmentor.init_weights()
    finally:
        logger.setLevel(previous_level)
    return MMSegLogitsModel(spec, segmentor, num_classes).eval()
