"""Render a built report to PDF (matplotlib PdfPages, no LaTeX engine), Markdown and LaTeX."""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from harness.reports.figures import PAGE_SIZE  # noqa: E402
from harness.reports.provenance import Provenance  # noqa: E402
from harness.reports.tables import BuiltTable  # noqa: E402
from harness.reports.targets import TargetResult, summary_line, targets_table  # noqa: E402

TABLE_AXES = (0.03, 0.17, 0.94, 0.63)  # left, bottom, width, height in page fractions
ROW_INCHES = 0.30
HEADER_LINE_INCHES = 0.2
MAX_SUBCOLUMNS = 13
HEADER_WRAP = 18
TITLE_WRAP = 95
LABEL_WRAP = 44  # characters per line in the first (row label) column
CELL_WRAP = 30
COLOR_HEADER = "#dde3ea"
COLOR_PAPER = "#eef4fb"
COLOR_MISSING = "#fbe9e4"

EXPLANATION = (
    "Each cell shows our value next to the paper's. Absolute numbers do not transfer across hardware "
    "(CPU vs the paper's GPU) or datasets (small embedded data vs Cityscapes): compare the normalized "
    "columns (speedups measured within one run, share of the LR->HR mIoU gap closed, recall at the "
    "paper's density). Cells without a value say why (not run, OOM, unsupported, unavailable...)."
)


@dataclass
class Report:
    provenance: Provenance
    tables: list[BuiltTable]
    figures: list[tuple[str, str, Figure]]  # id, title, figure
    stem: str
    appendix: list[BuiltTable] = field(default_factory=list)  # after the figures (PDF, Markdown, LaTeX)
    targets: list[TargetResult] = field(default_factory=list)  # the layout's targets, before the tables

    def targets_table(self) -> BuiltTable | None:
        return targets_table(self.targets)


@dataclass
class Grid:
    """A table flattened to strings: header row, body rows, and which body cells are missing/paper."""

    header: list[str]
    body: list[list[str]]
    paper_cols: set[int]
    missing: set[tuple[int, int]]


def table_grid(table: BuiltTable) -> Grid:
    """Flatten to text; a column with a paper value becomes 'ours' and 'paper' sub-columns.

    Wide tables (or ``transpose: true``) are printed with the columns as rows.
    """
    paper_cols_of = table.paper_columns or [table.has_reference] * len(table.headers)
    width = sum(2 if p else 1 for p in paper_cols_of)
    transpose = table.spec.transpose or (width > MAX_SUBCOLUMNS and len(table.row_labels) < len(table.headers))
    if transpose:
        return _transposed_grid(table, paper_cols_of)
    header = [""]
    for h, with_paper in zip(table.headers, paper_cols_of, strict=False):
        header += [f"{h}\nours", "paper"] if with_paper else [h]
    body, missing, paper_cols = [], set(), set()
    for i, (label, cells) in enumerate(zip(table.row_labels, table.cells, strict=False)):
        line = [label]
        for cell, with_paper in zip(cells, paper_cols_of, strict=False):
            if cell.ours is None:
                missing.add((i, len(line)))
            line.append(cell.ours_text)
            if with_paper:
                paper_cols.add(len(line))
                line.append(cell.paper_text)
        body.append(line)
    return Grid(header, body, paper_cols, missing)


def _transposed_grid(table: BuiltTable, paper_cols_of: list[bool]) -> Grid:
    """Columns as rows; every table row becomes an 'ours' (and 'paper') column."""
    with_paper = any(paper_cols_of)
    header = [""]
    for label in table.row_labels:
        header += [f"{label}\nours", "paper"] if with_paper else [label]
    body, missing, paper_cols = [], set(), set()
    for j, h in enumerate(table.headers):
        line = [h]
        for i in range(len(table.row_labels)):
            cell = table.cells[i][j]
            if cell.ours is None:
                missing.add((j, len(line)))
            line.append(cell.ours_text)
            if with_paper:
                paper_cols.add(len(line))
                line.append(cell.paper_text if paper_cols_of[j] else "")
        body.append(line)
    return Grid(header, body, paper_cols, missing)


