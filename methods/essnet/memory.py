"""Peak tensor memory of a callable, by accounting tensor storages (works on CPU and CUDA).

tracemalloc does not see torch's allocator and the process RSS mixes in everything else, so we
count what the code under test allocates: a ``TorchDispatchMode`` sees every operator output,
records its storage (by base pointer, so views are not counted twice) and a ``weakref.finalize``
releases it when the last tensor using it dies. The peak of live bytes is what the callable held
at once in tensors it created (outputs and intermediates); inputs and parameters alive before the
call are not counted, and neither is scratch memory inside a single kernel.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class _StorageAccounting(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage pointer -> [bytes, tensors alive]
        self.current = 0
        self.peak = 0

    def _release(self, pointer: int) -> None:
        entry = self.live.get(pointer)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[pointer]

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer == 0:
            return
        entry = self.live.get(pointer)
        if entry is None:
            self.live[pointer] = [storage.nbytes(), 1]
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
        else:
            entry[1] += 1
        weakref.finalize(tensor, self._release, pointer)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        leaves, _ = tree_flatten(out)
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        return out


def peak_tensor_bytes(fn: Callable[[], Any]) -> tuple[Any, int]:
    """(fn's result, peak bytes of tensor storage it allocated and held at once)."""
    accounting = _StorageAccounting()
    with accounting:
        result = fn()
    return result, accounting.peak
