"""`harness report SUITE --history`: gated metrics across stored runs, moves beyond the gate's
thresholds marked (three CI-shaped runs stored directly, nothing trained)."""

from __future__ import annotations

import re
import zlib
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.cli import main
from harness.errors import UserError
from harness.reports.history import build_history_report, collect_history, gated_kind
from harness.results import MetricValue, ResultRow, Status, UnitIdentity
from harness.store import Store
from harness.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 11, 1, 9, 0, 0)
SUITE = {
    "name": "ci",
    "title": "CI-shaped suite",
    "seed": 1,
    "gate": {
        "min_effect": 0.10,
        "accuracy_tolerance": 0.3,
        "alpha": 0.01,
        "metrics": {"recall": {"accuracy_tolerance": 2.0}},
    },
    "benchmarks": [{"trial": "micro.conv2d", "cases": [{"label": "reference", "channels": 8}]}],
}


@pytest.fixture(scope="module", autouse=True)
def _trials() -> None:
    import methods

    methods.discover()


def _record(
    trial: str,
    label: str,
    params: dict[str, Any],
    metrics: list[MetricValue],
    status: str = "ok",
    *,
    key: str = "",
    section: str = "",
) -> ResultRow:
    return ResultRow(
        key=key or f"{trial}-{label}", suite="ci", identity=UnitIdentity(trial, label=label, section=section,
        params=params), status=Status(status), error="" if status == "ok" else "RuntimeError: boom",
        scale_name="smoke", started_at=T0, ended_at=T0 + timedelta(seconds=2),
        metrics={m.name: m for m in metrics} if status == "ok" else {},
    )  # fmt: skip


def _samples(median: float, n: int = 20) -> tuple[float, ...]:
    return tuple(median * (1 + 0.02 * ((i % 5) - 2) / 2) for i in range(n))


def _store_run(store: Store, i: int, *, miou: float, selector_ms: float, magnitude_ok: bool = True) -> int:
    run = store.start_run(suite="ci", scale="smoke", git_sha=f"{i}abcdef0123456789", host="ci-host", threads=1,
                          started_at=T0 + timedelta(days=i))  # fmt: skip
    add = store.add_result
    m = MetricValue
    add(run, _record("micro.conv2d", "reference", {}, [m("latency", 2.0, "ms", "lower", _samples(2.0)),
                                                       m("gmacs", 0.1, "G", "none")]))  # fmt: skip
    add(run, _record("baseline.evaluate", "lr", {"kind": "lr"}, [
        m("miou", miou, "%", "higher"), m("pixel_accuracy", 90.0, "%", "higher"),
        m("train_seconds", 3.0 + i, "s", "none")]))  # fmt: skip
    add(run, _record("sparserefine.selector", "entropy", {"selector": "entropy"}, [
        m("recall", 80.0 + i, "%", "higher"), m("density", 12.0, "%", "none"),
        m("latency", selector_ms, "ms", "lower", _samples(selector_ms)),
        m("latency_per_site_us", 0.5, "us", "lower")]))  # fmt: skip
    add(run, _record("sparserefine.selector", "magnitude", {"selector": "magnitude"},
                     [m("recall", 40.0, "%", "higher")], status="ok" if magnitude_ok else "failed"))  # fmt: skip
    store.end_run(run, "ok")
    return run


@pytest.fixture()
def three_runs(tmp_path: Path) -> tuple[Store, Path]:
    store = Store(f"sqlite:///{tmp_path / 'ci.db'}")
    _store_run(store, 1, miou=60.0, selector_ms=1.0)
    _store_run(store, 2, miou=60.1, selector_ms=1.02, magnitude_ok=False)  # within thresholds; magnitude fails
    _store_run(store, 3, miou=59.0, selector_ms=1.5)  # mIoU -1.1 points, selector latency +47%
    suite = tmp_path / "ci.yaml"
    suite.write_text(yaml.safe_dump(SUITE))
    return store, suite


def test_gated_kind_follows_the_gate() -> None:
    assert gated_kind(MetricValue("t", 1.0, "ms", "lower", (1.0, 2.0))) == "timed"
    assert gated_kind(MetricValue("t", 1.0, "us", "lower")) is None  # derived time: informational
    assert gated_kind(MetricValue("a", 1.0, "%", "higher")) == "value"
    assert gated_kind(MetricValue("a", 1.0, "%", "none")) is None