def _wrap_header(text: str) -> str:
    return "\n".join(textwrap.fill(part, HEADER_WRAP) for part in text.split("\n"))


def _wrap_lines(lines: list[str], width: int) -> str:
    return "\n".join(textwrap.fill(line, width, subsequent_indent="    ") for line in lines)


def _paginate(heights: list[float], room: float) -> list[list[int]]:
    """Split row indices into pages whose row heights fit ``room`` inches."""
    pages: list[list[int]] = [[]]
    used = 0.0
    for i, h in enumerate(heights):
        if pages[-1] and used + h > room:
            pages.append([])
            used = 0.0
        pages[-1].append(i)
        used += h
    return pages


def _table_pages(table: BuiltTable) -> list[Figure]:
    grid = table_grid(table)
    header = [_wrap_header(h) for h in grid.header]
    header_inches = max(h.count("\n") + 1 for h in header) * HEADER_LINE_INCHES + 0.1
    body = [
        [textwrap.fill(text, CELL_WRAP if j else LABEL_WRAP) or text for j, text in enumerate(row)] for row in grid.body
    ]
    row_inches = [ROW_INCHES * (1 + 0.55 * max(t.count("\n") for t in row)) for row in body]
    axes_inches = TABLE_AXES[3] * PAGE_SIZE[1]
    pages_rows = _paginate(row_inches, axes_inches - header_inches)
    widths = []
    for j in range(len(header)):
        lines = header[j].split("\n") + [line for row in body for line in row[j].split("\n")]
        widths.append(max(max(len(line) for line in lines), 5) + 2)
    col_widths = [w / sum(widths) for w in widths]
    n_cols = len(header)
    font = 10 if n_cols <= 9 else 8.5 if n_cols <= 13 else 7
    figures = []
    for page, indices in enumerate(pages_rows):
        fig = plt.figure(figsize=PAGE_SIZE)
        suffix = f" (part {page + 1}/{len(pages_rows)})" if len(pages_rows) > 1 else ""
        title = textwrap.fill(table.title + suffix, TITLE_WRAP)
        fig.text(0.03, 0.955, title, fontsize=16, weight="bold", va="top")
        context_top = 0.905 - 0.04 * title.count("\n")
        fig.text(0.03, context_top, _wrap_lines(table.context_lines, 150), fontsize=9, va="top", color="0.25")
        ax = fig.add_axes(TABLE_AXES)
        ax.axis("off")
        heights = [header_inches] + [row_inches[i] for i in indices]
        height = min(1.0, sum(heights) / axes_inches)
        mpl_table = ax.table(
            cellText=[header] + [body[i] for i in indices],
            colWidths=col_widths,
            bbox=(0, 1 - height, 1, height),
            cellLoc="center",
        )
        mpl_table.auto_set_font_size(False)
        mpl_table.set_fontsize(font)
        for (i, j), cell in mpl_table.get_celld().items():
            cell.set_edgecolor("0.75")
            cell.set_height(height * heights[i] / sum(heights))
            if i == 0:
                cell.set_facecolor(COLOR_HEADER)
                cell.set_text_props(weight="bold")
            elif (indices[i - 1], j) in grid.missing:
                cell.set_facecolor(COLOR_MISSING)
            elif j in grid.paper_cols:
                cell.set_facecolor(COLOR_PAPER)
            if j == 0:
                cell.set_text_props(ha="left")
                cell.PAD = 0.02
        foot = [f"[{k}] {text}" for k, text in enumerate(table.footnotes, 1)] + [f"Note: {n}" for n in table.notes]
        if foot and page == len(pages_rows) - 1:
            fig.text(0.03, 0.15, _wrap_lines(foot, 170), fontsize=8.5, va="top")
        figures.append(fig)
    return figures


