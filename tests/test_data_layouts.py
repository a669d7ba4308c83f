"""BDD100K, DeepGlobe, ISIC 2018 and SUN-RGBD: tiny files written in each official format, loaded back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.errors import Unavailable, UserError
from methods.datasets import build_dataset, dataset_classes, dataset_identity
from methods.datasets.bdd100k import BDD100K_CLASSES
from methods.datasets.deepglobe import DEEPGLOBE_CLASSES
from methods.datasets.isic import ISIC_CLASSES
from methods.datasets.sunrgbd import SUNRGBD_13_CLASSES, SUNRGBD_37_CLASSES

RNG = np.random.default_rng(0)


def write_rgb(path: Path, height: int, width: int, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, format=fmt)


def write_gray(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), mode="L").save(path)


# --- BDD100K ------------------------------------------------------------------------------------------

BDD_MASK = np.array([[0, 1, 2, 18], [13, 255, 19, 200]], dtype=np.uint8)
BDD_TRAIN_IDS = [[0, 1, 2, 18], [13, 255, 255, 255]]  # 19 and 200 are no class: ignored


def test_bdd100k_current_release_layout(tmp_path: Path) -> None:
    base = tmp_path / "bdd100k"
    for stem in ("7d2f7975-e0c1c5a7", "0a0a0b1a-7c39d841"):
        write_rgb(base / "images" / "10k" / "val" / f"{stem}.jpg", 2, 4)
        write_gray(base / "labels" / "sem_seg" / "masks" / "val" / f"{stem}.png", BDD_MASK)
    write_gray(base / "labels" / "sem_seg" / "colormaps" / "val" / "0a0a0b1a-7c39d841.png", BDD_MASK)
    for root in (tmp_path, base):  # the parent of bdd100k/ or bdd100k/ itself
        dataset = build_dataset({"name": "bdd100k", "root": str(root)}, "val")
        assert len(dataset) == 2 and dataset.classes == BDD100K_CLASSES and dataset.num_classes == 19
        sample = dataset[0]
        assert sample.name == "0a0a0b1a-7c39d841" and sample.image.shape == (3, 2, 4)
        assert sample.label.tolist() == BDD_TRAIN_IDS
        assert BDD100K_CLASSES[int(sample.label[1, 0])] == "car"
    with pytest.raises(UserError, match="images/10k/train"):
        build_dataset({"name": "bdd100k", "root": str(tmp_path)}, "train")
    write_rgb(base / "images" / "10k" / "train" / "aaaa.jpg", 2, 4)
    (base / "labels" / "sem_seg" / "masks" / "train").mkdir(parents=True)
    with pytest.raises(UserError, match="masks/train/aaaa.png"):
        build_dataset({"name": "bdd100k", "root": str(tmp_path)}, "train")


def test_bdd100k_older_seg_release(tmp_path: Path) -> None:
    seg = tmp_path / "bdd100k" / "seg"
    write_rgb(seg / "images" / "train" / "0004a4c0-d4dff0ad.jpg", 2, 4)
    write_gray(seg / "labels" / "train" / "0004a4c0-d4dff0ad_train_id.png", BDD_MASK)
    dataset = build_dataset({"name": "bdd100k", "root": str(tmp_path)}, "train")
    assert len(dataset) == 1 and dataset[0].label.tolist() == BDD_TRAIN_IDS
    with pytest.raises(UserError, match="neither images/10k"):
        build_dataset({"name": "bdd100k", "root": str(tmp_path / "bdd100k" / "seg")}, "train")


# --- DeepGlobe ----------------------------------------------------------------------------------------

# Ids whose split the hash rule fixes (SHA-256 of the id divisible by 5): a change of rule fails here.
DEEPGLOBE_VAL_IDS = ("181447", "211316")
DEEPGLOBE_TRAIN_IDS = ("10452", "114473", "120245", "209787")


def deepglobe_mask() -> tuple[np.ndarray, list[list[int]]]:
    """An RGB mask with every class colour, compression noise, and a colour of no class."""
    colours = [
        (0, 0, 0), (0, 255, 255), (255, 255, 0), (255, 0, 255), (0, 255, 0), (0, 0, 255), (255, 255, 255),
        (250, 3, 7),  # red after compression noise: no class
    ]  # fmt: skip
    mask = np.array([colours], dtype=np.uint8)  # 1 x 8
    mask[0, 1] = (5, 251, 240)  # urban, not exactly (0, 255, 255)
    return mask, [[0, 1, 2, 3, 4, 5, 6, 255]]


def write_deepglobe(folder: Path, ids: tuple[str, ...]) -> list[list[int]]:
    mask, expected = deepglobe_mask()
    for image_id in ids:
        write_rgb(folder / f"{image_id}_sat.jpg", 1, 8)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask, mode="RGB").save(folder / f"{image_id}_mask.png")
    return expected


def test_deepglobe_colours_and_hash_split(tmp_path: Path) -> None:
    expected = write_deepglobe(tmp_path / "land-train", DEEPGLOBE_VAL_IDS + DEEPGLOBE_TRAIN_IDS)
    val = build_dataset({"name": "deepglobe", "root": str(tmp_path)}, "val")
    train = build_dataset({"name": "deepglobe", "root": str(tmp_path)}, "train")
    assert [f.name for f in val.files] == sorted(DEEPGLOBE_VAL_IDS)
    assert [f.name for f in train.files] == sorted(DEEPGLOBE_TRAIN_IDS)
    assert val.classes == DEEPGLOBE_CLASSES and val.num_classes == 7
    assert val[0].label.tolist() == expected
    assert val[0].image.shape == (3, 1, 8)
    assert DEEPGLOBE_CLASSES[int(val[0].label[0, 5])] == "water"
    # Kaggle's copy (train/) and the folder itself as root work the same way.
    kaggle = tmp_path / "kaggle"
    write_deepglobe(kaggle / "train", DEEPGLOBE_VAL_IDS)
    assert len(build_dataset({"name": "deepglobe", "root": str(kaggle)}, "val")) == 2
    assert len(build_dataset({"name": "deepglobe", "root": str(kaggle / "train")}, "val")) == 2


def test_deepglobe_glnet_lists(tmp_path: Path) -> None:
    write_deepglobe(tmp_path / "land-train", DEEPGLOBE_VAL_IDS + DEEPGLOBE_TRAIN_IDS)
    spec = {"name": "deepglobe", "root": str(tmp_path), "split_rule": "glnet"}
    with pytest.raises(UserError, match="crossvali.txt"):
        build_dataset(spec, "val")
    (tmp_path / "crossvali.txt").write_text("10452_sat.jpg\n120245_sat.jpg\n")
    (tmp_path / "train.txt").write_text("181447_sat.jpg\n999_sat.jpg\n")
    assert [f.name for f in build_dataset(spec, "val").files] == ["10452", "120245"]
    with pytest.raises(UserError, match="999_sat.jpg"):
        build_dataset(spec, "train")
    with pytest.raises(UserError, match="split_rule"):
        build_dataset({**spec, "split_rule": "random"}, "val")
    assert dataset_identity({"name": "deepglobe"})["split_rule"] == "hash"


def test_deepglobe_rejects_grey_masks_and_missing_masks(tmp_path: Path) -> None:
    folder = tmp_path / "land-train"
    write_rgb(folder / "181447_sat.jpg", 2, 2)
    write_gray(folder / "181447_mask.png", np.zeros((2, 2)))
    with pytest.raises(UserError, match="RGB colour-coded"):
        build_dataset({"name": "deepglobe", "root": str(tmp_path)}, "val")[0]
    write_rgb(folder / "211316_sat.jpg", 2, 2)
    with pytest.raises(UserError, match="211316_mask.png"):
        build_dataset({"name": "deepglobe", "root": str(tmp_path)}, "val")


# --- ISIC 2018 ----------------------------------------------------------------------------------------


def test_isic2018_binary_masks(tmp_path: Path) -> None:
    mask = np.array([[0, 255, 255], [0, 0, 255]], dtype=np.uint8)
    for split in ("Training", "Validation"):
        images = tmp_path / f"ISIC2018_Task1-2_{split}_Input"
        for stem in ("ISIC_0000000", "ISIC_0000001"):
            write_rgb(images / f"{stem}.jpg", 2, 3)
            write_gray(tmp_path / f"ISIC2018_Task1_{split}_GroundTruth" / f"{stem}_segmentation.png", mask)
        (images / "LICENSE.txt").write_text("license")
        (images / "ATTRIBUTION.txt").write_text("attribution")
    for split in ("train", "val"):
        dataset = build_dataset({"name": "isic2018", "root": str(tmp_path)}, split)
        assert len(dataset) == 2 and dataset.classes == ISIC_CLASSES and dataset.num_classes == 2
        sample = dataset[1]
        assert sample.name == "ISIC_0000001" and sample.image.shape == (3, 2, 3)
        assert sample.label.tolist() == [[0, 1, 1], [0, 0, 1]]
    resized = build_dataset({"name": "isic2018", "root": str(tmp_path), "height": 4, "width": 6}, "val")[0]
    assert resized.image.shape == (3, 4, 6) and set(resized.label.unique().tolist()) == {0, 1}
    (tmp_path / "ISIC2018_Task1_Validation_GroundTruth" / "ISIC_0000001_segmentation.png").unlink()
    with pytest.raises(UserError, match="ISIC_0000001_segmentation.png"):
        build_dataset({"name": "isic2018", "root": str(tmp_path)}, "val")
    with pytest.raises(UserError, match="ISIC2018_Task1-2_Training_Input"):
        build_dataset({"name": "isic2018", "root": str(tmp_path / "ISIC2018_Task1_Training_GroundTruth")}, "train")


# --- SUN-RGBD -----------------------------------------------------------------------------------------

SUN_LABEL = np.array([[0, 1, 2, 3], [8, 22, 25, 37]], dtype=np.uint8)  # void, wall, floor, cabinet / door, ...


def write_sunrgbd(root: Path) -> None:
    for k in (1, 2):
        write_rgb(root / "SUNRGBD-train_images" / f"img-{k:06d}.jpg", 2, 4)
        write_rgb(root / "SUNRGBD-test_images" / f"img-{k:06d}.jpg", 2, 4)
        write_gray(root / "sunrgbd_train_test_labels" / f"img-{k:06d}.png", np.zeros((2, 4)))  # test k
        write_gray(root / "sunrgbd_train_test_labels" / f"img-{5050 + k:06d}.png", SUN_LABEL)  # train k


def test_sunrgbd_37_classes_and_train_label_offset(tmp_path: Path) -> None:
    write_sunrgbd(tmp_path)
    train = build_dataset({"name": "sunrgbd", "root": str(tmp_path)}, "train")
    assert train.classes == SUNRGBD_37_CLASSES and train.num_classes == 37
    assert [f.label.name for f in train.files] == ["img-005051.png", "img-005052.png"]
    assert train[0].label.tolist() == [[255, 0, 1, 2], [7, 21, 24, 36]]
    assert [SUNRGBD_37_CLASSES[i] for i in (7, 21, 24, 36)] == ["door", "ceiling", "television", "bag"]
    val = build_dataset({"name": "sunrgbd", "root": str(tmp_path), "classes": 37}, "val")
    assert [f.label.name for f in val.files] == ["img-000001.png", "img-000002.png"]
    assert val[0].label.tolist() == [[255] * 4, [255] * 4]  # 0 = unlabelled


def test_sunrgbd_13_classes_follow_the_nyu_mapping(tmp_path: Path) -> None:
    write_sunrgbd(tmp_path)
    train = build_dataset({"name": "sunrgbd", "root": str(tmp_path), "classes": 13}, "train")
    assert train.classes == SUNRGBD_13_CLASSES and train.num_classes == 13
    names = [[SUNRGBD_13_CLASSES[i] if i != 255 else None for i in row] for row in train[0].label.tolist()]
    # void, wall, floor, cabinet -> furniture / door -> wall, ceiling, television -> tv, bag -> objects
    assert names == [[None, "wall", "floor", "furniture"], ["wall", "ceiling", "tv", "objects"]]
    with pytest.raises(UserError, match="classes"):
        build_dataset({"name": "sunrgbd", "root": str(tmp_path), "classes": 40}, "train")
    (tmp_path / "sunrgbd_train_test_labels" / "img-005052.png").unlink()
    with pytest.raises(UserError, match="img-005052.png"):
        build_dataset({"name": "sunrgbd", "root": str(tmp_path)}, "train")


@pytest.mark.parametrize(
    ("spec", "count"),
    [
        ({"name": "embedded"}, 11),
        ({"name": "cityscapes"}, 19),
        ({"name": "ade20k"}, 150),
        ({"name": "voc"}, 21),
        ({"name": "bdd100k"}, 19),
        ({"name": "deepglobe"}, 7),
        ({"name": "isic2018"}, 2),
        ({"name": "sunrgbd"}, 37),
        ({"name": "sunrgbd", "classes": 13}, 13),
    ],
)
def test_a_datasets_classes_come_from_its_spec_alone(spec: dict, count: int) -> None:
    assert len(dataset_classes(spec)) == count  # no root: no file is read


def test_the_classes_from_the_spec_are_the_built_datasets(tmp_path: Path) -> None:
    write_sunrgbd(tmp_path)
    for classes in (13, 37):
        spec = {"name": "sunrgbd", "root": str(tmp_path), "classes": classes}
        assert dataset_classes(spec) == build_dataset(spec, "val").classes
    with pytest.raises(UserError, match="classes"):
        dataset_classes({"name": "sunrgbd", "classes": 40})


# --- every real dataset: no root -> unavailable, bad root -> UserError ------------------------------

REAL = ("cityscapes", "ade20k", "voc", "bdd100k", "deepglobe", "isic2018", "sunrgbd")


@pytest.mark.parametrize("name", REAL)
def test_no_root_is_unavailable_and_a_bad_root_a_user_error(name: str, tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match=f"dataset {name} is not on this machine.*dataset.root"):
        build_dataset({"name": name}, "val")
    missing = tmp_path / "not-there"
    with pytest.raises(UserError, match=f"{missing}.*does not exist"):
        build_dataset({"name": name, "root": str(missing)}, "val")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(UserError, match="not a directory"):
        build_dataset({"name": name, "root": str(a_file)}, "val")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=name):
        build_dataset({"name": name, "root": str(empty)}, "train")


def test_bad_keys_fail_before_any_file_is_read() -> None:
    with pytest.raises(UserError, match="unknown dataset key 'classes'"):
        build_dataset({"name": "bdd100k", "classes": 13}, "val")
    with pytest.raises(UserError, match="both height and width"):
        dataset_identity({"name": "isic2018", "height": 64})
    with pytest.raises(UserError, match="'root' must be a path"):
        dataset_identity({"name": "voc", "root": 3})


def test_labels_are_read_per_item(tmp_path: Path) -> None:
    """A dataset holds file paths only: a label broken after construction fails when that item is read."""
    write_sunrgbd(tmp_path)
    dataset = build_dataset({"name": "sunrgbd", "root": str(tmp_path)}, "train")
    (tmp_path / "sunrgbd_train_test_labels" / "img-005052.png").write_bytes(b"not a png")
    assert torch.is_tensor(dataset[0].label)
    with pytest.raises(UserError, match="cannot read label .*img-005052.png"):
        dataset[1]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_file_read_by_loader_workers_is_the_same_one_line(tmp_path: Path, workers: int) -> None:
    """Read in DataLoader workers, a corrupt label gives the same UserError as read in-process: its
    own message naming the file, not the worker's traceback text."""
    from methods.datasets.loading import iterate_samples

    write_sunrgbd(tmp_path)
    dataset = build_dataset({"name": "sunrgbd", "root": str(tmp_path)}, "train")
    (tmp_path / "sunrgbd_train_test_labels" / "img-005052.png").write_bytes(b"not a png")
    with pytest.raises(UserError) as raised:
        list(iterate_samples(dataset, range(len(dataset)), batch_size=1, workers=workers))
    message = str(raised.value)
    assert message.startswith("sunrgbd: cannot read label ") and "img-005052.png" in message
    assert "Traceback" not in message and "\n" not in message


