"""Suite report layouts: parsing, one-line errors naming file and key, the shipped layout files, and
the paper side of the normalized columns."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.errors import UserError
from harness.reports.layout import parse_layout
from harness.reports.reference import load_reference
from harness.reports.tables import build_table
from harness.results import MetricValue, ResultRow, Status, UnitIdentity

SUITES_DIR = Path(__file__).resolve().parents[1] / "suites"


def _table(**overrides):
    table = {"id": "t", "title": "T", "rows": [{"label": "A"}], "columns": [{"metric": "miou"}]}
    table.update(overrides)
    return table


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ([_table(colums=[])], r"s\.yaml: tables\[0\]\.colums: unknown key"),
        ([_table(columns=[{"label": "x"}])], r"s\.yaml: tables\[0\]\.columns\[0\]: missing key 'metric'"),
        ([_table(columns=[{"metric": "m", "kind": "speed"}])], r"tables\[0\]\.columns\[0\]\.kind: 'speed' is not one"),
        ([_table(columns=[{"metric": "m", "kind": "speedup"}])], r"kind speedup needs key 'base'"),
        ([_table(rows=[{"label": "A", "base": "B"}])], r"rows\.A\.base: no row labelled 'B'"),
        ([_table(columns=[{"metric": "m", "kind": "speedup", "base": "HR"}])], r"base: no row labelled 'HR'"),
        ([_table(columns=[{"metric": "m", "format": "%.1f"}])], r"format: '%.1f' is not a valid number format"),
        ([_table(rows=[{"label": "A", "match": {"param": {}}}])], r"rows\[0\]\.match\.param: unknown key"),
        ([_table(rows=[])], r"tables\[0\]: needs 'rows' or 'expand'"),
        ([_table(), _table()], r"id 't' is used twice"),
        ("tables", r"s\.yaml: tables: expected a list, got str"),
    ],
)
def test_malformed_tables_fail_with_file_and_key(tables, message) -> None:
    with pytest.raises(UserError, match=message) as info:
        parse_layout({"name": "s", "paper": "sparserefine", "tables": tables}, "suites/s.yaml")
    assert "\n" not in str(info.value)


def test_malformed_figures_fail_with_file_and_key() -> None:
    bad = [
        ({"id": "f", "x": "density"}, r"figures\[0\]: curve figures need key 'y'"),
        ({"id": "f", "kind": "pie"}, r"figures\[0\]\.kind: 'pie' is not one of"),
        ({"id": "f", "kind": "bars", "values": {"note": "iou"}, "bars": []}, r"bars: needs at least one"),
        ({"id": "f", "x": "a", "y": "b", "points": [{"table": "Table 5a", "columns": ["x"]}]}, r"need 'x_context'"),
    ]
    for figure, message in bad:
        with pytest.raises(UserError, match=message):
            parse_layout({"figures": [figure]}, "suites/s.yaml")


def test_layout_pointer_is_relative_to_the_suite_and_merges_inline(tmp_path: Path) -> None:
    (tmp_path / "layouts").mkdir()
    (tmp_path / "layouts" / "x.yaml").write_text(yaml.safe_dump({"tables": [_table(id="pointed")]}))
    raw = {"paper": "sparserefine", "layout": "layouts/x.yaml", "tables": [_table(id="inline", reference="Table 5e")]}
    layout = parse_layout(raw, str(tmp_path / "x.yaml"))
    assert [t.id for t in layout.tables] == ["inline", "pointed"]
    assert layout.tables[0].reference_paper == "sparserefine" and layout.tables[0].reference_table == "Table 5e"
    with pytest.raises(UserError, match=r"x\.yaml: layout: file .*missing\.yaml does not exist"):
        parse_layout({"layout": "layouts/missing.yaml"}, str(tmp_path / "x.yaml"))
    (tmp_path / "layouts" / "bad.yaml").write_text(yaml.safe_dump({"tables": [_table(rows="A")]}))
    with pytest.raises(UserError, match=r"layouts/bad\.yaml: tables\[0\]\.rows: expected a list"):
        parse_layout({"layout": "layouts/bad.yaml"}, str(tmp_path / "x.yaml"))


def test_shipped_layouts_parse_and_reference_existing_paper_tables() -> None:
    files = sorted((SUITES_DIR / "layouts").glob("*.yaml"))
    assert files, "no layout files shipped"
    for path in files:
        layout = parse_layout({"layout": str(path)}, str(SUITES_DIR / "suite.yaml"))
        assert layout.tables or layout.figures
        for figure in layout.figures:
            for point in figure.points:
                ref = load_reference(point.paper or layout.paper or "").table(point.table)
                assert ref is not None, f"{path.name}: {figure.id}: no {point.table}"
                assert all(r in ref.rows for r in point.rows), f"{path.name}: {figure.id}: {point.rows}"
                for key in (point.x, point.y, *point.columns):
                    assert key is None or key in ref.columns, f"{path.name}: {figure.id}: column {key!r}"
        for table in layout.tables:
            if table.reference_table is None:
                continue
            reference = load_reference(table.reference_paper or "")
            assert reference is not None, f"{path.name}: {table.id}: unknown paper {table.reference_paper}"
            ref = reference.table(table.reference_table)
            assert ref is not None, f"{path.name}: {table.id}: no {table.reference_table}"
            for row in table.rows:
                rows_of = reference.table(row.ref_table) if row.ref_table else ref
                assert rows_of is not None, f"{path.name}: {table.id}: no {row.ref_table}"
                assert row.ref is None or row.ref in rows_of.rows, f"{path.name}: {table.id}: row {row.ref!r}"
            for column in table.columns:
                for key in (column.ref, column.x):
                    assert key is None or key in ref.columns, f"{path.name}: {table.id}: column {key!r}"


def test_paper_side_of_speedup_and_gap_closed_comes_from_the_reference_rows() -> None:
    raw = {
        "paper": "sparserefine",
        "tables": [
            {
                "id": "t1",
                "reference": "Table 1",
                "rows": [
                    {"label": "HR", "ref": "HRNet-W48 (HR)", "match": {"params": {"kind": "hr"}}},
                    {"label": "LR", "ref": "HRNet-W48 (LR)", "match": {"params": {"kind": "lr"}}},
                    {"label": "SR", "ref": "HRNet-W48 + SparseRefine", "match": {"params": {"kind": "sr"}}},
                ],
                "columns": [
                    {"metric": "latency", "ref": "latency", "kind": "speedup", "base": "HR", "format": ".2f"},
                    {"metric": "miou", "ref": "miou", "kind": "gap_closed", "lr": "LR", "hr": "HR", "format": ".0f"},
                ],
            }
        ],
    }
    spec = parse_layout(raw, "suites/t1.yaml").tables[0]
    results = [
        ResultRow(
            key=kind,
            suite="t1",
            identity=UnitIdentity("t", params={"kind": kind}),
            status=Status.OK,
            metrics={"latency": MetricValue("latency", lat, "ms"), "miou": MetricValue("miou", miou, "%")},
            id=i,
        )
        for i, (kind, lat, miou) in enumerate((("hr", 40.0, 60.0), ("lr", 10.0, 50.0), ("sr", 20.0, 55.0)))
    ]
    table = build_table(spec, results, "sparserefine")
    sr_speedup, sr_gap = table.cells[2]
    assert sr_speedup.ours == pytest.approx(2.0) and sr_speedup.paper == pytest.approx(53.4 / 32.4)
    assert sr_gap.ours == pytest.approx(50.0) and sr_gap.paper == pytest.approx(100 * (80.9 - 79.2) / (80.7 - 79.2))
    assert sr_gap.paper_text == "113"
