"""Trials of the sparse-convolution layer: latency of the sparse feature extractor per backend and
density (SparseRefine Table 7 and the latency column of Table 5b)."""

from __future__ import annotations

from harness.context import TrialContext
from harness.errors import Unsupported
from harness.registry import Metric, Param, trial

BACKENDS = ("dense", "spconv", "torchsparse", "native")
EXTRACTORS = ("4stage", "5stage", "6stage", "8level", "pointnet")


@trial(
    "sparse.extractor_latency",
    doc="Sparse feature extractor (MinkUNet / PointNet) inference latency per backend at a selector-like density.",
    params=[
        Param("backend", str, "native", doc="sparse conv backend", choices=BACKENDS),
        Param("density", float, 11.8, doc="selected pixels, % of the grid", low=0.01, high=100.0),
        Param("height", int, 512, doc="grid height (pixels)", low=16),
        Param("width", int, 1024, doc="grid width (pixels)", low=16),
        Param("variant", str, "6stage", doc="MinkUNet stride set (Table 5d) or pointnet", choices=EXTRACTORS),
        Param("width_mult", float, 1.0, doc="channel multiplier of the extractor", low=0.01),
    ],
    metrics=[
        Metric("latency", "ms", "lower", doc="extractor forward incl. kernel-map construction"),
        Metric("active_sites", "sites", "none"),
        Metric("density_measured", "%", "none"),
        Metric("latency_per_site_us", "us", "lower"),
    ],
    axes=("precision", "batch_size", "device"),
    version="1",
)
def extractor_latency(ctx: TrialContext) -> None:
    import torch

    from methods.datasets import normalize
    from methods.sparse import check_backend, from_dense, minkunet_variant, set_backend
    from methods.sparse.backends.spconv_backend import SUPPORTED_DTYPES
    from methods.sparse.masks import dataset_masks
    from methods.sparse.models import PointNet
    from methods.sparse.tensor import SparseTensor

    p = ctx.params
    check_backend(p["backend"])
    where = ctx.placement()
    if p["backend"] == "spconv" and where.dtype not in SUPPORTED_DTYPES:
        raise Unsupported(f"spconv has no {ctx.precision} kernels on {ctx.device}")

    ctx.progress(f"building {p['density']}% masks on {p['height']}x{p['width']}")
    batch = dataset_masks(ctx.dataset, ctx.batch_size, p["height"], p["width"], p["density"] / 100.0, ctx.seed)
    ctx.note("mask_source", batch.source)

    torch.manual_seed(ctx.seed)
    if p["variant"] == "pointnet":
        model = PointNet(3, out=max(1, int(round(32 * p["width_mult"]))))
    else:
        model = minkunet_variant(p["variant"], in_channels=3, width_mult=p["width_mult"])
    set_backend(model, p["backend"])
    x = from_dense(normalize(batch.images), batch.mask)
    spatial_shape = (p["height"], p["width"])

    def forward(extractor: torch.nn.Module, coords: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        # a fresh tensor per call: kernel maps are rebuilt, as they would be for every new image
        return extractor(SparseTensor(coords, feats, 1, spatial_shape, ctx.batch_size)).feats

    ctx.progress(f"timing {p['backend']} {p['variant']} at {p['density']}%")
    m = ctx.time_model("latency", model, x.coords, x.feats, call=forward, channels_last=False)
    with torch.inference_mode():  # the model was prepared in place: count the sites it builds
        probe = SparseTensor(where.tensor(x.coords), where.tensor(x.feats), 1, spatial_shape, ctx.batch_size)
        model(probe)
    assert probe.manager is not None
    strides = getattr(model, "strides", (1,))
    ctx.note("sites_per_stride", {str(s): int(probe.manager.coords(s).shape[0]) for s in strides})
    ctx.note("compute_threads", 1 if p["backend"] == "spconv" else m.threads)  # spconv is forced to 1
    sites = int(x.coords.shape[0])
    ctx.record("active_sites", sites)
    ctx.record("density_measured", 100.0 * sites / (ctx.batch_size * p["height"] * p["width"]))
    ctx.record("latency_per_site_us", m.median * 1e6 / max(1, sites))
