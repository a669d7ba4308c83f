"""The sparse tensor of the project and the coordinate manager that caches its kernel maps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from methods.sparse import kernel_map as km


class CoordinateManager:
    """Coordinate sets per tensor stride and the kernel maps between them, built once per forward.

    Every tensor derived from one input (by convs, norms, activations) shares its manager, so a
    map for (kind, strides, kernel) is built the first time a layer needs it and reused after.
    Backends keep their own per-forward state (e.g. spconv indice dicts) in ``backend_state``.
    """

    def __init__(self, spatial_shape: tuple[int, int], batch_size: int):
        self.spatial_shape = (int(spatial_shape[0]), int(spatial_shape[1]))
        self.batch_size = int(batch_size)
        self._coords: dict[int, Tensor] = {}
        self._tables: dict[int, km.KeyTable] = {}
        self._maps: dict[tuple[Any, ...], Tensor] = {}
        self.backend_state: dict[str, Any] = {}
        self.maps_built = 0

    def grid(self, stride: int) -> tuple[int, int]:
        return km.grid_shape(self.spatial_shape, stride)

    def register(self, stride: int, coords: Tensor) -> None:
        known = self._coords.get(stride)
        if known is not None and known is not coords and not torch.equal(known, coords.long()):
            raise ValueError(f"a different coordinate set is already registered at stride {stride}")
        self._coords.setdefault(stride, coords.long())

    def coords(self, stride: int) -> Tensor:
        try:
            return self._coords[stride]
        except KeyError:
            raise KeyError(
                f"no coordinates cached at stride {stride} (known: {sorted(self._coords)}); a transposed "
                "conv can only return to a stride that a down conv came from"
            ) from None

    def has_stride(self, stride: int) -> bool:
        return stride in self._coords

    def table(self, stride: int) -> km.KeyTable:
        if stride not in self._tables:
            keys = km.linear_keys(self.coords(stride), self.grid(stride))
            self._tables[stride] = km.KeyTable.build(keys, km.key_space(self.grid(stride), self.batch_size))
        return self._tables[stride]

    def down_coords(self, stride: int, coarse_stride: int) -> Tensor:
        """The coarse site set at ``coarse_stride`` derived from the set at ``stride`` (cached)."""
        if coarse_stride not in self._coords:
            coarse = km.downsample_coords(self.coords(stride), stride, coarse_stride, self.grid(coarse_stride))
            self._coords[coarse_stride] = coarse
        return self._coords[coarse_stride]

    def neighbours(self, kind: str, stride_in: int, stride_out: int, kernel: int) -> Tensor:
        """Output-stationary neighbour table [N_out, K*K] (-1 = absent) for a conv, cached."""
        key = ("table", kind, stride_in, stride_out, kernel)
        if key not in self._maps:
            self._maps[key] = self._build(kind, stride_in, stride_out, kernel)
            self.maps_built += 1
        return self._maps[key]

    def derived(self, key: tuple[Any, ...], build: Any) -> Any:
        """Cache any other per-forward structure (e.g. gather-scatter pairs) under ``key``."""
        if key not in self._maps:
            self._maps[key] = build()
        return self._maps[key]

    def _build(self, kind: str, stride_in: int, stride_out: int, kernel: int) -> Tensor:
        if kind == "subm":
            return km.submanifold_map(self.coords(stride_in), self.table(stride_in), self.grid(stride_in), kernel)
        if kind == "down":
            coarse = self.down_coords(stride_in, stride_out)
            return km.down_map(self.table(stride_in), self.grid(stride_in), stride_in, coarse, stride_out, kernel)
        if kind == "up":
            return km.up_map(
                self.coords(stride_in),
                stride_in,
                self.coords(stride_out),
                stride_out,
                self.grid(stride_out),
                kernel,
                self.batch_size,
            )
        raise ValueError(f"unknown conv kind {kind!r}")


@dataclass
class SparseTensor:
    """Features at active sites of a batch of 2-D grids.

    coords: int [N, 3] = (batch, y, x) on the grid at ``stride``; feats: [N, C];
    spatial_shape: (H, W) of the image at stride 1; batch_size: number of images.
    """

    coords: Tensor
    feats: Tensor
    stride: int = 1
    spatial_shape: tuple[int, int] = (0, 0)
    batch_size: int = 1
    manager: CoordinateManager | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.coords.dim() != 2 or self.coords.shape[1] != 3:
            raise ValueError(f"coords must be [N, 3] (batch, y, x), got {tuple(self.coords.shape)}")
        if self.coords.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"coords must be int32 or int64, got {self.coords.dtype}")
        if self.feats.dim() != 2 or self.feats.shape[0] != self.coords.shape[0]:
            raise ValueError(f"feats must be [N, C] with N={self.coords.shape[0]}, got {tuple(self.feats.shape)}")
        self.stride = int(self.stride)
        self.spatial_shape = (int(self.spatial_shape[0]), int(self.spatial_shape[1]))
        if self.manager is None:
            self.coords = self.coords.long().contiguous()
            self.manager = CoordinateManager(self.spatial_shape, self.batch_size)
            self.manager.register(self.stride, self.coords)

    @property
    def num_sites(self) -> int:
        return int(self.coords.shape[0])

    @property
    def channels(self) -> int:
        return int(self.feats.shape[1])

    @property
    def grid(self) -> tuple[int, int]:
        return km.grid_shape(self.spatial_shape, self.stride)

    def with_feats(self, feats: Tensor) -> SparseTensor:
        """Same sites (and coordinate manager), new features."""
        return SparseTensor(self.coords, feats, self.stride, self.spatial_shape, self.batch_size, self.manager)

    def at_stride(self, stride: int, feats: Tensor) -> SparseTensor:
        """A tensor on this manager's cached site set at ``stride`` with ``feats``."""
        assert self.manager is not None
        coords = self.manager.coords(stride)
        return SparseTensor(coords, feats, stride, self.spatial_shape, self.batch_size, self.manager)

    def flat_index(self) -> Tensor:
        """Row index of each site in a [B*Hg*Wg] flattening of the dense grid."""
        height, width = self.grid
        c = self.coords.long()
        return (c[:, 0] * height + c[:, 1]) * width + c[:, 2]