def _title_page(report: Report, contents: list[tuple[str, int]]) -> Figure:
    fig = plt.figure(figsize=PAGE_SIZE)
    prov = report.provenance
    fig.text(0.05, 0.93, prov.title or prov.suite, fontsize=20, weight="bold", va="top", wrap=True)
    fig.text(0.05, 0.865, f"segharness report - suite '{prov.suite}'", fontsize=13, va="top", color="0.3")
    y = 0.80
    for key, value in prov.items():
        fig.text(0.05, y, key, fontsize=10, weight="bold", va="top")
        fig.text(0.20, y, textwrap.shorten(value, 125), fontsize=10, va="top", family="monospace")
        y -= 0.032
    y -= 0.02
    fig.text(0.05, y, textwrap.fill(EXPLANATION, 150), fontsize=9.5, va="top", style="italic")
    y -= 0.10
    fig.text(0.05, y, "Contents", fontsize=12, weight="bold", va="top")
    y -= 0.035
    columns = 2 if len(contents) > 8 else 1
    per_column = math.ceil(len(contents) / columns) if contents else 0
    for k, (title, page) in enumerate(contents):
        x = 0.05 + 0.46 * (k // max(per_column, 1))
        yy = y - 0.028 * (k % max(per_column, 1))
        fig.text(x, yy, f"p.{page}  {textwrap.shorten(title, 70)}", fontsize=9.5, va="top")
    return fig


def write_pdf(report: Report, path: Path) -> int:
    """Write the multi-page PDF; returns the number of pages."""
    targets = report.targets_table()
    table_pages = [(t.title, _table_pages(t)) for t in ([targets] if targets else []) + report.tables]
    appendix_pages = [(t.title, _table_pages(t)) for t in report.appendix]
    contents, page = [], 2
    for title, pages in table_pages:
        contents.append((title, page))
        page += len(pages)
    for _, title, _ in report.figures:
        contents.append((title, page))
        page += 1
    for title, pages in appendix_pages:
        contents.append((title, page))
        page += len(pages)
    with matplotlib.rc_context({"pdf.fonttype": 42}), PdfPages(path) as pdf:
        title_fig = _title_page(report, contents)
        pdf.savefig(title_fig)
        plt.close(title_fig)
        for _, pages in table_pages:
            for fig in pages:
                pdf.savefig(fig)
                plt.close(fig)
        for _, _, fig in report.figures:
            pdf.savefig(fig)
        for _, pages in appendix_pages:
            for fig in pages:
                pdf.savefig(fig)
                plt.close(fig)
        info = pdf.infodict()
        info["Title"] = report.provenance.title or report.provenance.suite
        info["Subject"] = f"segharness report for suite {report.provenance.suite}"
    return page - 1


def table_frame(table: BuiltTable) -> pd.DataFrame:
    grid = table_grid(table)
    header = [h.replace("\n", " ") for h in grid.header]
    header[0] = header[0] or "row"
    seen: dict[str, int] = {}
    unique = []
    for h in header:
        seen[h] = seen.get(h, 0) + 1
        unique.append(h if seen[h] == 1 else f"{h} ({seen[h]})")
    # 'paper' sub-columns take the name of the column they belong to
    for j in grid.paper_cols:
        unique[j] = unique[j - 1].removesuffix(" ours") + " paper"
    return pd.DataFrame(grid.body, columns=unique).set_index(unique[0])


def _targets_frame(targets: BuiltTable) -> pd.DataFrame:
    return table_frame(targets).rename_axis("target")


def save_figure_files(report: Report, directory: Path, formats: tuple[str, ...]) -> dict[str, dict[str, Path]]:
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, dict[str, Path]] = {}
    for fig_id, _, fig in report.figures:
        out[fig_id] = {}
        for ext in formats:
            path = directory / f"{fig_id}.{ext}"
            with matplotlib.rc_context({"pdf.fonttype": 42, "svg.fonttype": "none"}):
                fig.savefig(path)
            out[fig_id][ext] = path
    return out


