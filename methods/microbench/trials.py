"""A dense 3×3 convolution timed over precision × batch size × device.

It exercises the whole engine in seconds and serves the regression gate as a fixed reference unit:
dividing another unit's latency by this one's, measured in the same run, cancels machine speed.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.context import TrialContext
from harness.registry import Metric, Param, trial


@trial(
    "micro.conv2d",
    doc="Latency of one dense 3x3 convolution (smoke test and gate reference unit).",
    params=[
        Param("channels", int, 32, doc="input and output channels", low=1),
        Param("height", int, 64, doc="input height", low=1),
        Param("width", int, 128, doc="input width", low=1),
        Param("extra_convs", int, 0, doc="test-only: extra convolutions per call, to slow the unit on purpose", low=0),
        Param(
            "work_factor",
            float,
            1.0,
            doc="test-only: each call does this many times the work (the convolutions run again on a slice "
            "of the input), to slow the unit by a known factor",
            low=1.0,
            high=2.0,
        ),
    ],
    metrics=[Metric("latency", "ms", "lower"), Metric("gmacs", "G", "none")],
    axes=("precision", "batch_size", "device"),
)
def conv2d_latency(ctx: TrialContext) -> None:
    p = ctx.params
    layers = [nn.Conv2d(p["channels"], p["channels"], 3, padding=1) for _ in range(1 + p["extra_convs"])]
    x = torch.randn(ctx.batch_size, p["channels"], p["height"], p["width"])
    rows = round((p["work_factor"] - 1.0) * p["height"])
    if rows:  # a 3x3 convolution's cost is linear in the rows it covers
        ctx.time_model("latency", nn.Sequential(*layers), x, x[..., :rows, :], call=lambda m, a, b: (m(a), m(b)))
    else:
        ctx.time_model("latency", nn.Sequential(*layers), x)
    macs = len(layers) * ctx.batch_size * (p["height"] + rows) * p["width"] * p["channels"] ** 2 * 9
    ctx.record("gmacs", macs / 1e9)
