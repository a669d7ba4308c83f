"""Provenance header of a report: where and how the results it shows were produced."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from harness.redact import mask_secrets
from harness.results import ResultRow
from harness.store import Run

if TYPE_CHECKING:
    from harness.suite import Suite


@dataclass
class Provenance:
    suite: str
    title: str
    paper: str
    reproduces: list[str]
    runs: list[Run]
    scale: str
    datasets: list[str]
    status_counts: dict[str, int]
    never_run: list[str] = field(default_factory=list)  # suite units with no stored result
    generated_at: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))

    def items(self) -> list[tuple[str, str]]:
        """(field, value) pairs, newest run first for the machine fields."""
        latest = self.runs[-1] if self.runs else None
        ids = ", ".join(str(r.id) for r in self.runs) or "none"
        out = [
            ("suite", f"{self.suite}: {self.title}" if self.title else self.suite),
            ("paper", f"{self.paper}" + (f" ({', '.join(self.reproduces)})" if self.reproduces else "")),
            ("run id(s)", ids),
            ("scale", self.scale or "-"),
            ("dataset", "; ".join(self.datasets) or "-"),
            ("results", ", ".join(f"{n} {s}" for s, n in sorted(self.status_counts.items())) or "none"),
        ]
        if latest is not None:
            sha = (latest.git_sha or "unknown")[:12] + (" (dirty)" if latest.git_dirty else "")
            out += [
                ("device", _device_text(latest)),
                ("threads", str(latest.threads)),
                ("host", latest.host or "-"),
                (
                    "torch",
                    f"{latest.torch_version or '-'}" + (f", CUDA {latest.cuda_version}" if latest.cuda_version else ""),
                ),
                ("git sha", sha),
                ("run date", _run_dates(self.runs)),
                ("run status", latest.status),
                ("command", latest.command or "-"),
            ]
            if any(r.trust_checkpoints for r in self.runs):
                out.append(("checkpoints", "TRUSTED: user checkpoints were fully unpickled (--trust-checkpoints)"))
        out.append(("report generated", self.generated_at))
        # Runs stored before passwords were masked at the source are masked here, in every format.
        return [(key, mask_secrets(value)) for key, value in out]


def _device_text(run: Run) -> str:
    cpu = run.cpu or "unknown CPU"
    return f"{cpu}; GPU: {run.gpu}" if run.gpu else f"{cpu}; no GPU"


def _run_dates(runs: list[Run]) -> str:
    starts = [r.started_at for r in runs if r.started_at is not None]
    if not starts:
        return "-"
    first, last = min(starts), max(starts)
    fmt = "%Y-%m-%d %H:%M UTC"
    return first.strftime(fmt) if first == last else f"{first.strftime(fmt)} .. {last.strftime(fmt)}"


def dataset_text(dataset: dict[str, Any]) -> str:
    name = str(dataset.get("name", "?"))
    size = f" {dataset['height']}x{dataset['width']}" if "height" in dataset and "width" in dataset else ""
    extra = ", ".join(f"{k}={dataset[k]}" for k in ("num_train", "num_val") if k in dataset)
    return f"{name}{size}" + (f" ({extra})" if extra else "")


def build_provenance(suite_name: str, suite: Suite | None, runs: list[Run], results: list[ResultRow]) -> Provenance:
    datasets = sorted({dataset_text(r.dataset) for r in results if r.dataset})
    scales = sorted({r.scale_name for r in results if r.scale_name}) or sorted({r.scale for r in runs})
    return Provenance(
        suite=suite_name,
        title=suite.title if suite is not None else "",
        paper=(suite.paper if suite is not None else "") or "-",
        reproduces=list(suite.reproduces) if suite is not None else [],
        runs=runs,
        scale=", ".join(scales),
        datasets=datasets,
        status_counts=dict(Counter(r.status.value for r in results)),
    )