def from_dense(dense: Tensor, mask: Tensor) -> SparseTensor:
    """Sparse tensor at stride 1 from dense [B, C, H, W] features and a boolean mask [B, H, W].

    Sites are ordered (b, y, x) row-major.
    """
    if dense.dim() != 4 or mask.shape != (dense.shape[0], *dense.shape[2:]):
        raise ValueError(f"need dense [B,C,H,W] and mask [B,H,W]; got {tuple(dense.shape)}, {tuple(mask.shape)}")
    mask = mask.bool()
    coords = torch.nonzero(mask).contiguous()
    feats = dense.permute(0, 2, 3, 1)[mask]
    return SparseTensor(coords, feats, 1, (dense.shape[2], dense.shape[3]), dense.shape[0])


def to_dense(x: SparseTensor, fill: float = 0.0) -> Tensor:
    """Scatter ``x`` into a dense [B, C, Hg, Wg] tensor on its own grid (``fill`` elsewhere)."""
    height, width = x.grid
    flat = x.feats.new_full((x.batch_size * height * width, x.channels), fill)
    flat.index_copy_(0, x.flat_index(), x.feats)  # in place: the out-of-place form copies the whole grid
    return flat.view(x.batch_size, height, width, x.channels).permute(0, 3, 1, 2)


def site_mask(x: SparseTensor) -> Tensor:
    """Boolean [B, Hg, Wg] map of the active sites of ``x``."""
    height, width = x.grid
    flat = torch.zeros(x.batch_size * height * width, dtype=torch.bool, device=x.coords.device)
    flat[x.flat_index()] = True
    return flat.view(x.batch_size, height, width)
