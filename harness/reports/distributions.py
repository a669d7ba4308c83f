"""Latency distributions: every timed metric's raw samples, one box (IQR, median) with the samples
strewn over it per unit, the units whose timing is noisy (IQR / median above
:data:`harness.timing.NOISY_SPREAD`) drawn in red, so a reader sees which medians not to trust."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from harness.results import ResultRow
from harness.timing import NOISY_SPREAD, timing_noise  # noqa: E402

COLOR_OK, EDGE_OK = "#cfe0f3", "#3b6ea5"
COLOR_NOISY, EDGE_NOISY = "#f6c3c3", "#c0392b"
LOG_SPAN = 30.0  # a log x axis once the medians span more than this factor
_MPL = tuple(int(x) for x in matplotlib.__version__.split(".")[:2])
HORIZONTAL: dict[str, Any] = {"orientation": "horizontal"} if _MPL >= (3, 10) else {"vert": False}


@dataclass(frozen=True)
class Box:
    """The raw samples of one timed metric of one unit."""

    result_id: int
    name: str
    samples: tuple[float, ...]
    unit: str
    spread: float | None  # IQR / median

    @property
    def noisy(self) -> bool:
        return self.spread is not None and self.spread > NOISY_SPREAD

    @property
    def median(self) -> float:
        return float(np.median(self.samples))


def timed_metrics(results: list[ResultRow], names: dict[int, str]) -> dict[str, list[Box]]:
    """{metric name: one Box per ok unit that kept raw samples of it}, in the results' order.

    ``results`` must be read with samples (``Store.results(with_samples=True)``); ``names`` gives
    each result id its display name.
    """
    out: dict[str, list[Box]] = {}
    for r in results:
        if not r.ok:
            continue
        for metric, entry in r.metrics.items():
            samples = tuple(float(s) for s in entry.samples)
            if samples:
                box = Box(r.id, names.get(r.id, str(r.id)), samples, entry.unit, timing_noise(samples))
                out.setdefault(metric, []).append(box)
    return out


def noise_text(spread: float | None) -> str:
    return "" if spread is None else f"IQR/median {spread * 100:.0f}%"


def draw_distribution(metric: str, boxes: list[Box]) -> Figure:
    width, height = 11.0, 1.3 + 0.3 * len(boxes)
    fig, ax = plt.subplots(figsize=(width, height))
    label_inches = 0.3 + 0.068 * max((len(b.name) for b in boxes), default=10)  # 8 pt labels
    fig.subplots_adjust(left=min(label_inches / width, 0.55), right=1 - 1.5 / width, top=1 - 0.45 / height,
                        bottom=0.75 / height)  # fmt: skip
    positions = list(range(len(boxes), 0, -1))  # first unit on top
    parts = ax.boxplot([b.samples for b in boxes], positions=positions, widths=0.6, patch_artist=True,
                       showfliers=False, whis=(0, 100), **HORIZONTAL)  # fmt: skip
    rng = np.random.default_rng(0)
    for pos, box, patch, median in zip(positions, boxes, parts["boxes"], parts["medians"], strict=True):
        face, edge = (COLOR_NOISY, EDGE_NOISY) if box.noisy else (COLOR_OK, EDGE_OK)
        patch.set(facecolor=face, edgecolor=edge)
        median.set(color=edge, linewidth=2)
        jitter = rng.uniform(-0.18, 0.18, len(box.samples))
        ax.scatter(box.samples, pos + jitter, s=9, color=edge, alpha=0.55, zorder=3, linewidths=0)
    for pos, box in zip(positions, boxes, strict=True):
        if box.noisy:
            where = {"xy": (1.0, pos), "xycoords": ("axes fraction", "data"), "xytext": (6, 0)}
            ax.annotate(f"noisy: {noise_text(box.spread)}", **where, textcoords="offset points", va="center",
                        fontsize=8, color=EDGE_NOISY)  # fmt: skip
    ax.set_yticks(positions)
    ax.set_yticklabels([b.name for b in boxes], fontsize=8)
    medians = [b.median for b in boxes if b.median > 0]
    if medians and max(medians) / min(medians) > LOG_SPAN:
        ax.set_xscale("log")
    unit = boxes[0].unit if boxes else ""
    ax.set_xlabel(f"{metric} ({unit}), every raw sample" if unit else f"{metric}, every raw sample", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    noisy = sum(b.noisy for b in boxes)
    ax.set_title(f"{metric}: {len(boxes)} units, {noisy} noisy (IQR/median > {NOISY_SPREAD:.0%})", fontsize=11)
    return fig


def figure_svg(fig: Figure) -> str:
    """The figure as an ``<svg>`` element to inline in HTML (XML prolog and DOCTYPE dropped)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg") :]


def distribution_svg(metric: str, boxes: list[Box]) -> str:
    fig = draw_distribution(metric, boxes)
    try:
        return figure_svg(fig)
    finally:
        plt.close(fig)
