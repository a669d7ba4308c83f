"""A size-bounded least-recently-used cache of tensors, for per-image values that cost a computation
to make and are asked for again (every epoch), without ever holding a whole dataset in memory."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Generic, TypeVar

import torch

Value = TypeVar("Value")


def tensor_bytes(value: object) -> int:
    """Bytes held by a tensor, or by the tensors of a tuple/list/mapping (anything else counts 0)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, tuple | list):
        return sum(tensor_bytes(v) for v in value)
    return 0


class BoundedLRU(Generic[Value]):
    """``get(key, compute)``: the kept value of ``key``, else ``compute()`` kept while the values fit
    in ``max_bytes`` (the least recently used ones are dropped first; a value larger than the bound
    is returned and not kept)."""

    def __init__(self, max_bytes: int, size_of: Callable[[Value], int] = tensor_bytes):
        self.max_bytes = max_bytes
        self._size_of = size_of
        self._items: OrderedDict[Hashable, tuple[Value, int]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable, compute: Callable[[], Value]) -> Value:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key][0]
        return self.put(key, compute())

    def put(self, key: Hashable, value: Value) -> Value:
        """Keep ``value`` as the most recently used (if it fits); returns it."""
        if key in self._items:
            self._bytes -= self._items.pop(key)[1]
        size = self._size_of(value)
        if size <= self.max_bytes:
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped
        return value
