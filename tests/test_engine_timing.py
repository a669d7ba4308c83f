from __future__ import annotations

import pytest
import torch
from torch import nn

from harness import timing
from harness.errors import Unavailable
from harness.timing import Measurement, TimingConfig, fold_batchnorm, measure


def fake_clock(durations: list[float]):
    """A clock whose successive (start, end) call pairs are ``durations`` apart."""
    ticks: list[float] = []
    t = 0.0
    for d in durations:
        ticks += [t, t + d]
        t += d + 1.0
    it = iter(ticks)
    return lambda: next(it)


def test_statistics_from_samples() -> None:
    m = Measurement(samples=(1.0, 2.0, 3.0, 4.0, 100.0))
    assert m.n == 5 and m.median == 3.0 and m.mean == pytest.approx(22.0)
    assert m.quantile(0.25) == 2.0 and m.quantile(0.75) == 4.0 and m.iqr == 2.0
    assert m.p90 == pytest.approx(4.0 + 0.6 * 96.0)
    assert m.summary_ms()["median"] == pytest.approx(3000.0)


def test_fixed_mode_counts_calls_and_keeps_samples() -> None:
    calls = []
    cfg = TimingConfig(warmup=3, iters=7)
    m = measure(lambda: calls.append(1), cfg, clock=fake_clock([0.5] * 7))
    assert len(calls) == 10 and m.samples == (0.5,) * 7 and m.warmup == 3


def test_adaptive_mode_stops_when_spread_is_small() -> None:
    noisy = [1.0, 3.0, 0.2, 5.0, 1.0, 2.5, 0.1, 4.0]
    stable = [1.0] * 40
    cfg = TimingConfig(warmup=0, mode="adaptive", min_iters=8, max_iters=100, iqr_tolerance=0.05, max_time=1e9)
    m = measure(lambda: None, cfg, clock=fake_clock(noisy + stable))
    # The noisy head keeps it going; enough identical samples bring IQR/median under 5%.
    assert 8 < m.n < len(noisy) + len(stable)
    assert m.relative_iqr <= 0.05


def test_adaptive_mode_respects_max_iters() -> None:
    cfg = TimingConfig(warmup=0, mode="adaptive", min_iters=2, max_iters=12, iqr_tolerance=0.0, max_time=1e9)
    m = measure(lambda: None, cfg, clock=fake_clock([1.0, 2.0] * 10))
    assert m.n == 12


def test_timing_config_validation() -> None:
    with pytest.raises(ValueError, match="unknown timing settings"):
        TimingConfig.from_dict({"iterations": 3})
    with pytest.raises(ValueError):
        TimingConfig(mode="auto")


def test_cuda_is_unavailable_without_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(Unavailable, match="cuda"):
        measure(lambda: None, TimingConfig(warmup=0, iters=1), device="cuda")


def test_fold_batchnorm_is_exact() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1),
                          nn.BatchNorm2d(4))  # fmt: skip
    model.train()
    for _ in range(3):
        model(torch.randn(2, 3, 16, 16))
    model.eval()
    x = torch.randn(1, 3, 16, 16)
    expected = model(x)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(folded(x), expected, atol=1e-5, rtol=1e-5)


def test_prepare_for_latency_bf16_channels_last() -> None:
    model = timing.prepare_for_latency(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)),
                                       precision="bf16", device="cpu")  # fmt: skip
    x = timing.prepare_input(torch.randn(1, 3, 8, 8), precision="bf16", device="cpu")
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    assert model(x).dtype == torch.bfloat16


def test_error_classification() -> None:
    assert timing.is_oom(torch.OutOfMemoryError("CUDA out of memory"))
    assert timing.is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate"))
    assert timing.is_unsupported_dtype(RuntimeError("\"addmm_impl_cpu_\" not implemented for 'Half'"))
    assert not timing.is_oom(ValueError("x"))
