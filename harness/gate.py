"""Regression gate: compare a run with a committed baseline file.

Latency is compared *normalized*: each unit's samples are divided by the median of a reference
unit measured in the same run (the suite's ``gate.reference``), so machine speed cancels. A
latency change is a regression only if a Mann–Whitney U test on the normalized samples says the
distributions differ (p < alpha, as asv does) AND the ratio of normalized medians exceeds the
minimum effect size (default 10%). Accuracy-like metrics (everything with a direction that is not
a time) are deterministic on CPU with fixed seeds: they are compared with an absolute tolerance
(default 0.3 points). Metrics whose direction is "none" are informational and never gate, and so are
times derived without samples (e.g. a per-site latency computed from a measured one): neither
deterministic nor testable, they would only restate the load of the machine.

Units are matched by identity: trial, section, label and axes, plus the parameters when the unit
has no label (label the units you gate, so a test-only parameter can change without changing
identity).
"""

from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from scipy.stats import mannwhitneyu

from harness.errors import UserError
from harness.store import Store
from harness.suite import load_suite, suite_name_of

BASELINE_FORMAT = 1
DEFAULTS = {"min_effect": 0.10, "accuracy_tolerance": 0.3, "alpha": 0.01}
TIME_UNITS = ("s", "ms", "us", "ns")


@dataclass(frozen=True)
class GateSettings:
    min_effect: float = DEFAULTS["min_effect"]
    accuracy_tolerance: float = DEFAULTS["accuracy_tolerance"]
    alpha: float = DEFAULTS["alpha"]
    reference: dict[str, Any] = field(default_factory=dict)
    per_metric: dict[str, dict[str, float]] = field(default_factory=dict)

    def for_metric(self, name: str) -> tuple[float, float]:
        override = self.per_metric.get(name, {})
        return (
            float(override.get("min_effect", self.min_effect)),
            float(override.get("accuracy_tolerance", self.accuracy_tolerance)),
        )


@dataclass
class Verdict:
    unit: str
    metric: str
    verdict: str  # regression | improvement | unchanged | missing | new | failed
    baseline: float | None
    current: float | None
    change: str
    detail: str


def identity(row: dict[str, Any]) -> str:
    parts: dict[str, Any] = {
        "trial": row["trial"],
        "section": row.get("section", ""),
        "label": row.get("label", ""),
        "axes": [row["precision"], row["batch_size"], row["device"]],
    }
    if not row.get("label"):
        parts["params"] = row["params"]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def describe(row: dict[str, Any]) -> str:
    name = row.get("label") or ", ".join(f"{k}={v}" for k, v in row["params"].items())
    return f"{row['trial']} [{name}] {row['precision']} b{row['batch_size']} {row['device']}"


def _matches(row: dict[str, Any], selector: dict[str, Any]) -> bool:
    for key, want in selector.items():
        have = row["params"].get(key, row.get(key))
        if have != want:
            return False
    return True


# --- collecting a run ----------------------------------------------------------------------------


def collect(store: Store, target: str) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    """(suite name, result rows with samples, provenance) for a run id or a suite's latest results."""
    if target.isdigit():
        run = store.get_run(int(target))
        if run is None:
            raise UserError(f"no run with id {target}")
        rows = store.results(run_id=run.id, with_samples=True)
        suite = run.suite
    else:
        suite = suite_name_of(target)
        rows = store.results(suite=suite, with_samples=True)
        run = store.latest_run(suite)
        if run is None or not rows:
            raise UserError(f"no results stored for suite {suite!r}")
    prov = {
        "run_id": run.id,
        "git_sha": run.git_sha,
        "git_dirty": run.git_dirty,
        "host": run.host,
        "cpu": run.cpu,
        "threads": run.threads,
        "torch": run.torch_version,
        "scale": run.scale,
        "date": f"{run.started_at:%Y-%m-%d %H:%M:%S}",
    }
    return suite, rows, prov


def load_settings(suite_path: Path | None, overrides: dict[str, float | None]) -> GateSettings:
    raw: dict[str, Any] = {}
    if suite_path is not None and suite_path.exists():
        raw = dict(load_suite(suite_path).raw.get("gate") or {})
    settings = GateSettings(
        min_effect=float(raw.get("min_effect", DEFAULTS["min_effect"])),
        accuracy_tolerance=float(raw.get("accuracy_tolerance", DEFAULTS["accuracy_tolerance"])),
        alpha=float(raw.get("alpha", DEFAULTS["alpha"])),
        reference=dict(raw.get("reference") or {}),
        per_metric={k: dict(v) for k, v in (raw.get("metrics") or {}).items()},
    )
    given = {k: v for k, v in overrides.items() if v is not None}
    return GateSettings(**{**settings.__dict__, **given}) if given else settings


