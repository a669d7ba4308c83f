"""What a sparse-convolution backend is: one function computing a conv's output features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from methods.sparse.tensor import SparseTensor

CONV_KINDS = ("subm", "down", "up")


@dataclass(frozen=True)
class ConvSpec:
    """A conv between two tensor strides: submanifold (same sites), down (to the coarser set derived
    by floor) or up (transposed, back onto the cached finer set). See ``kernel_map`` for the maths."""

    kind: str
    kernel: int
    stride_in: int
    stride_out: int

    def __post_init__(self) -> None:
        if self.kind not in CONV_KINDS:
            raise ValueError(f"conv kind must be one of {CONV_KINDS}, got {self.kind!r}")
        if self.kind == "subm" and self.stride_in != self.stride_out:
            raise ValueError("a submanifold conv keeps its stride")
        if self.kind == "down" and not self.stride_out > self.stride_in:
            raise ValueError(f"a down conv must increase the stride ({self.stride_in} -> {self.stride_out})")
        if self.kind == "up" and not self.stride_out < self.stride_in:
            raise ValueError(f"an up conv must decrease the stride ({self.stride_in} -> {self.stride_out})")
        if self.kind == "subm" and self.kernel % 2 == 0:
            raise ValueError("a submanifold conv needs an odd kernel")

    @property
    def ratio(self) -> float:
        """Coarse stride / fine stride (> 1 for down and up convs)."""
        lo, hi = sorted((self.stride_in, self.stride_out))
        return hi / lo

    @property
    def integer_ratio(self) -> int | None:
        lo, hi = sorted((self.stride_in, self.stride_out))
        return hi // lo if hi % lo == 0 else None


class Backend(Protocol):
    name: str

    def check(self) -> None:
        """Raise harness.errors.Unavailable with the reason if this backend cannot run here."""

    def conv(self, x: SparseTensor, weight: Tensor, spec: ConvSpec) -> Tensor:
        """Output features of the conv with canonical ``weight`` [K*K, C_in, C_out], no bias.

        Rows follow the output site set: x's sites (subm), ``manager.down_coords`` (down) or the
        cached finer set (up)."""
        ...


def output_tensor(x: SparseTensor, feats: Tensor, spec: ConvSpec) -> SparseTensor:
    """Wrap output features on the output site set of ``spec``."""
    if spec.kind == "subm":
        return x.with_feats(feats)
    return x.at_stride(spec.stride_out, feats)
