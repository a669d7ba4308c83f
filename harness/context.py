"""What a trial sees when it runs: its resolved parameters, axes, scale and dataset settings, and
the means to record metrics and timed measurements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.registry import TrialSpec
from harness.timing import Measurement, TimingConfig, measure


@dataclass
class RecordedMetric:
    name: str
    value: float
    unit: str = ""
    better: str = "none"
    samples: tuple[float, ...] = ()


@dataclass
class TrialContext:
    """Passed to every trial function.

    ``scale`` holds the suite's settings for the selected scale (resolution, iteration counts...),
    ``dataset`` the suite's dataset settings merged with the scale's, ``artifacts_dir`` the place for
    cached training artifacts. ``trust_checkpoints`` (``--trust-checkpoints``) is what a trial passes
    as ``trusted`` to :func:`methods.safe_load.safe_torch_load` for a checkpoint the user names.
    """

    spec: TrialSpec
    params: dict[str, Any]
    precision: str = "fp32"
    batch_size: int = 1
    device: str = "cpu"
    scale_name: str = "default"
    scale: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    timing: TimingConfig = field(default_factory=TimingConfig)
    artifacts_dir: Path = Path("results/artifacts")
    trust_checkpoints: bool = False
    metrics: dict[str, RecordedMetric] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    progress: Callable[[str], None] = field(default=lambda message: None)

    def record(self, name: str, value: float, unit: str | None = None, better: str | None = None) -> None:
        """Record a metric. Unit and direction default to the trial's declaration of ``name``."""
        declared = self.spec.metric(name)
        if declared is None and unit is None:
            raise KeyError(f"trial {self.spec.name} records undeclared metric {name!r} without a unit")
        self.metrics[name] = RecordedMetric(
            name=name,
            value=float(value),
            unit=unit if unit is not None else declared.unit,  # type: ignore[union-attr]
            better=better if better is not None else (declared.better if declared else "none"),
        )

    def measure(self, name: str, fn: Callable[[], Any], config: TimingConfig | None = None) -> Measurement:
        """Time ``fn`` with the suite's timing settings; record ``name`` as the median in ms,
        keeping the raw samples with it."""
        m = measure(fn, config or self.timing, device=self.device)
        self.record(name, m.median * 1e3, unit="ms", better="lower")
        self.metrics[name].samples = tuple(s * 1e3 for s in m.samples)
        self.notes.setdefault("timing", {})[name] = {
            "warmup": m.warmup,
            "threads": m.threads,
            "timer": m.timer,
            **{k: round(v, 6) for k, v in m.summary_ms().items()},
        }
        return m

    def note(self, key: str, value: Any) -> None:
        """Attach JSON-serialisable detail to the result (stored with it, shown in reports)."""
        self.notes[key] = value
