"""Overhead of ``--executor local`` per unit: submit -> result stored, for units that do nothing.

Runs ``--units`` units of the test trial ``test.behave`` (no sleep, one timing iteration) inline, then
through submitit's LocalExecutor with ``--workers`` jobs, polling the database every few milliseconds
to see when each unit's row lands. Prints and returns:

- inline: wall time per unit (execute_unit + one transaction);
- local, start: submission -> first unit stored (job process start, imports, trial discovery);
- local, per unit: the steady cost of one more unit inside a job (last - first stored, / units - 1);
- local, all: submission -> last unit stored, / units (what a suite of such units pays on average).

    .venv/bin/python benchmarks/executor_overhead.py --units 40
    .venv/bin/python benchmarks/executor_overhead.py --units 40 --db postgresql+psycopg2://me@host/db

Run it when the machine is quiet: the job's start is mostly the import of torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import engine_trials  # noqa: E402,F401 - registers test.behave

from harness.cluster import ClusterOptions, submit_suite, wait_for  # noqa: E402
from harness.runner import RunOptions, run_suite  # noqa: E402
from harness.store import Store  # noqa: E402
from harness.suite import load_suite  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=40)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--db", help="database URL (default: a fresh SQLite file in a temporary folder)")
    parser.add_argument("--poll", type=float, default=0.002, help="seconds between database polls")
    args = parser.parse_args(argv)
    quiet = Console(stderr=True, quiet=True)
    with tempfile.TemporaryDirectory(prefix="executor-overhead-") as tmp:
        folder = Path(tmp)
        tag = f"overhead{int(time.time())}"
        suite_path = folder / f"{tag}.yaml"
        indices = list(range(1, args.units + 1))
        suite_path.write_text(
            f"name: {tag}\ntiming: {{warmup: 0, iters: 1}}\nbenchmarks:\n"
            f"  - trial: test.behave\n    matrix: {{index: {indices}}}\n"
        )
        suite = load_suite(suite_path)
        url = args.db or f"sqlite:///{folder / 'h.db'}"
        store = Store(url)

        start = time.perf_counter()
        run_suite(suite, store, RunOptions(show_progress=False, force=True), quiet)
        inline = (time.perf_counter() - start) / args.units

        cluster = ClusterOptions(executor="local", workers=args.workers, folder=folder / "jobs")
        start = time.perf_counter()
        sub = submit_suite(suite, store, RunOptions(show_progress=False, force=True), cluster, quiet)
        submitted = time.perf_counter() - start
        seen: dict[str, float] = {}
        while len(seen) < args.units and not all(job.done() for job in sub.jobs):
            now = time.perf_counter() - start
            for _, key, _, _ in store.run_unit_statuses(sub.run_id):
                seen.setdefault(key, now)
            time.sleep(args.poll)
        for _, key, _, _ in store.run_unit_statuses(sub.run_id):
            seen.setdefault(key, time.perf_counter() - start)
        summary = wait_for(sub, store, quiet, show_progress=False, poll_s=0.05)
        if summary.has_failures or len(seen) != args.units:
            raise SystemExit(f"local run incomplete: {summary.counts}")
        times = sorted(seen.values())
        result = {
            "units": args.units,
            "workers": args.workers,
            "backend": store.engine.dialect.name,
            "inline_per_unit_ms": inline * 1e3,
            "local_submit_s": submitted,
            "local_start_s": times[0],
            "local_per_unit_ms": (times[-1] - times[0]) / max(1, args.units - 1) * 1e3,
            "local_all_per_unit_ms": times[-1] / args.units * 1e3,
        }
    print(
        f"{args.units} units doing nothing, {args.workers} local worker(s), {result['backend']}:\n"
        f"  inline:            {result['inline_per_unit_ms']:8.1f} ms per unit\n"
        f"  local, submit:     {result['local_submit_s']:8.2f} s (run row, plan, job submission)\n"
        f"  local, start:      {result['local_start_s']:8.2f} s submission -> first unit stored\n"
        f"  local, per unit:   {result['local_per_unit_ms']:8.1f} ms each further unit in a job\n"
        f"  local, all:        {result['local_all_per_unit_ms']:8.1f} ms per unit, submission -> last stored"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
