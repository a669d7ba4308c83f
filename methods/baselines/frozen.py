"""The frozen dense baselines a suite names in its ``baselines:`` block (``ctx.baselines``).

    baselines:
      lr: {model: "embedded:small"}                                  # the default: trained here, cached
      hr: {model: "mmseg:hrnet_w48", checkpoint: /ckpt/hrnet_hr.pth}  # or a path / http(s) URL

``embedded:<arch>`` is a small CNN trained by this package (:func:`trained_baseline`).
``mmseg:<name>`` is any network :mod:`methods.mmseg_models` builds, with the user's trained weights:
an MMSeg checkpoint (``{"state_dict": ..., "meta": ...}`` or bare tensors, ``module.`` prefixes
stripped), read through :func:`methods.safe_load.safe_torch_load` (``--trust-checkpoints``), its
class count checked against the dataset's. The LR kind runs on the x2-downsampled image and its
logits are used on that grid (nearest-upsampled to full resolution, paper §4.1); Mask2Former's
class probabilities arrive as log(clip(p, 1e-10)) logits (:class:`MMSegLogitsModel`).

The penultimate features (the input of the decode head's classifier, captured by a hook) give the
magnitude score and, for the "+features" refiner inputs and PointRend, the features themselves:
resized onto the logits' grid exactly as mmseg resizes the logits (bilinear to the padded input,
then cropped). They are computed on demand per image, never stored (``caches_features``): an
HRNet-W48 head's 720 channels would be ~47 MB per Cityscapes image at the head's own resolution.

A malformed block, an unknown model, a missing checkpoint file or one that cannot be read is
reported when the suite is loaded (one line, exit 2, nothing run); the class count against the
dataset is checked when a trial first builds the baseline.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from harness.errors import UserError
from harness.registry import scale_setting, settings_validator
from methods.artifacts import file_sha256
from methods.baselines.baseline import KINDS, GridOutputs, grid_factor, model_input, to_full_resolution
from methods.baselines.models import ARCH_NAMES

EMBEDDED = "embedded"
MMSEG = "mmseg"
DEFAULT_MODEL = f"{EMBEDDED}:small"
_CHOICE_KEYS = ("model", "checkpoint")
_URL = re.compile(r"^https?://", re.IGNORECASE)
# State-dict keys whose first dimension is the number of classes (plus one "no object" for Mask2Former).
_CLASS_KEYS = (("decode_head.conv_seg.weight", 0), ("decode_head.cls_embed.weight", 1))
# Bump when a change alters what a checkpoint baseline's outputs are (part of its identity).
OUTPUTS_VERSION = 2


@dataclass(frozen=True)
class BaselineChoice:
    """One entry of ``baselines:``: ``family`` is "embedded" or "mmseg", ``name`` the arch / model."""

    kind: str
    family: str
    name: str
    checkpoint: str | None = None

    @property
    def model(self) -> str:
        return f"{self.family}:{self.name}"


def _mmseg_names() -> tuple[str, ...]:
    from methods.mmseg_models.models import MMSEG_MODEL_NAMES

    return MMSEG_MODEL_NAMES


def parse_choice(kind: str, raw: Any) -> BaselineChoice:
    """One ``baselines.<kind>`` mapping as a :class:`BaselineChoice` (UserError naming the key)."""
    where = f"baselines.{kind}"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a mapping like {{model: 'mmseg:hrnet_w48', checkpoint: PATH}}, got {raw!r}")
    unknown = sorted(set(raw) - set(_CHOICE_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(_CHOICE_KEYS)})")
    model = raw.get("model", DEFAULT_MODEL)
    if not isinstance(model, str) or ":" not in model:
        raise UserError(f"{where}.model must be 'embedded:<arch>' or 'mmseg:<name>', got {model!r}")
    family, name = model.split(":", 1)
    checkpoint = raw.get("checkpoint")
    if checkpoint is not None and (not isinstance(checkpoint, str) or not checkpoint):
        raise UserError(f"{where}.checkpoint must be a file path or an http(s) URL, got {checkpoint!r}")
    if family == EMBEDDED:
        if name not in ARCH_NAMES:
            raise UserError(f"{where}.model: unknown embedded arch {name!r} (known: {', '.join(ARCH_NAMES)})")
        if checkpoint is not None:
            raise UserError(f"{where}: an embedded baseline is trained here and takes no checkpoint")
    elif family == MMSEG:
        if name not in _mmseg_names():
            raise UserError(f"{where}.model: unknown mmseg model {name!r} (known: {', '.join(_mmseg_names())})")
        if checkpoint is None:
            raise UserError(f"{where}: an mmseg baseline needs 'checkpoint' (its trained weights)")
    else:
        raise UserError(f"{where}.model: unknown family {family!r} in {model!r} (use embedded:<arch> or mmseg:<name>)")
    return BaselineChoice(kind, family, name, checkpoint)


def parse_baselines(raw: Any) -> dict[str, BaselineChoice]:
    """The whole ``baselines:`` block, both kinds resolved (absent ones: the embedded default)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"baselines must be a mapping with keys lr / hr, got {raw!r}")
    unknown = sorted(set(raw) - set(KINDS))
    if unknown:
        raise UserError(f"baselines: unknown key {unknown[0]!r} (allowed: {', '.join(KINDS)})")
    return {kind: parse_choice(kind, raw.get(kind)) for kind in KINDS}


