"""Thresholds are calibrated on the train split, with known answers on hand-built LR outputs."""

from __future__ import annotations

import torch

from methods.sparserefine.lr_outputs import SplitOutputs
from methods.sparserefine.selection import ResolvedSelector, SelectionSpec, alpha_for_recall
from methods.sparserefine.selectors import SelectionCounts


def _split(confidence: torch.Tensor, labels: torch.Tensor) -> SplitOutputs:
    """Two classes; logits (c, 0): the prediction is class 0 wherever c > 0, and the entropy falls
    as c grows. One image, factor 1."""
    logits = torch.stack([confidence, torch.zeros_like(confidence)]).unsqueeze(0)
    n, h, w = 1, *confidence.shape
    return SplitOutputs(
        images=torch.zeros(n, 3, h, w, dtype=torch.uint8),
        labels=labels.unsqueeze(0),
        logits_grid=logits.half(),
        magnitude_grid=torch.zeros(n, h, w),
        factor=1,
        num_classes=2,
        names=["a", "b"],
    )


def _ten_pixels(errors: list[int]) -> SplitOutputs:
    # confidences 1..10 (pixel i is less certain than pixel i + 1); label 1 where the LR errs
    confidence = torch.arange(1.0, 11.0).reshape(1, 10)
    labels = torch.zeros(1, 10, dtype=torch.long)
    labels[0, errors] = 1
    return _split(confidence, labels)


def _stats(selector: ResolvedSelector, split: SplitOutputs) -> SelectionCounts:
    counts = SelectionCounts()
    counts.update(selector.mask(split, 0), split.errors(0))
    return counts


def test_alpha_for_recall_is_the_largest_threshold_reaching_the_recall() -> None:
    train = _ten_pixels(errors=[0, 1, 5, 8])  # errors at the 1st, 2nd, 6th and 9th least certain pixel
    entropy = train.entropy(0).reshape(-1)
    for recall, selected in ((0.25, 1), (0.5, 2), (0.75, 6), (1.0, 9)):
        alpha = alpha_for_recall(train, recall)
        assert int((entropy > alpha).sum()) == selected
        # any larger threshold selects fewer pixels and misses the recall
        assert int((entropy > entropy[selected - 1]).sum()) == selected - 1


def test_entropy_density_and_recall_are_calibrated_on_train_not_on_the_reported_split() -> None:
    train = _ten_pixels(errors=[0, 1, 5, 8])
    val = _ten_pixels(errors=[9])  # a split where a val-tuned threshold would differ
    by_density = ResolvedSelector(SelectionSpec("entropy", density=0.3), train)
    assert _stats(by_density, train).selected == 3
    assert by_density.describe()["calibrated_on"] == "train"
    entropy = train.entropy(0).reshape(-1)
    assert entropy[3] <= by_density.threshold < entropy[2]
    by_recall = ResolvedSelector(SelectionSpec("entropy", recall=0.75), train)
    assert _stats(by_recall, train).selected == 6
    assert _stats(by_recall, val).selected == 6  # same threshold applied to val, whatever val's errors
    # Matched density: the random selector takes the entropy selector's train density.
    matched = ResolvedSelector(SelectionSpec("random", recall=0.75), train)
    assert matched.target_density == 0.6
    given = ResolvedSelector(SelectionSpec("entropy", alpha=0.3), train)
    assert given.threshold == 0.3 and given.describe()["calibrated_on"] == "not calibrated (given)"
