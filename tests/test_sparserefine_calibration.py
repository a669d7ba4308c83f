"""Thresholds are calibrated on the train split, with known answers on hand-built LR outputs."""

from __future__ import annotations

import math
import weakref

import torch

from methods.sparserefine.lr_outputs import PerImage, SplitOutputs
from methods.sparserefine.selection import ResolvedSelector, SelectionSpec, alpha_for_recall, build_selector
from methods.sparserefine.selectors import SelectionCounts, order_statistics, streamed_threshold_for_density


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
    by_density = build_selector(SelectionSpec("entropy", density=0.3), train)
    assert _stats(by_density, train).selected == 3
    assert by_density.describe()["calibrated_on"] == "train"
    entropy = train.entropy(0).reshape(-1)
    assert entropy[3] <= by_density.threshold < entropy[2]
    by_recall = build_selector(SelectionSpec("entropy", recall=0.75), train)
    assert _stats(by_recall, train).selected == 6
    assert _stats(by_recall, val).selected == 6  # same threshold applied to val, whatever val's errors
    # Matched density: the random selector takes the entropy selector's train density.
    matched = build_selector(SelectionSpec("random", recall=0.75), train)
    assert matched.target_density == 0.6
    given = build_selector(SelectionSpec("entropy", alpha=0.3), train)
    assert given.threshold == 0.3 and given.describe()["calibrated_on"] == "not calibrated (given)"


# --- streamed calibration: exact order statistics over a split read image by image ----------------


def _entropy_maps() -> list[torch.Tensor]:
    """Hand-built entropy maps of four images of different sizes: ties, exact zeros (confident
    pixels), the largest entropy log(2) and negative zero."""
    gen = torch.Generator().manual_seed(5)
    maps = [torch.rand(1, h, w, generator=gen) * 0.69 for h, w in ((3, 5), (4, 4), (1, 7), (6, 2))]
    maps[0][0, 0, :3] = 0.0
    maps[1][0, :2] = 0.25
    maps[2][0, 0, 0] = -0.0
    maps[3][0, 0, 0] = float(torch.log(torch.tensor(2.0)))
    return maps


def test_order_statistics_equal_the_sorted_concatenation_at_every_rank() -> None:
    maps = _entropy_maps()
    ranked = torch.sort(torch.cat([m.reshape(-1) for m in maps])).values
    n, values = order_statistics(lambda: iter(maps), lambda n: range(n))
    assert n == ranked.numel() == 15 + 16 + 7 + 12
    assert values == ranked.tolist()
    assert order_statistics(lambda: iter([torch.zeros(0)]), lambda n: [0] if n else []) == (0, [])


def test_streamed_density_threshold_is_torch_quantile_of_the_concatenation() -> None:
    maps = _entropy_maps()
    flat = torch.cat([m.reshape(-1) for m in maps])
    for density in (0.034, 0.118, 0.19, 0.5, 0.97):
        exact = float(torch.quantile(flat, 1.0 - density))
        assert streamed_threshold_for_density(lambda: iter(maps), flat.numel(), density) == exact
        # the strided subsample (every s-th value across image boundaries) is the one of the concatenation
        sampled = float(torch.quantile(flat[:: flat.numel() // 11 + 1], 1.0 - density))
        assert streamed_threshold_for_density(lambda: iter(maps), flat.numel(), density, max_samples=11) == sampled
    assert streamed_threshold_for_density(lambda: iter(maps), flat.numel(), 1.0) == float(flat.min()) - 1.0
    assert streamed_threshold_for_density(lambda: iter(maps), flat.numel(), 0.0) == float(flat.max())


def test_streamed_calibration_holds_one_image_at_a_time() -> None:
    alive: list[weakref.ref] = []
    most = 0

    def maps():  # made one at a time, like a split's entropy maps read from the per-image cache
        nonlocal most
        for k in range(4):
            most = max(most, sum(ref() is not None for ref in alive))
            m = _entropy_maps()[k].clone()
            alive.append(weakref.ref(m))
            yield m
            del m

    streamed_threshold_for_density(maps, 50, 0.3, max_samples=20)
    alpha = order_statistics(maps, lambda n: [n // 2])
    assert alpha[0] == 50 and most <= 1  # the previous image at most, while the next is read


def _mixed_split() -> SplitOutputs:
    """Two classes, images of three sizes read per image (PerImage), factor 1."""
    gen = torch.Generator().manual_seed(11)
    sizes = [(4, 6), (5, 3), (2, 9)]
    logits = [torch.randn(2, h, w, generator=gen) * 2 for h, w in sizes]
    labels = [torch.randint(0, 2, (h, w), generator=gen) for h, w in sizes]
    return SplitOutputs(
        images=PerImage(lambda i: torch.zeros(3, *sizes[i], dtype=torch.uint8), [(3, *s) for s in sizes]),
        labels=PerImage(lambda i: labels[i], sizes),
        logits_grid=PerImage(lambda i: logits[i].half(), [(2, *s) for s in sizes]),
        magnitude_grid=PerImage(lambda i: logits[i][0].abs(), sizes),
        factor=1,
        num_classes=2,
        names=["a", "b", "c"],
    )


def test_calibration_on_images_of_different_sizes_equals_the_concatenated_reference() -> None:
    train = _mixed_split()
    entropies = torch.cat([train.entropy(i).reshape(-1) for i in range(len(train))])
    by_density = build_selector(SelectionSpec("entropy", density=0.3), train)
    assert by_density.threshold == float(torch.quantile(entropies, 0.7))
    magnitudes = torch.cat([train.magnitude(i).reshape(-1) for i in range(len(train))])
    magnitude = build_selector(SelectionSpec("magnitude", density=0.25), train)
    assert magnitude.threshold == float(torch.quantile(magnitudes, 0.75))
    errors = torch.cat([train.entropy(i)[train.errors(i)] for i in range(len(train))])
    ranked = torch.sort(errors, descending=True).values
    for recall in (0.1, 0.5, 0.8, 1.0):
        need = math.ceil(recall * errors.numel())
        expected = float(torch.nextafter(ranked[need - 1], torch.tensor(float("-inf"))))
        assert alpha_for_recall(train, recall) == expected
        assert int((errors > expected).sum()) >= recall * errors.numel()
