from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.devices import fold_batchnorm
from methods.baselines import ARCH_NAMES, BaselineModel, SegCNN, TrainConfig, train_segmentation_model
from methods.baselines.baseline import model_input, model_labels
from methods.baselines.training import class_weights

# One intra-op thread (tests/conftest.py): with several processes sharing two cores, OpenMP's second
# thread makes small training steps orders of magnitude slower (spin-waiting).
pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.2)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_forward_shapes_at_input_resolution(arch: str) -> None:
    model = SegCNN(5, arch).eval()
    x = torch.randn(2, 3, 48, 80)
    logits, feats = model.forward_with_features(x)
    assert logits.shape == (2, 5, 48, 80)
    assert feats.shape == (2, model.feature_channels, 48, 80)
    assert torch.allclose(model(x), logits)


def test_bn_folding_is_exact_and_removes_every_batchnorm() -> None:
    torch.manual_seed(0)
    model = SegCNN(7, "small").eval()
    _randomise_bn(model)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        before = model(x)
        folded = fold_batchnorm(model)
        after = folded(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(before, after, atol=1e-4, rtol=1e-4)


def _blob_data(n: int = 6, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class (3 of them) is written in the colour of square patches."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n, size // 8, size // 8), generator=generator)
    labels = labels.repeat_interleave(8, 1).repeat_interleave(8, 2)
    palette = torch.tensor([[-1.0, 0.0, 1.0], [1.0, -1.0, 0.0], [0.0, 1.0, -1.0]])
    images = palette[labels].permute(0, 3, 1, 2) + 0.3 * torch.randn(n, 3, size, size, generator=generator)
    labels[:, :2, :2] = 255
    return images, labels.to(torch.uint8)


def _train(seed: int, iters: int = 20) -> tuple[list[float], dict]:
    torch.manual_seed(seed)
    model = SegCNN(3, "tiny")
    images, labels = _blob_data()
    config = TrainConfig(iters=iters, batch_size=2, crop_fraction=0.75, lr=1e-2, warmup_iters=3, bf16=False)
    result = train_segmentation_model(model, images, labels, config, seed=seed)
    return result.losses, model.state_dict()


def test_training_is_deterministic_given_the_seed_and_lowers_the_loss() -> None:
    losses_a, state_a = _train(seed=3)
    losses_b, state_b = _train(seed=3)
    losses_c, _ = _train(seed=4, iters=3)
    assert losses_a == losses_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert losses_a[:3] != losses_c
    assert sum(losses_a[-5:]) / 5 < 0.7 * sum(losses_a[:5]) / 5


def test_train_config_rejects_unknown_settings() -> None:
    with pytest.raises(ValueError, match="itres"):
        TrainConfig.from_overrides({"itres": 3})
    assert TrainConfig.from_overrides({"iters": 3}).iters == 3


def _random_baseline(kind: str, num_classes: int = 4) -> BaselineModel:
    torch.manual_seed(0)
    module = SegCNN(num_classes, "tiny").eval()
    _randomise_bn(module)
    return BaselineModel(module=module, kind=kind, arch="tiny", classes=tuple(f"c{i}" for i in range(num_classes)))


def test_lr_predict_is_full_resolution_and_block_constant() -> None:
    baseline = _random_baseline("lr")
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    logits, feats = baseline.predict(images)
    assert logits.shape == (2, 4, 64, 96) and logits.dtype == torch.float32
    assert feats.shape == (2, baseline.feature_channels, 64, 96)
    for out in (logits, feats):
        blocks = out.unfold(2, 2, 2).unfold(3, 2, 2)  # [B, C, 32, 48, 2, 2]
        assert torch.equal(blocks, blocks[..., :1, :1].expand_as(blocks))
    # The network saw the x2 area-downsampled image, and nothing else.
    with torch.no_grad():
        half = baseline.module(F.avg_pool2d(model_input(images, "hr"), 2))
    assert torch.allclose(logits[..., ::2, ::2], half, atol=1e-5)
    assert baseline.input_size(64, 96) == (32, 48)


def test_hr_predict_runs_at_full_resolution_and_is_not_block_constant() -> None:
    baseline = _random_baseline("hr")
    images = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)
    logits, _ = baseline.predict(images)
    with torch.no_grad():
        direct = baseline.module(model_input(images, "hr"))
    assert torch.allclose(logits, direct, atol=1e-5)
    assert not torch.equal(logits[..., 0::2, 0::2], logits[..., 1::2, 1::2])
    assert baseline.input_size(64, 96) == (64, 96)


def test_lr_labels_are_nearest_downsampled() -> None:
    labels = torch.arange(16).view(1, 4, 4)
    expected = F.interpolate(labels[None].float(), scale_factor=0.5, mode="nearest")[0].long()
    assert torch.equal(model_labels(labels, "lr"), expected)
    assert torch.equal(model_labels(labels, "hr"), labels)


def test_class_weights_favour_rare_classes_and_average_to_one() -> None:
    labels = torch.tensor([0] * 90 + [1] * 10 + [255] * 50, dtype=torch.uint8)
    assert class_weights(labels, 3, 0.0) is None
    weights = class_weights(labels, 3, 0.5)
    assert weights is not None
    assert weights[1] / weights[0] == pytest.approx(3.0)  # sqrt(90 / 10)
    assert float(weights[0] * 0.9 + weights[1] * 0.1) == pytest.approx(1.0)
    assert weights[2] == weights.max()  # absent class: the largest weight
