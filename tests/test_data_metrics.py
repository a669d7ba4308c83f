"""ConfusionMatrix against a brute-force reference written with plain python loops."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from methods.metrics import ConfusionMatrix, class_map

IGNORE = 255


def brute_force(pairs: list[tuple[list[int], list[int]]], num_classes: int) -> dict[str, object]:
    """mIoU (nan-mean), absent-as-zero mean, per-class IoU and aAcc with explicit loops."""
    inter = [0] * num_classes
    area_pred = [0] * num_classes
    area_target = [0] * num_classes
    for pred, target in pairs:
        for p, t in zip(pred, target, strict=True):
            if t == IGNORE:
                continue
            area_target[t] += 1
            if 0 <= p < num_classes:
                area_pred[p] += 1
            if p == t:
                inter[t] += 1
    ious = []
    for c in range(num_classes):
        union = area_pred[c] + area_target[c] - inter[c]
        ious.append(100.0 * inter[c] / union if union > 0 else math.nan)
    present = [v for v in ious if not math.isnan(v)]
    zero_mean = sum(inter[c] / max(area_pred[c] + area_target[c] - inter[c], 1e-5) for c in range(num_classes))
    return {
        "ious": ious,
        "miou": sum(present) / len(present),
        "miou_absent_as_zero": 100.0 * zero_mean / num_classes,
        "aacc": 100.0 * sum(inter) / sum(area_target),
    }


def random_maps(rng: random.Random, n: int, num_classes: int, used: int) -> tuple[list[int], list[int]]:
    """Maps using only the first ``used`` classes (the rest absent), with ~15 % ignore pixels and a
    few out-of-range predictions."""
    target = [IGNORE if rng.random() < 0.15 else rng.randrange(used) for _ in range(n)]
    pred = [rng.randrange(used) if rng.random() < 0.95 else IGNORE for _ in range(n)]
    # make predictions agree with the target often enough for non-trivial IoUs
    pred = [t if t != IGNORE and rng.random() < 0.5 else p for p, t in zip(pred, target, strict=True)]
    return pred, target


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_with_ignore_and_absent_classes(seed: int) -> None:
    rng = random.Random(seed)
    num_classes, used = 7, 5  # classes 5 and 6 absent from target and prediction
    pairs = [random_maps(rng, 300, num_classes, used) for _ in range(3)]
    expected = brute_force(pairs, num_classes)
    cm = ConfusionMatrix(num_classes)
    for pred, target in pairs:
        cm.update(torch.tensor(pred).view(15, 20), torch.tensor(target).view(15, 20))
    got = cm.per_class_iou()
    for value, want in zip(got, expected["ious"], strict=True):
        assert (math.isnan(value) and math.isnan(want)) or value == pytest.approx(want)
    assert math.isnan(got[5]) and math.isnan(got[6])
    assert cm.miou() == pytest.approx(expected["miou"])
    assert cm.miou_absent_as_zero() == pytest.approx(expected["miou_absent_as_zero"])
    assert cm.pixel_accuracy() == pytest.approx(expected["aacc"])
    # two absent classes out of seven: the official-code mean is exactly 5/7 of the nan-mean
    assert cm.miou_absent_as_zero() == pytest.approx(cm.miou() * used / num_classes)
    assert cm.miou_absent_as_zero() < cm.miou()


def test_class_only_in_prediction_counts_as_zero_iou() -> None:
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 1]))
    ious = cm.per_class_iou()
    assert ious[2] == 0.0  # predicted but never in the target: IoU 0, not nan
    assert ious[0] == 100.0 and ious[1] == pytest.approx(100.0 / 3)
    assert cm.miou() == pytest.approx((100.0 + 100.0 / 3) / 3)


def test_streaming_equals_one_shot() -> None:
    gen = torch.Generator().manual_seed(0)
    preds = torch.randint(0, 6, (5, 16, 24), generator=gen)
    targets = torch.randint(0, 6, (5, 16, 24), generator=gen)
    targets[torch.rand(targets.shape, generator=gen) < 0.1] = IGNORE
    streamed, whole = ConfusionMatrix(6), ConfusionMatrix(6)
    for p, t in zip(preds, targets, strict=True):
        streamed.update(p, t)
    whole.update(preds, targets)
    assert torch.equal(streamed.counts, whole.counts)
    merged = ConfusionMatrix(6)
    other = ConfusionMatrix(6)
    merged.update(preds[:2], targets[:2])
    other.update(preds[2:], targets[2:])
    merged.merge(other)
    assert torch.equal(merged.counts, whole.counts)
    assert merged.miou() == whole.miou()


def test_ignored_pixels_do_not_count_and_bad_inputs_raise() -> None:
    cm = ConfusionMatrix(2)
    cm.update(np.array([1, 1, 0]), np.array([IGNORE, IGNORE, 0]))
    assert cm.total_pixels() == 1 and cm.pixel_accuracy() == 100.0
    with pytest.raises(ValueError, match="outside"):
        cm.update(np.array([0]), np.array([7]))
    with pytest.raises(ValueError, match="differ"):
        cm.update(np.array([0, 1]), np.array([0]))
    with pytest.raises(TypeError):
        cm.update(np.array([0.5]), np.array([0]))
    empty = ConfusionMatrix(2)
    assert math.isnan(empty.miou()) and math.isnan(empty.pixel_accuracy())


def test_agrees_with_mmsegmentation_iou_metric() -> None:
    """Same numbers as mmseg's own IoUMetric helpers (skipped when mmseg is not installed)."""
    metrics_module = pytest.importorskip("mmseg.evaluation.metrics")
    iou_metric = metrics_module.IoUMetric
    gen = torch.Generator().manual_seed(3)
    num_classes = 6
    preds = torch.randint(0, 5, (4, 12, 10), generator=gen)  # class 5 never predicted ...
    targets = torch.randint(0, 4, (4, 12, 10), generator=gen)  # ... and class 4, 5 never in the target
    targets[torch.rand(targets.shape, generator=gen) < 0.2] = IGNORE
    cm = ConfusionMatrix(num_classes)
    totals = [torch.zeros(num_classes, dtype=torch.float64) for _ in range(4)]
    for p, t in zip(preds, targets, strict=True):
        cm.update(p, t)
        for i, area in enumerate(iou_metric.intersect_and_union(p, t, num_classes, IGNORE)):
            totals[i] += area.double()
    result = iou_metric.total_area_to_metrics(*totals, metrics=["mIoU"])
    mm_iou = [float(v) * 100 for v in result["IoU"]]
    for ours, theirs in zip(cm.per_class_iou(), mm_iou, strict=True):
        assert (math.isnan(ours) and math.isnan(theirs)) or ours == pytest.approx(theirs)
    assert cm.miou() == pytest.approx(float(np.nanmean(result["IoU"])) * 100)
    assert cm.pixel_accuracy() == pytest.approx(float(result["aAcc"]) * 100)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_class_map_is_argmax_over_channels_ties_to_the_first(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, (2, 11, 9, 13), generator=gen).to(dtype)  # many ties
    assert torch.equal(class_map(logits), logits.argmax(1))
    logits[0, :, 0, 0] = 2.0
    assert int(class_map(logits)[0, 0, 0]) == 0  # all tied: the first class
    nan = logits.clone()
    nan[1, 4, 2, 3] = float("nan")
    assert int(class_map(nan)[1, 2, 3]) == 4 == int(nan.argmax(1)[1, 2, 3])  # NaN wins, like argmax
    channels_last = logits.float().contiguous(memory_format=torch.channels_last)
    assert torch.equal(class_map(channels_last), logits.float().argmax(1))
    assert torch.equal(class_map(logits[0].permute(1, 2, 0), dim=-1), logits[0].argmax(0))


def test_upsample_nearest_repeats_each_cell_and_crops_to_the_size() -> None:
    from methods.sparserefine.lr_outputs import upsample_nearest

    grid = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    full = upsample_nearest(grid, 2, (5, 7))
    assert full.shape == (2, 5, 7)
    assert torch.equal(full, grid.repeat_interleave(2, -2).repeat_interleave(2, -1)[:, :5, :7])
    assert torch.equal(upsample_nearest(grid.long(), 1), grid.long())
    assert torch.equal(upsample_nearest(grid[0], 3), grid[0].repeat_interleave(3, 0).repeat_interleave(3, 1))
