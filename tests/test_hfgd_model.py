"""HFGD: U-SFPN output shapes per output stride, the stop gradients of HFGM, config validation."""

from __future__ import annotations

import pytest
import torch

from methods.hfgd.model import HFGD, HFGDConfig

TINY = {"decoder_channels": 16, "encoder_hidden": 16}


def _model(**overrides: object) -> HFGD:
    torch.manual_seed(0)
    settings = {"num_classes": 5, "backbone": "resnet_small", **TINY, **overrides}
    return HFGD(HFGDConfig(**settings))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("upsampler", "output_stride", "expected"),
    [
        ("none", 32, (3, 4)),
        ("sfpn", 4, (17, 25)),
        ("usfpn", 4, (17, 25)),
        ("usfpn", 2, (33, 49)),
        ("usfpn", 1, (65, 97)),
    ],
)
def test_logits_have_the_output_stride_resolution(upsampler: str, output_stride: int, expected: tuple) -> None:
    hfgm = upsampler != "none"
    model = _model(upsampler=upsampler, output_stride=output_stride, hfgm=hfgm, axial=hfgm).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 65, 97))  # odd sizes: every level rounds up, as with "same" padding
    assert out["logits"].shape == (1, 5, *expected)
    assert model.predict(torch.randn(1, 3, 65, 97)).shape == (1, 5, 65, 97)


def test_usfpn_has_3x3_leading_convs_and_one_more_block_per_branch() -> None:
    sfpn = _model(upsampler="sfpn", output_stride=4).head
    usfpn4 = _model(upsampler="usfpn", output_stride=4).head
    usfpn2 = _model(upsampler="usfpn", output_stride=2).head
    assert sfpn.lateral[0][0].kernel_size == (1, 1) and usfpn4.lateral[0][0].kernel_size == (3, 3)
    assert [len(b.convs) for b in usfpn4.branches] == [1, 1, 2, 3]
    assert [len(b.convs) for b in usfpn2.branches] == [2, 2, 3, 4]


def _grads_after(model: HFGD, key: str) -> dict[str, bool]:
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(torch.randn(2, 3, 64, 96))
    out[key].float().square().mean().backward()

    def reached(module: torch.nn.Module) -> bool:
        return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters())

    return {
        "class_kernels": reached(model.class_kernels),
        "backbone": reached(model.backbone),
        "encoder": reached(model.encoder),
        "head": reached(model.head),
        "axial": reached(model.axial),
    }


def test_upsampled_path_reaches_neither_class_kernels_nor_backbone() -> None:
    reached = _grads_after(_model(upsampler="usfpn", output_stride=4), "logits")
    assert reached == {"class_kernels": False, "backbone": False, "encoder": False, "head": True, "axial": True}


def test_class_kernels_learn_from_the_os32_path() -> None:
    reached = _grads_after(_model(upsampler="usfpn", output_stride=4), "logits32")
    assert reached["class_kernels"] and reached["backbone"] and reached["encoder"]
    assert not reached["head"]


def test_without_hfgm_gradients_flow_through_the_head_into_the_backbone() -> None:
    reached = _grads_after(_model(upsampler="sfpn", output_stride=4, hfgm=False, axial=False), "logits")
    assert reached["backbone"] and reached["encoder"] and reached["head"]


def test_hfgm_head_uses_the_shared_class_kernels() -> None:
    model = _model(upsampler="usfpn", output_stride=4).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)["logits"]
        model.class_kernels.bias.add_(1.0)  # shifting the shared bias shifts the upsampled logits
        after = model(x)["logits"]
    assert model.head_classifier is None
    assert torch.allclose(after, before + 1.0, atol=1e-4)


def test_loss_includes_os32_and_car_terms_and_trains_a_step() -> None:
    model = _model(upsampler="usfpn", output_stride=2)
    label = torch.randint(0, 5, (2, 32, 32))
    label[:, :4] = 255
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    x = torch.randn(2, 3, 32, 32)
    for _ in range(3):
        loss = model.loss(model(x), label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    "bad",
    [
        {"upsampler": "none", "output_stride": 4},
        {"upsampler": "sfpn", "output_stride": 2},
        {"upsampler": "none", "output_stride": 32, "hfgm": True, "axial": False},
        {"encoder": "identity", "upsampler": "sfpn", "output_stride": 4, "hfgm": True},
    ],
)
def test_invalid_combinations_are_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        HFGDConfig(num_classes=3, **bad).validate()
