"""Reports rendered from a fixture DB: PDF/Markdown/LaTeX text, pages, figures, failure reasons; compare."""

from __future__ import annotations

import io
import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pypdf import PdfReader
from rich.console import Console

from harness.errors import UserError
from harness.reports import build_report
from harness.reports.compare import compare_runs, comparison_text, render_comparison
from harness.results import MetricValue, ResultRow, Status, UnitIdentity
from harness.store import Store

SUITE = "table5"

LAYOUT = {
    "tables": [
        {
            "id": "t5a",
            "title": "Table 5a: Pixel selector",
            "reference": "Table 5a",
            "match": {"trial": "sparserefine.selector", "section": "5a"},
            "rows": [
                {"label": "Random", "match": {"params": {"selector": "random"}}},
                {"label": "Magnitude", "match": {"params": {"selector": "magnitude"}}},
                {"label": "Learnable", "match": {"params": {"selector": "learnable"}}},
                {"label": "Entropy", "match": {"params": {"selector": "entropy"}}},
                {"label": "Oracle", "match": {"params": {"selector": "oracle"}}},
            ],
            "columns": [
                {"metric": "density", "label": "Density", "format": ".1f"},
                {"metric": "recall", "label": "Recall", "format": ".1f"},
                {
                    "metric": "recall",
                    "label": "Recall",
                    "kind": "matched",
                    "x": "density",
                    "vary": ["alpha", "section"],
                    "format": ".1f",
                },
                {"metric": "latency", "label": "Latency", "format": ".2f", "match": {"device": "cpu"}},
            ],
        },
        {
            "id": "t5b",
            "title": "Table 5b: Entropy threshold",
            "reference": "Table 5b",
            "match": {"trial": "sparserefine.selector", "params": {"selector": "entropy"}},
            "expand": {"param": "alpha", "label": "alpha={value}", "refs": {"0.3": "11.8%"}},
            "columns": [
                {"metric": "density", "label": "Density", "format": ".1f"},
                {"metric": "recall", "label": "Recall", "format": ".1f"},
            ],
        },
        {
            "id": "t5e",
            "title": "Table 5e: Ensembler",
            "reference": "Table 5e",
            "match": {"trial": "sparserefine.pipeline"},
            "rows": [
                {"label": "LR", "ref": None, "match": {"params": {"ensembler": "none"}}},
                {"label": "Direct", "match": {"params": {"ensembler": "direct"}}},
                {"label": "Entropy", "match": {"params": {"ensembler": "entropy"}}},
                {"label": "Gated", "match": {"params": {"ensembler": "gated"}}},
                {"label": "HR", "ref": None, "match": {"params": {"ensembler": "hr"}}},
            ],
            "columns": [
                {"metric": "miou", "label": "mIoU", "format": ".1f"},
                {
                    "metric": "miou",
                    "label": "Gap closed",
                    "kind": "gap_closed",
                    "lr": "LR",
                    "hr": "HR",
                    "ref": None,
                    "format": ".0f",
                },
                {
                    "metric": "latency",
                    "label": "Speedup",
                    "kind": "speedup",
                    "base": "HR",
                    "ref": None,
                    "format": ".2f",
                },
            ],
        },
    ],
    "figures": [
        {
            "id": "fig3b",
            "title": "Recall vs density per selector (Fig. 3b)",
            "match": {"trial": "sparserefine.selector"},
            "x": "density",
            "y": "recall",
            "series": ["selector"],
            "points": [
                {"table": "Table 5b", "x": "density", "y": "recall", "series": "paper: entropy (Table 5b)"},
                {"table": "Table 5a", "rows": ["Magnitude"], "x": "density", "y": "recall"},
            ],
        },
        {
            "id": "supp_t3",
            "title": "Latency vs batch size per precision (Supp. Table 3)",
            "match": {"trial": "sparserefine.pipeline", "params": {"ensembler": "gated"}},
            "x": "batch_size",
            "y": "latency",
            "series": ["precision"],
            "points": [
                {
                    "table": "Supp Table 3",
                    "row": "HRNet-W48 + SparseRefine",
                    "x_context": "batch_size",
                    "columns": ["fp32_b1", "fp32_b2", "fp32_b4", "fp32_b8"],
                    "series": "paper fp32",
                }
            ],
        },
        {
            "id": "t8",
            "title": "Per-class IoU (Table 8)",
            "kind": "bars",
            "reference": "Table 8",
            "values": {"note": "per_class_iou"},
            "match": {"trial": "sparserefine.pipeline"},
            "bars": [
                {"label": "LR", "match": {"params": {"ensembler": "none"}}, "ref": "HRNet-W48 (512x1024)"},
                {"label": "+SR", "match": {"params": {"ensembler": "gated"}}, "ref": "+ SparseRefine (Ours)"},
                {"label": "HR", "match": {"params": {"ensembler": "hr"}}, "ref": "HRNet-W48 (1024x2048)"},
            ],
        },
    ],
}