def test_three_runs_give_three_points_per_gated_metric(three_runs) -> None:
    store, suite = three_runs
    history = collect_history(store, load_suite(suite))
    assert [r.git_sha[:1] for r in history.runs] == ["1", "2", "3"]
    shown = {(s.unit.split(" ")[0] + " " + s.unit.split(" ")[1], s.metric): s for s in history.series}
    assert set(shown) == {
        ("micro.conv2d reference", "latency"),
        ("baseline.evaluate lr", "miou"),
        ("baseline.evaluate lr", "pixel_accuracy"),
        ("sparserefine.selector entropy", "recall"),
        ("sparserefine.selector entropy", "latency"),
        ("sparserefine.selector magnitude", "recall"),
    }  # no gmacs, train_seconds, density (direction none) nor latency_per_site_us (no samples)
    for s in history.series:
        assert [p.run for p in s.points] == [0, 1, 2]
    flags = {key: [p.flag for p in s.points] for key, s in shown.items()}
    assert flags[("baseline.evaluate lr", "miou")] == ["", "", "regression"]
    assert flags[("sparserefine.selector entropy", "latency")] == ["", "", "regression"]
    assert flags[("micro.conv2d reference", "latency")] == ["", "", ""]
    assert flags[("sparserefine.selector entropy", "recall")] == ["", "", ""]  # +1 within its own tolerance (2)
    assert flags[("sparserefine.selector magnitude", "recall")] == ["", "failed", ""]


def test_history_page_has_three_points_per_chart_and_marks(three_runs, tmp_path: Path) -> None:
    store, suite = three_runs
    page = build_history_report(store, suite, tmp_path / "out").read_text()
    charts = re.findall(r'<div class="chart" data-name="([^"]*)".*?</svg>', page, flags=re.S)
    assert len(charts) == 6
    for chart in re.findall(r'<div class="chart".*?</svg>', page, flags=re.S):
        points = re.findall(r'<circle class="pt[^"]*" data-run="(\d+)"', chart)
        fails = re.findall(r'<text class="fail" data-run="(\d+)"', chart)
        assert len(points) + len(fails) == 3
    assert page.count('class="pt regression"') == 2 and page.count('class="fail"') == 1
    assert ">1abcdef<" in page and ">3abcdef<" in page  # x axis: short shas
    assert "median ratio 1.47" in page and "-1.1 vs previous run" in page
    assert "http" not in page.replace("http-equiv", "")


def test_history_cli(three_runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, suite = three_runs
    out = tmp_path / "r"
    assert main(["report", str(suite), "--history", "--db", store.url, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ci-history.html"]  # --history alone: only the history
    assert main(["report", "--run", "1", "--history", "--db", store.url]) == 2
    assert "--history: give a suite file" in capsys.readouterr().err
    empty = Store(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(UserError, match="no runs of suite 'ci'"):
        build_history_report(empty, suite, tmp_path)


def _fake_metrics(unit: Any, shift: float) -> list[MetricValue]:
    out = []
    for m in unit.trial.metrics:
        base = 1.0 + zlib.crc32(f"{unit.key}{m.name}".encode()) % 1000 / 10.0
        samples = _samples(base * (1 + shift)) if m.unit == "ms" else ()
        out.append(MetricValue(m.name, base + (shift if m.unit != "ms" else 0.0), m.unit, m.better, samples))
    return out


def test_history_of_the_real_ci_suite_after_three_runs(tmp_path: Path) -> None:
    """`harness report suites/ci.yaml --history` after three CI runs: three points per gated metric."""
    ci = load_suite(ROOT / "suites" / "ci.yaml")
    store = Store(f"sqlite:///{tmp_path / 'ci.db'}")
    for i, shift in enumerate((0.0, 0.05, 0.5)):
        run = store.start_run(suite="ci", scale="smoke", git_sha=f"{i}{'0' * 39}", started_at=T0 + timedelta(days=i))
        for unit in ci.units("smoke"):
            metrics = _fake_metrics(unit, shift)
            rec = _record(unit.trial.name, unit.label, unit.params, metrics, key=unit.key, section=unit.section)
            store.add_result(run, rec)
        store.end_run(run, "ok")
    out = tmp_path / "reports"
    assert main(["report", str(ROOT / "suites" / "ci.yaml"), "--history", "--db", store.url, "--out", str(out)]) == 0
    page = (out / "ci-history.html").read_text()
    charts = re.findall(r'<div class="chart".*?</svg>', page, flags=re.S)
    declared = [MetricValue(m.name, 0.0, m.unit, m.better, (1.0,) if m.unit == "ms" else ())
                for u in ci.units("smoke") for m in u.trial.metrics]  # fmt: skip
    gated = sum(1 for m in declared if gated_kind(m))
    assert len(charts) == gated > 10
    assert all(len(re.findall(r"<circle class=\"pt", c)) == 3 for c in charts)
