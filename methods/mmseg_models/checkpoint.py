"""Load a user's trained weights into a baseline built by :func:`build_mmseg_model`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.errors import UserError
from methods.safe_load import safe_torch_load

# Prefixes a state_dict may carry: our wrapper's attribute, and DistributedDataParallel's.
STRIPPABLE_PREFIXES = ("segmentor.", "module.")


def _strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in STRIPPABLE_PREFIXES:
        if state_dict and all(key.startswith(prefix) for key in state_dict):
            state_dict = {key[len(prefix) :]: value for key, value in state_dict.items()}
    return state_dict


def extract_state_dict(checkpoint: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an mmseg-style checkpoint ({'state_dict': ...}) or of a bare state_dict."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise UserError(f"checkpoint {path} holds no state_dict (expected {{'state_dict': ...}} or tensors)")
    not_tensors = [key for key, value in checkpoint.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise UserError(f"checkpoint {path} is not a state_dict: non-tensor entries {not_tensors[:3]}")
    return _strip_prefix({str(key): value for key, value in checkpoint.items()})


def _mismatch_summary(target: nn.Module, state_dict: dict[str, torch.Tensor]) -> str:
    expected = target.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = sorted(key for key in set(expected) & set(state_dict) if expected[key].shape != state_dict[key].shape)
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
        if keys:
            parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
    return "; ".join(parts)


def load_user_checkpoint(model: nn.Module, path: str | Path, *, trusted: bool = False) -> None:
    """Load ``path`` into ``model`` (strict). Any unreadable, refused (see :mod:`methods.safe_load`;
    ``trusted`` is the user's --trust-checkpoints) or mismatching file -> one-line UserError."""
    path = Path(path)
    load_state_dict_checked(model, extract_state_dict(safe_torch_load(path, trusted=trusted), path), path)


def load_state_dict_checked(model: nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Load a checkpoint's extracted tensors into ``model`` (strict); a mismatch -> one-line
    UserError naming ``path`` and what does not fit."""
    target = getattr(model, "segmentor", model)  # mmseg checkpoints hold the segmentor's keys
    summary = _mismatch_summary(target, state_dict)
    if summary:
        name = getattr(model, "name", type(model).__name__)
        raise UserError(f"checkpoint {path} does not fit {name}: {summary}")
    target.load_state_dict(state_dict, strict=True)
