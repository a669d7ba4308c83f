"""SparseRefine selectors and ensemblers on hand-made inputs with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from harness.devices import Placement
from methods.sparserefine.ensemblers import (
    DirectEnsembler,
    EntropyEnsembler,
    GatedEnsembler,
    OracleEnsembler,
    build_ensembler,
)
from methods.sparserefine.lr_outputs import SplitOutputs
from methods.sparserefine.selection import (
    SELECTOR_KINDS,
    OracleSelector,
    SelectionSpec,
    TimingBatch,
    build_selector,
)
from methods.sparserefine.selectors import (
    LearnableSelector,
    SelectionCounts,
    entropy_map,
    feature_magnitude,
    lr_errors,
    threshold_for_density,
)


def test_entropy_of_uniform_logits_is_log_c():
    logits = torch.zeros(2, 7, 3, 4)
    assert torch.allclose(entropy_map(logits), torch.full((2, 3, 4), math.log(7)), atol=1e-6)


def test_entropy_of_one_hot_logits_is_zero():
    logits = torch.full((1, 5, 2, 2), -1e4)
    logits[:, 2] = 1e4
    assert torch.allclose(entropy_map(logits), torch.zeros(1, 2, 2), atol=1e-6)


def test_entropy_matches_the_formula_with_clamp():
    logits = torch.tensor([[2.0, 0.5, -1.0]])
    p = torch.softmax(logits, dim=-1)
    expected = -(p * torch.log(p.clamp(min=1e-5))).sum(-1)
    assert torch.allclose(entropy_map(logits, dim=-1), expected)


def _split(logits: torch.Tensor, labels: torch.Tensor, magnitude: torch.Tensor | None = None) -> SplitOutputs:
    """LR outputs at factor 1 (logits [N, C, H, W], labels [N, H, W]), images all zero."""
    n, _, h, w = logits.shape
    return SplitOutputs(
        images=torch.zeros(n, 3, h, w, dtype=torch.uint8),
        labels=labels,
        logits_grid=logits.half(),
        magnitude_grid=torch.zeros(n, h, w) if magnitude is None else magnitude,
        factor=1,
        num_classes=logits.shape[1],
        names=[str(i) for i in range(n)],
    )


def _timed_mask(selector, split: SplitOutputs, features: torch.Tensor | None = None) -> torch.Tensor:
    batch = TimingBatch(split, [0], Placement(torch.device("cpu")), 0, lambda: features)
    return selector.timed_call(batch)()


def test_every_selector_kind_is_one_registered_class():
    assert tuple(SELECTOR_KINDS) == ("entropy", "magnitude", "random", "learnable", "oracle")
    assert all(cls.kind == kind for kind, cls in SELECTOR_KINDS.items())
    with pytest.raises(ValueError, match="unknown selector 'edges'"):
        SelectionSpec("edges")


def test_entropy_selector_thresholds_strictly():
    logits = torch.zeros(1, 4, 1, 2)
    logits[0, 0, 0, 1] = 50.0  # confident pixel
    split = _split(logits, torch.zeros(1, 1, 2, dtype=torch.long))
    selector = build_selector(SelectionSpec("entropy", alpha=0.3), split)
    assert selector.mask(split, 0).tolist() == [[[True, False]]]
    assert _timed_mask(selector, split).tolist() == [[[True, False]]]  # the timed call computes the same
    uniform = build_selector(SelectionSpec("entropy", alpha=math.log(4)), split)
    assert not uniform.mask(split, 0).any()


def test_magnitude_selector_uses_the_l2_norm():
    feats = torch.zeros(1, 2, 1, 3)
    feats[0, :, 0, 0] = torch.tensor([3.0, 4.0])  # norm 5
    feats[0, :, 0, 1] = torch.tensor([1.0, 0.0])  # norm 1
    assert torch.allclose(feature_magnitude(feats), torch.tensor([[[5.0, 1.0, 0.0]]]))
    split = _split(torch.zeros(1, 2, 1, 3), torch.zeros(1, 1, 3, dtype=torch.long), feature_magnitude(feats))
    selector = build_selector(SelectionSpec("magnitude", threshold=2.0), split)
    assert selector.mask(split, 0).tolist() == [[[True, False, False]]]
    assert _timed_mask(selector, split, feats).tolist() == [[[True, False, False]]]
    assert selector.describe()["calibrated_on"] == "not calibrated (given)"


def test_random_selector_density_and_determinism():
    split = _split(torch.zeros(4, 2, 100, 100), torch.zeros(4, 100, 100, dtype=torch.long))
    selector = build_selector(SelectionSpec("random", density=0.2), split, seed=7)
    mask = torch.cat([selector.mask(split, i) for i in range(4)])
    assert abs(mask.float().mean().item() - 0.2) < 0.01
    again = build_selector(SelectionSpec("random", density=0.2), split, seed=7)
    assert torch.equal(mask, torch.cat([again.mask(split, i) for i in range(4)]))
    assert not torch.equal(selector.mask(split, 0), selector.mask(split, 1))  # each image its own draw
    assert _timed_mask(selector, split).shape == (1, 100, 100)


def test_oracle_selects_exactly_the_lr_errors_and_never_ignored_pixels():
    logits = torch.zeros(1, 3, 1, 4)
    logits[0, 0] = 1.0  # predicts class 0 everywhere
    labels = torch.tensor([[[0, 1, 255, 2]]])
    split = _split(logits, labels)
    oracle = build_selector(SelectionSpec("oracle"), split)
    assert oracle.mask(split, 0).tolist() == [[[False, True, False, True]]]
    assert torch.equal(oracle.mask(split, 0), lr_errors(logits, labels))
    # the timed oracle compares the raw prediction with the labels (void included: its cost, not its answer)
    assert _timed_mask(oracle, split).tolist() == [[[False, True, True, True]]]
    assert not OracleSelector.sweepable


def test_timed_calls_on_odd_sides_give_the_masks_at_the_image_size():
    """An odd-sided image (5x7) has an LR grid of ceil(side / 2) (3x4): every timed call crops its
    upsampled grid back to 5x7 and, for the deterministic kinds, equals the mask of the image."""
    gen = torch.Generator().manual_seed(0)
    h, w, c = 5, 7, 3
    feats = torch.randn(1, 4, 3, 4, generator=gen)
    labels = torch.randint(0, c, (1, h, w), generator=gen)
    labels[0, 0, :2] = 255
    split = SplitOutputs(
        images=torch.randint(0, 256, (1, 3, h, w), generator=gen, dtype=torch.uint8),
        labels=labels,
        logits_grid=torch.randn(1, c, 3, 4, generator=gen).half(),
        magnitude_grid=feature_magnitude(feats),
        factor=2,
        num_classes=c,
        names=["odd"],
    )
    learnable = LearnableSelector(c).eval
    for kind in SELECTOR_KINDS:
        selector = build_selector(SelectionSpec(kind, density=0.4), split, learnable=learnable)
        timed = _timed_mask(selector, split, feats)
        assert timed.shape == (1, h, w), kind
        if kind == "oracle":  # the timed oracle counts void as an error (its cost, not its answer)
            assert torch.equal(timed & (labels != 255), selector.mask(split, 0))
        elif kind != "random":
            assert torch.equal(timed, selector.mask(split, 0)), kind


def test_selection_counts():
    mask = torch.tensor([True, True, False, False])
    errors = torch.tensor([True, False, True, False])
    counts = SelectionCounts()
    counts.update(mask, errors)
    assert counts.as_dict() == {"density": 50.0, "recall": 50.0, "precision": 50.0}


def test_threshold_for_density():
    scores = torch.arange(1000, dtype=torch.float32)
    t = threshold_for_density(scores, 0.1)
    assert abs((scores > t).float().mean().item() - 0.1) < 0.002
    assert (scores > threshold_for_density(scores, 1.0)).all()


def test_learnable_selector_shapes():
    model = LearnableSelector(num_classes=5)
    probs = model(torch.randn(2, 3, 8, 9), torch.randn(2, 5, 8, 9))
    assert probs.shape == (2, 8, 9)
    assert ((probs >= 0) & (probs <= 1)).all()
    assert model.select(torch.randn(1, 3, 4, 4), torch.randn(1, 5, 4, 4), 1.0).sum() == 0


def test_direct_ensembler_returns_the_refinement():
    y1, y2 = torch.randn(5, 3), torch.randn(5, 3)
    assert torch.equal(DirectEnsembler()(y1, y2), y2)


def test_entropy_ensembler_keeps_the_lower_entropy_logits():
    confident = torch.tensor([10.0, 0.0, 0.0])
    flat = torch.tensor([0.1, 0.0, 0.0])
    y1 = torch.stack([confident, flat])
    y2 = torch.stack([flat, confident * 2])
    out = EntropyEnsembler()(y1, y2)
    assert torch.equal(out[0], confident)
    assert torch.equal(out[1], confident * 2)


def test_oracle_ensembler_keeps_the_one_right_by_ground_truth():
    y1 = torch.tensor([[5.0, 0.0], [5.0, 0.0]])
    y2 = torch.tensor([[0.0, 5.0], [0.0, 5.0]])
    labels = torch.tensor([0, 1])
    out = OracleEnsembler()(y1, y2, labels)
    assert out.argmax(-1).tolist() == [0, 1]
    # correctness beats label probability: y1 gives the label 0.45 but is wrong, y2 0.40 and right
    y1 = torch.log(torch.tensor([[0.45, 0.55, 1e-6]]))
    y2 = torch.log(torch.tensor([[0.40, 0.30, 0.30]]))
    assert torch.equal(OracleEnsembler()(y1, y2, torch.tensor([0])), y2)
    with pytest.raises(ValueError):
        OracleEnsembler()(y1, y2)


def _identity_fuser(gated: GatedEnsembler, num_classes: int) -> None:
    """Make the fuser compute the identity on inputs that stay positive after the first layer."""
    with torch.no_grad():
        first, last = gated.fuser[0], gated.fuser[2]
        first.weight.zero_()
        first.bias.zero_()
        last.weight.zero_()
        last.bias.zero_()
        # hidden = relu(x) (for positive x) in the first C units, then copy back
        first.weight[:num_classes, :num_classes] = torch.eye(num_classes)
        last.weight[:, :num_classes] = torch.eye(num_classes)


@pytest.mark.parametrize("prefer", [0, 1])
def test_gated_ensembler_with_forced_weights(prefer):
    c = 4
    gated = GatedEnsembler(c)
    _identity_fuser(gated, c)
    with torch.no_grad():  # gate output: huge logit on the preferred input -> weight ~1
        gated.gate[2].weight.zero_()
        gated.gate[2].bias.copy_(torch.tensor([50.0, -50.0] if prefer == 0 else [-50.0, 50.0]))
    y1 = torch.rand(6, c) + 0.1
    y2 = torch.rand(6, c) + 0.1
    out = gated(y1, y2)
    assert torch.allclose(gated.weights(y1, y2)[:, prefer], torch.ones(6))
    assert torch.allclose(out, y1 if prefer == 0 else y2, atol=1e-5)


def test_gated_ensembler_equal_weights_average():
    c = 3
    gated = GatedEnsembler(c)
    _identity_fuser(gated, c)
    with torch.no_grad():
        gated.gate[2].weight.zero_()
        gated.gate[2].bias.zero_()
    y1, y2 = torch.rand(4, c) + 0.1, torch.rand(4, c) + 0.1
    assert torch.allclose(gated(y1, y2), (y1 + y2) / 2, atol=1e-5)


def test_gated_ensembler_is_trainable():
    torch.manual_seed(0)
    gated = GatedEnsembler(3)
    y1, y2 = torch.randn(64, 3), torch.randn(64, 3)
    labels = y2.argmax(-1)
    opt = torch.optim.Adam(gated.parameters(), lr=1e-2)
    first = None
    for _ in range(100):
        loss = torch.nn.functional.cross_entropy(gated(y1, y2), labels)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_build_ensembler_rejects_unknown():
    assert isinstance(build_ensembler("entropy", 3), EntropyEnsembler)
    with pytest.raises(ValueError):
        build_ensembler("bogus", 3)


def _toy_split(n: int = 4, h: int = 32, w: int = 32):
    """LR logits that always predict class 0; the label is 1 exactly where the image is bright red,
    so the LR errors are the red pixels and only the RGB input reveals them."""

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 120, (n, 3, h, w), generator=gen, dtype=torch.uint8)
    red = torch.rand(n, h, w, generator=gen) < 0.1
    images[:, 0][red] = 250
    labels = red.long()
    logits = torch.zeros(n, 2, h, w)
    logits[:, 0] = 1.0
    return SplitOutputs(
        images=images,
        labels=labels,
        logits_grid=logits.half(),
        magnitude_grid=torch.ones(n, h, w),
        factor=1,
        num_classes=2,
        names=[str(i) for i in range(n)],
    )


def test_learnable_selector_learns_the_errors_on_a_toy():
    from methods.sparserefine.selection import LearnableTraining, train_learnable_selector

    split = _toy_split()
    art = train_learnable_selector(split, LearnableTraining(steps=60, batch=2, crop=(32, 32), lr=1e-2), 0, print)
    assert art["losses"][-1] < art["losses"][0]
    model = LearnableSelector(2)
    model.load_state_dict(art["state_dict"])
    selector = build_selector(SelectionSpec("learnable", density=0.1), split, learnable=model.eval)
    counts = SelectionCounts()
    for i in range(len(split)):
        counts.update(selector.mask(split, i), lr_errors(split.logits(i), split.labels[i : i + 1]))
    assert counts.recall > 80.0  # random selection at this density would find ~10%
    timed = _timed_mask(selector, split)
    assert timed.float().mean() > 0 and timed.shape == selector.mask(split, 0).shape


def test_gated_ensembler_starts_as_identity_fuser():
    gated = GatedEnsembler(5)
    x = torch.randn(7, 5)
    assert torch.allclose(gated.fuser(x), x, atol=1e-6)


def test_split_outputs_on_the_lr_grid_equal_the_full_resolution_definitions():
    """prediction / entropy / errors are computed on the LR grid and upsampled: they must equal
    argmax / entropy_map / lr_errors of the full-resolution logits (void excluded; the entropy up
    to float rounding)."""

    gen = torch.Generator().manual_seed(3)
    n, c, h, w, f = 2, 5, 6, 8, 2
    labels = torch.randint(0, c, (n, h * f, w * f), generator=gen)
    labels[:, 0, :3] = 255
    split = SplitOutputs(
        images=torch.zeros(n, 3, h * f, w * f, dtype=torch.uint8),
        labels=labels,
        logits_grid=torch.randn(n, c, h, w, generator=gen).half(),
        magnitude_grid=torch.ones(n, h, w),
        factor=f,
        num_classes=c,
        names=["a", "b"],
    )
    for i in range(n):
        full = split.logits(i)
        assert torch.equal(split.prediction(i), full.argmax(1))
        assert torch.allclose(split.entropy(i), entropy_map(full), rtol=0, atol=1e-6)
        assert torch.equal(split.errors(i), lr_errors(full, labels[i : i + 1]))
    assert not split.errors(0)[0, 0, :3].any()


def test_a_rows_seeds_share_the_frozen_baselines(monkeypatch, tmp_path):
    """Seed k of a row trains its own refiner (seed + k) on the same frozen LR/HR baselines (row seed)."""
    from harness.context import TrialContext
    from harness.registry import get_trial
    from methods.sparserefine.experiment import Experiment

    seen: list[int] = []
    monkeypatch.setattr(
        "methods.baselines.baseline.trained_baseline", lambda *args, seed, **kwargs: seen.append(seed) or seed
    )
    spec = get_trial("sparserefine.pipeline")
    for k in range(3):
        ctx = TrialContext(
            spec=spec, params=spec.resolve_params({}), seed=2023 + k, seed_index=k, artifacts_dir=tmp_path
        )
        exp = Experiment.of(ctx)
        assert exp.scope.seed == 2023 + k and exp.lr_model == exp.hr_model == 2023
    assert seen == [2023] * 6


def test_packed_masks_give_back_the_mask_and_stay_within_their_budget():
    from methods.sparserefine.selection import PackedMasks

    gen = torch.Generator().manual_seed(0)
    masks = [torch.rand(1, 7, 13, generator=gen) < 0.3 for _ in range(4)]
    calls: list[int] = []
    cache = PackedMasks(max_bytes=2 * 12)  # 91 bits -> 12 bytes each: room for two

    def get(i: int) -> torch.Tensor:
        return cache.get((0, i), lambda: calls.append(i) or masks[i])

    assert all(torch.equal(get(i), masks[i]) for i in (0, 1, 0, 1))
    assert calls == [0, 1]  # computed once each, then unpacked bit-exact
    assert torch.equal(get(2), masks[2]) and torch.equal(get(0), masks[0]) and calls == [0, 1, 2, 0]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("arch", ["minkunet6", "pointnet"])
@pytest.mark.parametrize("ensembler", ["gated", "entropy", "direct", "oracle"])
def test_a_refiner_cast_to_a_low_precision_runs_and_agrees_with_fp32(precision, arch, ensembler):
    """The timed path of a bf16/fp16 unit casts the model (no autocast): the per-site layers (PointNet,
    head, ensembler) must take their inputs in the weights' dtype, as they take fp32 under autocast.
    Every 5b unit at bf16 was a dtype error in the head before."""
    from methods.sparserefine.refiner import RefinerConfig, SparseRefiner, gather_pixels

    torch.manual_seed(0)
    config = RefinerConfig(
        num_classes=5, arch=arch, width_mult=0.125, reps=1, inputs="rgb+logits", ensembler=ensembler, backend="dense"
    )
    model = SparseRefiner(config).eval()
    image, logits = torch.randn(1, 3, 24, 40), torch.randn(1, 5, 24, 40)
    mask, labels = torch.rand(1, 24, 40) < 0.3, torch.randint(0, 5, (1, 24, 40))
    use_labels = ensembler == "oracle"

    def run(where: Placement, net: torch.nn.Module) -> torch.Tensor:
        pixels = gather_pixels(mask, where.tensor(image), where.tensor(logits), config, None, labels)
        with torch.inference_mode():
            return net(pixels, use_labels=use_labels)[0].float()

    reference = run(Placement.of("cpu", "fp32"), model)
    copy = SparseRefiner(config).eval()
    copy.load_state_dict(model.state_dict())
    where = Placement.of("cpu", precision)
    low = run(where, where.model(copy, channels_last=False))
    assert low.shape == reference.shape
    assert (low - reference).abs().max() <= 0.05 * reference.abs().max() + 0.05


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_learnable_selector_cast_to_a_low_precision_scores_like_fp32(precision):
    torch.manual_seed(0)
    model = LearnableSelector(num_classes=5).eval()
    image, logits = torch.randn(1, 3, 16, 24), torch.randn(1, 5, 16, 24)
    with torch.inference_mode():
        reference = model(image, logits)
        copy = LearnableSelector(num_classes=5).eval()
        copy.load_state_dict(model.state_dict())
        where = Placement.of("cpu", precision)
        cast = where.model(copy, channels_last=True)
        scores = cast(where.tensor(image), where.tensor(logits)).float()
    assert (scores - reference).abs().max() <= 0.02
