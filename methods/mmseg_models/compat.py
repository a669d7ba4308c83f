"""Make the mmseg 1.x stack importable on top of mmcv-lite. The only place that touches mmcv internals.

mmcv-lite ships the Python side of ``mmcv.ops`` but not the compiled ``mmcv._ext``; mmseg and mmdet
import ``mmcv.ops`` at import time, and every op module resolves its kernels from ``mmcv._ext`` up
front. :func:`ensure_mmseg_stack` therefore registers a stand-in ``mmcv._ext`` whose attributes are
callables raising a clear ``RuntimeError`` when used, so import works and the pure-PyTorch parts
of the models run, while anything that truly needs a compiled kernel fails loudly.

The one compiled op the five baselines can reach is ``MultiScaleDeformableAttention`` (Mask2Former's
pixel decoder). mmcv already falls back to ``multi_scale_deformable_attn_pytorch`` on CPU; on CUDA
it would call the kernel, so when the stand-in is active we force that module's fallback on every
device (the fallback is mmcv's own reference implementation; it is slower, not different).

Everything happens lazily, on the first request for an mmseg model, so ``harness list`` stays fast.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Callable
from typing import Any, NoReturn

from harness.errors import Unavailable

EXT_MODULE_NAME = "mmcv._ext"
INSTALL_HINT = "pip install mmcv-lite==2.1.0 mmengine==0.10.7 mmsegmentation==1.2.2 mmdet==3.3.0 ftfy regex"


class MissingExtOpError(RuntimeError):
    """A compiled mmcv op was called, but only the mmcv-lite stand-in for ``mmcv._ext`` exists."""


def _missing_op(op_name: str) -> Callable[..., NoReturn]:
    def raise_missing(*_args: Any, **_kwargs: Any) -> NoReturn:
        raise MissingExtOpError(
            f"mmcv._ext op {op_name} is not available in mmcv-lite (no compiled kernels); "
            "install the full mmcv built for this torch to use it"
        )

    raise_missing.__name__ = op_name
    raise_missing.__qualname__ = f"mmcv_ext_stand_in.{op_name}"
    return raise_missing


def _ext_getattr(name: str) -> Callable[..., NoReturn]:
    # Dunder lookups (``__path__``, ``__file__``, ...) must fail normally so that import machinery,
    # pickling and introspection treat the stand-in as an ordinary non-package module.
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)
    return _missing_op(name)


def make_ext_stand_in() -> types.ModuleType:
    """A module object that answers every attribute with a callable raising MissingExtOpError."""
    module = types.ModuleType(EXT_MODULE_NAME, "Stand-in for mmcv's compiled ops (mmcv-lite has none).")
    module.__spec__ = importlib.machinery.ModuleSpec(EXT_MODULE_NAME, loader=None, origin="segharness stand-in")
    module.__getattr__ = _ext_getattr  # type: ignore[method-assign]
    module.is_segharness_stand_in = True  # type: ignore[attr-defined]
    return module


def is_ext_stand_in_active() -> bool:
    return getattr(sys.modules.get(EXT_MODULE_NAME), "is_segharness_stand_in", False) is True


def _compiled_ext_present() -> bool:
    if EXT_MODULE_NAME in sys.modules:
        return not is_ext_stand_in_active()
    try:
        return importlib.util.find_spec(EXT_MODULE_NAME) is not None
    except (ImportError, ValueError):
        return False


def _route_deformable_attention_to_pytorch() -> None:
    import mmcv.ops.multi_scale_deform_attn as msda

    # MultiScaleDeformableAttention.forward picks the kernel only when these flags say a CUDA/MLU
    # device is usable; clearing them makes it take multi_scale_deformable_attn_pytorch everywhere.
    msda.IS_CUDA_AVAILABLE = False
    msda.IS_MLU_AVAILABLE = False


@functools.cache
def ensure_mmseg_stack() -> None:
    """Import mmseg (+ mmdet for Mask2Former) and register their modules; idempotent.

    Raises Unavailable (with the install command) when the packages are missing.
    """
    if importlib.util.find_spec("mmcv") is None or importlib.util.find_spec("mmseg") is None:
        raise Unavailable(f"mmsegmentation stack is not installed; {INSTALL_HINT}")
    if not _compiled_ext_present():
        sys.modules[EXT_MODULE_NAME] = make_ext_stand_in()
        _route_deformable_attention_to_pytorch()
    try:
        import mmdet.models  # noqa: F401  (registers mmdet.* types used by Mask2Former)
        import mmseg.models  # noqa: F401
        from mmdet.utils import register_all_modules as register_mmdet_modules
        from mmseg.utils import register_all_modules as register_mmseg_modules
    except ImportError as error:
        raise Unavailable(f"cannot import the mmseg stack ({error}); {INSTALL_HINT}") from error
    register_mmdet_modules(init_default_scope=False)
    register_mmseg_modules(init_default_scope=False)
