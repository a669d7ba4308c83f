"""The mmcv-lite compatibility layer: the mmcv._ext stand-in and the deformable-attention routing."""

from __future__ import annotations

import importlib.machinery
import importlib.util

import pytest
import torch

from methods.mmseg_models.compat import MissingExtOpError, ensure_mmseg_stack, make_ext_stand_in

needs_mmseg = pytest.mark.skipif(importlib.util.find_spec("mmseg") is None, reason="mmsegmentation not installed")


def test_stand_in_answers_any_op_with_a_clear_error() -> None:
    stand_in = make_ext_stand_in()
    assert isinstance(stand_in.__spec__, importlib.machinery.ModuleSpec)
    assert stand_in.__spec__.name == "mmcv._ext"
    op = stand_in.roi_align_forward
    with pytest.raises(MissingExtOpError, match="roi_align_forward is not available in mmcv-lite"):
        op(torch.zeros(1))
    with pytest.raises(AttributeError):
        _ = stand_in.__path__  # not a package: import machinery must not descend into it


@needs_mmseg
def test_compiled_op_through_mmcv_raises_missing_ext() -> None:
    ensure_mmseg_stack()
    import sys

    import mmcv.ops

    if not getattr(sys.modules["mmcv._ext"], "is_segharness_stand_in", False):
        pytest.skip("a compiled mmcv._ext is installed; nothing is stood in")
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.1]])
    with pytest.raises(RuntimeError, match="mmcv._ext op nms is not available in mmcv-lite"):
        mmcv.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5)


@needs_mmseg
def test_deformable_attention_runs_the_pytorch_reference() -> None:
    ensure_mmseg_stack()
    from mmcv.ops.multi_scale_deform_attn import (
        MultiScaleDeformableAttention,
        multi_scale_deformable_attn_pytorch,
    )

    torch.manual_seed(0)
    attention = MultiScaleDeformableAttention(
        embed_dims=32, num_heads=4, num_levels=2, num_points=2, batch_first=True
    ).eval()
    shapes = torch.tensor([[4, 6], [2, 3]])
    starts = torch.tensor([0, 24])
    value = torch.randn(1, 30, 32)
    query = torch.randn(1, 5, 32)
    points = torch.rand(1, 5, 2, 2)
    with torch.no_grad():
        output = attention(query, value=value, reference_points=points, spatial_shapes=shapes, level_start_index=starts)
        # The same computation spelled out with mmcv's reference implementation.
        projected = attention.value_proj(value).view(1, 30, 4, 8)
        offsets = attention.sampling_offsets(query).view(1, 5, 4, 2, 2, 2)
        weights = attention.attention_weights(query).view(1, 5, 4, 4).softmax(-1).view(1, 5, 4, 2, 2)
        normalizer = torch.stack([shapes[..., 1], shapes[..., 0]], -1)
        locations = points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        sampled = multi_scale_deformable_attn_pytorch(projected, shapes, locations, weights)
        expected = attention.output_proj(sampled) + query
    assert output.shape == (1, 5, 32)
    torch.testing.assert_close(output, expected)