def dataset_class_count(spec: dict[str, Any]) -> int | None:
    """The number of classes of a dataset spec (None if the spec is invalid: the dataset's own check
    reports that). Read from the spec alone: the dataset's check indexes the val split once already."""
    from methods.datasets import dataset_classes

    try:
        return len(dataset_classes(spec))
    except (UserError, ValueError, TypeError):
        return None


@scale_setting("baseline")
def validate_baseline_training(value: Any) -> None:
    """Suite-load check of the scale's training settings of the embedded baselines (each kind's)."""
    from methods.baselines.baseline import KINDS, SCALE_KEY, train_settings

    for kind in KINDS:
        train_settings(kind, {SCALE_KEY: value})


@settings_validator("baselines")
def validate_baselines(raw: dict[str, Any], resolved: dict[str, dict[str, Any]] | None = None) -> None:
    """Suite-load check: structure, names, every local checkpoint readable as an MMSeg state dict
    (weights-only; a file that needs --trust-checkpoints is left to the trial, which knows the flag)
    and its head's class count equal to that of the dataset resolved at the same scale."""
    dataset = (resolved or {}).get("dataset")
    for choice in parse_baselines(raw).values():
        if choice.checkpoint is not None and not _URL.match(choice.checkpoint):
            path = Path(choice.checkpoint).expanduser()
            if not path.is_file():
                raise UserError(f"baselines.{choice.kind}.checkpoint: {path} does not exist or is not a file")
            found = _checkpoint_summary(str(path), path.stat().st_mtime_ns, path.stat().st_size)
            classes = None if found is None or dataset is None else dataset_class_count(dataset)
            if found is not None and classes is not None and found != classes:
                assert dataset is not None
                raise UserError(
                    f"checkpoint {path} predicts {found} classes, dataset {dataset.get('name', 'embedded')} "
                    f"has {classes} (baselines.{choice.kind})"
                )


_SUMMARIES: dict[tuple[str, int, int], int | None] = {}


