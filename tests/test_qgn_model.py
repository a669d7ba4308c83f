"""QGN: inference rule, propagation masks per scheme, loss weights, decoder sites, memory accounting."""

from __future__ import annotations

import pytest
import torch

from methods.qgn.cost import activation_memory, forward_macs
from methods.qgn.model import QGN, LevelOutput, QuadtreeOutput
from methods.qgn.schemes import LevelWeights, leaf_labels, propagation_mask
from methods.qgn.sparse_ops import gather_dense, upsample_sites
from methods.qgn.train import level_losses, pyramid_targets

K = 3  # classes; composite index = 3


def test_leaf_label_is_argmax_or_runner_up_when_composite_wins() -> None:
    logits = torch.tensor(
        [
            [0.1, 2.0, 0.3, 1.0],  # class 1 wins
            [0.5, 0.2, 0.9, 3.0],  # composite wins, runner-up is class 2
            [1.5, 0.2, 0.1, 2.0],  # composite wins, runner-up is class 0
        ]
    )
    assert leaf_labels(logits, composite=K).tolist() == [1, 2, 0]
    torch.manual_seed(0)
    random = torch.randn(200, K + 1)
    top2 = random.topk(2, dim=1).indices
    expected = torch.where(top2[:, 0] == K, top2[:, 1], top2[:, 0])
    assert torch.equal(leaf_labels(random, K), expected)


def test_propagation_masks_per_scheme() -> None:
    logits = torch.tensor([[3.0, 0, 0, 1], [0, 0, 0, 5.0], [0, 2.0, 0, 1], [0, 0, 0, 9.0]])
    targets = torch.tensor([K, K, 1, 255])
    assert propagation_mask("all", logits, targets, K).tolist() == [True] * 4
    assert propagation_mask("gtc", logits, targets, K).tolist() == [True, True, False, False]
    assert propagation_mask("pc", logits, None, K).tolist() == [False, True, False, True]
    with pytest.raises(ValueError):
        propagation_mask("gtc", logits, None, K)


def test_fixed_and_adaptive_level_weights() -> None:
    fixed = LevelWeights(3, "1.25")
    assert [fixed.weight(lv) for lv in range(4)] == pytest.approx([1.0, 1.25, 1.5625, 1.953125])
    fixed.update({0: 10.0})
    assert fixed.weight(0) == 1.0
    adaptive = LevelWeights(2, "adaptive", delta=0.99)
    assert adaptive.beta == [1.0, 1.0, 1.0]
    adaptive.update({0: 3.0, 2: 0.0})
    assert adaptive.beta == pytest.approx([0.99 + 0.03, 1.0, 0.99])
    adaptive.update({0: 3.0})
    assert adaptive.weight(0) == pytest.approx(0.99 * 1.02 + 0.03)


def test_upsample_sites_and_gather() -> None:
    coords = torch.tensor([[0, 1, 2], [1, 0, 0]])
    feats = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    children, values = upsample_sites(coords, feats)
    assert children.tolist()[:4] == [[0, 2, 4], [0, 2, 5], [0, 3, 4], [0, 3, 5]]
    assert children.tolist()[4:] == [[1, 0, 0], [1, 0, 1], [1, 1, 0], [1, 1, 1]]
    assert values.tolist() == [[1.0, 2.0]] * 4 + [[3.0, 4.0]] * 4
    dense = torch.arange(2 * 2 * 4 * 6, dtype=torch.float32).view(2, 2, 4, 6)
    assert gather_dense(dense, children).tolist()[1] == [dense[0, 0, 2, 5].item(), dense[0, 1, 2, 5].item()]


def _label_maps() -> torch.Tensor:
    labels = torch.zeros(2, 32, 64, dtype=torch.int64)
    labels[0, 5:20, 10:30] = 1
    labels[1, :, 40:] = 2
    labels[1, 0:3, 0:3] = 255
    return labels


@pytest.fixture(scope="module")
def small_qgn() -> QGN:
    torch.manual_seed(0)
    return QGN(K, arch="small", levels=3, backend="native")


