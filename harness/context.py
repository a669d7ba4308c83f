"""What a trial sees when it runs: its resolved parameters, axes, scale and dataset settings, and
the means to record metrics and timed measurements."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.devices import Placement
from harness.registry import TrialSpec
from harness.results import MetricValue
from harness.timing import Measurement, TimingConfig, measure

if TYPE_CHECKING:
    from harness.suite import Unit


@dataclass
class TrialContext:
    """Passed to every trial function.

    ``scale`` holds the suite's settings for the selected scale (resolution, iteration counts...),
    ``dataset`` the suite's dataset settings merged with the scale's, ``baselines`` the suite's
    ``baselines:`` block at that scale (the dense LR/HR baselines a trial builds on; ``{}`` when the
    suite names none), ``artifacts_dir`` the place for cached training artifacts.
    ``trust_checkpoints`` (``--trust-checkpoints``) is what a trial passes as ``trusted`` to
    :func:`methods.safe_load.safe_torch_load` for a checkpoint the user names.
    """

    spec: TrialSpec
    params: dict[str, Any]
    precision: str = "fp32"
    batch_size: int = 1
    device: str = "cpu"
    scale_name: str = "default"
    scale: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    seed_index: int = 0  # k of the row's ``seeds: N`` (``seed`` is the suite's seed + k)
    timing: TimingConfig = field(default_factory=TimingConfig)
    artifacts_dir: Path = Path("results/artifacts")
    trust_checkpoints: bool = False
    metrics: dict[str, MetricValue] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    progress: Callable[[str], None] = field(default=lambda message: None)

    @classmethod
    def for_unit(
        cls,
        unit: Unit,
        *,
        artifacts_dir: Path,
        trust_checkpoints: bool = False,
        progress: Callable[[str], None] | None = None,
    ) -> TrialContext:
        """The context of one unit (the trial gets copies: it cannot alter the unit's identity)."""
        ident = unit.identity
        return cls(
            spec=unit.trial,
            params=copy.deepcopy(ident.params),
            precision=ident.precision,
            batch_size=ident.batch_size,
            device=ident.device,
            scale_name=unit.scale,
            scale=copy.deepcopy(ident.scale),
            dataset=copy.deepcopy(ident.dataset),
            baselines=copy.deepcopy(ident.baselines),
            seed=ident.seed,
            seed_index=ident.seed_index,
            timing=unit.timing,
            artifacts_dir=artifacts_dir,
            trust_checkpoints=trust_checkpoints,
            progress=progress or (lambda message: None),
        )

    @property
    def row_seed(self) -> int:
        """The seed shared by every seed of this unit's row (the suite's seed): what a trial keeps
        fixed across the row's seeds, e.g. a frozen baseline the seeds' refiners all build on."""
        return self.seed - self.seed_index

    def record(self, name: str, value: float, unit: str | None = None, better: str | None = None) -> None:
        """Record a metric. Unit and direction default to the trial's declaration of ``name``."""
        declared = self.spec.metric(name)
        if declared is None and unit is None:
            raise KeyError(f"trial {self.spec.name} records undeclared metric {name!r} without a unit")
        self.metrics[name] = MetricValue(
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
        self.metrics[name] = replace(self.metrics[name], samples=tuple(s * 1e3 for s in m.samples))
        self.notes.setdefault("timing", {})[name] = {
            "warmup": m.warmup,
            "threads": m.threads,
            "timer": m.timer,
            **{k: round(v, 6) for k, v in m.summary_ms().items()},
        }
        return m

    def placement(self, *, autocast: bool = False) -> Placement:
        """The unit's device and precision, checked (Unavailable without the device, Unsupported when
        the precision cannot run on it): for code that prepares models and inputs itself."""
        return Placement.of(self.device, self.precision, autocast=autocast)

    def time_model(
        self,
        name: str,
        model: Any,
        *inputs: Any,
        call: Callable[..., Any] | None = None,
        channels_last: bool = True,
        fold_bn: bool = True,
        autocast: bool = False,
        config: TimingConfig | None = None,
    ) -> Measurement:
        """Time ``model`` on ``inputs`` in the unit's precision on its device and record ``name``.

        The model is put in eval mode with its BatchNorm folded, cast (or, with ``autocast``, kept
        fp32 and run under autocast) and moved to ``ctx.device``, channels_last unless told; tensor
        inputs follow it. Each timed call is ``call(model, *inputs)`` (default ``model(*inputs)``).
        """
        where = self.placement(autocast=autocast)
        prepared = where.model(model, channels_last=channels_last, fold_bn=fold_bn)
        args = where.inputs(inputs, channels_last=channels_last)
        run = call or (lambda m, *xs: m(*xs))

        def timed() -> Any:
            with where.running():
                return run(prepared, *args)

        return self.measure(name, timed, config)

    def note(self, key: str, value: Any) -> None:
        """Attach JSON-serialisable detail to the result (stored with it, shown in reports)."""
        self.notes[key] = value
