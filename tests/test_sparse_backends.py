from __future__ import annotations

import sys
import types

import pytest
import torch

from harness.errors import Unavailable, Unsupported
from methods.sparse import ConvSpec, available_backends, check_backend, from_dense, get_backend
from methods.sparse.backends import spconv_backend
from methods.sparse.backends.dense import DenseBackend
from methods.sparse.backends.native import NativeBackend

SPECS = [
    ConvSpec("subm", 3, 1, 1),
    ConvSpec("subm", 1, 1, 1),
    ConvSpec("down", 3, 1, 2),
    ConvSpec("down", 2, 1, 2),
    ConvSpec("up", 3, 2, 1),
    ConvSpec("up", 2, 2, 1),
    ConvSpec("down", 3, 8, 12),
    ConvSpec("up", 3, 12, 8),
    ConvSpec("down", 3, 2, 4),
    ConvSpec("up", 3, 4, 2),
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems (tests/conftest.py)


def problem(spec: ConvSpec, dtype=torch.float64, seed=0, c_in=5, c_out=4):
    """Input tensor at spec.stride_in (with its coarser/finer sets cached) and a weight."""
    g = torch.Generator().manual_seed(seed)
    height, width = 37, 45
    dense = torch.randn(2, c_in, height, width, generator=g, dtype=dtype)
    mask = torch.rand(2, height, width, generator=g) < 0.3
    x = from_dense(dense, mask)
    fine = min(spec.stride_in, spec.stride_out)
    coarse = max(spec.stride_in, spec.stride_out)
    if fine > 1:
        x.manager.down_coords(1, fine)
    if coarse > fine:
        x.manager.down_coords(fine, coarse)
    n = x.manager.coords(spec.stride_in).shape[0]
    feats = torch.randn(n, c_in, generator=g, dtype=dtype).requires_grad_()
    weight = (torch.randn(spec.kernel**2, c_in, c_out, generator=g, dtype=dtype) * 0.3).requires_grad_()
    return x.at_stride(spec.stride_in, feats), weight


def outputs_and_grads(backend, spec, dtype=torch.float64):
    x, weight = problem(spec, dtype)
    out = backend.conv(x, weight, spec)
    g = torch.Generator().manual_seed(1)
    (out * torch.randn(out.shape, generator=g, dtype=dtype)).sum().backward()
    return out.detach(), x.feats.grad, weight.grad


def assert_close(a, b, tol):
    for u, v in zip(a, b, strict=True):
        assert u.shape == v.shape
        assert torch.allclose(u.double(), v.double(), atol=tol, rtol=tol), float((u.double() - v.double()).abs().max())


@pytest.mark.parametrize("algorithm", ["hybrid", "gemm", "scatter"])
@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_native_matches_dense(spec, algorithm):
    assert_close(outputs_and_grads(NativeBackend(algorithm), spec), outputs_and_grads(DenseBackend(), spec), 1e-9)


@pytest.mark.parametrize("algorithm", ["hybrid", "gemm", "scatter"])
@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_native_under_bf16_autocast_matches_dense_with_fp32_master_weights(spec, algorithm):
    """Training runs under CPU bf16 autocast: native's own backward must hand fp32 gradients to the
    fp32 inputs and agree with dense to bf16 precision, whichever algorithm (the scattered offsets
    once summed bf16 products into an fp32 buffer: an error, not a result)."""

    def run(backend):
        x, weight = problem(spec, torch.float32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = backend.conv(x, weight, spec)
        g = torch.Generator().manual_seed(1)
        (out.float() * torch.randn(out.shape, generator=g)).sum().backward()
        assert x.feats.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32
        return out.detach().float(), x.feats.grad, weight.grad

    native, dense = run(NativeBackend(algorithm)), run(DenseBackend())
    for a, b in zip(native, dense, strict=True):
        assert (a - b).abs().max() <= 0.03 * b.abs().max()


def test_dense_definitions_coincide_with_plain_convs():
    """The dense backend's down conv is conv2d(stride 2, padding 1) at the floor sites and the
    general (non-integer) path agrees with the strided path for an integer ratio."""
    spec = ConvSpec("down", 3, 1, 2)
    x, weight = problem(spec)
    grid = torch.zeros(2, 37, 45, 5, dtype=torch.float64)
    grid[x.coords[:, 0], x.coords[:, 1], x.coords[:, 2]] = x.feats.detach()
    w = weight.detach().reshape(3, 3, 5, 4).permute(3, 2, 0, 1)
    ref = torch.nn.functional.conv2d(grid.permute(0, 3, 1, 2), w, stride=2, padding=1)
    coarse = x.manager.coords(2)
    expected = ref[coarse[:, 0], :, coarse[:, 1], coarse[:, 2]]
    assert torch.allclose(DenseBackend().conv(x, weight, spec).detach(), expected, atol=1e-12)
    from methods.sparse.backends import dense as dense_module

    general = dense_module._down(
        dense_module.to_dense(x), weight.detach(), ConvSpec("down", 3, 2, 4), x.manager.grid(2)
    )  # ratio 2 via the stride-1-then-sample path must equal the strided conv
    strided = dense_module._down(dense_module.to_dense(x), weight.detach(), spec, x.manager.grid(2))
    assert torch.allclose(general, strided, atol=1e-12)


spconv_only = pytest.mark.skipif("spconv" not in available_backends(), reason="spconv not installed")


@spconv_only
@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_spconv_matches_dense_under_guard(spec):
    got = outputs_and_grads(get_backend("spconv"), spec, torch.float32)
    assert_close(got, outputs_and_grads(DenseBackend(), spec, torch.float32), 1e-4)


@spconv_only
def test_spconv_up_conv_without_spconv_down_in_the_same_forward():
    spec = ConvSpec("up", 3, 2, 1)
    x, weight = problem(spec, torch.float32)
    assert torch.allclose(get_backend("spconv").conv(x, weight, spec), DenseBackend().conv(x, weight, spec), atol=1e-4)


@spconv_only
def test_spconv_guard_runs_single_threaded_and_restores_thread_count(monkeypatch):
    """One thread inside every spconv call, in torch and in spconv's own OpenMP runtime (which
    torch.set_num_threads does not reach); both counts restored afterwards, also on error."""
    openmp = spconv_backend.spconv_openmp()
    seen = []
    torch.set_num_threads(2)
    if openmp is not None:
        openmp.omp_set_num_threads(2)
    spec = ConvSpec("subm", 3, 1, 1)
    x, weight = problem(spec, torch.float32)
    backend = get_backend("spconv")
    real_subm = backend._subm

    def spy(*args):
        seen.append((torch.get_num_threads(), openmp.omp_get_max_threads() if openmp else 1))
        return real_subm(*args)

    monkeypatch.setattr(backend, "_subm", spy)
    out = backend.conv(x, weight, spec)
    out.sum().backward()
    assert seen == [(1, 1)]
    assert torch.get_num_threads() == 2
    assert openmp is None or openmp.omp_get_max_threads() == 2
    with pytest.raises(RuntimeError):
        with spconv_backend.single_thread():
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 2
    assert openmp is None or openmp.omp_get_max_threads() == 2


@spconv_only
def test_spconv_backward_is_guarded():
    counts = []
    real = spconv_backend.single_thread

    class Recording:
        def __enter__(self):
            self.inner = real()
            self.inner.__enter__()
            counts.append(torch.get_num_threads())

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

    spconv_backend.single_thread = Recording
    try:
        spec = ConvSpec("down", 3, 1, 2)
        x, weight = problem(spec, torch.float32)
        out = get_backend("spconv").conv(x, weight, spec)
        forward_guards = len(counts)
        out.sum().backward()
        assert forward_guards == 1 and len(counts) == 2 and counts == [1, 1]
    finally:
        spconv_backend.single_thread = real


@spconv_only
def test_spconv_bf16_is_unsupported():
    spec = ConvSpec("subm", 3, 1, 1)
    x, weight = problem(spec, torch.float32)
    with pytest.raises(Unsupported):
        get_backend("spconv").conv(x.with_feats(x.feats.bfloat16()), weight.bfloat16(), spec)


def test_torchsparse_unavailable_when_not_importable(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchsparse", None)  # makes `import torchsparse` raise ImportError
    with pytest.raises(Unavailable, match="not importable"):
        check_backend("torchsparse")
    assert "torchsparse" not in available_backends()


def test_torchsparse_unavailable_without_cuda(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchsparse", types.ModuleType("torchsparse"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(Unavailable, match="CUDA"):
        check_backend("torchsparse")


def test_spconv_unavailable_when_not_importable(monkeypatch):
    monkeypatch.setitem(sys.modules, "spconv.pytorch", None)
    monkeypatch.setitem(sys.modules, "spconv", None)
    with pytest.raises(Unavailable, match="spconv"):
        check_backend("spconv")


def test_backend_registry():
    assert {"dense", "native"} <= set(available_backends())
    with pytest.raises(ValueError):
        check_backend("cudnn")
    with pytest.raises(ValueError):
        ConvSpec("down", 3, 2, 2)
