"""Report figures (matplotlib, Agg backend): curves with the paper's points overlaid, grouped bars."""

from __future__ import annotations

import re
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

from harness.reports.layout import BarSpec, FigureSpec, PointSpec  # noqa: E402
from harness.reports.reference import load_reference  # noqa: E402
from harness.reports.tables import dominant_axes, failure_reason, pick, result_value  # noqa: E402
from harness.results import ResultRow

PAGE_SIZE = (11.69, 8.27)  # A4 landscape, inches
PAPER_MARKERS = ("*", "P", "X", "D", "^", "v")


def _series_name(result: ResultRow, keys: tuple[str, ...]) -> str:
    if not keys:
        return "ours"
    return ", ".join(f"{k}={result_value(result, k)}" for k in keys)


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def curve_data(spec: FigureSpec, results: list[ResultRow]) -> tuple[dict[str, list[tuple[float, float]]], list[str]]:
    """Our points per series, plus one line per matching unit that gave no point (and why)."""
    assert spec.x is not None and spec.y is not None
    series: dict[str, list[tuple[float, float]]] = {}
    missing: list[str] = []
    for r in sorted((r for r in results if spec.match.accepts(r)), key=lambda r: r.id):
        name = _series_name(r, spec.series)
        if spec.curve_note is not None:
            points = _note_curve(r, spec.curve_note, spec.x, spec.y)
            if points:
                series.setdefault(name, []).extend(points)
            else:
                missing.append(f"{name} ({_unit_axes(r)}): {failure_reason(r, 'note ' + spec.curve_note)}")
            continue
        x, y = _as_float(result_value(r, spec.x)), _as_float(result_value(r, spec.y))
        if not r.ok or x is None or y is None:
            missing.append(f"{name} ({_unit_axes(r)}): {failure_reason(r, spec.y)}")
            continue
        if spec.per_image:
            y /= max(int(r.batch_size or 1), 1)
        series.setdefault(name, []).append((x, y))
    return {k: sorted(v) for k, v in series.items()}, missing


def note_value(result: ResultRow, path: str) -> Any:
    """The note at a dotted ``path`` (``per_class_iou.refined``), or None."""
    value: Any = result.notes
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _note_curve(result: ResultRow, note: str, x: str, y: str) -> list[tuple[float, float]]:
    if not result.ok:
        return []
    points = note_value(result, note)
    if not isinstance(points, list):
        return []
    out = []
    for point in points:
        if isinstance(point, dict):
            px, py = _as_float(point.get(x)), _as_float(point.get(y))
            if px is not None and py is not None:
                out.append((px, py))
    return out


def _unit_axes(r: ResultRow) -> str:
    params = ", ".join(f"{k}={v}" for k, v in sorted(r.params.items()))
    return f"{params}; {r.precision}/b{r.batch_size}/{r.device}"


def reference_points(point: PointSpec, default_paper: str | None) -> dict[str, list[tuple[float, float]]]:
    """The paper's points named by series: one per row (x/y columns) or one per column (x from context)."""
    paper = point.paper or default_paper
    reference = load_reference(paper) if paper else None
    table = reference.table(point.table) if reference else None
    if table is None:
        return {}
    rows = point.rows or tuple(table.rows)
    out: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if point.columns:
            name = point.series or f"paper: {row}"
            for column in point.columns:
                cell = table.cell(row, column)
                x = _as_float(table.context_for(row, column).get(point.x_context or ""))
                if cell is not None and cell.value is not None and x is not None:
                    out.setdefault(name, []).append((x, cell.value))
        else:
            xc, yc = table.cell(row, point.x or ""), table.cell(row, point.y or "")
            if xc is None or yc is None or xc.value is None or yc.value is None:
                continue
            name = point.series or f"paper {table.id}: {row}"
            out.setdefault(name, []).append((xc.value, yc.value))
    return {k: sorted(v) for k, v in out.items()}


def _axis_label(name: str, results: list[ResultRow]) -> str:
    for r in results:
        m = r.metrics.get(name)
        if m and m.unit:
            return f"{name} ({m.unit})"
    return name


def draw_curve(spec: FigureSpec, results: list[ResultRow], default_paper: str | None) -> Figure:
    fig, ax = plt.subplots(figsize=PAGE_SIZE)
    ours, missing = curve_data(spec, results)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {}
    for i, (name, pts) in enumerate(ours.items()):
        colors[name] = palette[i % len(palette)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", lw=1.8, ms=5, color=colors[name], label=f"ours: {name}")
    n_paper = 0
    for point in spec.points:
        for name, pts in reference_points(point, default_paper).items():
            marker = PAPER_MARKERS[n_paper % len(PAPER_MARKERS)]
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                linestyle=":" if len(pts) > 1 else "none",
                marker=marker,
                ms=11,
                mfc="none",
                mew=1.6,
                color=_paper_color(name, colors, n_paper, palette),
                label=name,
            )
            n_paper += 1
    ax.set_xscale(spec.xscale)
    xs = sorted({x for line in ax.get_lines() for x in line.get_xdata()})
    if spec.xscale == "log" and 0 < len(xs) <= 12:
        ax.xaxis.set_major_locator(FixedLocator(xs))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(spec.xlabel or _axis_label(spec.x or "", results), fontsize=12)
    ax.set_ylabel(spec.ylabel or _axis_label(spec.y or "", results), fontsize=12)
    ax.grid(True, alpha=0.3)
    if ours or n_paper:
        ax.legend(fontsize=10, loc="best")
    if not ours:
        ax.text(
            0.5,
            0.5,
            "no results of ours to plot",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=14,
            color="0.4",
        )
    fig.suptitle(spec.title, fontsize=15)
    _add_missing(fig, missing)
    fig.tight_layout(rect=(0, 0.08 if missing else 0, 1, 0.95))
    return fig