def _record(
    trial: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    *,
    key: str,
    status: str = "ok",
    error: str = "",
    section: str = "",
    precision: str = "fp32",
    batch_size: int = 1,
    device: str = "cpu",
    notes: dict[str, Any] | None = None,
    suite: str = SUITE,
) -> ResultRow:
    units = {"density": "%", "recall": "%", "precision": "%", "latency": "ms", "miou": "%"}
    better = {"recall": "higher", "latency": "lower", "miou": "higher"}
    t0 = datetime(2026, 11, 21, 12, 0, 0)
    identity = UnitIdentity(
        trial,
        section=section,
        params=params,
        precision=precision,
        batch_size=batch_size,
        device=device,
        dataset={"name": "embedded", "height": 128, "width": 256},
    )
    return ResultRow(
        key=key,
        suite=suite,
        identity=identity,
        status=Status(status),
        error=error,
        notes=notes or {},
        scale_name="smoke",
        started_at=t0,
        ended_at=t0 + timedelta(seconds=1),
        metrics={k: MetricValue(k, v, units.get(k, ""), better.get(k, "none"), (v, v)) for k, v in metrics.items()},
    )


def _fill(store: Store, *, shift: float = 0.0) -> int:
    run = store.start_run(
        suite=SUITE,
        scale="smoke",
        git_sha="0123456789abcdef",
        host="testhost",
        cpu="Test CPU 2 cores",
        threads=2,
        torch_version="2.x",
        command="harness run table5",
    )
    add = store.add_result
    sel = "sparserefine.selector"
    for alpha, density, recall in ((0.1, 30.0, 95.0), (0.3, 12.0, 80.0 + shift), (0.6, 5.0, 50.0)):
        add(
            run,
            _record(
                sel,
                {"selector": "entropy", "alpha": alpha},
                {"density": density, "recall": recall, "latency": 1.5 + shift},
                key=f"ent{alpha}",
                section="5a" if alpha == 0.3 else "5b",
            ),
        )
    add(
        run,
        _record(
            sel,
            {"selector": "magnitude", "alpha": 0.3},
            {"density": 11.0, "recall": 30.0, "latency": 0.4},
            key="mag",
            section="5a",
        ),
    )
    add(
        run,
        _record(sel, {"selector": "random", "alpha": 0.3}, {"density": 10.0, "recall": 10.0}, key="rnd", section="5a"),
    )
    add(
        run,
        _record(
            sel,
            {"selector": "learnable", "alpha": 0.3},
            {},
            key="lrn",
            section="5a",
            status="oom",
            error="torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        ),
    )
    # oracle: never ran
    pipe = "sparserefine.pipeline"
    classes = ["road", "sidewalk", "pole", "person"]
    ious = {"none": [90.0, 70.0, 40.0, 60.0], "gated": [91.0, 72.0, 48.0, 66.0], "hr": [92.0, 73.0, 50.0, 68.0]}
    miou = {"none": 65.0, "direct": 63.0, "gated": 68.0 + shift, "hr": 70.0}
    latency = {"none": 5.0, "direct": 9.0, "gated": 10.0, "hr": 20.0}
    for ens in ("none", "direct", "gated", "hr"):
        notes = {"per_class_iou": ious[ens], "classes": classes} if ens in ious else {}
        add(
            run,
            _record(
                pipe, {"ensembler": ens}, {"miou": miou[ens], "latency": latency[ens]}, key=f"p-{ens}", notes=notes
            ),
        )
    add(
        run,
        _record(
            pipe,
            {"ensembler": "entropy"},
            {},
            key="p-entropy",
            status="failed",
            error="Traceback...\nRuntimeError: shapes do not match in the entropy ensembler",
        ),
    )
    for bs, lat in ((2, 8.0), (4, 7.0)):
        add(
            run,
            _record(pipe, {"ensembler": "gated"}, {"latency": lat, "miou": 68.0}, key=f"gated-b{bs}", batch_size=bs),
        )
    add(
        run,
        _record(
            pipe,
            {"ensembler": "gated"},
            {},
            key="gated-fp16",
            precision="fp16",
            status="unsupported",
            error="\"slow_conv2d_cpu\" not implemented for 'Half'",
        ),
    )
    add(
        run,
        _record(
            pipe, {"ensembler": "gated"}, {}, key="gated-cuda", device="cuda", status="unavailable", error="no CUDA"
        ),
    )
    store.end_run(run, "partial")
    return run


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Store, Path, int]:
    store = Store(f"sqlite:///{tmp_path / 'h.db'}")
    run = _fill(store)
    (tmp_path / "layouts").mkdir()
    (tmp_path / "layouts" / "table5.yaml").write_text(yaml.safe_dump(LAYOUT, sort_keys=False))
    suite = {
        "name": SUITE,
        "title": "SparseRefine Table 5: ablations",
        "paper": "sparserefine",
        "reproduces": ["Table 5a", "Table 5b"],
        "layout": "layouts/table5.yaml",
        "benchmarks": [],
    }
    suite_path = tmp_path / "table5.yaml"
    suite_path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return store, suite_path, run


