"""A table5-shaped result database without training anything: every unit of the real
``suites/table5.yaml`` (smoke scale) stored with made-up but plausible values, some units not ok,
one never run, one timing noisy. Used by the HTML report and browser tests."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from harness.results import MetricValue, ResultRow, Status
from harness.store import Store
from harness.suite import Unit, load_suite

ROOT = Path(__file__).resolve().parents[1]
TABLE5 = ROOT / "suites" / "table5.yaml"
T0 = datetime(2026, 11, 21, 12, 0, 0)

RECALL = {"random": 12.0, "magnitude": 41.5, "learnable": 80.0, "entropy": 83.5, "oracle": 100.0}
MIOU = {  # by the parameter a row varies
    ("ensembler", "direct"): 58.0, ("ensembler", "entropy"): 60.5, ("ensembler", "oracle"): 66.0,
    ("inputs", "rgb+logits"): 60.4, ("inputs", "rgb+features"): 60.9,
    ("inputs", "rgb+logits+features"): 60.6, ("arch", "minkunet4"): 60.7, ("arch", "minkunet8"): 61.3,
    ("arch", "pointnet"): 59.0, ("selector", "random"): 57.5, ("selector", "magnitude"): 59.4,
    ("selector", "oracle"): 66.0,
}  # fmt: skip
NOT_RUN = ("arch", "pointnet")  # never stored: the report says "not run"
OOM = ("selector", "learnable")  # the pipeline unit of 5a ends OOM
NOISY_SECTION_SELECTOR = ("5a", "magnitude")  # its latency samples spread 40%


def _density(params: dict[str, Any]) -> float:
    if float(params.get("density") or 0.0) > 0:  # a target density (fraction) instead of a threshold
        return round(100.0 * float(params["density"]), 1)
    alpha = float(params.get("alpha", 0.3))
    if alpha < 0:
        return 100.0
    return round(100.0 * math.exp(-2.6 * alpha), 1)


def _samples(median: float, spread: float, n: int = 10) -> tuple[float, ...]:
    return tuple(median * (1 + spread * ((i / (n - 1)) - 0.5)) for i in range(n))


def _miou(params: dict[str, Any]) -> float:
    for key in ("ensembler", "inputs", "arch", "selector"):
        value = params.get(key)
        if (key, value) in MIOU:
            return MIOU[(key, value)]
    return 61.2  # the default row: entropy, rgb, minkunet6, gated


def _metrics(unit: Unit) -> list[MetricValue]:
    p = unit.params
    trial = unit.trial.name
    noisy = (unit.section, p.get("selector")) == NOISY_SECTION_SELECTOR
    values: dict[str, float] = {}
    if trial == "baseline.evaluate":
        values = {"miou": 55.0 if p["kind"] == "lr" else 66.0, "pixel_accuracy": 90.0}
    elif trial == "sparserefine.selector":
        density = _density(p) if p["selector"] == "entropy" else 12.0
        recall = RECALL[p["selector"]] if unit.section == "5a" else min(100.0, 20.0 + 2.2 * density)
        values = {"density": density, "recall": recall, "precision": 30.0, "latency": 1.8 if not noisy else 0.6}
    elif trial == "sparserefine.pipeline":
        density = _density(p)
        values = {"miou": _miou(p), "miou_lr": 55.0, "miou_hr": 66.0, "density": density,
                  "recall": min(100.0, 20.0 + 2.2 * density), "precision": 30.0, "latency": 40.0 + density}  # fmt: skip
    out = []
    for metric in unit.trial.metrics:
        if metric.name not in values:
            continue
        value = values[metric.name]
        samples = _samples(value, 0.4 if noisy else 0.04) if metric.unit == "ms" else ()
        out.append(MetricValue(metric.name, value, metric.unit, metric.better, samples))
    return out


def _status(unit: Unit) -> tuple[str, str]:
    if unit.trial.name == "sparserefine.pipeline" and (OOM[0], unit.params.get(OOM[0])) == OOM:
        return "oom", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    return "ok", ""


def record(unit: Unit, index: int) -> ResultRow:
    status, error = _status(unit)
    started = T0 + timedelta(seconds=10 * index)
    metrics = {m.name: m for m in _metrics(unit)} if status == "ok" else {}
    return ResultRow(
        key=unit.key, suite=unit.suite, identity=unit.identity, status=Status(status), error=error,
        scale_name=unit.scale, started_at=started, ended_at=started + timedelta(seconds=1 + index % 7),
        metrics=metrics,
    )  # fmt: skip


def fill_table5(store: Store) -> int:
    """Store one run of every table5 unit (smoke scale) but the never-run one; return the run id."""
    import methods

    methods.discover()
    suite = load_suite(TABLE5)
    run = store.start_run(suite="table5", suite_path=str(TABLE5), scale="smoke", git_sha="0123456789abcdef",
                          host="testhost", cpu="Test CPU", threads=2, torch_version="2.x",
                          command="harness run suites/table5.yaml --report",
                          packages={"torch": "2.x", "numpy": "1.x", "python": "3.x"})  # fmt: skip
    for i, unit in enumerate(suite.units("smoke")):
        if (NOT_RUN[0], unit.params.get(NOT_RUN[0])) == NOT_RUN:
            continue
        store.add_result(run, record(unit, i))
    store.end_run(run, "ok")
    return run
