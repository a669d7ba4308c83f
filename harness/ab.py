"""Same-machine A/B latency measurement: the baseline's commit against the current tree.

Latency measured on another day, machine or load cannot be compared with today's: a run's samples
share that run's conditions (clock frequency, neighbours, cache state), so any drift between two
runs looks significant. Like ``asv continuous``, the gate therefore measures both trees here, now:
one worker process per tree (the baseline's commit checked out in a temporary git worktree), the
two interleaved unit by unit in rounds, the order within a pair alternating. A round yields one
ratio per unit (current median / baseline median) and is the unit of evidence.

Protocol: a worker (``python -m harness.ab SUITE --scale S --artifacts DIR``) writes one JSON line
listing its units by gate identity, then answers each ``{"measure": identity}`` line with the
unit's status and its timed metrics' samples, until ``{"quit": true}`` or end of input.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from scipy import stats

from harness.results import Status, gate_ids

WORKER_MODULE = "harness.ab"
PROTOCOL = 1


# --- the worker ------------------------------------------------------------------------------------


def _worker(suite_path: str, scale: str, artifacts: str, timeout: float | None) -> int:
    # The protocol owns the real stdout; anything a trial prints goes to stderr.
    proto: IO[str] = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    import methods
    from harness.runner import RunOptions, execute_unit
    from harness.suite import load_suite

    methods.discover()
    units = {}
    planned = load_suite(suite_path).units(scale)
    for ident, unit in zip(gate_ids([u.identity for u in planned]), planned, strict=True):
        units[ident] = unit
    listing = [{"identity": k, "unit": u.describe()} for k, u in units.items()]
    proto.write(json.dumps({"protocol": PROTOCOL, "units": listing}) + "\n")
    options = RunOptions(scale=scale, artifacts_dir=Path(artifacts), show_progress=False, timeout=timeout)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("quit"):
            break
        unit = units.get(request.get("measure", ""))
        if unit is None:
            proto.write(json.dumps({"status": Status.FAILED.value, "error": "no such unit", "samples": {}}) + "\n")
            continue
        row, _ = execute_unit(unit, options)
        samples = {m.name: list(m.samples) for m in row.metrics.values() if m.samples}
        proto.write(json.dumps({"status": row.status.value, "error": row.error, "samples": samples}) + "\n")
    return 0


def worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.ab", description="A/B latency worker (internal)")
    parser.add_argument("suite")
    parser.add_argument("--scale", default="default")
    parser.add_argument("--artifacts", default="results/artifacts")
    parser.add_argument("--timeout", type=float, default=None)
    args = parser.parse_args(argv)
    return _worker(args.suite, args.scale, args.artifacts, args.timeout)


# --- the driver ------------------------------------------------------------------------------------


class ABUnavailable(Exception):
    """The A/B comparison cannot be made (commit not reachable, worker cannot start...)."""


@dataclass
class Worker:
    """One side of the comparison: a worker process on one tree."""

    name: str
    root: Path
    suite: Path
    scale: str
    artifacts: Path
    log: Path
    process: subprocess.Popen[str] | None = None
    units: dict[str, str] = field(default_factory=dict)

    def start(self, timeout: float | None) -> None:
        env = {**os.environ, "PYTHONPATH": str(self.root)}
        cmd = [sys.executable, "-m", WORKER_MODULE, str(self.suite), "--scale", self.scale,
               "--artifacts", str(self.artifacts)]  # fmt: skip
        if timeout:
            cmd += ["--timeout", str(timeout)]
        with self.log.open("w") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                cmd, cwd=self.root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=log, text=True, bufsize=1,
            )  # fmt: skip
        hello = self._read()
        if hello.get("protocol") != PROTOCOL:
            raise ABUnavailable(f"{self.name} worker speaks protocol {hello.get('protocol')}, not {PROTOCOL}")
        self.units = {u["identity"]: u["unit"] for u in hello["units"]}

    def _read(self) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=30)
            tail = self.log.read_text(errors="replace").strip().splitlines()[-1:] if self.log.exists() else []
            reason = tail[0] if tail else f"exit code {self.process.returncode}"
            raise ABUnavailable(f"the {self.name} worker ended: {reason[:300]}")
        return json.loads(line)

    def measure(self, identity: str) -> dict[str, Any]:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps({"measure": identity}) + "\n")
        self.process.stdin.flush()
        return self._read()

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            if self.process.stdin:
                self.process.stdin.write(json.dumps({"quit": True}) + "\n")
                self.process.stdin.close()
            self.process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()


@dataclass
class ABResult:
    """Per-round medians of one timed metric of one unit, on both trees."""

    identity: str
    metric: str
    base: list[float] = field(default_factory=list)
    head: list[float] = field(default_factory=list)
    error: str = ""  # set when a side could not measure the unit
    failed_side: str = ""  # "base" or "head"

    @property
    def log_ratios(self) -> list[float]:
        return [math.log(h / b) for b, h in zip(self.base, self.head, strict=True) if b > 0 and h > 0]

    def ratio(self) -> float:
        """Geometric mean over rounds of current / baseline."""
        logs = self.log_ratios
        return math.exp(sum(logs) / len(logs)) if logs else float("nan")

    def p_value(self) -> float:
        """Two-sided one-sample t-test of the per-round log ratios against 0 (rounds are the
        evidence; the samples inside one measurement are not independent of its round)."""
        logs = self.log_ratios
        if len(logs) < 2:
            return float("nan")
        if max(logs) - min(logs) == 0:
            return 0.0 if logs[0] != 0 else 1.0
        return float(stats.ttest_1samp(logs, 0.0).pvalue)


def git(root: Path, *args: str, check: bool = True) -> str:
    out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise ABUnavailable(f"git {' '.join(args)}: {(out.stderr.strip() or 'failed').splitlines()[0]}")
    return out.stdout.strip()


def repo_root(path: Path) -> Path:
    return Path(git(path, "rev-parse", "--show-toplevel"))


def commit_reachable(root: Path, sha: str) -> bool:
    return bool(sha) and subprocess.run(
        ["git", "-C", str(root), "cat-file", "-e", f"{sha}^{{commit}}"], capture_output=True, check=False
    ).returncode == 0  # fmt: skip


@contextmanager
def worktree(root: Path, sha: str) -> Iterator[Path]:
    """A temporary detached worktree of ``sha``, removed afterwards."""
    parent = Path(tempfile.mkdtemp(prefix="harness-ab-"))
    path = parent / "base"
    git(root, "worktree", "add", "--detach", "--quiet", str(path), sha)
    try:
        yield path
    finally:
        git(root, "worktree", "remove", "--force", str(path), check=False)
        shutil.rmtree(parent, ignore_errors=True)
        git(root, "worktree", "prune", check=False)


@dataclass(frozen=True)
class ABPlan:
    suite: Path  # the suite file in the current tree
    scale: str
    base_sha: str
    identities: list[str]  # units to compare
    rounds: int = 5
    warmup_rounds: int = 1
    artifacts: Path = Path("results/artifacts")
    timeout: float | None = 600.0
    seed: int = 0


def run_ab(plan: ABPlan, progress: Any = None) -> tuple[dict[tuple[str, str], ABResult], list[str]]:
    """Measure ``plan.identities`` on the base commit and the current tree, interleaved.

    Returns results keyed by (identity, metric) and notes (units that exist on one side only).
    Raises ABUnavailable when the comparison cannot be made at all.
    """
    say = progress or (lambda message: None)
    root = repo_root(plan.suite.resolve().parent)
    if not commit_reachable(root, plan.base_sha):
        raise ABUnavailable(
            f"the baseline's commit {plan.base_sha[:12] or '(none recorded)'} is not in this clone "
            "(shallow clone? `git fetch --unshallow`)"
        )
    rel_suite = plan.suite.resolve().relative_to(root)
    logs = Path(tempfile.mkdtemp(prefix="harness-ab-logs-"))
    with worktree(root, plan.base_sha) as base_root:
        if not (base_root / rel_suite).exists():
            raise ABUnavailable(f"{rel_suite} does not exist at the baseline's commit {plan.base_sha[:12]}")
        if not (base_root / "harness" / "ab.py").exists():
            raise ABUnavailable(f"the baseline's commit {plan.base_sha[:12]} has no A/B worker (harness/ab.py)")
        base_artifacts = root / "results" / "ab" / plan.base_sha[:12] / "artifacts"
        sides = {
            "base": Worker("baseline", base_root, base_root / rel_suite, plan.scale, base_artifacts, logs / "base.log"),
            "head": Worker("current", root, root / rel_suite, plan.scale, plan.artifacts.resolve(), logs / "head.log"),
        }
        try:
            for side in sides.values():
                say(f"starting the {side.name} worker")
                side.start(plan.timeout)
            return _interleave(plan, sides, say)
        finally:
            for side in sides.values():
                side.stop()
            shutil.rmtree(logs, ignore_errors=True)


def _interleave(plan: ABPlan, sides: dict[str, Worker], say: Any) -> tuple[dict[tuple[str, str], ABResult], list[str]]:
    notes: list[str] = []
    common = []
    for ident in plan.identities:
        missing = [s.name for s in sides.values() if ident not in s.units]
        if missing:
            notes.append(f"unit {ident} not in the suite of the {' and '.join(missing)} tree")
        else:
            common.append(ident)
    results: dict[tuple[str, str], ABResult] = {}
    broken: dict[str, tuple[str, str]] = {}  # identity -> (side, error)
    rng = random.Random(plan.seed)
    total = plan.warmup_rounds + plan.rounds
    for r in range(total):
        order = list(common)
        rng.shuffle(order)
        for i, ident in enumerate(order):
            if ident in broken:
                continue
            say(f"A/B round {r + 1}/{total}: {sides['head'].units[ident][:60]}")
            first, second = ("base", "head") if (r + i) % 2 == 0 else ("head", "base")
            answers = {first: sides[first].measure(ident), second: sides[second].measure(ident)}
            bad = next((s for s in ("head", "base") if answers[s]["status"] != Status.OK), None)
            if bad is not None:
                broken[ident] = (bad, f"{answers[bad]['status']}: {answers[bad]['error']}"[:300])
                continue
            if r < plan.warmup_rounds:
                continue
            for metric, samples in answers["head"]["samples"].items():
                base_samples = answers["base"]["samples"].get(metric)
                if not base_samples or not samples:
                    continue
                res = results.setdefault((ident, metric), ABResult(ident, metric))
                res.base.append(_median(base_samples))
                res.head.append(_median(samples))
    for ident, (side, error) in broken.items():
        results[(ident, "*")] = ABResult(ident, "*", error=error, failed_side=side)
    return results, notes


def _median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


if __name__ == "__main__":
    sys.exit(worker_main())
