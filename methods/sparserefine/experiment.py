"""What the SparseRefine trials share: the frozen LR outputs of both splits, the resolved selector,
the trained refiner and the HR reference, all built lazily from a trial's scope and cached."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from harness.context import TrialContext
from methods.sparserefine.lr_outputs import (
    LROutputsSource,
    SplitOutputs,
    hr_evaluation,
    lr_features,
    lr_outputs,
)
from methods.sparserefine.refiner import RefinerConfig, SparseRefiner
from methods.sparserefine.selection import (
    LearnableSelector,
    LearnableTraining,
    ResolvedSelector,
    SelectionSpec,
    build_selector,
    learnable_selector,
)
from methods.sparserefine.training import (
    LEARNABLE_SCALE_KEY,
    SCALE_KEY,
    Features,
    RefinerTraining,
    trained_refiner,
)


@dataclass(frozen=True)
class Scope:
    """What every cached SparseRefine artifact of a unit depends on or reports to: the dataset and
    scale settings, the artifact cache, the seed and the progress callback."""

    dataset: dict[str, Any]
    scale: dict[str, Any]
    artifacts_dir: Path
    seed: int
    progress: Callable[[str], None]
    # The suite's baselines: block (lr / hr: embedded or mmseg checkpoint), and what loading and
    # running a checkpoint baseline needs.
    baselines: dict[str, Any] = field(default_factory=dict)
    trust_checkpoints: bool = False
    device: str = "cpu"
    # The frozen LR/HR baselines are trained with the row's seed: a row's ``seeds: N`` vary what
    # SparseRefine trains (refiner, learnable selector, random selection), never the frozen baselines.
    baseline_seed: int | None = None

    @classmethod
    def of(cls, ctx: TrialContext) -> Scope:
        return cls(
            ctx.dataset,
            ctx.scale,
            ctx.artifacts_dir,
            ctx.seed,
            ctx.progress,
            baselines=dict(getattr(ctx, "baselines", {}) or {}),
            trust_checkpoints=ctx.trust_checkpoints,
            device=ctx.device,
            baseline_seed=ctx.row_seed,
        )


@dataclass
class Experiment:
    scope: Scope
    _cache: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, ctx: TrialContext) -> Experiment:
        return cls(Scope.of(ctx))

    @cached_property
    def workers(self) -> int:
        """DataLoader workers reading the splits (the scale's ``workers`` setting)."""
        from methods.datasets.loading import worker_count

        return worker_count(self.scope.scale)

    @cached_property
    def lr_source(self) -> LROutputsSource:
        s = self.scope
        return LROutputsSource(self.lr_model, s.dataset, s.artifacts_dir, s.progress, self.workers)

    def split(self, name: str) -> SplitOutputs:
        if name not in self._cache:
            self._cache[name] = lr_outputs(self.lr_source, name)
        return self._cache[name]

    @property
    def train(self) -> SplitOutputs:
        return self.split("train")

    @property
    def val(self) -> SplitOutputs:
        return self.split("val")

    def features(self, split: str) -> Features:
        """The LR features of ``split``: read from the per-image cache, or computed per image on
        demand for a checkpoint baseline (:func:`lr_features`)."""
        key = f"features-{split}"
        if key not in self._cache:
            grid, factor = lr_features(self.lr_source, split)
            self._cache[key] = Features(grid, factor)
        return self._cache[key]

    def baseline(self, kind: str):
        """The frozen dense baseline of ``kind`` (lr / hr) the suite's ``baselines:`` block names."""
        from methods.baselines.frozen import frozen_baseline_of

        return frozen_baseline_of(kind, self.scope)

    @cached_property
    def lr_model(self):
        return self.baseline("lr")

    @cached_property
    def hr_model(self):
        return self.baseline("hr")

    @property
    def baseline_config(self) -> dict[str, Any]:
        return self.lr_model.config

    def hr_reference(self) -> dict[str, Any]:
        s = self.scope
        return hr_evaluation(self.hr_model, s.dataset, s.artifacts_dir, s.progress, self.workers)

    @cached_property
    def training(self) -> RefinerTraining:
        return RefinerTraining.from_scale(self.scope.scale)

    def learnable(self) -> LearnableSelector:
        if "learnable" not in self._cache:
            settings = learnable_training(self.scope.scale)
            s = self.scope
            self._cache["learnable"] = learnable_selector(
                self.train, self.baseline_config, settings, s.seed, s.artifacts_dir, s.progress
            )
        return self._cache["learnable"]

    def selector(self, spec: SelectionSpec) -> ResolvedSelector:
        return build_selector(spec, self.train, seed=self.scope.seed, learnable=self.learnable)

    def refiner_config(self, params: dict[str, Any]) -> RefinerConfig:
        feature_channels = 0
        if "features" in params["inputs"]:
            if self.lr_model.feature_channels is None:
                from harness.errors import Unavailable

                model = self.lr_model.config.get("model")
                raise Unavailable(
                    f"inputs {params['inputs']} need the LR baseline's per-pixel features; {model} has no "
                    "per-pixel classifier to take them from"
                )
            feature_channels = int(self.lr_model.feature_channels)
        return RefinerConfig(
            num_classes=self.train.num_classes,
            arch=params["arch"],
            width_mult=params["width_mult"],
            reps=params["reps"],
            inputs=params["inputs"],
            feature_channels=feature_channels,
            ensembler=params["ensembler"],
            backend=params["backend"],
        )

    def refiner(self, config: RefinerConfig, selector: ResolvedSelector) -> tuple[SparseRefiner, dict[str, Any]]:
        s = self.scope
        features = self.features("train") if config.uses_features else None
        return trained_refiner(
            config,
            selector,
            self.train,
            features,
            self.training,
            self.baseline_config,
            s.seed,
            s.artifacts_dir,
            s.progress,
        )


def selection_spec(params: dict[str, Any]) -> SelectionSpec:
    return SelectionSpec(
        selector=params["selector"],
        alpha=params["alpha"],
        density=params["density"],
        threshold=params["threshold"],
        recall=params.get("recall", 0.0),
    )


def learnable_training(scale: dict[str, Any]) -> LearnableTraining:
    """The learnable selector's training settings: the scale's ``sparserefine.learnable_selector``."""
    own = scale.get(SCALE_KEY) or {}
    given = own.get(LEARNABLE_SCALE_KEY) if isinstance(own, dict) else None
    return LearnableTraining.from_settings(given, f"{SCALE_KEY}.{LEARNABLE_SCALE_KEY}")


def check_scale_settings(block: Any) -> None:
    """The suite-load check of the scale's ``sparserefine`` block (refiner and learnable selector)."""
    scale = {SCALE_KEY: block}
    RefinerTraining.from_scale(scale)
    learnable_training(scale)