def _pdf_text(path: Path) -> tuple[str, int]:
    reader = PdfReader(str(path))
    return "\n".join(page.extract_text() for page in reader.pages), len(reader.pages)


def test_report_pdf_md_tex_hold_tables_reference_values_and_reasons(setup, tmp_path: Path) -> None:
    store, suite_path, run = setup
    written = build_report(store, suite_path, None, "pdf,md,tex", tmp_path / "out")
    names = {p.name for p in written}
    assert {"table5.pdf", "table5.md", "table5.tex"} <= names
    assert {"fig3b.svg", "fig3b.pdf", "t8.svg"} <= names
    text, pages = _pdf_text(tmp_path / "out" / "table5.pdf")
    units = len(store.results(suite="table5"))
    time_pages = math.ceil(units / 20) if units > 20 else 1  # the wall-time table: a page holds ~20 rows
    assert pages - (1 + 3 + 3) in (time_pages, time_pages + 1)  # title, three tables, three figures, wall times
    assert "Wall time per unit" in text and f"{units} units" in text
    for title in ("Table 5a: Pixel selector", "Table 5b: Entropy threshold", "Table 5e: Ensembler"):
        assert title in text
    for paper_value in ("11.8", "84.9", "80.9", "38.1", "77.7"):
        assert paper_value in text
    assert "not run" in text  # oracle row
    assert "OOM" in text  # learnable
    assert "run id(s)" in text and str(run) in text and "0123456789ab" in text
    md = (tmp_path / "out" / "table5.md").read_text()
    assert "| Entropy" in md and "84.9" in md and "OOM" in md and "not run" in md
    assert "unavailable: no CUDA" not in md or "cuda" in md  # figure-only unit: listed under the figure
    assert "failed: RuntimeError: shapes do not match" in md
    times = md.split("## Wall time per unit")[1]  # every unit's wall time, failed ones marked
    assert times.count("| sparserefine.") + times.count("| baseline.") >= units - 2 and "(failed)" in times
    assert "![Recall vs density per selector (Fig. 3b)](table5_figures/fig3b.svg)" in md
    tex = (tmp_path / "out" / "table5.tex").read_text()
    assert r"\begin{document}" in tex and "84.9" in tex and r"\includegraphics" in tex


def test_normalized_columns_are_computed_from_one_run(setup, tmp_path: Path) -> None:
    store, suite_path, _ = setup
    build_report(store, suite_path, None, "md", tmp_path)
    md = (tmp_path / "table5.md").read_text()
    gated = next(line for line in md.splitlines() if line.startswith("| Gated"))
    cells = [c.strip() for c in gated.strip("|").split("|")]
    # mIoU 68 between LR 65 and HR 70 closes 60% of the gap; latency 10 ms vs HR 20 ms is 2.00x
    assert cells[1:3] == ["68.0", "80.9"]
    assert cells[3:5] == ["60", "2.00"]
    entropy = next(line for line in md.splitlines() if line.startswith("| Entropy") and "84.9" in line)
    # our entropy curve (5,50) (12,80) (30,95) at the paper's 11.8% density: 50 + 30 * 6.8 / 7
    assert "79.1" in entropy