def test_gtc_sites_follow_ground_truth_composites(small_qgn: QGN) -> None:
    labels = _label_maps()
    targets = pyramid_targets(labels, 3, K)
    out = small_qgn(torch.randn(2, 3, 32, 64), "gtc", targets)
    for parent, child in zip(out.levels[:-1], out.levels[1:], strict=True):
        c = parent.coords
        assert torch.equal(parent.propagated, targets[parent.level][c[:, 0], c[:, 1], c[:, 2]] == K)
        expected, _ = upsample_sites(c[parent.propagated], torch.zeros(int(parent.propagated.sum()), 1))
        assert torch.equal(child.coords, expected)
    all_out = small_qgn(torch.randn(2, 3, 32, 64), "all", targets)
    assert all_out.active_sites() == {3: 2 * 4 * 8, 2: 2 * 8 * 16, 1: 2 * 16 * 32, 0: 2 * 32 * 64}
    losses = level_losses(out, targets)
    assert set(losses) == {lv.level for lv in out.levels}


def test_backends_agree_on_the_decoder(small_qgn: QGN) -> None:
    torch.manual_seed(1)
    image = torch.randn(2, 3, 32, 64)
    targets = pyramid_targets(_label_maps(), 3, K)
    small_qgn.eval()
    outs = {}
    for backend in ("native", "dense", "auto"):
        small_qgn.backend = backend
        with torch.no_grad():
            outs[backend] = small_qgn(image, "gtc", targets)
    small_qgn.backend = "native"
    for a, b in zip(outs["native"].levels, outs["dense"].levels, strict=True):
        torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-4)


def test_dense_prediction_takes_each_pixel_from_its_leaf() -> None:
    model = QGN(K, arch="small", levels=1)
    # level 1: 1x2 cells; cell (0,0) is a leaf predicting class 2, cell (0,1) is refined at level 0
    top = LevelOutput(
        1,
        torch.tensor([[0, 0, 0], [0, 0, 1]]),
        torch.tensor([[0, 0, 5.0, 0], [0, 0, 0, 9.0]]),
        torch.tensor([False, True]),
    )
    fine_coords = torch.tensor([[0, 0, 2], [0, 0, 3], [0, 1, 2], [0, 1, 3]])
    fine_logits = torch.tensor([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 1.0, 7.0], [0, 3.0, 0, 0]])
    out = QuadtreeOutput([top, LevelOutput(0, fine_coords, fine_logits)], image_shape=(1, 2, 4))
    assert model.dense_prediction(out).tolist() == [[[2, 2, 0, 1], [2, 2, 2, 1]]]


def test_activation_memory_counts_kept_storages_once() -> None:
    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.conv(x))

    model = Tiny()
    image = torch.randn(1, 3, 8, 8)
    mem = activation_memory(model, image, lambda x: model(x), lambda y: y * 2.0)
    # relu keeps its output (4*8*8 fp32), the conv's saved input is the excluded image, the weight is a
    # parameter; the decoder's `* 2.0` keeps nothing and returns one new 4*8*8 tensor
    assert mem.encoder_bytes == 4 * 8 * 8 * 4
    assert mem.decoder_bytes == 4 * 8 * 8 * 4
    # feature maps: the conv's output and the relu's new output; the decoder's product
    assert mem.encoder_map_bytes == 2 * 4 * 8 * 8 * 4
    assert mem.decoder_map_bytes == 4 * 8 * 8 * 4
    macs = forward_macs(model, image, lambda x: model(x), lambda y: y)
    assert macs == {"encoder": 4 * 8 * 8 * 3 * 9, "decoder": 0}


def test_activation_memory_leaves_batch_norm_statistics_and_mode_alone() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    before = [b.clone() for b in model.buffers()]
    activation_memory(model, torch.randn(2, 3, 8, 8) + 3.0, lambda x: model(x), lambda y: y)
    assert not model.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))


def test_gtc_decoder_keeps_less_memory_than_all(small_qgn: QGN) -> None:
    labels = _label_maps()[:1]
    targets = pyramid_targets(labels, 3, K)
    image = torch.randn(1, 3, 32, 64)
    mems = {
        scheme: activation_memory(
            small_qgn, image, small_qgn.encode, lambda f, s=scheme: small_qgn.decode(f, s, targets)
        )
        for scheme in ("all", "gtc")
    }
    assert mems["gtc"].decoder_bytes < mems["all"].decoder_bytes
    assert mems["gtc"].decoder_map_bytes < mems["all"].decoder_map_bytes
    assert mems["gtc"].encoder_bytes == mems["all"].encoder_bytes