def _checkpoint_summary(path: str, mtime_ns: int, size: int) -> int | None:
    """The class count a readable checkpoint's head holds (None if it has no known head key);
    UserError if it cannot be read. Memoised per file version (suites are validated per scale)."""
    from methods.mmseg_models.checkpoint import extract_state_dict
    from methods.safe_load import load_weights_only, unsafe_globals

    key = (path, mtime_ns, size)
    if key not in _SUMMARIES:
        try:
            raw = load_weights_only(Path(path))
        except Exception as exc:  # noqa: BLE001 - corrupt, truncated, or needing --trust-checkpoints
            try:
                needs_trust = bool(unsafe_globals(Path(path)))
            except Exception:  # noqa: BLE001 - not even a readable pickle
                needs_trust = False
            if not needs_trust:
                detail = " ".join(str(exc).split())[:200]
                raise UserError(f"cannot read checkpoint {path}: {type(exc).__name__}: {detail}") from None
            _SUMMARIES[key] = None  # the trial decides, knowing --trust-checkpoints
            return None
        _SUMMARIES[key] = checkpoint_classes(extract_state_dict(raw, Path(path)))
    return _SUMMARIES[key]


def checkpoint_classes(state_dict: dict[str, torch.Tensor]) -> int | None:
    """The number of classes a segmentor state dict's head predicts (None if no known head key)."""
    for name, extra in _CLASS_KEYS:
        if name in state_dict:
            return int(state_dict[name].shape[0]) - extra
    return None


def checkpoint_feature_channels(state_dict: dict[str, torch.Tensor]) -> int | None:
    """Channels of the features a segmentor's per-pixel classifier reads (``conv_seg``'s input),
    None for a head without one (Mask2Former classifies masks)."""
    weight = state_dict.get(_CLASS_KEYS[0][0])
    return None if weight is None or weight.dim() < 2 else int(weight.shape[1])


# --- checkpoint baselines --------------------------------------------------------------------------


def local_checkpoint(checkpoint: str, artifacts_dir: Path, progress: Any) -> Path:
    """A checkpoint as a local file: a path as given, a URL downloaded once under the artifacts dir."""
    if not _URL.match(checkpoint):
        return Path(checkpoint).expanduser()
    digest = hashlib.sha256(checkpoint.encode()).hexdigest()[:16]
    target = Path(artifacts_dir) / "checkpoints" / f"{digest}-{Path(checkpoint.split('?')[0]).name or 'checkpoint.pth'}"
    if not target.is_file():
        progress(f"downloading {checkpoint}")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(checkpoint, str(target), progress=False)
        except Exception as exc:  # noqa: BLE001 - any network or HTTP failure is the user's URL
            raise UserError(f"cannot download checkpoint {checkpoint}: {type(exc).__name__}: {exc}") from None
    return target


# Built networks kept in this process (a suite's units share one LR and one HR checkpoint; building
# and loading a large mmseg model takes seconds).
_NETWORKS: dict[tuple[Any, ...], torch.nn.Module] = {}
_NETWORKS_KEPT = 2


