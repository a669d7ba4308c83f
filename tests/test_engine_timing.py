from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from harness import devices
from harness.devices import Placement, check_device, fold_batchnorm, parse_device
from harness.errors import Unavailable, UserError
from harness.timing import Measurement, TimingConfig, measure


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
    for device in ("cuda", "cuda:1"):
        with pytest.raises(Unavailable, match=f"^{device}: .*CUDA"):
            measure(lambda: None, TimingConfig(warmup=0, iters=1), device=device)
        with pytest.raises(Unavailable, match="CUDA"):
            Placement.of(device, "bf16")


def test_device_spellings() -> None:
    assert [parse_device(d) for d in ("cpu", "cuda", "cuda:0", "cuda:12", " cuda:1 ")] == [
        "cpu", "cuda", "cuda:0", "cuda:12", "cuda:1"
    ]  # fmt: skip
    for bad in ("gpu", "cuda:x", "cuda:", "cuda:-1", "cpu:0", "CUDA", "", 0, None):
        with pytest.raises(ValueError, match="unknown device .*known: cpu, cuda, cuda:N"):
            parse_device(bad)  # type: ignore[arg-type]
    assert check_device("cpu") == torch.device("cpu")


def test_a_gpu_index_beyond_the_machine_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(Unavailable, match=r"cuda:2: this machine has 2 CUDA device\(s\)"):
        check_device("cuda:2")


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


def test_placement_bf16_channels_last() -> None:
    where = Placement.of("cpu", "bf16")
    model = where.model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x, index = where.inputs((torch.randn(1, 3, 8, 8), torch.arange(3)))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    assert index.dtype == torch.int64  # only floating-point inputs take the precision
    assert model(x).dtype == torch.bfloat16


def test_autocast_placement_keeps_fp32_weights_and_runs_in_the_precision() -> None:
    where = Placement.of("cpu", "bf16", autocast=True)
    model = where.model(nn.Sequential(nn.Conv2d(3, 4, 3)))
    x = where.tensor(torch.randn(1, 3, 8, 8))
    assert model[0].weight.dtype == torch.float32 and x.dtype == torch.float32
    with where.running():
        assert model(x).dtype == torch.bfloat16
    with Placement.of("cpu", "bf16").running():  # cast, not autocast: nothing to switch on
        assert model(x).dtype == torch.float32


def test_error_classification() -> None:
    assert devices.is_oom(torch.OutOfMemoryError("CUDA out of memory"))
    assert devices.is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate"))
    assert devices.is_unsupported_dtype(RuntimeError("\"addmm_impl_cpu_\" not implemented for 'Half'"))
    assert not devices.is_oom(ValueError("x"))


DEVICE_SUITE = """\
name: devices
timing: {warmup: 0, iters: 1}
matrix: {device: [cpu, cuda, "cuda:1"]}
benchmarks:
  - trial: micro.conv2d
    params: {channels: 4, height: 8, width: 8}
"""


def test_cuda_units_end_unavailable_naming_cuda(tmp_path: Path) -> None:
    if torch.cuda.device_count() > 1:
        pytest.skip("this machine has two GPUs")
    from harness.cli import main
    from harness.results import results_frame

    suite = tmp_path / "devices.yaml"
    suite.write_text(DEVICE_SUITE)
    db = f"sqlite:///{tmp_path / 'r.db'}"
    main(["run", str(suite), "--db", db, "--artifacts", str(tmp_path / "art"), "--no-progress"])
    frame = results_frame(db, "devices").set_index("device")
    assert frame.loc["cpu", "status"] == "ok"
    ended = frame.loc[["cuda", "cuda:1"]] if not torch.cuda.is_available() else frame.loc[["cuda:1"]]
    assert (ended["status"] == "unavailable").all()
    assert ended["error"].str.contains("CUDA").all()


@pytest.mark.parametrize("device", ["gpu", "cuda:x"])
def test_a_bad_device_is_a_user_error_naming_it(tmp_path: Path, device: str) -> None:
    from harness.suite import load_suite

    suite = tmp_path / "bad.yaml"
    suite.write_text(DEVICE_SUITE.replace('"cuda:1"', f'"{device}"'))
    with pytest.raises(UserError, match=f"device.*unknown device '{device}'"):
        load_suite(suite)


def test_a_unit_pinned_to_one_gpu_is_a_gpu_unit() -> None:
    from harness.devices import is_cuda

    assert is_cuda("cuda") and is_cuda("cuda:1") and not is_cuda("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        is_cuda("gpu")
