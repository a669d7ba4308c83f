"""Backend registry: ``get_backend(name)``, ``available_backends()``, ``check_backend(name)``."""

from __future__ import annotations

from collections.abc import Callable

from harness.errors import Unavailable
from methods.sparse.backends.base import Backend, ConvSpec, output_tensor
from methods.sparse.backends.dense import DenseBackend
from methods.sparse.backends.native import NativeBackend

BACKEND_NAMES = ("dense", "spconv", "torchsparse", "native")


def _spconv() -> Backend:
    from methods.sparse.backends.spconv_backend import SpconvBackend

    return SpconvBackend()


def _torchsparse() -> Backend:
    from methods.sparse.backends.torchsparse_backend import TorchsparseBackend

    return TorchsparseBackend()


_FACTORIES: dict[str, Callable[[], Backend]] = {
    "dense": DenseBackend,
    "native": NativeBackend,
    "spconv": _spconv,
    "torchsparse": _torchsparse,
}
_INSTANCES: dict[str, Backend] = {}


def get_backend(name: str) -> Backend:
    """The backend called ``name``, checked; raises Unavailable with the reason if it cannot run."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown sparse backend {name!r}; known: {', '.join(BACKEND_NAMES)}")
    if name not in _INSTANCES:
        backend = _FACTORIES[name]()
        backend.check()
        _INSTANCES[name] = backend
    return _INSTANCES[name]


def check_backend(name: str) -> None:
    """Raise Unavailable (with the reason) unless backend ``name`` can run on this machine."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown sparse backend {name!r}; known: {', '.join(BACKEND_NAMES)}")
    _FACTORIES[name]().check()


def available_backends() -> list[str]:
    """Names of the backends that can run here."""
    names = []
    for name in BACKEND_NAMES:
        try:
            check_backend(name)
        except Unavailable:
            continue
        names.append(name)
    return names


__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "ConvSpec",
    "available_backends",
    "check_backend",
    "get_backend",
    "output_tensor",
]