@dataclass
class CheckpointBaseline:
    """A frozen MMSeg network with the user's weights, as a dense LR or HR baseline. The network is
    built on first use: with cached LR outputs a unit may need only ``config``."""

    kind: str
    classes: tuple[str, ...]
    config: dict[str, Any]
    build: Callable[[], torch.nn.Module] = field(repr=False)
    device: str = "cpu"
    # conv_seg's input channels, read from the checkpoint (None: no per-pixel classifier)
    head_channels: int | None = None

    @cached_property
    def module(self) -> torch.nn.Module:
        """MMSegLogitsModel: normalised input -> logits at the input size."""
        key = (self.config["model"], self.config["checkpoint_sha256"], len(self.classes), self.device)
        if key not in _NETWORKS:
            while len(_NETWORKS) >= _NETWORKS_KEPT:
                _NETWORKS.pop(next(iter(_NETWORKS)))
            # built outside inference mode (callers may be inside it): trials that time the network
            # fold and cast a copy, which inference tensors would refuse
            with torch.inference_mode(False):
                _NETWORKS[key] = _with_feature_capture(self.build())
        return _NETWORKS[key]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def grid_factor(self) -> int:
        return grid_factor(self.kind)

    @property
    def feature_channels(self) -> int | None:
        return self.head_channels

    @property
    def caches_features(self) -> bool:
        """False: the LR-outputs cache computes these features on demand (``features=True``)
        instead of storing them per image (gigabytes per image on the LR grid)."""
        return False

    @torch.inference_mode()
    def predict_grid(self, images_uint8: torch.Tensor, bf16: bool = False, features: bool = False) -> GridOutputs:
        """Outputs on the LR (or HR) grid; ``features``: also the classifier-input features there
        (fp32 [B, F, h, w]; None for a head without a per-pixel classifier)."""
        module = self.module
        captured: list[torch.Tensor] = module.captured_features
        x = model_input(images_uint8.to(self.device), self.kind)
        captured.clear()
        try:
            with torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16, enabled=bf16):
                logits = module(x).float()
            head = captured[-1].float() if captured else None
        finally:
            captured.clear()
        size = (int(logits.shape[-2]), int(logits.shape[-1]))
        if head is not None:
            # the norm at the head's own resolution (cheap), placed like the logits
            norm = torch.linalg.vector_norm(head, dim=1, keepdim=True)
            magnitude = on_logits_grid(norm, module, size)[:, 0]
        else:  # Mask2Former: no per-pixel classifier input; the top score stands in
            magnitude = logits.max(dim=1).values
        grid_features = on_logits_grid(head, module, size).cpu() if features and head is not None else None
        return GridOutputs(logits.cpu(), magnitude.cpu(), grid_features, self.grid_factor)

    @torch.inference_mode()
    def predict(self, images_uint8: torch.Tensor, bf16: bool = False) -> tuple[torch.Tensor, None]:
        grid = self.predict_grid(images_uint8, bf16=bf16)
        return to_full_resolution(grid.logits, grid.factor, tuple(images_uint8.shape[-2:])), None