def test_report_for_one_run_and_unknown_inputs(setup, tmp_path: Path) -> None:
    store, suite_path, run = setup
    written = build_report(store, suite_path, run, ["md"], tmp_path)
    assert written[0] == tmp_path / f"table5-run{run}.md"
    assert f"| run id(s) | {run} |" in written[0].read_text()
    with pytest.raises(UserError, match="no run with id 999"):
        build_report(store, None, 999, "pdf", tmp_path)
    with pytest.raises(UserError, match="unknown format 'docx'"):
        build_report(store, suite_path, None, "pdf,docx", tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        build_report(store, tmp_path / "nope.yaml", None, "pdf", tmp_path)


def test_report_of_a_suite_that_never_ran_renders_not_run(setup, tmp_path: Path) -> None:
    _, suite_path, _ = setup
    empty = Store(f"sqlite:///{tmp_path / 'empty.db'}")
    written = build_report(empty, suite_path, None, "md", tmp_path / "e")
    md = written[0].read_text()
    assert md.count("not run") >= 10 and "84.9" in md and "| run id(s) | none |" in md
    assert len([p for p in written if p.suffix == ".svg"]) == 3


def test_suite_without_layout_gets_a_table_of_all_results(setup, tmp_path: Path) -> None:
    store, _, _ = setup
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump({"name": SUITE, "title": "no layout", "benchmarks": []}))
    build_report(store, bare, None, "md", tmp_path / "b")
    md = (tmp_path / "b" / "table5.md").read_text()
    assert "All results" in md and "unsupported" in md and "OOM" in md


def test_compare_two_runs_with_deltas(setup) -> None:
    store, _, run_a = setup
    run_b = _fill(store, shift=1.0)
    frame = compare_runs(store, run_a, run_b)
    gated = frame[(frame.params == "ensembler=gated") & (frame.metric == "miou") & (frame.batch_size == 1)]
    assert gated.iloc[0].a == 68.0 and gated.iloc[0].b == 69.0 and gated.iloc[0].delta == 1.0
    assert gated.iloc[0].verdict == "improvement"
    latency = frame[(frame.params == "alpha=0.3, selector=entropy") & (frame.metric == "latency")]
    assert latency.iloc[0].verdict == "regression"
    text = comparison_text(frame)
    assert f"run {run_a} vs run {run_b}" in text and "+1" in text and "OOM" in text
    console = Console(record=True, width=200, file=io.StringIO())
    render_comparison(frame, console, run_a, run_b)
    printed = console.export_text()
    assert "run 2 vs run 1: 2 improvement, 3 regression" in printed


def test_compare_refuses_runs_of_different_suites(setup) -> None:
    store, _, run_a = setup
    other = store.start_run(suite="table6", scale="smoke")
    with pytest.raises(UserError, match="different suites"):
        compare_runs(store, run_a, other)
    with pytest.raises(UserError, match="no run with id 4242"):
        compare_runs(store, run_a, 4242)


SHIPPED_LAYOUT = Path(__file__).resolve().parents[1] / "suites" / "layouts" / "table5.yaml"
DEFAULTS = {
    "selector": "entropy",
    "alpha": 0.3,
    "density": 0.0,
    "threshold": -1.0,
    "inputs": "rgb",
    "arch": "minkunet6",
    "width_mult": 1.0,
    "reps": 2,
    "ensembler": "gated",
    "backend": "native",
    "measure_latency": False,
}