def test_a_missing_root_on_the_command_line_is_one_line_exit_2_and_the_database_is_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    from harness.cli import main
    from harness.store import Store

    db = tmp_path / "h.db"
    url = f"sqlite:///{db}"
    Store(url).engine.dispose()
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    suite = str(Path(__file__).resolve().parents[1] / "suites" / "table5.yaml")
    missing = tmp_path / "VOCdevkit"
    args = ["run", suite, "--scale", "smoke", "--db", url, "--no-progress"]
    assert main([*args, "--set", "dataset.name=voc", "--set", f"dataset.root={missing}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harness: error: ") and err.count("\n") == 1, err
    assert f"dataset root {missing} does not exist" in err
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


@pytest.mark.parametrize("name", ["voc", "cityscapes", "ade20k", "sunrgbd", "bdd100k", "deepglobe", "isic2018"])
def test_a_root_that_is_not_the_layout_stops_the_suite_at_load(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The root exists but holds no such dataset: before, every unit failed on it at run time (exit 1)."""
    from harness.cli import main

    root = tmp_path / "not_a_dataset"
    (root / "some_dir").mkdir(parents=True)
    db = tmp_path / "h.db"
    suite = str(Path(__file__).resolve().parents[1] / "suites" / "table5.yaml")
    args = ["run", suite, "--scale", "smoke", "--db", f"sqlite:///{db}", "--no-progress"]
    assert main([*args, "--set", f"dataset.name={name}", "--set", f"dataset.root={root}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"harness: error: --set dataset.name={name}, --set dataset.root={root}: dataset: ")
    assert err.count("\n") == 1 and str(root) in err, err
    assert not db.exists()
