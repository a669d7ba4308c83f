"""The one sparse-convolution layer of the project.

- ``SparseTensor`` (coords (batch, y, x) at the tensor's stride, feats, stride, spatial_shape at
  stride 1, batch_size), ``from_dense`` / ``to_dense``;
- backends "dense" | "spconv" | "torchsparse" | "native" behind one interface
  (``available_backends()``, ``check_backend(name)`` raising harness.errors.Unavailable);
- layers ``SparseConv2d`` (submanifold, strided down, transposed up; canonical weight [K*K, in, out]),
  ``SparseBatchNorm``, ``SparseReLU``, ``set_backend``;
- models ``MinkUNet`` and ``PointNet``.
"""

from __future__ import annotations

from methods.sparse.backends import BACKEND_NAMES, ConvSpec, available_backends, check_backend, get_backend
from methods.sparse.models import VARIANTS, MinkUNet, PointNet, minkunet_variant
from methods.sparse.nn import SparseBatchNorm, SparseConv2d, SparseReLU, cat_feats, set_backend
from methods.sparse.tensor import CoordinateManager, SparseTensor, from_dense, site_mask, to_dense

__all__ = [
    "BACKEND_NAMES",
    "VARIANTS",
    "ConvSpec",
    "CoordinateManager",
    "MinkUNet",
    "PointNet",
    "SparseBatchNorm",
    "SparseConv2d",
    "SparseReLU",
    "SparseTensor",
    "available_backends",
    "cat_feats",
    "check_backend",
    "from_dense",
    "get_backend",
    "minkunet_variant",
    "set_backend",
    "site_mask",
    "to_dense",
]
