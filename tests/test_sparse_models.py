from __future__ import annotations

import pytest
import torch

from methods.sparse import (
    VARIANTS,
    MinkUNet,
    PointNet,
    SparseTensor,
    available_backends,
    from_dense,
    minkunet_variant,
    set_backend,
)
from methods.sparse.models import PreActBlock

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems (tests/conftest.py)


def tiny_input(dtype=torch.float64, batch=2, height=33, width=47, p=0.25, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, height, width, generator=g, dtype=dtype)
    mask = torch.rand(batch, height, width, generator=g) < p
    return from_dense(image, mask)


def run(model, backend, x):
    set_backend(model, backend)
    model.zero_grad()
    feats = x.feats.clone().requires_grad_()
    out = model(SparseTensor(x.coords, feats, 1, x.spatial_shape, x.batch_size))
    weights = torch.linspace(-1, 1, out.feats.numel(), dtype=out.feats.dtype).reshape(out.feats.shape)
    (out.feats * weights).sum().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    return out.feats.detach(), feats.grad, grads


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_minkunet_native_equals_dense_forward_and_backward(variant):
    torch.manual_seed(0)
    # eval mode: training-mode BN over the few deepest sites is ill-conditioned
    model = minkunet_variant(variant, reps=1, width_mult=0.0625).double().eval()
    x = tiny_input(height=25, width=33)
    native, dense = run(model, "native", x), run(model, "dense", x)
    assert native[0].shape == (x.num_sites, 2)
    for a, b in zip(native[0:2], dense[0:2], strict=True):
        assert torch.allclose(a, b, atol=1e-9)
    for a, b in zip(native[2], dense[2], strict=True):
        assert torch.allclose(a, b, atol=1e-8)


@pytest.mark.skipif("spconv" not in available_backends(), reason="spconv not installed")
def test_minkunet_spconv_equals_dense():
    torch.manual_seed(0)
    model = minkunet_variant("8level", reps=1, width_mult=0.0625).eval()  # integer and non-integer steps
    x = tiny_input(torch.float32, height=25, width=33)
    spconv, dense = run(model, "spconv", x), run(model, "dense", x)
    scale = dense[0].abs().max()
    assert torch.allclose(spconv[0], dense[0], atol=1e-4 * float(scale))
    for a, b in zip(spconv[2], dense[2], strict=True):
        assert torch.allclose(a, b, atol=1e-4 * float(b.abs().max()) + 1e-6)


def test_minkunet_training_mode_backward_runs_and_output_at_input_sites():
    torch.manual_seed(0)
    model = MinkUNet(planes=(8, 16, 16), reps=1).train()
    x = tiny_input(torch.float32)
    out = model(x)
    assert out.stride == 1 and torch.equal(out.coords, x.coords) and out.channels == 8
    out.feats.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_stride_sets_and_levels():
    x = tiny_input(torch.float32, height=64, width=64, p=0.5)
    model = minkunet_variant("8level", reps=1, width_mult=0.03).eval()
    with torch.no_grad():
        model(x)
    assert model.strides == (1, 2, 4, 8, 12, 16, 24, 32)
    sizes = [x.manager.coords(s).shape[0] for s in model.strides]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] >= 1
    coarse = x.manager.coords(12)
    assert int(coarse[:, 1].max()) <= (64 - 1) // 12
    with pytest.raises(ValueError):
        MinkUNet(planes=(8, 16), strides=(1, 3))  # a step of more than 2x leaves fine sites outside the kernel
    assert MinkUNet(planes=(32, 64, 128, 256, 512), width_mult=0.5).planes == (16, 32, 64, 128, 256)


def test_fold_bn_is_exact_in_eval_mode():
    torch.manual_seed(0)
    model = minkunet_variant("4stage", reps=1, width_mult=0.125).double()
    x = tiny_input(height=25, width=33)
    with torch.no_grad():
        model.train()
        for _ in range(2):
            model(x)  # give BN non-trivial running statistics
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
        model.eval()
        before = model(x).feats
        model.fold_bn()
        model.fold_bn()  # idempotent: the harness calls it on the model and on every block
        after = model(x).feats
    assert all(not hasattr(b.bn2, "bn") for b in model.modules() if isinstance(b, PreActBlock))
    assert torch.allclose(before, after, atol=1e-10)


def test_pointnet_shapes_and_per_image_global_context():
    torch.manual_seed(0)
    model = PointNet(3, hidden=(16, 32, 64), out=32).eval()
    x = tiny_input(torch.float32)
    out = model(x)
    assert out.feats.shape == (x.num_sites, 32) and torch.equal(out.coords, x.coords)
    # changing image 1 must not change image 0's outputs (pooling is per image), and it has no spatial context
    first = x.coords[:, 0] == 0
    changed = x.feats.clone()
    changed[~first] += 3.0
    out2 = model(x.with_feats(changed))
    assert torch.allclose(out.feats[first], out2.feats[first])
    assert not torch.allclose(out.feats[~first], out2.feats[~first])


def test_set_backend_switches_every_conv():
    model = minkunet_variant("4stage", width_mult=0.125)
    set_backend(model, "dense")
    from methods.sparse import SparseConv2d

    assert {m.backend for m in model.modules() if isinstance(m, SparseConv2d)} == {"dense"}
    with pytest.raises(ValueError):
        set_backend(model, "nope")


def test_training_mode_1x1_conv_equals_each_backends_own_path():
    """In training a 1x1 conv runs as a plain matmul whatever the backend; in eval it takes the
    backend's own path (the dense one on the zero-filled grid). Both must give the same features and
    gradients."""
    from methods.sparse import SparseConv2d

    x = tiny_input()
    conv = SparseConv2d(3, 5, kernel=1, backend="dense").double()
    results = []
    for training in (True, False):
        conv.train(training)
        conv.zero_grad()
        feats = x.feats.clone().requires_grad_()
        out = conv(SparseTensor(x.coords, feats, 1, x.spatial_shape, x.batch_size)).feats
        out.sum().backward()
        results.append((out.detach(), feats.grad, conv.weight.grad.clone()))
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=1e-12)
