"""Run one registered trial in-process on a small embedded dataset, the way the runner would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.context import TrialContext
from harness.registry import get_trial
from harness.timing import TimingConfig


def run_trial(
    name: str, artifacts: Path, scale: dict[str, Any], dataset: dict[str, Any], **params: Any
) -> TrialContext:
    """The trial's context after it ran at smoke scale (one timed call, seed 2023)."""
    spec = get_trial(name)
    ctx = TrialContext(
        spec=spec,
        params=spec.resolve_params(params),
        scale_name="smoke",
        scale=scale,
        dataset=dataset,
        seed=2023,
        timing=TimingConfig(warmup=0, iters=1),
        artifacts_dir=artifacts,
    )
    spec.fn(ctx)
    return ctx
