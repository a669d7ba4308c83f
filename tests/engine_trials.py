"""Throwaway trials for the engine tests (registered on import; not part of ``methods``)."""

from __future__ import annotations

import sys
import time

import torch

from harness.context import TrialContext
from harness.errors import Unavailable, Unsupported
from harness.registry import Metric, Param, trial

BEHAVIOURS = ("ok", "raise", "oom", "unsupported", "unavailable", "dtype", "hang", "nometric", "partial")


@trial(
    "test.behave",
    doc="Ends the way it is told to.",
    params=[
        Param("behaviour", str, "ok", choices=BEHAVIOURS, doc="how the unit ends"),
        Param("seconds", float, 0.0, doc="sleep before ending", low=0.0),
        Param("index", int, 0, doc="distinguishes units"),
    ],
    metrics=[Metric("value", "", "higher"), Metric("latency", "ms", "lower")],
    axes=("precision", "batch_size", "device"),
)
def behave(ctx: TrialContext) -> None:
    time.sleep(ctx.params["seconds"])
    b = ctx.params["behaviour"]
    if b == "raise":
        raise ValueError("boom")
    if b == "oom":
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    if b == "unsupported":
        raise Unsupported("fp16 is not supported here")
    if b == "unavailable":
        raise Unavailable("backend xyz is not installed")
    if b == "dtype":
        raise RuntimeError("\"slow_conv2d_cpu\" not implemented for 'Half'")
    if b == "hang":
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.01)
    if b == "nometric":
        return
    ctx.record("value", ctx.params["index"] * 1.5 + ctx.batch_size)
    if b == "partial":
        return
    ctx.measure("latency", lambda: sum(range(100)))


@trial("test.simple", doc="One parameter, no axes.", params=[Param("k", int, 1, doc="k", choices=(1, 2, 3))],
       metrics=[Metric("value")])  # fmt: skip
def simple(ctx: TrialContext) -> None:
    ctx.record("value", ctx.params["k"])


@trial("test.settings", doc="Records what it is given of the suite's settings blocks.", metrics=[Metric("value")])
def settings(ctx: TrialContext) -> None:
    ctx.note("dataset", ctx.dataset)
    ctx.note("baselines", ctx.baselines)
    ctx.note("scale", ctx.scale)
    ctx.record("value", float(ctx.dataset.get("num_train", 0)))


if __name__ == "__main__":  # run the CLI with these trials registered (used by subprocess tests)
    from harness.cli import main

    sys.exit(main(sys.argv[1:]))
