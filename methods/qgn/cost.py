"""Cost of a forward pass: activation memory (QGN Table 6) and multiply-accumulates (Table 2).

Activation memory, measured on any device without an allocator: run one *training-mode* forward
pass (batch-norm in batch mode, autograd recording) and account the bytes of the distinct tensor
storages that the pass keeps alive, i.e.

- every tensor autograd saves for the backward pass (``torch.autograd.graph.saved_tensors_hooks``),
- plus the tensors the pass returns (encoder features, logits, quadtree site coordinates),

excluding parameter storages and the input image. Storages are deduplicated (views and in-place
results share one), and each is attributed to the phase (encoder or decoder) that first kept it.
This is the activation memory of training; it depends on how each operator saves its inputs, e.g.
the native sparse conv's implicit GEMM keeps its gathered [N, 9*C] neighbour matrix.

A second, implementation-independent figure ("feature maps") accounts, in the same pass and the same
way, the distinct storages of every module's output (dense maps, or the features at the active
sites of a sparse tensor: the hash-table activations A_l of QGN eq. 9) plus the returned tensors.

MACs are counted with forward hooks: dense ``Conv2d`` (output elements x C_in/groups x k x k),
``Linear`` (rows x in x out), and submanifold ``SparseConv2d`` as the number of present
(input, output) neighbour pairs x C_in x C_out, i.e. what a rulebook-based sparse conv computes
(our native GEMM backend also multiplies the zero rows of absent neighbours; that is not counted).
Normalisation, activations, upsampling and indexing are not counted, as usual.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class StorageLedger:
    """Distinct storages seen, in bytes, per phase.

    Recorded tensors are held until the ledger is dropped, so that a freed storage's address cannot
    be reused by a later tensor and be mistaken for one already counted.
    """

    skip: set[int] = field(default_factory=set)
    seen: dict[int, str] = field(default_factory=dict)
    bytes_by_phase: dict[str, int] = field(default_factory=dict)
    phase: str = "encoder"
    held: list[torch.Tensor] = field(default_factory=list)

    def add(self, tensor: torch.Tensor) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.layout != torch.strided:
            return
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key == 0 or key in self.skip or key in self.seen:
            return
        self.seen[key] = self.phase
        self.held.append(tensor)
        self.bytes_by_phase[self.phase] = self.bytes_by_phase.get(self.phase, 0) + storage.nbytes()

    def add_all(self, value: Any) -> None:
        for tensor in iter_tensors(value):
            self.add(tensor)


def iter_tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside nested lists / tuples / dicts / dataclass-like objects."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from iter_tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_tensors(item)
    elif hasattr(value, "__dict__"):
        for item in vars(value).values():
            yield from iter_tensors(item)


@dataclass(frozen=True)
class ActivationMemory:
    encoder_bytes: int
    decoder_bytes: int
    encoder_map_bytes: int = 0
    decoder_map_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.encoder_bytes + self.decoder_bytes

    @property
    def total_map_bytes(self) -> int:
        return self.encoder_map_bytes + self.decoder_map_bytes


def activation_memory(
    model: nn.Module,
    image: torch.Tensor,
    encode: Callable[[torch.Tensor], Any],
    decode: Callable[[Any], Any],
) -> ActivationMemory:
    """Training-mode forward ``decode(encode(image))`` with the storage accounting described above."""
    ledger = StorageLedger()
    ledger.skip = {p.untyped_storage().data_ptr() for p in model.parameters()}
    ledger.skip |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    ledger.skip.add(image.untyped_storage().data_ptr())

    maps = StorageLedger(skip=set(ledger.skip))

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        ledger.add(tensor)
        return tensor

    def output_hook(module: nn.Module, inputs: Any, output: Any) -> None:
        maps.add_all(output)

    handles = [m.register_forward_hook(output_hook) for m in model.modules() if m is not model]
    was_training = model.training
    # batch-norm running statistics would move in the training-mode pass: keep them unchanged
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    model.train()
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            ledger.phase = maps.phase = "encoder"
            encoded = encode(image)
            ledger.add_all(encoded)
            maps.add_all(encoded)
            ledger.phase = maps.phase = "decoder"
            decoded = decode(encoded)
            ledger.add_all(decoded)
            maps.add_all(decoded)
    finally:
        model.train(was_training)
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for handle in handles:
            handle.remove()
    return ActivationMemory(
        ledger.bytes_by_phase.get("encoder", 0),
        ledger.bytes_by_phase.get("decoder", 0),
        maps.bytes_by_phase.get("encoder", 0),
        maps.bytes_by_phase.get("decoder", 0),
    )


@dataclass
class MacCounter:
    """Multiply-accumulates per phase, filled by forward hooks."""

    phase: str = "encoder"
    macs: dict[str, int] = field(default_factory=dict)

    def add(self, count: int) -> None:
        self.macs[self.phase] = self.macs.get(self.phase, 0) + int(count)


def _conv_macs(module: nn.Conv2d, output: torch.Tensor) -> int:
    kh, kw = module.kernel_size
    return output.numel() * (module.in_channels // module.groups) * kh * kw


def _sparse_conv_macs(module: nn.Module, x: Any) -> int:
    spec = module.spec_for(x)
    table = x.manager.neighbours(spec.kind, spec.stride_in, spec.stride_out, spec.kernel)
    return int((table >= 0).sum()) * module.in_channels * module.out_channels


@contextlib.contextmanager
def count_macs(modules: Iterable[nn.Module], counter: MacCounter) -> Iterator[MacCounter]:
    from methods.sparse.nn import SparseConv2d

    handles = []

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if isinstance(module, nn.Conv2d):
            counter.add(_conv_macs(module, output))
        elif isinstance(module, nn.Linear):
            counter.add(output.numel() // module.out_features * module.in_features * module.out_features)
        elif isinstance(module, SparseConv2d):
            counter.add(_sparse_conv_macs(module, inputs[0]))

    for module in modules:
        if isinstance(module, (nn.Conv2d, nn.Linear, SparseConv2d)):
            handles.append(module.register_forward_hook(hook))
    try:
        yield counter
    finally:
        for handle in handles:
            handle.remove()


def forward_macs(
    model: nn.Module,
    image: torch.Tensor,
    encode: Callable[[torch.Tensor], Any],
    decode: Callable[[Any], Any],
) -> dict[str, int]:
    """MACs of one eval-mode forward, split into encoder and decoder."""
    counter = MacCounter()
    model.eval()
    with torch.no_grad(), count_macs(model.modules(), counter):
        counter.phase = "encoder"
        encoded = encode(image)
        counter.phase = "decoder"
        decode(encoded)
    return {"encoder": counter.macs.get("encoder", 0), "decoder": counter.macs.get("decoder", 0)}
