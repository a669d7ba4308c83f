"""The size-bounded LRU that keeps per-image values between epochs."""

from __future__ import annotations

import torch

from methods.memory_cache import BoundedLRU, tensor_bytes


def test_tensor_bytes_counts_tensors_in_containers() -> None:
    x = torch.zeros(10, dtype=torch.float32)
    assert tensor_bytes(x) == 40
    assert tensor_bytes((x, torch.zeros(3, dtype=torch.uint8), (1, 2))) == 43
    assert tensor_bytes({"a": x, "b": torch.zeros(2, dtype=torch.bfloat16)}) == 44
    assert tensor_bytes("text") == 0


def test_bounded_lru_computes_once_and_evicts_least_recently_used_by_bytes() -> None:
    calls: list[int] = []
    cache: BoundedLRU[torch.Tensor] = BoundedLRU(max_bytes=100)

    def get(i: int) -> torch.Tensor:
        return cache.get(i, lambda: calls.append(i) or torch.full((10,), float(i)))  # 40 bytes each

    assert float(get(0)[0]) == 0.0 and float(get(1)[0]) == 1.0 and float(get(0)[0]) == 0.0
    assert calls == [0, 1] and cache.bytes == 80 and len(cache) == 2
    get(2)  # 120 bytes > 100: the least recently used (1) goes
    assert 1 not in cache and 0 in cache and 2 in cache and cache.bytes == 80
    get(1)
    assert calls == [0, 1, 2, 1] and 0 not in cache


def test_bounded_lru_returns_but_does_not_keep_a_value_over_its_bound() -> None:
    cache: BoundedLRU[torch.Tensor] = BoundedLRU(max_bytes=16)
    big = cache.get("big", lambda: torch.zeros(5))  # 20 bytes
    assert big.shape == (5,) and "big" not in cache and cache.bytes == 0


def test_bounded_lru_put_replaces_a_key_and_recounts_its_bytes() -> None:
    cache: BoundedLRU[torch.Tensor] = BoundedLRU(max_bytes=100)
    cache.put("a", torch.zeros(10))
    cache.put("a", torch.zeros(5))
    assert cache.bytes == 20 and len(cache) == 1
    assert cache.get("a", lambda: torch.ones(1)).shape == (5,)
