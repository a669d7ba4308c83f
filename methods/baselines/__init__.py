"""Shared dense baselines: small CPU-trainable segmentation CNNs, LR (x2 downsampled) and HR."""

from __future__ import annotations

from methods.baselines.baseline import KINDS, BaselineModel, baseline_config, model_input, trained_baseline
from methods.baselines.frozen import BaselineChoice, CheckpointBaseline, frozen_baseline, parse_baselines
from methods.baselines.models import ARCH_NAMES, ARCHS, SegCNN
from methods.baselines.training import TrainConfig, train_segmentation_model

__all__ = [
    "ARCHS",
    "ARCH_NAMES",
    "KINDS",
    "BaselineChoice",
    "BaselineModel",
    "CheckpointBaseline",
    "SegCNN",
    "TrainConfig",
    "baseline_config",
    "frozen_baseline",
    "model_input",
    "parse_baselines",
    "train_segmentation_model",
    "trained_baseline",
]
