"""T-pyramid, leaf assignment and quadtree statistics against a brute-force recursive quadtree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from methods.qgn.tpyramid import (
    DEFAULT_COMPOSITE,
    build_t_pyramid,
    leaf_level_map,
    merge_2x2,
    pad_to_multiple,
    quadtree_stats,
)

C = DEFAULT_COMPOSITE


def brute_force_quadtree(label: np.ndarray, levels: int) -> list[tuple[int, int, int, int]]:
    """Leaves (level, y, x, value) by recursive subdivision of each 2**levels root cell."""
    leaves: list[tuple[int, int, int, int]] = []

    def split(level: int, y: int, x: int) -> None:
        size = 1 << level
        block = label[y : y + size, x : x + size]
        if (block == block[0, 0]).all():
            leaves.append((level, y // size, x // size, int(block[0, 0])))
            return
        half = size // 2
        for dy in (0, half):
            for dx in (0, half):
                split(level - 1, y + dy, x + dx)

    root = 1 << levels
    for y in range(0, label.shape[0], root):
        for x in range(0, label.shape[1], root):
            split(levels, y, x)
    return leaves


def brute_force_pyramid_level(label: np.ndarray, level: int) -> np.ndarray:
    size = 1 << level
    h, w = label.shape[0] // size, label.shape[1] // size
    out = np.empty((h, w), dtype=np.int64)
    for i in range(h):
        for j in range(w):
            block = label[i * size : (i + 1) * size, j * size : (j + 1) * size]
            out[i, j] = block[0, 0] if (block == block[0, 0]).all() else C
    return out


def blocky_random_map(rng: np.random.Generator, h: int, w: int, classes: int) -> np.ndarray:
    """Random labels at several block sizes, so that every quadtree level gets leaves."""
    label = rng.integers(0, classes, size=(h, w))
    for block in (16, 8, 4, 2):
        coarse = rng.integers(0, classes, size=(-(-h // block), -(-w // block)))
        chosen = rng.random(coarse.shape) < 0.6
        up = np.kron(coarse, np.ones((block, block), dtype=np.int64))[:h, :w]
        paint = np.kron(chosen, np.ones((block, block), dtype=bool))[:h, :w]
        label = np.where(paint, up, label)
    label[rng.random((h, w)) < 0.02] = 255
    return label.astype(np.int64)


def test_merge_operator_hand_made() -> None:
    t0 = torch.tensor([[1, 1, 2, 3], [1, 1, 2, 2], [4, 4, 255, 255], [4, 4, 255, 255]])
    assert merge_2x2(t0).tolist() == [[1, C], [4, 255]]
    # four composite children merge into a composite parent
    assert merge_2x2(torch.full((2, 2), C)).tolist() == [[C]]
    # a custom composite value (the loss uses num_classes)
    assert merge_2x2(torch.tensor([[0, 1], [0, 0]]), composite=19).tolist() == [[19]]


def test_pyramid_hand_made_three_levels() -> None:
    label = torch.zeros(8, 8, dtype=torch.int64)
    label[0, 0] = 5  # one odd pixel: composite chain 1 -> 2 -> 3 over the top-left corner
    pyramid = build_t_pyramid(label, 3)
    assert pyramid[1][0, 0] == C and pyramid[1][0, 1] == 0
    assert pyramid[2].tolist() == [[C, 0], [0, 0]]
    assert pyramid[3].tolist() == [[C]]
    leaf = leaf_level_map(pyramid)
    assert leaf[0, 0] == 0 and leaf[0, 1] == 0 and leaf[1, 1] == 0
    assert leaf[0, 2] == 1 and leaf[2, 2] == 1 and leaf[4, 4] == 2 and leaf[7, 7] == 2
    stats = quadtree_stats(label, 3)
    # leaves: 4 at level 0, 3 at level 1, 3 at level 2, none at level 3
    assert stats.leaves_per_level == [4, 3, 3, 0]
    assert stats.pixels_per_level == [4, 12, 48, 0]


@pytest.mark.parametrize("seed,h,w,levels", [(0, 32, 64, 5), (1, 48, 40, 3), (2, 37, 53, 4), (3, 16, 16, 0)])
def test_against_brute_force(seed: int, h: int, w: int, levels: int) -> None:
    rng = np.random.default_rng(seed)
    label_np = blocky_random_map(rng, h, w, classes=3)
    label = torch.from_numpy(label_np)
    padded = pad_to_multiple(label, levels)
    assert padded.shape[0] % (1 << levels) == 0 and padded.shape[1] % (1 << levels) == 0
    assert (padded[:h, :w] == label).all() and (padded[h:] == 255).all() and (padded[:, w:] == 255).all()
    padded_np = padded.numpy()

    pyramid = build_t_pyramid(padded, levels)
    for level, cells in enumerate(pyramid):
        np.testing.assert_array_equal(cells.numpy(), brute_force_pyramid_level(padded_np, level))

    leaves = brute_force_quadtree(padded_np, levels)
    expected_leaf_level = np.full(padded_np.shape, -1)
    for level, y, x, _ in leaves:
        size = 1 << level
        expected_leaf_level[y * size : (y + 1) * size, x * size : (x + 1) * size] = level
    np.testing.assert_array_equal(leaf_level_map(pyramid).numpy(), expected_leaf_level)

    stats = quadtree_stats(label, levels)
    real = expected_leaf_level[:h, :w]
    assert stats.pixels_per_level == [int((real == lv).sum()) for lv in range(levels + 1)]
    covering = [(lv, y, x) for lv, y, x, _ in leaves if y * (1 << lv) < h and x * (1 << lv) < w]
    assert stats.leaves_per_level == [sum(1 for c in covering if c[0] == lv) for lv in range(levels + 1)]
    assert abs(sum(stats.level_percentages()) - 100.0) < 1e-9
    # the ratio identity of QGN Table 5: sum_l pct_l / 4**l equals leaves / pixels when nothing is padded
    if padded.shape == label.shape:
        identity = sum(p / 4**lv for lv, p in enumerate(stats.level_percentages()))
        assert abs(identity - stats.mean_ratio()) < 1e-9


def test_uniform_map_is_all_root_leaves_and_ignore_exclusion() -> None:
    label = torch.full((64, 64), 7)
    stats = quadtree_stats(label, 5)
    assert stats.level_percentages()[5] == 100.0
    assert stats.leaves_per_level[5] == 4 and stats.mean_ratio() == pytest.approx(100 * 4 / 4096)
    label[:32, :32] = 255  # an ignore quadrant is its own root leaf; excluded from the percentages
    stats = quadtree_stats(label, 5, exclude_ignore=True)
    assert stats.counted_pixels == 3 * 32 * 32 and stats.leaves_per_level[5] == 4


def test_batched_pyramid_matches_per_map() -> None:
    rng = np.random.default_rng(5)
    batch = torch.from_numpy(np.stack([blocky_random_map(rng, 32, 32, 4) for _ in range(3)]))
    pyramid = build_t_pyramid(batch, 4, composite=4)
    for i in range(3):
        single = build_t_pyramid(batch[i], 4, composite=4)
        for a, b in zip(pyramid, single, strict=True):
            assert torch.equal(a[i], b)