def _fill_like_table5(store: Store) -> None:
    """Units shaped like the real SparseRefine trials (resolved params, real metric names)."""
    run = store.start_run(suite=SUITE, scale="smoke", threads=2, cpu="Test CPU")
    n = iter(range(1000))
    selection = {k: DEFAULTS[k] for k in ("selector", "alpha", "density", "threshold")}
    for selector, (density, recall) in {"random": (12, 12), "magnitude": (12, 40), "entropy": (12, 75)}.items():
        store.add_result(
            run,
            _record(
                "sparserefine.selector",
                {**selection, "selector": selector},
                {"density": density, "recall": recall, "precision": 20, "latency": 1.0},
                key=f"s{next(n)}",
                section="5a",
            ),
        )
    store.add_result(
        run,
        _record(
            "sparserefine.selector",
            {**selection, "selector": "learnable"},
            {},
            key=f"s{next(n)}",
            section="5a",
            status="unavailable",
            error="learnable selector not trained",
        ),
    )
    curve = [
        {"threshold": a, "density": d, "recall": r, "precision": 30 - d}
        for a, d, r in ((1.0, 2.0, 30.0), (0.3, 12.0, 75.0), (0.05, 25.0, 92.0))
    ]
    store.add_result(
        run,
        _record(
            "sparserefine.selector_curve",
            {"selector": "entropy", "points": 3},
            {"recall_at_paper_density": 74.8},
            key=f"c{next(n)}",
            notes={"curve": curve},
        ),
    )
    for changes in (
        {},
        {"ensembler": "direct"},
        {"ensembler": "entropy"},
        {"inputs": "rgb+logits"},
        {"arch": "pointnet"},
        {"alpha": 0.1, "measure_latency": True},  # the 5b sweep is the unit that times the pipeline
        {"alpha": 1.0, "measure_latency": True},
    ):
        miou = 66.0 if not changes else 64.0
        store.add_result(
            run,
            _record(
                "sparserefine.pipeline",
                {**DEFAULTS, **changes},
                {"miou": miou, "miou_lr": 60.0, "miou_hr": 70.0, "density": 12.0, "recall": 75.0, "latency": 30.0},
                key=f"p{next(n)}",
            ),
        )
    store.add_result(
        run,
        _record(
            "sparserefine.pipeline",
            {**DEFAULTS, "ensembler": "oracle"},
            {},
            key=f"p{next(n)}",
            status="oom",
            error="CUDA out of memory",
        ),
    )


def test_shipped_table5_layout_renders_every_subtable_with_paper_values(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'h.db'}")
    _fill_like_table5(store)
    suite = tmp_path / "table5.yaml"
    suite.write_text(
        yaml.safe_dump(
            {
                "name": SUITE,
                "title": "SparseRefine Table 5",
                "paper": "sparserefine",
                "layout": str(SHIPPED_LAYOUT),
                "benchmarks": [],
            }
        )
    )
    written = build_report(store, suite, None, "pdf,md", tmp_path / "out")
    text, pages = _pdf_text(written[0])
    for title in (
        "Table 5a: Pixel selector",
        "Table 5b: Entropy threshold",
        "Table 5c: Input of sparse feature",
        "Table 5d: Architecture of sparse feature",
        "Table 5e: Ensembler",
    ):
        assert title in text
    for value in ("11.8", "84.9", "80.9", "38.1", "32.4", "77.7", "79.3"):
        assert value in text
    assert pages >= 1 + 6 + 4
    md = (tmp_path / "out" / "table5.md").read_text()
    gated = next(line for line in md.splitlines() if line.startswith("| Gated"))
    # gap closed: ours (66 - 60) / (70 - 60) = 60 %, paper (80.9 - 79.2) / (80.7 - 79.2) = 113 %
    cells = [c.strip() for c in gated.strip("|").split("|")]
    assert cells[-2:] == ["60", "113"]
    assert "unavailable: learnable selector not trained" in md and "OOM" in md


def test_units_of_the_suite_that_never_ran_are_counted_and_listed(tmp_path: Path) -> None:
    from harness.registry import Metric, Param, trial, unregister
    from harness.suite import load_suite

    @trial("reports_test.dummy", params=[Param("n", int, 1)], metrics=[Metric("m", "ms", "lower")])
    def _dummy(ctx) -> None:  # never executed: the test stores its results directly
        ctx.record("m", 1.0)

    try:
        suite_path = tmp_path / "dummy.yaml"
        suite_path.write_text(yaml.safe_dump({
            "name": "dummy", "title": "Dummy", "paper": "none", "scales": {"smoke": {}},
            "benchmarks": [{"trial": "reports_test.dummy", "matrix": {"n": [1, 2, 3]}}],
        }))  # fmt: skip
        unit = load_suite(suite_path).units("smoke")[0]
        store = Store(f"sqlite:///{tmp_path / 'h.db'}")
        run = store.start_run(suite="dummy", scale="smoke")
        store.set_run_units(run, [u.listing() for u in load_suite(suite_path).units("smoke")])
        store.add_result(run, _record("reports_test.dummy", dict(unit.params), {"m": 2.0}, key=unit.key, suite="dummy"))
        build_report(store, suite_path, None, "md", tmp_path)
        md = (tmp_path / "dummy.md").read_text()
        assert "| results | 2 not run, 1 ok |" in md
        assert "reports_test.dummy n=2" in md and "reports_test.dummy n=3" in md
    finally:
        unregister("reports_test.dummy")
