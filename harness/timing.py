"""Latency measurement: the one place every latency trial goes through.

- warm-up, then a fixed number of timed calls or an adaptive mode that keeps timing until the
  spread (IQR / median) is small, in the spirit of ``torch.utils.benchmark``'s adaptive autorange;
- on CUDA each call is bracketed by CUDA events and synchronised; on CPU ``time.perf_counter``;
- the raw samples are kept; statistics are derived from them.

Where a unit runs and in what precision (devices, BN folding, channels_last, autocast) is
:mod:`harness.devices`.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from harness.devices import check_device

Clock = Callable[[], float]


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
    target = check_device(device)
    use_cuda = target.type == "cuda"
    if use_cuda:
        torch.cuda.synchronize(target)

    def one_call() -> float:
        if use_cuda:
            return _cuda_call_time(fn)
        t0 = clock()
        fn()
        return clock() - t0

    # CUDA events and synchronisation apply to the current device: make it the unit's GPU
    with torch.cuda.device(target) if use_cuda else contextlib.nullcontext(), torch.inference_mode():
        for _ in range(config.warmup):
            fn()
        if use_cuda:
            torch.cuda.synchronize(target)
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
