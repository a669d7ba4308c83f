"""SparseRefine Table 2: one suite whose entries each run on their own dataset; without dataset roots
every unit that needs data ends `unavailable` with the reason, and the report still shows the paper's
columns, each filled from its dataset's units."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_sparserefine_streaming import write_voc

import methods
from harness.cli import main
from harness.errors import UserError
from harness.results import results_frame
from harness.suite import load_suite

SUITES = Path(__file__).resolve().parent.parent / "suites"
TABLE2 = {"voc": "voc", "bdd100k": "bdd100k", "deepglobe": "deepglobe", "isic2018": "isic2018"}
DATA_TRIALS = {"baseline.evaluate", "sparserefine.pipeline"}  # the latency trial needs only a size

methods.discover()  # registers the trials the suites name


SIZES = {"voc": (512, 512), "bdd100k": (360, 640), "deepglobe": (1024, 1024), "isic2018": (1024, 1024)}


def test_table2_suite_runs_each_entry_on_its_dataset() -> None:
    suite = load_suite(SUITES / "table2.yaml")
    assert "name" not in suite.dataset and "root" not in suite.dataset
    for scale in ("smoke", "default", "paper"):
        units = suite.units(scale)
        assert {u.trial.name for u in units} == DATA_TRIALS | {"baseline.latency"}
        assert {u.dataset["name"] for u in units} == set(TABLE2)
        for u in units:  # the section names the dataset too (the gate pairs units by it)
            assert u.section == u.dataset["name"] and "root" not in u.dataset
        per_dataset = {key: [u for u in units if u.dataset["name"] == key] for key in TABLE2}
        assert all(len(group) == 5 for group in per_dataset.values())  # 2 evaluate, 2 latency, 1 pipeline
    default = {u.dataset["name"]: u.dataset for u in suite.units("default")}
    for key, (height, width) in SIZES.items():
        assert (default[key]["height"], default[key]["width"]) == (height, width)
        assert (default[key]["num_train"], default[key]["num_val"]) == (48, 16)  # the scale's, merged under
    paper = {u.dataset["name"]: u.dataset for u in suite.units("paper")}
    assert all("height" not in d and "num_train" not in d for d in paper.values())  # null: own size, whole split


def test_a_root_given_to_one_entry_reaches_only_its_units(tmp_path: Path) -> None:
    # checked at load: a root that does not exist, or does not hold a VOC layout, is the user's error
    root = write_voc(tmp_path / "VOCdevkit", [(32, 48)], num_train=1, num_val=1)
    suite = load_suite(SUITES / "table2.yaml", [f"benchmarks.0.dataset.root={root}"])
    with_root = [u for u in suite.units("smoke") if "root" in u.dataset]
    assert {(u.trial.name, u.dataset["name"]) for u in with_root} == {("baseline.evaluate", "voc")}
    assert {u.dataset["root"] for u in with_root} == {str(root)}
    with pytest.raises(UserError, match="does not exist"):
        load_suite(SUITES / "table2.yaml", [f"benchmarks.0.dataset.root={tmp_path / 'not-there'}"])


def test_table2_reference_block_is_the_papers_table() -> None:
    reference = yaml.safe_load((SUITES / "reference" / "sparserefine.yaml").read_text())
    rows = reference["tables"]["Table 2"]["rows"]
    assert rows["HRNet-W48 Full (D)"] == {
        "voc_latency": 14.7, "voc_miou": 77.8, "bdd_latency": 23.5, "bdd_miou": 63.6,
        "deepglobe_latency": 146.4, "deepglobe_miou": 73.4, "isic_latency": 157.7, "isic_miou": 82.3,
    }  # fmt: skip
    assert rows["HRNet-W48 Half (D)"]["isic_miou"] == 80.8 and rows["+ SparseRefine Full (S)"]["voc_latency"] == 8.1


def test_table2_without_roots_is_unavailable_and_the_report_renders(tmp_path: Path, one_thread) -> None:
    db = f"sqlite:///{tmp_path / 'results.db'}"
    common = ["--scale", "smoke", "--db", db, "--artifacts", str(tmp_path / "art"), "--threads", "1", "--no-progress"]
    suite = str(SUITES / "table2.yaml")
    assert main(["run", suite, *common]) == 0
    frame = results_frame(db, "table2")
    for key in TABLE2:
        data_units = frame[frame["trial"].isin(DATA_TRIALS) & (frame["section"] == key)]
        assert len(data_units) == 3
        assert set(data_units["status"]) == {"unavailable"}
        assert all(f"dataset {TABLE2[key]} is not on this machine" in e for e in data_units["error"])
        assert all("dataset.root" in e for e in data_units["error"])
        latency = frame[(frame["trial"] == "baseline.latency") & (frame["section"] == key)]
        assert set(latency["status"]) == {"ok"} and len(latency) == 2

    out = tmp_path / "report"
    assert main(["report", suite, "--db", db, "--out", str(out), "--format", "md"]) == 0
    text = next(out.glob("*.md")).read_text()
    for paper_value in ("77.8", "63.6", "73.4", "82.3", "14.7", "157.7", "78.2", "80.8"):
        assert paper_value in text  # every dataset's paper column renders
    assert "unavailable" in text and "not on this machine" in text
    assert "not run" not in text.split("## Table 2: latency")[1].split("##")[0]  # each column has its units
