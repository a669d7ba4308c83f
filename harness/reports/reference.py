"""Paper reference values: ``suites/reference/<paper>.yaml`` loaded into typed tables.

Each file holds ``tables.<table id>`` with a title, source, context, ``columns.<key>`` ({label,
unit, decimals, context}), ``rows.<key>`` ({column: value}), ``row_context`` and ``notes``. A value
is a number, ``"-"`` (the paper prints a dash), ``"OOM"``, a short string (a non-numeric cell such
as an input resolution), or ``{unreadable: why}`` when the text extraction lost it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from harness.errors import UserError

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "suites" / "reference"


@dataclass(frozen=True)
class RefCell:
    """One paper cell: its number (None when the paper gives none) and how to print it."""

    value: float | None
    text: str
    note: str = ""


@dataclass(frozen=True)
class RefColumn:
    key: str
    label: str
    unit: str
    decimals: int | None
    context: dict[str, Any]


@dataclass(frozen=True)
class RefValue:
    """A flattened reference value with everything needed to interpret it."""

    paper: str
    table: str
    row: str
    column: str
    value: float | None
    text: str
    unit: str
    context: dict[str, Any]


@dataclass
class RefTable:
    paper: str
    id: str
    title: str
    source: str
    context: dict[str, Any]
    columns: dict[str, RefColumn]
    rows: dict[str, dict[str, Any]]
    row_context: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def cell(self, row: str, column: str) -> RefCell | None:
        """The paper's cell, or None when the table has no such row/column or leaves it empty."""
        if row not in self.rows or column not in self.rows[row]:
            return None
        raw = self.rows[row][column]
        col = self.columns.get(column)
        if isinstance(raw, dict):
            return RefCell(None, "unreadable", str(raw.get("unreadable", "")))
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            return RefCell(None, str(raw))
        decimals = col.decimals if col else None
        text = f"{raw:.{decimals}f}" if decimals is not None else f"{raw:g}"
        return RefCell(float(raw), text)

    def context_for(self, row: str, column: str) -> dict[str, Any]:
        col = self.columns.get(column)
        return {**self.context, **(col.context if col else {}), **self.row_context.get(row, {})}

    def values(self) -> list[RefValue]:
        out = []
        for row, cells in self.rows.items():
            for column in cells:
                cell = self.cell(row, column)
                assert cell is not None
                unit = self.columns[column].unit if column in self.columns else ""
                out.append(
                    RefValue(
                        self.paper, self.id, row, column, cell.value, cell.text, unit, self.context_for(row, column)
                    )
                )
        return out


@dataclass
class Reference:
    paper: str
    title: str
    tables: dict[str, RefTable]

    def table(self, table_id: str) -> RefTable | None:
        return self.tables.get(table_id)

    def values(self) -> list[RefValue]:
        return [v for t in self.tables.values() for v in t.values()]


def _parse(data: Any, path: Path) -> Reference:
    if not isinstance(data, dict) or not isinstance(data.get("tables"), dict):
        raise UserError(f"{path}: expected a mapping with 'paper' and 'tables'")
    paper = str(data.get("paper", path.stem))
    tables = {}
    for table_id, raw in data["tables"].items():
        where = f"{path}: tables.{table_id}"
        if not isinstance(raw, dict) or not isinstance(raw.get("rows"), dict):
            raise UserError(f"{where}: expected a mapping with 'rows'")
        columns = {}
        for key, col in (raw.get("columns") or {}).items():
            col = col or {}
            columns[key] = RefColumn(
                key,
                str(col.get("label", key)),
                str(col.get("unit", "")),
                col.get("decimals"),
                dict(col.get("context") or {}),
            )
        for row_key, cells in raw["rows"].items():
            if not isinstance(cells, dict):
                raise UserError(f"{where}.rows.{row_key}: expected a mapping of column to value")
            unknown = [c for c in cells if c not in columns]
            if unknown:
                raise UserError(f"{where}.rows.{row_key}.{unknown[0]}: not a declared column")
        tables[str(table_id)] = RefTable(
            paper=paper,
            id=str(table_id),
            title=str(raw.get("title", table_id)),
            source=str(raw.get("source", "")),
            context=dict(raw.get("context") or {}),
            columns=columns,
            rows={str(k): dict(v) for k, v in raw["rows"].items()},
            row_context={str(k): dict(v) for k, v in (raw.get("row_context") or {}).items()},
            notes=tuple(str(n) for n in raw.get("notes") or ()),
        )
    return Reference(paper, str(data.get("title", paper)), tables)


@lru_cache(maxsize=32)
def _load_path(path: Path) -> Reference:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: invalid YAML ({exc})") from None
    return _parse(data, path)


def load_reference(paper: str, directory: Path | None = None) -> Reference | None:
    """The reference data of ``paper``, or None when there is no file for it."""
    path = (directory or REFERENCE_DIR) / f"{paper}.yaml"
    if not path.is_file():
        return None
    return _load_path(path.resolve())


def available_papers(directory: Path | None = None) -> list[str]:
    return sorted(p.stem for p in (directory or REFERENCE_DIR).glob("*.yaml"))
