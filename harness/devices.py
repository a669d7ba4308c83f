"""Where a unit runs and in what precision: the one device seam of the harness.

- ``cpu``, ``cuda`` or ``cuda:N`` (a unit pinned to GPU N): :func:`parse_device` checks the spelling
  (a bad one is a user error), :func:`check_device` checks the machine (no CUDA, or no GPU N, ends
  the unit ``unavailable`` with the reason);
- :class:`Placement` puts models and inputs on the device in the precision (fp32 / bf16 / fp16
  weights, or fp32 weights under autocast), channels_last, BatchNorm folded (the papers omit BN
  from latency because it folds into the preceding conv);
- :func:`is_oom` / :func:`is_unsupported_dtype` tell the runner how a unit that raised ended.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.errors import Unavailable, Unsupported

PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICE_PATTERN = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def parse_device(name: str) -> str:
    """The canonical spelling of a device (``cpu``, ``cuda``, ``cuda:N``); ValueError otherwise."""
    match = DEVICE_PATTERN.match(str(name).strip()) if isinstance(name, str) else None
    if match is None or (match.group(1) == "cpu" and match.group(2) is not None):
        raise ValueError(f"unknown device {name!r}; known: cpu, cuda, cuda:N (N = GPU index)")
    kind, index = match.groups()
    return kind if index is None else f"{kind}:{int(index)}"


def is_cuda(name: str) -> bool:
    """``cuda`` or ``cuda:N`` (a unit pinned to one GPU is a GPU unit too)."""
    return parse_device(name).startswith("cuda")


def check_device(name: str) -> torch.device:
    """The torch device of ``name``, or Unavailable with the reason this machine cannot run it."""
    device = torch.device(parse_device(name))
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        reason = "no CUDA device" if torch.version.cuda else "torch built without CUDA"
        raise Unavailable(f"{name}: {reason} on this machine")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise Unavailable(f"{name}: this machine has {count} CUDA device(s) (0..{count - 1})")
    return device


def precision_dtype(precision: str) -> torch.dtype:
    try:
        return PRECISION_DTYPES[precision]
    except KeyError:
        raise ValueError(f"unknown precision {precision!r}; known: {list(PRECISION_DTYPES)}") from None


@contextlib.contextmanager
def autocast(precision: str, device: str | torch.device) -> Iterator[None]:
    """Autocast to bf16/fp16 on ``device`` (``cuda:N`` autocasts as ``cuda``); a no-op for fp32."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=precision_dtype(precision)):
        yield


def probe_precision(precision: str, device: str) -> None:
    """Raise Unsupported if a small conv cannot run in ``precision`` on ``device``."""
    dev = check_device(device)
    dtype = precision_dtype(precision)
    if dtype is torch.float32:
        return
    conv = nn.Conv2d(3, 4, 3, padding=1).to(dev, dtype)
    try:
        with torch.inference_mode():
            conv(torch.zeros(1, 3, 8, 8, device=dev, dtype=dtype))
    except (RuntimeError, NotImplementedError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unsupported(f"{precision} convolution on {device}: {first}") from exc


@dataclass(frozen=True)
class Placement:
    """A device and a precision, checked: models and inputs put there, calls run in it.

    With ``autocast`` the weights and inputs stay fp32 and calls run under ``torch.autocast`` (for
    models that build fp32 tensors inside their forward, as mmseg's do); otherwise weights and
    floating-point inputs are cast to the precision.
    """

    device: torch.device
    precision: str = "fp32"
    autocast: bool = False

    @classmethod
    def of(cls, device: str, precision: str = "fp32", *, autocast: bool = False) -> Placement:
        """Raises Unavailable (no such device here) or Unsupported (precision cannot run there)."""
        checked = check_device(device)
        probe_precision(precision, device)
        return cls(checked, precision, autocast)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of weights and floating-point inputs."""
        return torch.float32 if self.autocast else precision_dtype(self.precision)

    def model(self, model: nn.Module, *, channels_last: bool = True, fold_bn: bool = True) -> nn.Module:
        """``model`` in eval mode on the device in the weight dtype, BN folded, channels_last."""
        model = model.eval()
        if fold_bn:
            model = fold_batchnorm(model)
        model = model.to(self.device, self.dtype)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def tensor(self, x: torch.Tensor, *, channels_last: bool = True) -> torch.Tensor:
        """``x`` on the device; floating point cast to the weight dtype; 4-d made channels_last."""
        x = x.to(self.device)
        if x.is_floating_point():
            x = x.to(self.dtype)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def inputs(self, values: tuple[Any, ...], *, channels_last: bool = True) -> tuple[Any, ...]:
        """Every tensor of ``values`` through :meth:`tensor`; anything else as it is."""
        return tuple(self.tensor(v, channels_last=channels_last) if torch.is_tensor(v) else v for v in values)

    def running(self) -> contextlib.AbstractContextManager[None]:
        """The context a call runs in: autocast to the precision when ``autocast``, else nothing."""
        return autocast(self.precision, self.device) if self.autocast else contextlib.nullcontext()


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d inside an ``nn.Sequential``.

    Modules may fold their own BN by defining ``fold_bn()`` (e.g. sparse convolution blocks);
    it is called on each such module. Folding is exact in eval mode.
    """
    model.eval()
    for module in list(model.modules()):
        if module is not model and hasattr(module, "fold_bn") and callable(module.fold_bn):
            module.fold_bn()
    if hasattr(model, "fold_bn") and callable(model.fold_bn):
        model.fold_bn()
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for i in range(len(names) - 1):
            a, b = module._modules[names[i]], module._modules[names[i + 1]]
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) and b.track_running_stats:
                module._modules[names[i]] = torch.nn.utils.fusion.fuse_conv_bn_eval(a.eval(), b.eval())
                module._modules[names[i + 1]] = nn.Identity()
    return model


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error from torch or the allocator."""
    if isinstance(exc, MemoryError):
        return True
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def is_unsupported_dtype(exc: BaseException) -> bool:
    """Whether ``exc`` says an operator has no kernel for the dtype/device in use."""
    text = str(exc)
    return isinstance(exc, (RuntimeError, NotImplementedError)) and (
        "not implemented for" in text
        or "Could not run" in text
        or "unsupported dtype" in text.lower()
        or "does not support" in text
    )
