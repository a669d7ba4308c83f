"""#Params and MACs of the mmseg baselines, counted with fvcore (one fused multiply-add = one "flop")."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from methods.mmseg_models.models import build_mmseg_model


def baddbmm_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """MACs of ``baddbmm(bias, batch1 [b,n,m], batch2 [b,m,p])``: b*n*m*p (fvcore has no rule for it;
    torch's attention math path uses it when a mask is given, e.g. Mask2Former's masked attention)."""
    from fvcore.nn.jit_handles import get_shape

    batch, rows, inner = get_shape(inputs[1])
    columns = get_shape(inputs[2])[-1]
    return batch * rows * inner * columns


def parameter_count_m(model: nn.Module) -> float:
    """Number of parameters (millions), buffers excluded."""
    return sum(parameter.numel() for parameter in model.parameters()) / 1e6


def parameter_breakdown(model: nn.Module) -> dict[str, float]:
    """#Params (millions) of a baseline in total and per sub-module of its mmseg segmentor
    (``backbone``, ``decode_head``, ...) and, one level down, of the decode head
    (``decode_head.pixel_decoder``, ``decode_head.transformer_decoder``, ...): the parts a paper may
    or may not have counted. Parameters held by a module itself (not by a child) are under
    ``<module>.<own>``."""
    segmentor = getattr(model, "segmentor", model)
    parts: dict[str, float] = {"total": parameter_count_m(segmentor)}
    for name, child in segmentor.named_children():
        count = parameter_count_m(child)
        if count == 0:
            continue
        parts[name] = count
        if name != "decode_head":
            continue
        for inner, grandchild in child.named_children():
            inner_count = parameter_count_m(grandchild)
            if inner_count:
                parts[f"{name}.{inner}"] = inner_count
        own = sum(p.numel() for p in child.parameters(recurse=False)) / 1e6
        if own:
            parts[f"{name}.<own>"] = own
    parts.setdefault("backbone", 0.0)
    return parts


def complexity(
    name: str, height: int, width: int, *, num_classes: int = 19, model: nn.Module | None = None
) -> dict[str, Any]:
    """params_m and gmacs of one forward at batch 1 and height x width.

    ``model`` reuses an already built baseline (building Swin-L takes seconds). ``uncounted_ops``
    lists the operators fvcore has no rule for (they contribute 0 MACs), with their call counts.
    """
    from fvcore.nn import FlopCountAnalysis

    if model is None:
        model = build_mmseg_model(name, num_classes)
    was_training = model.training
    model.eval()
    try:
        images = torch.zeros(1, 3, height, width)
        with torch.no_grad():
            analysis = FlopCountAnalysis(model, images)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            analysis.set_op_handle("aten::baddbmm", baddbmm_macs)
            macs = analysis.total()
            uncounted_ops = dict(analysis.unsupported_ops())
    finally:
        model.train(was_training)
    return {
        "params_m": parameter_count_m(model),
        "gmacs": macs / 1e9,
        "height": height,
        "width": width,
        "uncounted_ops": uncounted_ops,
    }
