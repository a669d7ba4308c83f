"""Cost of SparseRefine at inference: #MACs counted by hand from the actual kernel maps, and the
end-to-end pipeline (LR dense pass -> entropy selector -> sparse extractor -> ensembler) as one
module for latency measurement (Tables 6 and 7, supplementary Table 3)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from methods.sparserefine.ensemblers import GatedEnsembler
from methods.sparserefine.lr_outputs import upsample_nearest
from methods.sparserefine.refiner import PixelBatch, SparseRefiner
from methods.sparserefine.selectors import entropy_map


@dataclass
class MacCount:
    """Multiply-accumulates per component; ``convs`` lists (kind, stride_in, stride_out, pairs, cin,
    cout) for every sparse conv."""

    extractor: int = 0
    head: int = 0
    ensembler: int = 0
    convs: list[tuple[str, int, int, int, int, int]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.extractor + self.head + self.ensembler


def conv_pairs(conv: nn.Module, x) -> tuple[str, int, int, int]:
    """(kind, stride_in, stride_out, kernel-map pairs) of sparse conv ``conv`` applied to ``x``: the
    number of (output site, input site, offset) triples that really exist."""
    spec = conv.spec_for(x)
    if spec.kind == "subm" and spec.kernel == 1:
        return spec.kind, spec.stride_in, spec.stride_out, x.num_sites
    table = x.manager.neighbours(spec.kind, spec.stride_in, spec.stride_out, spec.kernel)
    return spec.kind, spec.stride_in, spec.stride_out, int((table >= 0).sum())


def linear_macs(module: nn.Linear, rows: int) -> int:
    return rows * module.in_features * module.out_features


@torch.inference_mode()
def count_macs(model: SparseRefiner, pixels: PixelBatch) -> MacCount:
    """Run ``model`` once on ``pixels`` and count MACs: per sparse conv the kernel-map pairs × Cin ×
    Cout; per linear layer rows × in × out. BatchNorm, ReLU and the softmax/entropy arithmetic of the
    gated ensembler are not MACs and are left out (BN folds into the convs at inference)."""
    from methods.sparse import SparseConv2d

    count = MacCount()
    hooks = []

    def on_conv(module, inputs, output) -> None:
        kind, s_in, s_out, pairs = conv_pairs(module, inputs[0])
        count.convs.append((kind, s_in, s_out, pairs, module.in_channels, module.out_channels))
        count.extractor += pairs * module.in_channels * module.out_channels

    def on_linear(module, inputs, output) -> None:
        count.extractor += linear_macs(module, inputs[0].shape[0])

    for module in model.extractor.modules():
        if isinstance(module, SparseConv2d):
            hooks.append(module.register_forward_hook(on_conv))
        elif isinstance(module, nn.Linear):
            hooks.append(module.register_forward_hook(on_linear))
    try:
        y2 = model.refine(pixels)
    finally:
        for hook in hooks:
            hook.remove()
    rows = pixels.coords.shape[0]
    count.head = linear_macs(model.head, rows)
    if isinstance(model.ensembler, GatedEnsembler):
        count.ensembler = sum(linear_macs(m, rows) for m in model.ensembler.modules() if isinstance(m, nn.Linear))
    del y2
    return count


def lr_grid_entropy_mask(logits_lr: torch.Tensor, alpha: float, factor: int) -> torch.Tensor:
    """Entropy selector on the LR grid, mask nearest-upsampled ×factor: bit-identical to selecting on
    the nearest-upsampled logits (every factor×factor block shares its logits) at 1/factor² the cost."""
    return upsample_nearest(entropy_map(logits_lr) > alpha, factor)


class SparseRefinePipeline(nn.Module):
    """Full-resolution normalised images -> final logits at full resolution.

    The LR dense pass runs on the ×``factor`` area-downsampled image; the entropy selector on its
    logits; the refiner on the selected full-resolution pixels; the output is the nearest-upsampled
    LR logits with the refined pixels written in. Each stage is also callable on its own for the
    breakdown. ``fixed_mask`` [B, H, W] replaces the entropy selector's mask after it is computed
    (for timing networks with random weights, whose entropy maps mean nothing).
    """

    def __init__(
        self,
        lr_module: nn.Module,
        refiner: SparseRefiner,
        alpha: float,
        factor: int = 2,
        fixed_mask: torch.Tensor | None = None,
    ):
        super().__init__()
        self.lr_module = lr_module
        self.refiner = refiner
        self.alpha = alpha
        self.factor = factor
        self.fixed_mask = fixed_mask

    def dense(self, images: torch.Tensor) -> torch.Tensor:
        """LR logits on the grid of ceil(side / factor) cells: an odd side is padded by repeating
        its last row / column first, as the LR baselines' own input (methods.baselines.model_input)."""
        height, width = images.shape[-2:]
        pad_bottom, pad_right = -height % self.factor, -width % self.factor
        if pad_bottom or pad_right:
            images = nn.functional.pad(images, (0, pad_right, 0, pad_bottom), mode="replicate")
        small = nn.functional.avg_pool2d(images, self.factor)
        return self.lr_module(small)

    def select(self, images: torch.Tensor, logits_lr: torch.Tensor) -> PixelBatch:
        from methods.sparserefine.refiner import gather_pixels

        size = images.shape[-2:]
        mask = upsample_nearest(entropy_map(logits_lr) > self.alpha, self.factor, size)
        if self.fixed_mask is not None:
            mask = self.fixed_mask  # the selector's cost is paid; its mask is replaced
        return gather_pixels(mask, images, upsample_nearest(logits_lr, self.factor, size), self.refiner.config)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits_lr = self.dense(images)
        pixels = self.select(images, logits_lr)
        out = upsample_nearest(logits_lr, self.factor, images.shape[-2:])
        if pixels.coords.shape[0]:
            y, _ = self.refiner(pixels)
            b, yy, xx = pixels.coords.long().unbind(1)
            out.permute(0, 2, 3, 1)[b, yy, xx] = y.to(out.dtype)
        return out
