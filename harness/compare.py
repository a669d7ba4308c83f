"""The one comparer of metric values, with one vocabulary, used by ``harness check`` (the gate,
:mod:`harness.gate`) and ``harness compare`` (two runs, :mod:`harness.reports.compare`).

A metric with a direction (``better`` higher/lower) changed when the difference exceeds a
threshold: an absolute tolerance for deterministic metrics (accuracy points), a relative minimum
effect for times. Latency samples from two different runs do not share conditions, so the gate
judges times only from a same-machine A/B (:func:`judge_ab`); ``harness compare`` shows the
relative change of stored medians with the same words, as information.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.ab import ABResult

TIME_UNITS = ("s", "ms", "us", "ns")


class Change(str, Enum):
    """What a comparison found for one unit and metric."""

    REGRESSION = "regression"
    IMPROVEMENT = "improvement"
    UNCHANGED = "unchanged"
    MISSING = "missing"  # in the baseline, not in the run
    INVALID = "invalid"  # not a finite number
    NEW = "new"  # in the run, not in the baseline
    NOT_GATED = "not gated"  # no evidence to judge (no A/B, too few rounds)

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def fails(self) -> bool:
        return self in (Change.REGRESSION, Change.MISSING, Change.INVALID)


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_time(unit: str) -> bool:
    return unit in TIME_UNITS


def is_timed(unit: str, samples: Any) -> bool:
    """A latency measured with raw samples: judged by an A/B, never by stored values."""
    return is_time(unit) and bool(samples)


def is_gated_value(unit: str, better: str) -> bool:
    """A deterministic metric with a direction, compared by value."""
    return better != "none" and not is_time(unit)


def judge(better: str, delta: float, threshold: float) -> Change:
    """The change of a metric whose value moved by ``delta``: beyond ``threshold`` in the better
    direction is an improvement, in the other a regression."""
    if better not in ("higher", "lower"):
        return Change.UNCHANGED
    signed = delta if better == "higher" else -delta
    if signed < -threshold:
        return Change.REGRESSION
    if signed > threshold:
        return Change.IMPROVEMENT
    return Change.UNCHANGED


def judge_value(better: str, unit: str, base: float, current: float, tolerance: float) -> tuple[Change, str, str]:
    """(change, "+0.5 %", evidence) of a deterministic metric within an absolute ``tolerance``."""
    delta = current - base
    change = f"{delta:+.3g} {unit}".strip()
    return judge(better, delta, tolerance), change, f"tolerance ±{tolerance:g}"


def judge_relative(better: str, base: float, current: float, min_effect: float) -> tuple[Change, str, str]:
    """(change, "+12.0%", evidence) of a value compared relatively (a time's stored medians)."""
    if not base:
        return Change.UNCHANGED, "", "no base value"
    ratio = current / base
    verdict = judge(better, ratio - 1, min_effect)
    return verdict, f"{(ratio - 1) * 100:+.1f}%", f"min effect {min_effect:.0%}"


def judge_ab(result: ABResult, min_effect: float, alpha: float) -> tuple[Change, str, str]:
    """Verdict on one timed metric from its A/B rounds: a regression when the geometric mean ratio
    exceeds ``1 + min_effect`` and a t-test over the rounds' log ratios gives p < ``alpha``."""
    n = len(result.log_ratios)
    if n < 2:
        return Change.NOT_GATED, "", f"only {n} A/B round(s) measured"
    ratio, p = result.ratio(), result.p_value()
    detail = f"A/B ratio {ratio:.3f} over {n} rounds, t-test p={p:.2g}, min effect {min_effect:.0%}"
    change = f"{(ratio - 1) * 100:+.1f}%"
    if p < alpha and ratio > 1 + min_effect:
        return Change.REGRESSION, change, detail
    if p < alpha and ratio < 1 / (1 + min_effect):
        return Change.IMPROVEMENT, change, detail
    return Change.UNCHANGED, change, detail
