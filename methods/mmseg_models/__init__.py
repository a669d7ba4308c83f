"""MMSegmentation baselines of SparseRefine Table 1 (HRNet-W48, SegFormer-B5, SegNeXt-L,
Mask2Former Swin-T / Swin-L): random-init builds from mmseg's bundled configs, per-class logits,
user checkpoints, and fvcore complexity. mmseg itself is imported lazily, on the first build."""

from __future__ import annotations

from methods.mmseg_models.checkpoint import load_user_checkpoint
from methods.mmseg_models.complexity import complexity
from methods.mmseg_models.models import (
    MMSEG_MODEL_NAMES,
    MODEL_SPECS,
    MMSegLogitsModel,
    MMSegModelSpec,
    build_mmseg_model,
)

__all__ = [
    "MMSEG_MODEL_NAMES",
    "MODEL_SPECS",
    "MMSegLogitsModel",
    "MMSegModelSpec",
    "build_mmseg_model",
    "complexity",
    "load_user_checkpoint",
]
