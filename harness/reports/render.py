"""Render a built report to PDF (matplotlib PdfPages, no LaTeX engine), Markdown and LaTeX."""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
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

TABLE_AXES = (0.03, 0.17, 0.94, 0.66)  # left, bottom, width, height in page fractions
ROW_INCHES = 0.30
HEADER_LINE_INCHES = 0.2
MAX_SUBCOLUMNS = 13
HEADER_WRAP = 18
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


@dataclass
class Grid:
    """A table flattened to strings: header row, body rows, and which body cells are missing/paper."""

    header: list[str]
    body: list[list[str]]
    paper_cols: set[int]
    missing: set[tuple[int, int]]


def table_grid(table: BuiltTable) -> Grid:
    """Flatten to text; with a reference each column becomes 'ours' and 'paper' sub-columns.

    Wide tables (or ``transpose: true``) are printed with metrics as rows.
    """
    per_col = 2 if table.has_reference else 1
    transpose = table.spec.transpose or (len(table.headers) * per_col > MAX_SUBCOLUMNS
                                         and len(table.row_labels) < len(table.headers))
    if not transpose:
        header = [""]
        for h in table.headers:
            header += [f"{h}\nours", "paper"] if per_col == 2 else [h]
        body, missing, paper_cols = [], set(), set()
        for i, (label, cells) in enumerate(zip(table.row_labels, table.cells)):
            line = [label]
            for cell in cells:
                if cell.ours is None:
                    missing.add((i, len(line)))
                line.append(cell.ours_text)
                if per_col == 2:
                    paper_cols.add(len(line))
                    line.append(cell.paper_text)
            body.append(line)
        return Grid(header, body, paper_cols, missing)
    header = [""]
    for label in table.row_labels:
        header += [f"{label}\nours", "paper"] if per_col == 2 else [label]
    body, missing, paper_cols = [], set(), set()
    for j, h in enumerate(table.headers):
        line = [h]
        for i in range(len(table.row_labels)):
            cell = table.cells[i][j]
            if cell.ours is None:
                missing.add((j, len(line)))
            line.append(cell.ours_text)
            if per_col == 2:
                paper_cols.add(len(line))
                line.append(cell.paper_text)
        body.append(line)
    return Grid(header, body, paper_cols, missing)


def _wrap_header(text: str) -> str:
    return "\n".join(textwrap.fill(part, HEADER_WRAP) for part in text.split("\n"))


def _wrap_lines(lines: list[str], width: int) -> str:
    return "\n".join(textwrap.fill(line, width, subsequent_indent="    ") for line in lines)