def on_logits_grid(head_output: torch.Tensor, network: torch.nn.Module, size: tuple[int, int]) -> torch.Tensor:
    """A decode head's map [B, K, h', w'] placed where mmseg places its logits for an input of
    ``size``: bilinear to the input padded to ``network.size_divisor`` (the decode head's
    ``align_corners``), then cropped to ``size`` (:class:`MMSegLogitsModel`)."""
    divisor = int(getattr(network, "size_divisor", 1))
    padded = (-(-size[0] // divisor) * divisor, -(-size[1] // divisor) * divisor)
    align = bool(getattr(getattr(network.segmentor, "decode_head", None), "align_corners", False))
    resized = F.interpolate(head_output, size=padded, mode="bilinear", align_corners=align)
    return resized[..., : size[0], : size[1]]


def _with_feature_capture(network: torch.nn.Module) -> torch.nn.Module:
    """Give ``network`` a ``captured_features`` list that receives the input of its decode head's
    classifier (the penultimate features, mmseg's ``BaseDecodeHead.cls_seg``) on each forward."""
    network.captured_features = []
    conv_seg = getattr(getattr(network.segmentor, "decode_head", None), "conv_seg", None)
    if isinstance(conv_seg, torch.nn.Module) and not network.spec.mask_classification:
        conv_seg.register_forward_pre_hook(lambda _module, args: network.captured_features.append(args[0]))
    return network


@dataclass(frozen=True)
class CheckpointFacts:
    """What one read of a checkpoint file tells: the sha256 of its bytes (the baseline's identity)
    and its classifier's input channels (None: no per-pixel classifier)."""

    sha256: str
    feature_channels: int | None


_IDENTITIES: dict[tuple[str, int, int], CheckpointFacts] = {}


def _checked_identity(
    path: Path, classes: int, dataset_name: str, choice: BaselineChoice, trusted: bool
) -> CheckpointFacts:
    """Read ``path`` once per file version: its class count must match the dataset's."""
    from methods.mmseg_models.checkpoint import extract_state_dict
    from methods.safe_load import safe_torch_load

    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist or is not a file (baselines.{choice.kind}.checkpoint)")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _IDENTITIES:
        state_dict = extract_state_dict(safe_torch_load(path, trusted=trusted), path)
        found = checkpoint_classes(state_dict)
        channels = checkpoint_feature_channels(state_dict)
        del state_dict
        if found is not None and found != classes:
            raise UserError(
                f"checkpoint {path} predicts {found} classes, dataset {dataset_name} has {classes} "
                f"(baselines.{choice.kind})"
            )
        _IDENTITIES[key] = CheckpointFacts(file_sha256(path), channels)
    return _IDENTITIES[key]


def load_checkpoint_baseline(
    choice: BaselineChoice,
    classes: tuple[str, ...],
    dataset_name: str,
    artifacts_dir: Path,
    trusted: bool,
    progress: Any,
    device: str = "cpu",
) -> CheckpointBaseline:
    """``choice``'s mmseg network for the dataset's classes with its checkpoint. Missing, unreadable,
    refused, mismatching or wrong-class-count files -> one-line UserError naming the file."""
    from methods.mmseg_models.checkpoint import extract_state_dict, load_state_dict_checked
    from methods.mmseg_models.models import build_mmseg_model
    from methods.safe_load import safe_torch_load

    assert choice.checkpoint is not None
    path = local_checkpoint(choice.checkpoint, artifacts_dir, progress)
    facts = _checked_identity(path, len(classes), dataset_name, choice, trusted)

    def build() -> torch.nn.Module:
        progress(f"building {choice.name} for the {choice.kind.upper()} baseline")
        network = build_mmseg_model(choice.name, num_classes=len(classes))
        load_state_dict_checked(network, extract_state_dict(safe_torch_load(path, trusted=trusted), path), path)
        return network.eval().to(device)

    config = {
        "model": choice.model,
        "kind": choice.kind,
        "checkpoint_sha256": facts.sha256,
        "classes": len(classes),
        # 2: the magnitude placed on the padded input's grid, as mmseg places the logits
        "outputs": OUTPUTS_VERSION,
    }
    return CheckpointBaseline(choice.kind, classes, config, build, device=device, head_channels=facts.feature_channels)


def frozen_baseline_of(kind: str, where: Any) -> Any:
    """:func:`frozen_baseline` with its settings read from ``where``: a trial context, or anything with
    the same attributes (baselines, dataset, scale, artifacts_dir, progress, seed, trust_checkpoints,
    device), such as SparseRefine's experiment scope, whose ``baseline_seed`` (if set) is the seed
    the baseline is trained with instead."""
    seed = getattr(where, "baseline_seed", None)
    return frozen_baseline(
        kind,
        where.baselines,
        where.dataset,
        where.scale,
        where.artifacts_dir,
        where.progress,
        where.seed if seed is None else seed,
        trusted=where.trust_checkpoints,
        device=where.device,
    )


def frozen_baseline(
    kind: str,
    baselines: dict[str, Any] | None,
    dataset_spec: dict[str, Any],
    scale: dict[str, Any],
    artifacts_dir: Path,
    progress: Any,
    seed: int,
    trusted: bool = False,
    device: str = "cpu",
) -> Any:
    """The frozen ``kind`` baseline the suite's ``baselines:`` block names (default: the embedded
    small CNN, trained here and cached)."""
    from methods.baselines.baseline import trained_baseline

    choice = parse_baselines(baselines or {})[kind]
    if choice.family == EMBEDDED:
        return trained_baseline(kind, dataset_spec, scale, artifacts_dir, progress, arch=choice.name, seed=seed)  # type: ignore[arg-type]
    from methods.datasets import build_dataset

    data = build_dataset(dataset_spec, "val")
    return load_checkpoint_baseline(
        choice, tuple(data.classes), dataset_spec.get("name", "embedded"), artifacts_dir, trusted, progress, device
    )