def write_markdown(report: Report, path: Path, figure_files: dict[str, dict[str, Path]]) -> None:
    prov = report.provenance
    lines = [
        f"# {prov.title or prov.suite}",
        "",
        f"segharness report for suite `{prov.suite}`.",
        "",
        "## Provenance",
        "",
        "| field | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v.replace('|', '/')} |" for k, v in prov.items()]
    lines += ["", f"_{EXPLANATION}_", ""]
    if prov.never_run:
        lines += [f"Units of the suite with no result (not run): {len(prov.never_run)}", ""]
        lines += [f"- `{unit}`" for unit in prov.never_run] + [""]
    targets = report.targets_table()
    if targets is not None:
        lines += ["## Targets", "", f"**{summary_line(report.targets)}.**", ""]
        lines += [_targets_frame(targets).to_markdown(disable_numparse=True), ""]
        lines += [f"> Note: {n}" for n in targets.notes] + [""]
    for table in report.tables:
        lines += [f"## {table.title}", ""]
        lines += [f"- {line}" for line in table.context_lines] + [""]
        lines += [table_frame(table).to_markdown(disable_numparse=True), ""]
        lines += [f"[{k}] {text}  " for k, text in enumerate(table.footnotes, 1)]
        lines += [f"> Note: {n}" for n in table.notes] + [""]
    if report.figures:
        lines += ["## Figures", ""]
        for fig_id, title, _ in report.figures:
            file = figure_files.get(fig_id, {}).get("svg")
            rel = file.relative_to(path.parent).as_posix() if file else ""
            lines += [f"### {title}", "", f"![{title}]({rel})" if rel else "(figure not saved)", ""]
    for table in report.appendix:
        lines += [f"## {table.title}", ""] + [f"- {line}" for line in table.context_lines] + [""]
        lines += [table_frame(table).to_markdown(disable_numparse=True), ""]
    path.write_text("\n".join(lines))


def _tex_escape(text: str) -> str:
    table = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
    }
    return "".join(table.get(ch, ch) for ch in text)


def write_latex(report: Report, path: Path, figure_files: dict[str, dict[str, Path]]) -> None:
    prov = report.provenance
    out = [
        r"\documentclass[10pt,landscape]{article}",
        r"\usepackage[margin=1.5cm]{geometry}",
        r"\usepackage{booktabs}",
        r"\usepackage{graphicx}",
        r"\begin{document}",
        rf"\section*{{{_tex_escape(prov.title or prov.suite)}}}",
        r"\begin{tabular}{ll}",
    ]
    out += [rf"\textbf{{{_tex_escape(k)}}} & {_tex_escape(v)} \\" for k, v in prov.items()]
    out += [r"\end{tabular}", "", _tex_escape(EXPLANATION), ""]
    targets = report.targets_table()
    if targets is not None:
        out += [r"\subsection*{Targets}", rf"\textbf{{{_tex_escape(summary_line(report.targets))}.}}\\"]
        out += [r"\resizebox{\linewidth}{!}{", _targets_frame(targets).to_latex(escape=True), "}"]
        out += [rf"\noindent\emph{{Note: {_tex_escape(n)}}}\\" for n in targets.notes]
    for table in report.tables:
        out += [rf"\subsection*{{{_tex_escape(table.title)}}}"]
        out += [_tex_escape(line) + r"\\" for line in table.context_lines]
        frame = table_frame(table)
        out += [r"\resizebox{\linewidth}{!}{", frame.to_latex(escape=True), "}"]
        out += [rf"\noindent[{k}] {_tex_escape(t)}\\" for k, t in enumerate(table.footnotes, 1)]
        out += [rf"\noindent\emph{{Note: {_tex_escape(n)}}}\\" for n in table.notes]
    for fig_id, title, _ in report.figures:
        file = figure_files.get(fig_id, {}).get("pdf")
        if file:
            rel = file.relative_to(path.parent).as_posix()
            out += [
                r"\begin{figure}[p]\centering",
                rf"\includegraphics[width=\linewidth]{{{rel}}}",
                rf"\caption{{{_tex_escape(title)}}}",
                r"\end{figure}",
            ]
    for table in report.appendix:
        out += [rf"\subsection*{{{_tex_escape(table.title)}}}"]
        out += [_tex_escape(line) + r"\\" for line in table.context_lines]
        out += [r"\resizebox{\linewidth}{!}{", table_frame(table).to_latex(escape=True), "}"]
    out.append(r"\end{document}")
    path.write_text("\n".join(out) + "\n")
