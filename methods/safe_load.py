"""The one rule for reading a torch file the user supplies (a checkpoint, backbone weights).

Such a file is a pickle, and unpickling runs whatever code it names. So it is read with
``torch.load(weights_only=True)``: tensors and plain containers only, plus the few metadata types
MMEngine / MMSegmentation checkpoints really carry (see :func:`checkpoint_safe_globals`). A file
that needs any other type is refused with one line naming it (:class:`harness.errors.UserError`,
exit code 2), unless the caller passes ``trusted=True`` -- the user's ``--trust-checkpoints`` (or a
suite's ``trust_checkpoints: true``), which reaches trials as ``ctx.trust_checkpoints`` and is
recorded in the run's provenance. Then the file is fully unpickled, as ``torch.load`` used to.
"""

from __future__ import annotations

import functools
import importlib
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.errors import UserError

TRUST_HINT = "pass --trust-checkpoints only if you trust its source"
# Common numpy dtypes: unpickling a dtype builds an instance of its class (numpy.dtypes.Float64DType...).
NUMPY_DTYPES = ("?", "b", "B", "h", "H", "i", "I", "l", "L", "q", "Q", "e", "f", "d", "g", "F", "D", "U", "S")
# What mmengine's HistoryBuffer pickles by name: its statistic methods (getattr(HistoryBuffer, 'min')).
HISTORY_BUFFER_METHODS = ("min", "max", "current", "mean")
_UNSUPPORTED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_UNRECOGNIZED = re.compile(r"(?:unrecognized function|but got) (.+?)(?: which belongs to .*)?$", re.MULTILINE)
_UNPICKLER_DETAIL = re.compile(r"WeightsUnpickler error:\s*(\S[^\n]*)")


def _history_buffer_class() -> type | None:
    try:
        module = importlib.import_module("mmengine.logging.history_buffer")
    except ImportError:
        return None
    return module.HistoryBuffer


def _history_buffer_method(owner: Any, name: str) -> Any:
    """Stands in for ``builtins.getattr`` while loading: only HistoryBuffer's statistic methods."""
    history_buffer = _history_buffer_class()
    if history_buffer is None or owner is not history_buffer or name not in HISTORY_BUFFER_METHODS:
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL builtins.getattr on {owner!r}.{name}")
    return getattr(owner, name)


@functools.cache
def checkpoint_safe_globals() -> tuple[Any, ...]:
    """The types allowed beyond torch's defaults (tensors, OrderedDict, plain containers): numpy
    arrays, scalars and dtypes (as MMEngine's meta and message hub hold them, under their numpy 1
    and numpy 2 names) and MMEngine's ``HistoryBuffer``."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # type: ignore[attr-defined]
    allowed: list[Any] = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    allowed += [(multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
    allowed += [(multiarray.scalar, "numpy.core.multiarray.scalar")]
    allowed += sorted({type(np.dtype(code)) for code in NUMPY_DTYPES}, key=lambda t: t.__name__)
    history_buffer = _history_buffer_class()
    if history_buffer is not None:
        allowed += [history_buffer, (_history_buffer_method, "builtins.getattr")]
    return tuple(allowed)


def offending_type(error: BaseException) -> str | None:
    """The type or function a weights-only load refused, as torch's message names it."""
    for pattern in (_UNSUPPORTED_GLOBAL, _UNRECOGNIZED):
        match = pattern.search(str(error))
        if match:
            return match.group(1).strip()
    return None


def _refusal(path: Path, error: BaseException) -> UserError:
    name = offending_type(error)
    if name is not None:
        reason = f"needs type {name}, which is not among the safe checkpoint types"
    else:  # e.g. a pickle instruction the weights-only unpickler does not run
        detail = _UNPICKLER_DETAIL.search(str(error))
        reason = f"cannot be read as weights only ({detail.group(1).strip()[:200] if detail else 'unknown reason'})"
    return UserError(f"checkpoint {path} {reason}: refused, not unpickled ({TRUST_HINT})")


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


def load_weights_only(path: Path) -> Any:
    """``torch.load(weights_only=True)`` on the CPU with :func:`checkpoint_safe_globals` allowed."""
    with torch.serialization.safe_globals(list(checkpoint_safe_globals())):
        return torch.load(path, map_location="cpu", weights_only=True)


def unsafe_globals(path: Path) -> list[str]:
    """The types and functions in a torch file that :func:`load_weights_only` would refuse
    (read from the pickle's instructions, nothing is unpickled)."""
    with torch.serialization.safe_globals(list(checkpoint_safe_globals())):
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))


def safe_torch_load(path: str | Path, *, trusted: bool = False) -> Any:
    """Load a user-supplied torch file on the CPU under the rule above. Every failure (missing,
    corrupt, truncated, refused) is a one-line UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist or is not a file")
    try:
        if trusted:
            return torch.load(path, map_location="cpu", weights_only=False)
        return load_weights_only(path)
    except pickle.UnpicklingError as error:
        if trusted or "weights only load failed" not in str(error).lower():
            raise UserError(f"cannot read checkpoint {path}: {_first_line(error)}") from None
        raise _refusal(path, error) from None
    except Exception as error:  # noqa: BLE001 - any other failure is a bad user file
        raise UserError(f"cannot read checkpoint {path}: {_first_line(error)}") from None
