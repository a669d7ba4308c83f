from __future__ import annotations

import itertools

import pytest
import torch

from methods.sparse import from_dense, site_mask, to_dense
from methods.sparse.kernel_map import KeyTable, downsample_coords, grid_shape, kernel_offsets, key_space, linear_keys

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems (tests/conftest.py)


def random_tensor(batch=2, channels=3, height=11, width=13, p=0.35, seed=0):
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(batch, channels, height, width, generator=g, dtype=torch.float64)
    mask = torch.rand(batch, height, width, generator=g) < p
    return from_dense(dense, mask), dense, mask


def brute_force(out_coords, in_coords, kernel, base_of):
    """Neighbour table by exhaustive search: for output o and offset d, the input equal to base_of(o) + d."""
    inputs = {tuple(c): i for i, c in enumerate(in_coords.tolist())}
    table = []
    for o in out_coords.tolist():
        b, y, x = base_of(o)
        table.append([inputs.get((b, y + dy, x + dx), -1) for dy, dx in kernel_offsets(kernel)])
    return torch.tensor(table, dtype=torch.long).reshape(len(out_coords), kernel * kernel)


def test_direct_and_sorted_key_tables_agree_including_absent_and_out_of_range_keys():
    x, _, _ = random_tensor(batch=2, height=9, width=10)
    keys = linear_keys(x.coords, x.grid)
    space = key_space(x.grid, 2)
    direct, by_sort = KeyTable.build(keys, space), KeyTable.build(keys)
    assert direct.direct is not None and by_sort.direct is None
    queries = torch.arange(-3, space + 3).reshape(-1, 2)
    expected = torch.full_like(queries, -1)
    for row, key in enumerate(keys.tolist()):
        expected[queries == key] = row
    assert torch.equal(direct.lookup(queries), expected)
    assert torch.equal(by_sort.lookup(queries), expected)


def test_from_dense_to_dense_round_trip_and_contiguous_coords():
    x, dense, mask = random_tensor()
    assert x.coords.is_contiguous() and x.coords.dtype == torch.int64
    assert torch.equal(to_dense(x), dense * mask[:, None])
    assert torch.equal(site_mask(x), mask)


@pytest.mark.parametrize("kernel", [3])
def test_submanifold_map_matches_brute_force(kernel):
    x, _, _ = random_tensor()
    table = x.manager.neighbours("subm", 1, 1, kernel)
    expected = brute_force(x.coords, x.coords, kernel, lambda o: o)
    assert torch.equal(table, expected)
    assert (table[:, kernel * kernel // 2] == torch.arange(x.num_sites)).all()


@pytest.mark.parametrize(("fine", "coarse", "kernel"), [(1, 2, 3), (1, 2, 2), (2, 3, 3), (8, 12, 3), (3, 4, 2)])
def test_down_and_up_maps_match_brute_force(fine, coarse, kernel):
    x, _, _ = random_tensor(height=29, width=31)
    fine_coords = x.manager.down_coords(1, fine) if fine > 1 else x.coords
    coarse_coords = x.manager.down_coords(fine, coarse)
    # coarse set = unique floor(pixel / coarse stride), pixel = fine grid coordinate * fine stride
    expected_set = sorted({(b, y * fine // coarse, xx * fine // coarse) for b, y, xx in fine_coords.tolist()})
    assert coarse_coords.tolist() == [list(c) for c in expected_set]

    def anchor(o):
        return (o[0], o[1] * coarse // fine, o[2] * coarse // fine)

    down = x.manager.neighbours("down", fine, coarse, kernel)
    assert torch.equal(down, brute_force(coarse_coords, fine_coords, kernel, anchor))
    up = x.manager.neighbours("up", coarse, fine, kernel)
    # transpose: up[i, k] = o  <=>  down[o, k] = i
    expected_up = torch.full((len(fine_coords), kernel * kernel), -1, dtype=torch.long)
    for o, k in itertools.product(range(len(coarse_coords)), range(kernel * kernel)):
        if down[o, k] >= 0:
            expected_up[down[o, k], k] = o
    assert torch.equal(up, expected_up)


def test_every_fine_site_feeds_its_parent_when_ratio_at_most_two():
    x, _, _ = random_tensor(height=40, width=40, p=0.5)
    for fine, coarse in [(1, 2), (8, 12), (12, 16), (16, 24)]:
        fine_coords = x.manager.down_coords(1, fine) if fine > 1 else x.coords
        down = x.manager.neighbours("down", fine, coarse, 3)
        fed = torch.zeros(len(fine_coords), dtype=torch.bool)
        fed[down[down >= 0]] = True
        assert fed.all(), (fine, coarse)


def test_maps_are_cached_per_forward():
    x, _, _ = random_tensor()
    a = x.manager.neighbours("subm", 1, 1, 3)
    built = x.manager.maps_built
    assert x.manager.neighbours("subm", 1, 1, 3) is a
    assert x.manager.maps_built == built


def test_grid_shape_and_down_coords_stay_in_grid():
    assert grid_shape((11, 13), 2) == (6, 7)
    x, _, _ = random_tensor(height=11, width=13, p=0.9)
    for s in (2, 3, 4, 8):
        c = x.manager.down_coords(1, s)
        h, w = grid_shape((11, 13), s)
        assert int(c[:, 1].max()) < h and int(c[:, 2].max()) < w


def test_rejects_bad_inputs():
    with pytest.raises(ValueError):
        from_dense(torch.zeros(1, 2, 4, 4), torch.zeros(1, 5, 4, dtype=torch.bool))
    with pytest.raises(ValueError):
        downsample_coords(torch.zeros(1, 3, dtype=torch.long), 2, 2, (4, 4))
