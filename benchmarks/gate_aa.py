"""A/A check of the regression gate: the unchanged tree checked against itself, N times.

Runs the suite once (if the database has no run of it), saves a baseline from that run, then runs
the gate's same-machine A/B of HEAD against the current tree ``--repeat`` times. Each repetition
is a full ``harness check`` (fresh workers, fresh worktree). It prints, and writes to
``reports/gate_aa.md`` and ``reports/gate_aa.json``, the false-alarm count (checks that exited 1)
and, per timed unit, the spread of the A/B ratio across repetitions: the figure the suite's
``gate.min_effect`` must sit well above.

    .venv/bin/python benchmarks/gate_aa.py suites/ci.yaml --scale smoke --repeat 20

Run it on an idle machine and on a clean tree (the A/B compares HEAD with the working tree).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from harness.cli import main as harness
from harness.gate import collect, compare, load_baseline, measure_ab, snapshot
from harness.store import Store
from harness.suite import load_suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite")
    parser.add_argument("--scale", default="smoke")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--db", default="sqlite:///results/gate_aa.db")
    parser.add_argument("--out", default="reports")
    args = parser.parse_args(argv)

    import methods

    methods.discover()
    console = Console(stderr=True)
    suite = load_suite(args.suite)
    if harness(["run", args.suite, "--scale", args.scale, "--db", args.db, "--no-progress"]) != 0:
        console.print("the suite run failed")
        return 1
    baseline_path = Path(tempfile.mkdtemp()) / "aa.json"
    if harness(["baseline", "save", args.suite, "--db", args.db, "--out", str(baseline_path)]) != 0:
        return 2
    baseline = load_baseline(baseline_path)
    store = Store(args.db, create=False)
    _, rows, prov = collect(store, args.suite)
    current = snapshot(rows)
    ratios: dict[str, list[float]] = {}
    false_alarms, seconds = 0, []
    for i in range(args.repeat):
        started = time.monotonic()
        outcome = measure_ab(baseline, Path(args.suite), suite.gate, prov["scale"], Path("results/artifacts"), console)
        if outcome.unavailable:
            console.print(f"A/B unavailable: {outcome.unavailable}")
            return 2
        verdicts = compare(baseline, current, suite.gate, outcome)
        failing = [v for v in verdicts if v.fails]
        false_alarms += bool(failing)
        seconds.append(time.monotonic() - started)
        for (ident, metric), result in outcome.results.items():
            if metric != "*":
                name = f"{baseline['units'][ident]['unit']} {metric}"
                ratios.setdefault(name, []).append(result.ratio())
        verdict = f"FALSE ALARM {[v.unit for v in failing]}" if failing else "pass"
        console.print(f"A/A {i + 1}/{args.repeat}: {verdict}", markup=False)
    summary = {
        "suite": suite.name,
        "scale": args.scale,
        "commit": prov["git_sha"],
        "repeat": args.repeat,
        "false_alarms": false_alarms,
        "min_effect": suite.gate.min_effect,
        "seconds_per_check": statistics.median(seconds),
        "units": {
            name: {"min_ratio": min(r), "max_ratio": max(r), "max_deviation": max(abs(x - 1) for x in r)}
            for name, r in sorted(ratios.items())
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gate_aa.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [
        f"# Gate A/A: {suite.name} ({args.scale}), commit {prov['git_sha'][:12]}",
        "",
        f"{false_alarms} false alarm(s) in {args.repeat} checks; min_effect {suite.gate.min_effect:.0%}; "
        f"median {summary['seconds_per_check']:.0f} s per check.",
        "",
        "| unit | min A/B ratio | max A/B ratio | max deviation |",
        "|---|---|---|---|",
    ]
    for name, u in summary["units"].items():
        lines.append(f"| {name} | {u['min_ratio']:.3f} | {u['max_ratio']:.3f} | {u['max_deviation']:.1%} |")
    (out / "gate_aa.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if false_alarms == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
