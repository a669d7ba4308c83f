"""A layout's ``targets:``: the schema's errors name the file and key; the verdicts (holds, does not
hold, within spread, missing) and the values they read are known answers on hand-made result rows;
the Markdown, LaTeX and HTML reports show the section with its "k of n targets hold" line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.errors import UserError
from harness.reports.layout import parse_layout
from harness.reports.provenance import build_provenance
from harness.reports.render import Report, write_latex, write_markdown
from harness.reports.targets import FAILS, HOLDS, MISSING, SPREAD, evaluate_targets, summary_line
from harness.results import MetricValue, ResultRow, Status, UnitIdentity

# --- the schema -------------------------------------------------------------------------------------

THRESHOLD = {"label": "acc", "metric": "acc", "match": {"trial": "tr"}, "op": ">=", "value": 95}
ORDERING = {"label": "ord", "metric": "acc", "order": [{"params": {"row": "a"}}, {"params": {"row": "b"}}]}


def _parse(*targets: dict[str, Any]):
    return parse_layout({"name": "s", "targets": list(targets)}, "s.yaml")


@pytest.mark.parametrize(
    ("change", "where", "says"),
    [
        ({"op": "=="}, "targets[0].op", "'==' is not one of >=, <=, >, <, between"),
        ({"value": None}, "targets[0].value", "expected a number"),
        ({"value": "high"}, "targets[0].value", "expected a number"),
        ({"value": True}, "targets[0].value", "expected a number"),
        ({"value": float("nan")}, "targets[0].value", "finite"),
        ({"value": [90, 95]}, "targets[0].value", "a range needs op 'between'"),
        ({"op": "between", "value": [14, 10]}, "targets[0].value", "empty range [14, 10]"),
        ({"op": "between", "value": [10]}, "targets[0].value", "takes [lo, hi]"),
        ({"op": "between", "value": 12}, "targets[0].value", "takes [lo, hi]"),
        ({"op": "between", "value": [10, "x"]}, "targets[0].value[1]", "expected a number"),
        ({"treshold": 3}, "targets[0].treshold", "unknown key"),
        ({"match": {"trail": "tr"}}, "targets[0].match.trail", "unknown key"),
        ({"strict": False}, "targets[0].strict", "only an ordering target"),
        ({"names": ["a", "b"]}, "targets[0].names", "only an ordering target"),
        ({"format": ".1z"}, "targets[0].format", "not a valid number format"),
    ],
)
def test_threshold_errors_name_the_file_and_key(change: dict[str, Any], where: str, says: str) -> None:
    with pytest.raises(UserError) as caught:
        _parse(THRESHOLD | change)
    message = str(caught.value)
    assert message.startswith(f"s.yaml: {where}: ") and says in message and "\n" not in message


@pytest.mark.parametrize("missing", ["label", "metric", "op", "value"])
def test_a_threshold_without_a_required_key_is_refused(missing: str) -> None:
    data = {k: v for k, v in THRESHOLD.items() if k != missing}
    with pytest.raises(UserError, match=rf"^s\.yaml: targets\[0\]: missing key '{missing}'"):
        _parse(data)


@pytest.mark.parametrize(
    ("change", "where", "says"),
    [
        ({"order": [{"params": {"row": "a"}}]}, "targets[0].order", "at least two"),
        ({"order": {"params": {"row": "a"}}}, "targets[0].order", "expected a list"),
        ({"order": [{"params": {"row": "a"}}, {"sektion": "5a"}]}, "targets[0].order[1].sektion", "unknown key"),
        ({"op": ">"}, "targets[0].op", "takes no 'op'"),
        ({"strict": "yes"}, "targets[0].strict", "expected true or false"),
        ({"names": ["only one"]}, "targets[0].names", "gives 1 names for 2 items"),
    ],
)
def test_ordering_errors_name_the_file_and_key(change: dict[str, Any], where: str, says: str) -> None:
    with pytest.raises(UserError) as caught:
        _parse(ORDERING | change)
    assert str(caught.value).startswith(f"s.yaml: {where}: ") and says in str(caught.value)


def test_targets_parse_inline_and_from_a_layout_file(tmp_path: Path) -> None:
    layout = tmp_path / "layouts" / "l.yaml"
    layout.parent.mkdir()
    layout.write_text(yaml.safe_dump({"targets": [ORDERING | {"strict": False}]}))
    parsed = parse_layout({"name": "s", "layout": "layouts/l.yaml", "targets": [THRESHOLD]}, str(tmp_path / "s.yaml"))
    inline, pointed = parsed.targets
    assert (inline.op, inline.value, inline.is_ordering) == (">=", (95.0,), False)
    assert pointed.is_ordering and not pointed.strict and len(pointed.order) == 2
    layout.write_text(yaml.safe_dump({"targets": [ORDERING | {"op": "between"}]}))
    with pytest.raises(UserError, match=rf"^{layout}: targets\[0\]\.op: "):
        parse_layout({"name": "s", "layout": "layouts/l.yaml"}, str(tmp_path / "s.yaml"))
    with pytest.raises(UserError, match="label 'acc' is used twice"):
        _parse(THRESHOLD, THRESHOLD)


def test_a_suite_file_accepts_targets(tmp_path: Path) -> None:
    from harness.suite import load_suite

    suite = tmp_path / "s.yaml"
    entry = {"trial": "baseline.evaluate", "params": {"arch": "small", "kind": "lr"}}
    suite.write_text(yaml.safe_dump({"name": "s", "benchmarks": [entry], "targets": [THRESHOLD]}))
    assert load_suite(suite, with_units=False).layout.targets[0].label == "acc"


# --- the verdicts -------------------------------------------------------------------------------------


def _row(params: dict[str, Any], ident: int, status: str = "ok", seed_index: int = 0, **metrics: float) -> ResultRow:
    precision = params.pop("precision", "fp32")
    identity = UnitIdentity("tr", params=params, precision=precision, seed=7 + seed_index, seed_index=seed_index)
    values = {k: MetricValue(k, v, "%") for k, v in metrics.items()}
    error = "torch.OutOfMemoryError: out of memory" if status == "oom" else ""
    return ResultRow(identity.key, "s", identity, Status(status), error=error, metrics=values, id=ident)


def _verdicts(results: list[ResultRow], *targets: dict[str, Any]):
    return evaluate_targets(_parse(*targets).targets, results)


def _threshold(label: str, row: str, op: str, value: Any) -> dict[str, Any]:
    return {"label": label, "metric": "acc", "match": {"params": {"row": row}}, "op": op, "value": value}


def test_thresholds_hold_fail_and_say_what_they_read() -> None:
    results = [_row({"row": "a"}, 1, acc=95.3), _row({"row": "b"}, 2, acc=93.04)]
    got = _verdicts(
        results,
        _threshold("a >= 95", "a", ">=", 95),
        _threshold("b >= 95", "b", ">=", 95),
        _threshold("b > 93.04", "b", ">", 93.04),
        _threshold("a < 96", "a", "<", 96),
        _threshold("a in 10-14", "a", "between", [10, 14]),
        _threshold("b in 90-94", "b", "between", [90, 94]),
    )
    assert [(t.verdict, t.values) for t in got] == [
        (HOLDS, "95.3 >= 95"),
        (FAILS, "93.0 < 95"),
        (FAILS, "93.0 <= 93.04"),  # equal is not above
        (HOLDS, "95.3 < 96"),
        (FAILS, "95.3 > 14 (outside [10, 14])"),
        (HOLDS, "93.0 in [90, 94]"),
    ]
    assert summary_line(got) == "3 of 6 targets hold (3 do not hold)"


def test_thresholds_go_missing_and_say_why() -> None:
    results = [
        _row({"row": "oom"}, 1, status="oom"),
        _row({"row": "two"}, 2, acc=90.0),
        _row({"row": "two", "precision": "bf16"}, 3, acc=91.0),
        _row({"row": "nometric"}, 4, other=1.0),
        _row({"row": "nan"}, 5, acc=float("nan")),
    ]
    got = _verdicts(
        results,
        _threshold("never run", "zzz", ">=", 1),
        _threshold("oom", "oom", ">=", 1),
        _threshold("two", "two", ">=", 1),
        _threshold("no metric", "nometric", ">=", 1),
        _threshold("nan", "nan", ">=", 1),
    )
    assert all(t.verdict == MISSING for t in got)
    values = [t.values for t in got]
    assert values[0] == "not run (no result matches)"
    assert values[1] == "OOM"
    assert values[2] == "matches 2 configurations (precision bf16/fp32)"
    assert values[3] == "no metric 'acc'"
    assert values[4] == "acc is not a number"
    assert summary_line(got) == "0 of 5 targets hold (5 missing)"


def test_a_threshold_reads_the_mean_of_the_seeds_and_the_newest_ok_result_of_each() -> None:
    results = [
        _row({"row": "a"}, 1, seed_index=0, acc=80.0),  # seed 0, replaced by the newer result 4
        _row({"row": "a"}, 2, seed_index=1, acc=96.0),
        _row({"row": "a"}, 3, seed_index=2, status="oom"),  # no value: the other seeds count
        _row({"row": "a"}, 4, seed_index=0, acc=94.0),
    ]
    (got,) = _verdicts(results, _threshold("a", "a", ">=", 95))
    assert (got.verdict, got.values) == (HOLDS, "95.0 \u00b1 1.4 >= 95")  # (94 + 96) / 2, not 80
    assert got.readings[0].seeds == 2 and got.readings[0].mean == 95.0


def _ordering(*rows: str, strict: bool = True) -> dict[str, Any]:
    order = [{"params": {"row": r}} for r in rows]
    return {"label": " > ".join(rows), "metric": "acc", "match": {"trial": "tr"}, "order": order, "strict": strict}


def test_orderings_hold_fail_and_name_their_items() -> None:
    results = [_row({"row": "entropy"}, 1, acc=84.1), _row({"row": "magnitude"}, 2, acc=40.2),
               _row({"row": "random"}, 3, acc=11.9), _row({"row": "tie"}, 4, acc=11.9)]  # fmt: skip
    got = _verdicts(
        results,
        _ordering("entropy", "magnitude", "random"),
        _ordering("magnitude", "entropy", "random"),
        _ordering("random", "tie"),
        _ordering("random", "tie", strict=False) | {"label": "random >= tie"},
        _ordering("entropy", "zzz"),
    )
    assert [(t.verdict, t.values) for t in got] == [
        (HOLDS, "entropy 84.1 > magnitude 40.2 > random 11.9"),
        (FAILS, "magnitude 40.2 < entropy 84.1 > random 11.9"),
        (FAILS, "random 11.9 = tie 11.9"),
        (HOLDS, "random 11.9 = tie 11.9"),
        (MISSING, "entropy 84.1; zzz: not run (no result matches)"),
    ]


def test_orderings_print_enough_digits_to_tell_neighbours_apart() -> None:
    results = [_row({"row": "a", "d": 0.118}, 1, acc=13.42), _row({"row": "a", "d": 1.0}, 2, acc=13.41)]
    target = {"label": "d", "metric": "acc", "order": [{"params": {"d": 0.118}}, {"params": {"d": 1.0}}]}
    named = target | {"label": "named", "names": ["default", "dense"]}
    got = _verdicts(results, target, named)
    assert [(t.verdict, t.values) for t in got] == [
        (HOLDS, "d=0.118 13.42 > d=1.0 13.41"),
        (HOLDS, "default 13.42 > dense 13.41"),
    ]


def test_an_ordering_within_the_seeds_spread_is_not_established() -> None:
    """Two seeds each: a = 10, 12 (mean 11, std 1.41); b = 9, 11 (mean 10, std 1.41); c = 1, 1.
    |11 - 10| = 1 < 2.83: a ~ b within spread; b > c far outside it."""
    results = []
    for row, values in (("a", (10.0, 12.0)), ("b", (9.0, 11.0)), ("c", (1.0, 1.0))):
        for k, value in enumerate(values):
            results.append(_row({"row": row}, len(results) + 1, seed_index=k, acc=value))
    got = _verdicts(results, _ordering("a", "b", "c"), _ordering("c", "a", "b"), _ordering("a", "c"))
    assert [(t.verdict, t.values) for t in got] == [
        (SPREAD, "a 11.0 \u00b1 1.4 ~ b 10.0 \u00b1 1.4 > c 1.0 \u00b1 0.0"),
        (FAILS, "c 1.0 \u00b1 0.0 < a 11.0 \u00b1 1.4 ~ b 10.0 \u00b1 1.4"),  # a failing pair outweighs a tie
        (HOLDS, "a 11.0 \u00b1 1.4 > c 1.0 \u00b1 0.0"),
    ]
    assert summary_line(got) == "1 of 3 targets hold (1 does not hold, 1 within spread)"


# --- the rendered reports -------------------------------------------------------------------------------


def _report(tmp_path: Path) -> Report:
    results = [_row({"row": "a"}, 1, acc=95.3), _row({"row": "b"}, 2, acc=93.0)]
    for k, value in enumerate((10.0, 12.0)):
        results.append(_row({"row": "s"}, 3 + k, seed_index=k, acc=value))
        results.append(_row({"row": "t"}, 5 + k, seed_index=k, acc=value - 1))
    targets = evaluate_targets(
        _parse(
            _threshold("LR errs on <= 5% of pixels", "a", ">=", 95),
            _threshold("B above 95", "b", ">=", 95),
            _ordering("s", "t"),
            _threshold("never run", "zzz", "<", 1),
        ).targets,
        results,
    )
    return Report(build_provenance("s", None, [], results), [], [], "s", [], targets)


def test_markdown_and_latex_show_the_targets_and_the_summary(tmp_path: Path) -> None:
    report = _report(tmp_path)
    write_markdown(report, tmp_path / "s.md", {})
    md = (tmp_path / "s.md").read_text()
    assert "## Targets" in md and "**1 of 4 targets hold (1 does not hold, 1 within spread, 1 missing).**" in md
    line = next(x for x in md.splitlines() if "LR errs on <= 5% of pixels" in x)
    assert "95.3 >= 95" in line and "| holds" in line
    assert "93.0 < 95" in md and "does not hold" in md and "not run (no result matches)" in md
    assert "s 11.0 \u00b1 1.4 ~ t 10.0 \u00b1 1.4" in md and "within spread" in md and "std_a + std_b" in md
    write_latex(report, tmp_path / "s.tex", {})
    tex = (tmp_path / "s.tex").read_text()
    assert r"\subsection*{Targets}" in tex and "1 of 4 targets hold" in tex and "95.3 >= 95" in tex


def test_html_shows_the_targets_with_coloured_verdicts(tmp_path: Path) -> None:
    from harness.reports.html import render_html

    page = render_html(_report(tmp_path), [])
    section = page[page.index('<section id="targets">') : page.index('<section id="tables">')]
    assert "1 of 4 targets hold (1 does not hold, 1 within spread, 1 missing)." in section
    assert '<td class="holds">holds</td>' in section and '<td class="differs">does not hold</td>' in section
    assert '<td class="spread">within spread</td>' in section and '<td class="missing">missing</td>' in section
    assert "95.3 &gt;= 95" in section and 'href="#targets"' in page


def test_a_report_without_targets_has_no_targets_section(tmp_path: Path) -> None:
    from harness.reports.html import render_html

    report = Report(build_provenance("s", None, [], []), [], [], "s", [])
    write_markdown(report, tmp_path / "s.md", {})
    assert "Targets" not in (tmp_path / "s.md").read_text()
    assert 'id="targets"' not in render_html(report, [])


def test_table5_report_checks_its_targets(tmp_path: Path) -> None:
    """The real table5 layout over the made-up table5 database: the orderings of the fake values hold,
    PointNet was never run, and the fake pipeline records no gap_closed/pixel_accuracy_lr."""
    from table5_results import TABLE5, fill_table5

    from harness.reports import build_report
    from harness.store import Store

    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    fill_table5(store)
    md = build_report(store, TABLE5, None, ("md",), tmp_path / "out")[0]
    text = md.read_text()
    targets = text[text.index("## Targets") : text.index("## Table 5a")]
    verdicts = {line.split("|")[2].strip(): line.split("|")[3].strip() for line in targets.splitlines()[6:-2]}
    assert verdicts == {
        "no metric 'pixel_accuracy_lr'": MISSING,
        "11.8 in [10, 14]": HOLDS,
        "83.5 >= 80": HOLDS,
        "no metric 'gap_closed'": MISSING,
        "entropy 83.5 > magnitude 41.5 > random 12.0": HOLDS,
        "gated 61.2 > entropy 60.5 > direct 58.0": HOLDS,
        "minkunet6 61.2; pointnet: not run (no result matches)": MISSING,
        "default row 61.2 = density 1.0 61.2": HOLDS,  # strict: false
    }
    assert "**5 of 8 targets hold (3 missing).**" in targets