def _paper_color(name: str, ours: dict[str, str], index: int, palette: list[str]) -> str:
    """The colour of the series of ours that the paper series names (by its value), else a neutral one."""
    tokens = set(re.findall(r"[\w.+-]+", name.lower()))
    for series, color in ours.items():
        values = [part.split("=", 1)[-1].strip().lower() for part in series.split(",")]
        if all(v and v in tokens for v in values):
            return color
    return "0.2" if index == 0 else palette[(len(ours) + index) % len(palette)]


def _add_missing(fig: Figure, missing: list[str]) -> None:
    if not missing:
        return
    shown = missing[:4]
    more = f" (+{len(missing) - 4} more)" if len(missing) > 4 else ""
    fig.text(0.01, 0.01, "Not plotted: " + "; ".join(shown) + more, fontsize=8, wrap=True, va="bottom")


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")


def bar_values(bar: BarSpec, result: ResultRow | None) -> dict[str, float]:
    """{category: value} of one bar series from a unit's metrics (by prefix) or a note."""
    if result is None or not result.ok:
        return {}
    if bar.values_metric_prefix is not None:
        prefix = bar.values_metric_prefix
        return {k[len(prefix) :]: float(m.value) for k, m in result.metrics.items() if k.startswith(prefix)}
    note = note_value(result, bar.values_note or "")
    if isinstance(note, dict):
        return {str(k): float(v) for k, v in note.items() if _as_float(v) is not None}
    if isinstance(note, list):
        classes = result.notes.get("classes") or [f"class {i}" for i in range(len(note))]
        return {str(c): float(v) for c, v in zip(classes, note, strict=False) if _as_float(v) is not None}
    return {}


def draw_bars(spec: FigureSpec, results: list[ResultRow], default_paper: str | None) -> Figure:
    paper = spec.reference_paper or default_paper
    reference = load_reference(paper) if paper else None
    table = reference.table(spec.reference_table) if (reference and spec.reference_table) else None
    ours: list[dict[str, float]] = []
    missing = []
    axes = dominant_axes(results, spec.match)
    for bar in spec.bars:
        candidates = [r for r in results if bar_values(bar, r)]
        result = pick(candidates, spec.match.merged(bar.match), prefer_axes=axes) or pick(
            results, spec.match.merged(bar.match), prefer_axes=axes
        )
        values = bar_values(bar, result)
        ours.append(values)
        if not values:
            what = f"note {bar.values_note}" if bar.values_note else f"metrics {bar.values_metric_prefix}*"
            missing.append(f"{bar.label}: {failure_reason(result, what)}")
    categories: list[str] = []
    for values in ours:
        categories.extend(c for c in values if c not in categories)
    if not categories and table is not None:
        categories = [table.columns[c].label for c in table.columns if c != "miou"]
    ref_keys = {_norm(col.label): key for key, col in (table.columns.items() if table else [])}
    ref_keys.update({_norm(key): key for key in (table.columns if table else [])})
    fig, ax = plt.subplots(figsize=PAGE_SIZE)
    n = max(len(spec.bars), 1)
    width = 0.8 / n
    xs = range(len(categories))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (bar, values) in enumerate(zip(spec.bars, ours, strict=False)):
        offsets = [x - 0.4 + width * (i + 0.5) for x in xs]
        color = colors[i % len(colors)]
        heights = [values.get(c, float("nan")) for c in categories]
        ax.bar(offsets, heights, width=width, color=color, label=f"ours: {bar.label}")
        if table is not None and bar.ref is not None:
            prefix = bar.values_metric_prefix or ""
            paper_pts = [
                (o, table.cell(bar.ref, ref_keys.get(_norm(c), ref_keys.get(_norm(prefix + c), ""))))
                for o, c in zip(offsets, categories, strict=False)
            ]
            pts = [(o, cell.value) for o, cell in paper_pts if cell is not None and cell.value is not None]
            if pts:
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    linestyle="none",
                    marker="D",
                    ms=7,
                    mew=1.2,
                    color=color,
                    markeredgecolor="black",
                    label=f"paper: {bar.ref}",
                )
    ax.set_xticks(list(xs))
    ax.set_xticklabels(categories, rotation=45, ha="right", fontsize=10)
    ax.set_ylabel(spec.ylabel or "IoU (%)", fontsize=12)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=10, ncol=2, loc="best", framealpha=0.95)
    if not any(ours):
        ax.text(0.5, 0.6, "no results of ours to plot", transform=ax.transAxes, ha="center", fontsize=14, color="0.4")
    fig.suptitle(spec.title, fontsize=15)
    _add_missing(fig, missing)
    fig.tight_layout(rect=(0, 0.08 if missing else 0, 1, 0.95))
    return fig


def draw_figure(spec: FigureSpec, results: list[ResultRow], default_paper: str | None) -> Figure:
    if spec.kind == "bars":
        return draw_bars(spec, results, default_paper)
    return draw_curve(spec, results, default_paper)
