"""Latency measurement: the one place every latency trial goes through.

- warm-up, then a fixed number of timed calls or an adaptive mode that keeps timing until the
  spread (IQR / median) is small, in the spirit of ``torch.utils.benchmark``'s adaptive autorange;
- on CUDA each call is bracketed by CUDA events and synchronised; on CPU ``time.perf_counter``;
- the raw samples are kept; statistics are derived from them;
- helpers for the thread count, precision (fp32 / bf16 / fp16), channels_last and batch-norm
  folding (the papers omit BN from latency because it folds into the preceding conv).
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from harness.errors import Unavailable, Unsupported

Clock = Callable[[], float]
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TimingConfig:
    """How to time one callable. Durations in seconds."""

    warmup: int = 10
    iters: int = 50
    mode: Literal["fixed", "adaptive"] = "fixed"
    min_iters: int = 10
    max_iters: int = 500
    max_time: float = 20.0
    iqr_tolerance: float = 0.05
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("fixed", "adaptive"):
            raise ValueError(f"timing mode must be 'fixed' or 'adaptive', got {self.mode!r}")
        for name in ("warmup", "iters", "min_iters", "max_iters"):
            if getattr(self, name) < 0:
                raise ValueError(f"timing {name} must be >= 0")
        if self.iters < 1 or self.min_iters < 1:
            raise ValueError("timing iters and min_iters must be >= 1")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TimingConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown timing settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


@dataclass(frozen=True)
class Measurement:
    """Raw timing samples (seconds per call) and the statistics derived from them."""

    samples: tuple[float, ...]
    warmup: int = 0
    device: str = "cpu"
    threads: int = 1
    timer: str = "perf_counter"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    def quantile(self, q: float) -> float:
        """Linear-interpolated quantile, q in [0, 1]."""
        data = sorted(self.samples)
        if len(data) == 1:
            return data[0]
        pos = q * (len(data) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(data) - 1)
        return data[lo] + (data[hi] - data[lo]) * (pos - lo)

    @property
    def iqr(self) -> float:
        return self.quantile(0.75) - self.quantile(0.25)

    @property
    def p90(self) -> float:
        return self.quantile(0.90)

    @property
    def relative_iqr(self) -> float:
        return self.iqr / self.median if self.median > 0 else math.inf

    def summary_ms(self) -> dict[str, float]:
        return {
            "median": self.median * 1e3,
            "mean": self.mean * 1e3,
            "iqr": self.iqr * 1e3,
            "p90": self.p90 * 1e3,
            "n": float(self.n),
        }


NOISY_SPREAD = 0.10  # IQR / median above this: the timing is too noisy to trust its median


def timing_noise(samples: Sequence[float]) -> float | None:
    """Relative spread (IQR / median) of raw timing samples, or None with fewer than two samples.

    The one noise measure of the harness: ``harness run``'s summary and the HTML report's latency
    distributions both flag a metric as noisy when this exceeds :data:`NOISY_SPREAD`.
    """
    if len(samples) < 2:
        return None
    return Measurement(tuple(float(s) for s in samples)).relative_iqr


def is_noisy(samples: Sequence[float]) -> bool:
    spread = timing_noise(samples)
    return spread is not None and spread > NOISY_SPREAD


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count (if given) and return the count in force."""
    if threads is not None:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def check_device(device: str) -> torch.device:
    """Return the torch device, or raise Unavailable with the reason."""
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            reason = "no CUDA device" if torch.version.cuda else "torch built without CUDA"
            raise Unavailable(f"cuda: {reason} on this machine")
        return torch.device("cuda")
    raise ValueError(f"unknown device {device!r}")


def _cuda_call_time(fn: Callable[[], Any]) -> float:
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def measure(
    fn: Callable[[], Any],
    config: TimingConfig = TimingConfig(),
    *,
    device: str = "cpu",
    clock: Clock = time.perf_counter,
) -> Measurement:
    """Time ``fn`` per ``config`` and return every sample.

    ``clock`` is injectable so that tests can drive the adaptive stop with a controlled clock.
    Exceptions from ``fn`` (OOM, unsupported dtype) propagate to the runner, which maps them to
    unit statuses.
    """
    threads = set_threads(config.threads)
    use_cuda = device == "cuda"
    if use_cuda:
        check_device("cuda")
        torch.cuda.synchronize()

    def one_call() -> float:
        if use_cuda:
            return _cuda_call_time(fn)
        t0 = clock()
        fn()
        return clock() - t0

    with torch.inference_mode():
        for _ in range(config.warmup):
            fn()
        if use_cuda:
            torch.cuda.synchronize()
        samples: list[float] = []
        if config.mode == "fixed":
            samples = [one_call() for _ in range(config.iters)]
        else:
            spent = 0.0
            while len(samples) < config.max_iters:
                samples.append(one_call())
                spent += samples[-1]
                if len(samples) >= config.min_iters:
                    m = Measurement(tuple(samples))
                    if m.relative_iqr <= config.iqr_tolerance or spent >= config.max_time:
                        break
    return Measurement(
        samples=tuple(samples),
        warmup=config.warmup,
        device=device,
        threads=threads,
        timer="cuda_event" if use_cuda else getattr(clock, "__name__", "clock"),
    )


# --- precision, memory format, BN folding -------------------------------------------------------


def precision_dtype(precision: str) -> torch.dtype:
    try:
        return PRECISION_DTYPES[precision]
    except KeyError:
        raise ValueError(f"unknown precision {precision!r}; known: {list(PRECISION_DTYPES)}") from None


@contextlib.contextmanager
def autocast(precision: str, device: str) -> Iterator[None]:
    """Autocast for bf16/fp16 on ``device``; a no-op for fp32."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device, dtype=precision_dtype(precision)):
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


def prepare_for_latency(
    model: nn.Module,
    *,
    precision: str,
    device: str,
    channels_last: bool = True,
    fold_bn: bool = True,
) -> nn.Module:
    """Put ``model`` in eval mode on ``device`` in ``precision`` (weights cast), BN folded.

    Raises Unsupported when the precision cannot run on the device.
    """
    probe_precision(precision, device)
    model = model.eval()
    if fold_bn:
        model = fold_batchnorm(model)
    model = model.to(check_device(device), precision_dtype(precision))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def prepare_input(x: torch.Tensor, *, precision: str, device: str, channels_last: bool = True) -> torch.Tensor:
    x = x.to(check_device(device))
    if x.is_floating_point():
        x = x.to(precision_dtype(precision))
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv.eval(), bn.eval())
    return fused


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
                module._modules[names[i]] = _fuse_conv_bn(a, b)
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