def _reference_medians(rows: list[dict[str, Any]], selector: dict[str, Any]) -> dict[int, float]:
    """Median latency of the reference unit in each run (run id -> ms)."""
    out: dict[int, float] = {}
    if not selector:
        return out
    for row in rows:
        lat = row["metrics"].get("latency")
        if row["status"] == "ok" and lat and _matches(row, selector):
            out[row["run_id"]] = statistics.median(lat["samples"]) if lat.get("samples") else lat["value"]
    return out


def snapshot(rows: list[dict[str, Any]], reference: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Units by identity, each latency metric with samples normalized by its run's reference."""
    refs = _reference_medians(rows, reference)
    latest_ref = refs[max(refs)] if refs else None
    units: dict[str, dict[str, Any]] = {}
    for row in rows:
        metrics = {}
        for name, m in row["metrics"].items():
            entry: dict[str, Any] = {"value": m["value"], "unit": m["unit"], "better": m["better"]}
            if m.get("samples"):
                entry["samples"] = [round(s, 6) for s in m["samples"]]
                ref = refs.get(row["run_id"], latest_ref)
                if ref:
                    entry["reference_median"] = round(ref, 6)
            metrics[name] = entry
        units[identity(row)] = {
            "unit": describe(row),
            "trial": row["trial"],
            "section": row["section"],
            "label": row["label"],
            "params": row["params"],
            "precision": row["precision"],
            "batch_size": row["batch_size"],
            "device": row["device"],
            "status": row["status"],
            "error": row["error"],
            "is_reference": bool(reference) and _matches(row, reference),
            "metrics": metrics,
        }
    return units


# --- baseline file ---------------------------------------------------------------------------------


def suite_file_for(target: str, suite: str) -> Path | None:
    """The suite file holding the gate settings: the target itself, or suites/<name>.yaml."""
    path = Path(target) if target.endswith((".yaml", ".yml")) else Path("suites") / f"{suite}.yaml"
    return path if path.exists() else None


def save_baseline(store: Store, target: str, out: Path) -> Path:
    suite, rows, prov = collect(store, target)
    settings = load_settings(suite_file_for(target, suite), {})
    data = {
        "format": BASELINE_FORMAT,
        "suite": suite,
        "saved_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "provenance": prov,
        "reference": settings.reference,
        "units": snapshot(rows, settings.reference),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return out


def load_baseline(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"baseline file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"baseline file {path} is not valid JSON (line {exc.lineno}): {exc.msg}") from None
    if not isinstance(data, dict) or data.get("format") != BASELINE_FORMAT or "units" not in data:
        raise UserError(f"baseline file {path} is not a harness baseline (format {BASELINE_FORMAT})")
    return data


# --- comparison ----------------------------------------------------------------------------------


def _normalized(entry: dict[str, Any]) -> list[float] | None:
    ref = entry.get("reference_median")
    samples = entry.get("samples")
    if not samples:
        return None
    return [s / ref for s in samples] if ref else list(samples)


def compare_latency(base: dict[str, Any], cur: dict[str, Any], min_effect: float, alpha: float) -> tuple[str, str, str]:
    b, c = _normalized(base), _normalized(cur)
    if b is None or c is None:
        return "unchanged", "", "no samples"
    ratio = statistics.median(c) / statistics.median(b)
    kind = "normalized" if base.get("reference_median") and cur.get("reference_median") else "absolute"
    if len(b) < 3 or len(c) < 3:
        p = 0.0 if abs(ratio - 1) > min_effect else 1.0
        test = "too few samples for a U test"
    else:
        p = float(mannwhitneyu(c, b, alternative="two-sided").pvalue)
        test = f"U-test p={p:.2g}"
    detail = f"{kind} median ratio {ratio:.3f}, {test}, n={len(b)}/{len(c)}"
    change = f"{(ratio - 1) * 100:+.1f}%"
    if p < alpha and ratio > 1 + min_effect:
        return "regression", change, detail
    if p < alpha and ratio < 1 / (1 + min_effect):
        return "improvement", change, detail
    return "unchanged", change, detail


def compare_value(base: dict[str, Any], cur: dict[str, Any], tolerance: float) -> tuple[str, str, str]:
    delta = cur["value"] - base["value"]
    sign = 1 if base["better"] == "higher" else -1
    change = f"{delta:+.3g} {base['unit']}".strip()
    detail = f"tolerance ±{tolerance:g}"
    if sign * delta < -tolerance:
        return "regression", change, detail
    if sign * delta > tolerance:
        return "improvement", change, detail
    return "unchanged", change, detail


def compare(baseline: dict[str, Any], current: dict[str, dict[str, Any]], settings: GateSettings) -> list[Verdict]:
    verdicts: list[Verdict] = []
    for ident, base_unit in sorted(baseline["units"].items(), key=lambda kv: kv[1]["unit"]):
        cur_unit = current.get(ident)
        name = base_unit["unit"]
        if cur_unit is None:
            verdicts.append(Verdict(name, "-", "missing", None, None, "", "unit not in this run"))
            continue
        if base_unit["status"] == "ok" and cur_unit["status"] != "ok":
            verdicts.append(Verdict(name, "-", "regression", None, None, cur_unit["status"], cur_unit["error"][:120]))
            continue
        if cur_unit["status"] != "ok":
            verdicts.append(
                Verdict(name, "-", "unchanged", None, None, cur_unit["status"], "not ok in baseline either")
            )
            continue
        for metric, bm in base_unit["metrics"].items():
            cm = cur_unit["metrics"].get(metric)
            if cm is None:
                verdicts.append(Verdict(name, metric, "missing", bm["value"], None, "", "metric not recorded"))
                continue
            if bm["better"] == "none" or (bm["unit"] in TIME_UNITS and not bm.get("samples")):
                continue
            min_effect, tolerance = settings.for_metric(metric)
            if bm.get("samples") and bm["unit"] == "ms":
                if base_unit.get("is_reference"):
                    continue  # the yardstick itself: judged only through the units it normalizes
                verdict, change, detail = compare_latency(bm, cm, min_effect, settings.alpha)
            else:
                verdict, change, detail = compare_value(bm, cm, tolerance)
            verdicts.append(Verdict(name, metric, verdict, bm["value"], cm["value"], change, detail))
    for ident, cur_unit in current.items():
        if ident not in baseline["units"]:
            verdicts.append(Verdict(cur_unit["unit"], "-", "new", None, None, "", "not in the baseline"))
    return verdicts


def run_check(
    store: Store,
    target: str,
    baseline_path: Path,
    console: Console,
    *,
    min_effect: float | None = None,
    accuracy_tolerance: float | None = None,
    alpha: float | None = None,
) -> int:
    baseline = load_baseline(baseline_path)
    suite, rows, prov = collect(store, target)
    if suite != baseline["suite"]:
        raise UserError(f"run is of suite {suite!r} but baseline {baseline_path} is of suite {baseline['suite']!r}")
    settings = load_settings(
        suite_file_for(target, suite),
        {"min_effect": min_effect, "accuracy_tolerance": accuracy_tolerance, "alpha": alpha},
    )
    if not settings.reference and baseline.get("reference"):
        settings = GateSettings(**{**settings.__dict__, "reference": baseline["reference"]})
    verdicts = compare(baseline, snapshot(rows, settings.reference), settings)
    render(verdicts, console, f"{suite}: run {prov['run_id']} vs baseline {baseline_path}")
    return 1 if any(v.verdict == "regression" for v in verdicts) else 0


def render(verdicts: list[Verdict], console: Console, title: str) -> None:
    table = Table(title=title)
    for col in ("verdict", "unit", "metric", "baseline", "current", "change", "evidence"):
        table.add_column(col, overflow="fold")
    style = {"regression": "bold red", "improvement": "green", "unchanged": "dim", "missing": "yellow"}
    order = {"regression": 0, "missing": 1, "improvement": 2, "new": 3, "unchanged": 4}
    for v in sorted(verdicts, key=lambda v: order.get(v.verdict, 5)):
        fmt = lambda x: "" if x is None else f"{x:.4g}"  # noqa: E731
        table.add_row(f"[{style.get(v.verdict, '')}]{v.verdict}[/]", v.unit, v.metric, fmt(v.baseline),
                      fmt(v.current), v.change, v.detail)  # fmt: skip
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v.verdict] = counts.get(v.verdict, 0) + 1
    table.caption = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    console.print(table)
