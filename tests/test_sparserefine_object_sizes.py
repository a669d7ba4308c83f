"""Object-size bins of supp. Fig. 3 and PatchRefine's patch masks (Table 4) on hand-made maps with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from methods.sparserefine.object_sizes import SizeBinnedScores, size_bins

SMALL, LARGE = 0.001, 0.01  # shares of a 100 x 100 frame: < 10 px small, >= 100 px large


def _scene() -> torch.Tensor:
    """Background class 0 (9 559 px, large); class 1: a 2x2 (4 px, small) and a separate 5x5 (25 px,
    medium) square; class 2: a 20x20 square (400 px, large) with a 3x3 class-1 hole (9 px, small);
    a 2x2 ignored corner (255)."""
    labels = torch.zeros(100, 100, dtype=torch.int64)
    labels[2:4, 2:4] = 1
    labels[10:15, 10:15] = 1
    labels[50:70, 50:70] = 2
    labels[55:58, 55:58] = 1
    labels[98:, 98:] = 255
    return labels


def test_components_are_binned_by_their_share_of_the_frame() -> None:
    labels = _scene()
    bins, objects = size_bins(labels, SMALL, LARGE)
    assert objects == {"small": 2, "medium": 1, "large": 2}
    assert (bins[2:4, 2:4] == 0).all() and (bins[55:58, 55:58] == 0).all()
    assert (bins[10:15, 10:15] == 1).all()
    assert (bins[50:55, 50:70] == 2).all() and bins[0, 50] == 2
    assert (bins[98:, 98:] == -1).all()
    assert (bins == 0).sum() == 4 + 9 and (bins == 1).sum() == 25 and (bins == -1).sum() == 4
    # diagonal neighbours are separate objects (4-connectivity): two 1-px dots, both small
    dots = np.zeros((100, 100), dtype=np.int64)
    dots[0, 0] = dots[1, 1] = 1
    assert size_bins(dots, SMALL, LARGE)[1]["small"] == 2
    with pytest.raises(ValueError, match="small_below <= large_above"):
        size_bins(labels, 0.02, 0.01)


def test_a_refinement_that_fixes_only_the_small_objects_gains_only_there() -> None:
    """LR misses both small objects (predicts the surrounding class); the refined map fixes them. Small
    bin: LR IoU of class 1 is 0 (its 13 pixels predicted 0 and 2), so LR mIoU 0 (classes present in the
    bin: only 1) and refined 100; medium and large: identical predictions, gain 0."""
    labels = _scene()
    lr = labels.clone()
    lr[2:4, 2:4] = 0
    lr[55:58, 55:58] = 2
    lr[98:, 98:] = 0
    refined = labels.clone()
    refined[98:, 98:] = 0
    scores = SizeBinnedScores(3, SMALL, LARGE)
    scores.update(lr, refined, labels)
    assert scores.miou("lr", "small") == 0.0 and scores.miou("refined", "small") == 100.0
    assert scores.miou("lr", "medium") == scores.miou("refined", "medium") == 100.0
    # the LR's wrong pixels lie in small objects, outside the large bin: no false positive there
    assert scores.miou("lr", "large") == scores.miou("refined", "large") == 100.0
    assert scores.objects == {"small": 2, "medium": 1, "large": 2}
    assert scores.pixels == {"small": 13, "medium": 25, "large": 100 * 100 - 13 - 25 - 4}


def test_bin_miou_counts_false_positives_inside_the_bin() -> None:
    """Medium object (class 1, 25 px) predicted half as class 2: class 1 IoU = 15/25 -> 60; class 2 has no
    target in the bin, so it does not enter the mean: bin mIoU 60. An empty bin is nan."""
    labels = torch.zeros(100, 100, dtype=torch.int64)
    labels[10:15, 10:15] = 1
    pred = labels.clone()
    pred[10:12, 10:15] = 2
    scores = SizeBinnedScores(3, SMALL, LARGE)
    scores.update(pred, labels, labels)
    assert scores.miou("lr", "medium") == pytest.approx(60.0)
    assert scores.miou("refined", "medium") == 100.0
    assert math.isnan(scores.miou("lr", "small")) and scores.objects["small"] == 0


def test_patch_mask_widens_each_selected_pixel_to_its_grid_cell() -> None:
    from methods.sparserefine.patches import patch_mask

    mask = torch.zeros(1, 10, 12, dtype=torch.bool)
    mask[0, 0, 0] = True  # cell (0, 0): rows 0-3, cols 0-3
    mask[0, 9, 11] = True  # bottom-right partial cell: rows 8-9, cols 8-11
    out = patch_mask(mask, 4)
    assert out.shape == mask.shape and out.dtype == torch.bool
    assert out[0, :4, :4].all() and out[0, 8:, 8:].all()
    assert int(out.sum()) == 16 + 2 * 4
    assert torch.equal(patch_mask(mask, 1), mask)
    assert patch_mask(torch.ones(2, 5, 5, dtype=torch.bool), 3).all()
