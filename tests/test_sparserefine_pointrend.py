"""PointRend comparator (SparseRefine Table 3b): point selection, label sampling and write-back on
hand-made tensors with known answers."""

from __future__ import annotations

import torch

from methods.sparserefine import pointrend as pr


def test_the_most_uncertain_points_are_selected_with_their_inputs() -> None:
    """Logits on a 2x2 grid, sampled at the same size (bilinear at pixel centres = identity): the two
    points whose top-2 logit gap is smallest are chosen, with their own logits and features."""
    logits = torch.tensor([[[[5.0, 1.0], [2.0, 0.0]], [[0.0, 0.9], [0.0, 0.1]]]])  # gaps 5, 0.1, 2, 0.1
    feats = torch.arange(4.0).view(1, 1, 2, 2)
    points = pr.select_points(logits, feats, (2, 2), 2)
    assert sorted(points.index[0].tolist()) == [1, 3]
    order = points.index[0].tolist()
    assert points.fine[0, 0].tolist() == [float(i) for i in order]
    assert points.coarse[0, :, 0].tolist() == logits.flatten(2)[0, :, order[0]].tolist()


def test_grid_labels_are_the_full_resolution_labels_at_the_grid_centres() -> None:
    labels = torch.arange(16).view(1, 4, 4)
    assert pr.grid_labels(labels, (2, 2)).tolist() == [[[5, 7], [13, 15]]]
    assert pr.grid_labels(labels, (4, 4)).tolist() == labels.tolist()


def test_predict_writes_the_heads_classes_at_the_points_and_upsamples() -> None:
    """A head that always answers class 1 changes exactly the selected grid points; the 2x2 grid is
    nearest-upsampled to 4x4."""
    config = pr.PointRendConfig(num_classes=2, feature_channels=1, hidden=4, layers=1)
    head = pr.PointHead(config)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.out.bias.copy_(torch.tensor([0.0, 1.0]))
    logits = torch.tensor([[[[5.0, 1.0], [2.0, 0.0]], [[0.0, 0.9], [0.0, 0.1]]]])
    points = pr.select_points(logits, torch.zeros(1, 1, 2, 2), (2, 2), 1)  # one of the two with gap 0.1
    out = pr.predict(head, points, (4, 4))
    grid = torch.zeros(2, 2, dtype=torch.long)
    grid.view(-1)[points.index[0, 0]] = 1
    assert out.tolist() == [grid.repeat_interleave(2, 0).repeat_interleave(2, 1).tolist()]
    assert pr.points_per_image((10, 10), 0.118) == 12 and pr.points_per_image((10, 10), 0.0) == 1
