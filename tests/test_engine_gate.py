from __future__ import annotations

import json
import random
from pathlib import Path

import engine_trials  # noqa: F401
import pytest
from rich.console import Console

from harness.cli import main
from harness.gate import GateSettings, compare, compare_latency, load_baseline

REF = {"trial": "micro.conv2d", "label": "reference"}


def latency_entry(samples: list[float], ref: float | None) -> dict:
    entry = {"value": sorted(samples)[len(samples) // 2], "unit": "ms", "better": "lower", "samples": samples}
    if ref is not None:
        entry["reference_median"] = ref
    return entry


def jitter(center: float, n: int = 30, spread: float = 0.03, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [center * (1 + rng.uniform(-spread, spread)) for _ in range(n)]


def test_machine_slowdown_cancels_when_normalized() -> None:
    base = latency_entry(jitter(10.0, seed=1), ref=2.0)
    slower_machine = latency_entry(jitter(20.0, seed=2), ref=4.0)  # everything 2x slower
    assert compare_latency(base, slower_machine, 0.10, 0.01)[0] == "unchanged"
    assert compare_latency({**base, "reference_median": None}, {**slower_machine, "reference_median": None},
                           0.10, 0.01)[0] == "regression"  # fmt: skip


def test_real_slowdown_beyond_effect_size_is_a_regression() -> None:
    base = latency_entry(jitter(10.0, seed=1), ref=2.0)
    assert compare_latency(base, latency_entry(jitter(12.5, seed=3), ref=2.0), 0.10, 0.01)[0] == "regression"
    # Significant but smaller than the minimum effect: unchanged.
    assert compare_latency(base, latency_entry(jitter(10.5, seed=3), ref=2.0), 0.10, 0.01)[0] == "unchanged"
    assert compare_latency(base, latency_entry(jitter(7.0, seed=3), ref=2.0), 0.10, 0.01)[0] == "improvement"


def test_accuracy_tolerance_and_status_change() -> None:
    unit = {"unit": "u", "status": "ok", "error": "", "is_reference": False}
    base = {"units": {"a": {**unit, "metrics": {"miou": {"value": 70.0, "unit": "%", "better": "higher"}}}}}
    within = {"a": {**unit, "metrics": {"miou": {"value": 69.8, "unit": "%", "better": "higher"}}}}
    worse = {"a": {**unit, "metrics": {"miou": {"value": 69.5, "unit": "%", "better": "higher"}}}}
    failed = {"a": {**unit, "status": "failed", "error": "boom", "metrics": {}}}
    settings = GateSettings()
    assert [v.verdict for v in compare(base, within, settings)] == ["unchanged"]
    assert [v.verdict for v in compare(base, worse, settings)] == ["regression"]
    assert [v.verdict for v in compare(base, failed, settings)] == ["regression"]


def test_a_time_derived_without_samples_does_not_gate_but_an_accuracy_does() -> None:
    unit = {"unit": "u", "status": "ok", "error": "", "is_reference": False}
    per_site = {"unit": "us", "better": "lower"}
    base = {"units": {"a": {**unit, "metrics": {"per_site": {**per_site, "value": 6.9}}}}}
    slower = {"a": {**unit, "metrics": {"per_site": {**per_site, "value": 8.1}}}}
    assert compare(base, slower, GateSettings()) == []
    as_points = {"unit": "%", "better": "lower"}  # same numbers on a non-time metric do gate
    base = {"units": {"a": {**unit, "metrics": {"m": {**as_points, "value": 6.9}}}}}
    worse = {"a": {**unit, "metrics": {"m": {**as_points, "value": 8.1}}}}
    assert [v.verdict for v in compare(base, worse, GateSettings())] == ["regression"]


GATE_SUITE = """\
name: gated
seed: 0
timing: {{warmup: 3, iters: 25}}
gate: {{reference: {{trial: micro.conv2d, label: reference}}, min_effect: {min_effect}}}
benchmarks:
  - trial: micro.conv2d
    cases:
      - {{label: reference, channels: 16, height: 32, width: 64}}
      - {{label: work, channels: 16, height: 32, width: 64, extra_convs: {extra}}}
  - trial: test.behave
    cases:
      - {{label: accuracy, index: {index}}}
"""


def _suite(tmp_path: Path, extra: int = 0, index: int = 10, min_effect: float = 0.5) -> Path:
    path = tmp_path / "gated.yaml"
    path.write_text(GATE_SUITE.format(extra=extra, index=index, min_effect=min_effect))
    return path


def _run_and_check(tmp_path: Path, db: str, baseline: Path, **kw: int) -> int:
    path = _suite(tmp_path, **kw)
    assert main(["run", str(path), "--db", db, "--no-progress", "--threads", "1"]) == 0
    return main(["check", str(path), "--db", db, "--baseline", str(baseline)])


def test_gate_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base_db = f"sqlite:///{tmp_path / 'base.db'}"
    path = _suite(tmp_path)
    assert main(["run", str(path), "--db", base_db, "--no-progress", "--threads", "1"]) == 0
    baseline = tmp_path / "baseline.json"
    assert main(["baseline", "save", str(path), "--db", base_db, "--out", str(baseline)]) == 0
    data = load_baseline(baseline)
    assert data["suite"] == "gated" and len(data["units"]) == 3
    work = next(u for u in data["units"].values() if u["label"] == "work")
    assert len(work["metrics"]["latency"]["samples"]) == 25 and work["metrics"]["latency"]["reference_median"] > 0
    # Unchanged code: no alarm (the effect threshold is generous here because tests share the CPU).
    assert _run_and_check(tmp_path, f"sqlite:///{tmp_path / 'same.db'}", baseline) == 0
    # A deliberately slowed unit (5x the convolutions) is flagged.
    assert _run_and_check(tmp_path, f"sqlite:///{tmp_path / 'slow.db'}", baseline, extra=4) == 1
    assert "regression" in capsys.readouterr().out
    # A deliberately degraded accuracy metric is flagged.
    assert _run_and_check(tmp_path, f"sqlite:///{tmp_path / 'worse.db'}", baseline, index=9) == 1


def test_bad_baseline_input_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'x.db'}"
    path = _suite(tmp_path)
    assert main(["run", str(path), "--db", db, "--no-progress", "--only", "accuracy"]) == 0
    assert main(["check", str(path), "--db", db, "--baseline", str(tmp_path / "missing.json")]) == 2
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": 1, "suite": "ci", "units": {}}))
    assert main(["check", str(path), "--db", db, "--baseline", str(other)]) == 2
    assert "baseline" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["check", str(path), "--db", db, "--baseline", str(tmp_path / "bad.json")]) == 2


def test_render_lists_verdicts() -> None:
    console = Console(record=True, width=200)
    from harness.gate import Verdict, render

    render([Verdict("u", "latency", "regression", 1.0, 2.0, "+100%", "U-test p=0.001")], console, "t")
    text = console.export_text()
    assert "regression" in text and "U-test" in text