def _table_pages(table: BuiltTable) -> list[Figure]:
    grid = table_grid(table)
    header = [_wrap_header(h) for h in grid.header]
    header_lines = max(h.count("\n") + 1 for h in header)
    axes_inches = TABLE_AXES[3] * PAGE_SIZE[1]
    per_page = max(1, int((axes_inches - header_lines * HEADER_LINE_INCHES - 0.1) / ROW_INCHES))
    n_pages = max(1, math.ceil(len(grid.body) / per_page))
    widths = []
    for j in range(len(header)):
        longest = max([len(line) for line in header[j].split("\n")] + [len(row[j]) for row in grid.body] + [5])
        widths.append(min(longest, 40) + 2)
    total = sum(widths)
    col_widths = [w / total for w in widths]
    n_cols = len(header)
    font = 10 if n_cols <= 9 else 8.5 if n_cols <= 13 else 7
    pages = []
    for page in range(n_pages):
        rows = grid.body[page * per_page:(page + 1) * per_page]
        fig = plt.figure(figsize=PAGE_SIZE)
        suffix = f" (part {page + 1}/{n_pages})" if n_pages > 1 else ""
        fig.text(0.03, 0.955, table.title + suffix, fontsize=16, weight="bold", va="top")
        fig.text(0.03, 0.905, _wrap_lines(table.context_lines, 150), fontsize=9, va="top", color="0.25")
        ax = fig.add_axes(TABLE_AXES)
        ax.axis("off")
        height = min(1.0, (header_lines * HEADER_LINE_INCHES + 0.1 + len(rows) * ROW_INCHES) / axes_inches)
        header_share = (header_lines * HEADER_LINE_INCHES + 0.1) / (header_lines * HEADER_LINE_INCHES + 0.1
                                                                      + len(rows) * ROW_INCHES)
        mpl_table = ax.table(cellText=[header] + rows, colWidths=col_widths, bbox=(0, 1 - height, 1, height),
                             cellLoc="center")
        mpl_table.auto_set_font_size(False)
        mpl_table.set_fontsize(font)
        n_rows = len(rows) + 1
        for (i, j), cell in mpl_table.get_celld().items():
            cell.set_edgecolor("0.75")
            cell.set_height(height * (header_share if i == 0 else (1 - header_share) / max(n_rows - 1, 1)))
            if i == 0:
                cell.set_facecolor(COLOR_HEADER)
                cell.set_text_props(weight="bold")
            elif (page * per_page + i - 1, j) in grid.missing:
                cell.set_facecolor(COLOR_MISSING)
            elif j in grid.paper_cols:
                cell.set_facecolor(COLOR_PAPER)
            if j == 0:
                cell.set_text_props(ha="left")
                cell.PAD = 0.02
        foot = [f"[{k}] {text}" for k, text in enumerate(table.footnotes, 1)] + [f"Note: {n}" for n in table.notes]
        if foot and page == n_pages - 1:
            fig.text(0.03, 0.15, _wrap_lines(foot, 170), fontsize=8.5, va="top")
        pages.append(fig)
    return pages


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
    table_pages = [(t.title, _table_pages(t)) for t in report.tables]
    contents, page = [], 2
    for title, pages in table_pages:
        contents.append((title, page))
        page += len(pages)
    for _, title, _ in report.figures:
        contents.append((title, page))
        page += 1
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
    lines = [f"# {prov.title or prov.suite}", "", f"segharness report for suite `{prov.suite}`.", "",
             "## Provenance", "", "| field | value |", "|---|---|"]
    lines += [f"| {k} | {v.replace('|', '/')} |" for k, v in prov.items()]
    lines += ["", f"_{EXPLANATION}_", ""]
    for table in report.tables:
        lines += [f"## {table.title}", ""]
        lines += [f"- {line}" for line in table.context_lines] + [""]
        lines += [table_frame(table).to_markdown(), ""]
        lines += [f"[{k}] {text}  " for k, text in enumerate(table.footnotes, 1)]
        lines += [f"> Note: {n}" for n in table.notes] + [""]
    if report.figures:
        lines += ["## Figures", ""]
        for fig_id, title, _ in report.figures:
            file = figure_files.get(fig_id, {}).get("svg")
            rel = file.relative_to(path.parent).as_posix() if file else ""
            lines += [f"### {title}", "", f"![{title}]({rel})" if rel else "(figure not saved)", ""]
    path.write_text("\n".join(lines))


def _tex_escape(text: str) -> str:
    table = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
             "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(table.get(ch, ch) for ch in text)


def write_latex(report: Report, path: Path, figure_files: dict[str, dict[str, Path]]) -> None:
    prov = report.provenance
    out = [r"\documentclass[10pt,landscape]{article}", r"\usepackage[margin=1.5cm]{geometry}",
           r"\usepackage{booktabs}", r"\usepackage{graphicx}", r"\begin{document}",
           rf"\section*{{{_tex_escape(prov.title or prov.suite)}}}", r"\begin{tabular}{ll}"]
    out += [rf"\textbf{{{_tex_escape(k)}}} & {_tex_escape(v)} \\" for k, v in prov.items()]
    out += [r"\end{tabular}", "", _tex_escape(EXPLANATION), ""]
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
            out += [r"\begin{figure}[p]\centering", rf"\includegraphics[width=\linewidth]{{{rel}}}",
                    rf"\caption{{{_tex_escape(title)}}}", r"\end{figure}"]
    out.append(r"\end{document}")
    path.write_text("\n".join(out) + "\n")
