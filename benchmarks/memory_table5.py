"""Peak resident memory of the table5 pipeline unit for a small and a large training split.

Streams every split (issue 14): the peak RSS of the SparseRefine pipeline unit (default row: entropy
selector, MinkUNet, gated ensembler; LR and HR baselines trained inside the unit, LR outputs
computed and cached, refiner trained and evaluated) must not grow with the number of training
images. Each size runs in a fresh process (``harness run suites/table5.yaml --only ...`` with its own
database, artifacts and dataset cache under a temporary directory); its peak RSS is read from
``wait4`` (the child and the DataLoader workers it waited for).

Beyond the data, the refiner's bf16 training fills two per-shape kernel caches of the CPU build
(oneDNN's primitive cache and ideep's LRU cache, bounded by ONEDNN_PRIMITIVE_CACHE_CAPACITY and
LRU_CACHE_CAPACITY, 1024 entries each by default): every step has a new number of sites, so RSS
climbs over the first refiner steps, until both caches are full, and then stays flat. A small run
with few steps therefore measures that warm-up, not the data; give it enough ``--epochs`` that both
runs pass it.

Full size (the issue's target, ratio <= 1.2; takes hours on 2 CPU cores):

    .venv/bin/python benchmarks/memory_table5.py --small 20 --large 200 --height 512 --width 1024

A quick check that it works:

    .venv/bin/python benchmarks/memory_table5.py --small 4 --large 16 --height 64 --width 128 \\
        --baseline-iters 4 --epochs 1 --num-val 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The default row of Table 5 without latency timing (memory, not speed, is measured here).
PIPELINE_UNIT = (
    "sparserefine.pipeline selector=entropy, alpha=0.3, density=0.0, recall=0.8,*inputs=rgb,"
    "*arch=minkunet6,*ensembler=gated,*measure_latency=False*"
)


@dataclass
class Measurement:
    num_train: int
    peak_rss_mb: float
    exit_code: int
    seconds: float


def overrides(args: argparse.Namespace, num_train: int, cache: Path) -> list[str]:
    dataset = {
        "height": args.height,
        "width": args.width,
        "num_train": num_train,
        "num_val": args.num_val,
        "cache_dir": str(cache),
    }
    settings = [f"scales.default.dataset={json.dumps(dataset)}"]
    if args.baseline_iters is not None:
        settings.append(f"scales.default.baseline={json.dumps({'iters': args.baseline_iters, 'batch_size': 2})}")
    if args.epochs is not None:
        refiner = {"epochs": args.epochs, "batch": 2, "crop": [args.height // 2, args.width // 2]}
        settings.append(f"scales.default.sparserefine={json.dumps(refiner)}")
    if args.workers:
        settings.append(f"scales.default.workers={args.workers}")
    return [item for setting in settings for item in ("--set", setting)]


def measure(args: argparse.Namespace, num_train: int, workdir: Path) -> Measurement:
    import time

    folder = workdir / f"train{num_train}"
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "harness.cli",
        "run",
        "suites/table5.yaml",
        "--scale",
        "default",
        "--only",
        PIPELINE_UNIT,
        "--db",
        f"sqlite:///{folder / 'results.db'}",
        "--artifacts",
        str(folder / "artifacts"),
        "--threads",
        str(args.threads),
        "--no-progress",
        *overrides(args, num_train, folder / "cache"),
    ]
    log = (folder / "run.log").open("w")
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    log.close()
    # ru_maxrss is in KiB on Linux
    return Measurement(num_train, usage.ru_maxrss / 1024, child.returncode, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=20, help="training images of the small run")
    parser.add_argument("--large", type=int, default=200, help="training images of the large run")
    parser.add_argument("--num-val", type=int, default=4)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--baseline-iters", type=int, default=None, help="default: the suite's default scale")
    parser.add_argument("--epochs", type=int, default=None, help="refiner epochs (default: the suite's)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (scale setting workers)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--target", type=float, default=1.2, help="largest acceptable large/small ratio")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="memory_table5-") as tmp:
        workdir = args.workdir or Path(tmp)
        results = [measure(args, n, workdir) for n in (args.small, args.large)]
    for result in results:
        print(json.dumps(asdict(result)))
    failed = [r for r in results if r.exit_code != 0]
    if failed:
        print(f"run(s) failed: {[r.num_train for r in failed]} (see run.log under --workdir)", file=sys.stderr)
        return 1
    ratio = results[1].peak_rss_mb / results[0].peak_rss_mb
    verdict = "ok" if ratio <= args.target else "over target"
    print(
        f"peak RSS {results[0].peak_rss_mb:.0f} MB with {args.small} training images, "
        f"{results[1].peak_rss_mb:.0f} MB with {args.large}: ratio {ratio:.3f} (target <= {args.target}): {verdict}"
    )
    return 0 if ratio <= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
