"""What the SparseRefine trials share: the frozen LR outputs of both splits, the resolved selector,
the trained refiner and the HR reference, all built lazily from a trial's context and cached."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from harness.context import TrialContext
from methods.sparserefine.lr_outputs import (
    SplitOutputs,
    hr_evaluation,
    load_baseline,
    lr_features,
    lr_outputs,
)
from methods.sparserefine.refiner import RefinerConfig, SparseRefiner
from methods.sparserefine.selection import (
    LearnableSelector,
    LearnableTraining,
    ResolvedSelector,
    SelectionSpec,
    learnable_selector,
)
from methods.sparserefine.training import Features, RefinerTraining, trained_refiner

LEARNABLE_SCALE_KEY = "learnable_selector"  # optional LearnableTraining overrides under scale["sparserefine"]


@dataclass
class Experiment:
    ctx: TrialContext
    _cache: dict[str, Any] = field(default_factory=dict)

    @property
    def dataset(self) -> dict[str, Any]:
        return self.ctx.dataset

    def split(self, name: str) -> SplitOutputs:
        if name not in self._cache:
            ctx = self.ctx
            self._cache[name] = lr_outputs(ctx.dataset, ctx.scale, name, ctx.artifacts_dir, ctx.progress, ctx.seed)
        return self._cache[name]

    @property
    def train(self) -> SplitOutputs:
        return self.split("train")

    @property
    def val(self) -> SplitOutputs:
        return self.split("val")

    def features(self, split: str) -> Features:
        key = f"features-{split}"
        if key not in self._cache:
            ctx = self.ctx
            grid, factor = lr_features(ctx.dataset, ctx.scale, split, ctx.artifacts_dir, ctx.progress, ctx.seed)
            self._cache[key] = Features(grid, factor)
        return self._cache[key]

    @cached_property
    def lr_model(self):
        ctx = self.ctx
        return load_baseline("lr", ctx.dataset, ctx.scale, ctx.artifacts_dir, ctx.progress, ctx.seed)

    @cached_property
    def hr_model(self):
        ctx = self.ctx
        return load_baseline("hr", ctx.dataset, ctx.scale, ctx.artifacts_dir, ctx.progress, ctx.seed)

    @property
    def baseline_config(self) -> dict[str, Any]:
        return self.lr_model.config

    def hr_reference(self) -> dict[str, Any]:
        ctx = self.ctx
        return hr_evaluation(ctx.dataset, ctx.scale, ctx.artifacts_dir, ctx.progress, ctx.seed)

    @cached_property
    def own_scale(self) -> dict[str, Any]:
        from methods.sparserefine.training import SCALE_KEY

        return dict(self.ctx.scale.get(SCALE_KEY, {}) or {})

    @cached_property
    def training(self) -> RefinerTraining:
        return RefinerTraining.from_scale(self.ctx.scale)

    def learnable(self) -> LearnableSelector:
        if "learnable" not in self._cache:
            given = dict(self.own_scale.get(LEARNABLE_SCALE_KEY, {}) or {})
            if "crop" in given:
                given["crop"] = tuple(given["crop"])
            settings = LearnableTraining(**given)
            ctx = self.ctx
            self._cache["learnable"] = learnable_selector(
                self.train, self.baseline_config, settings, ctx.seed, ctx.artifacts_dir, ctx.progress
            )
        return self._cache["learnable"]

    def selector(self, spec: SelectionSpec) -> ResolvedSelector:
        learnable = self.learnable() if spec.selector == "learnable" else None
        return ResolvedSelector(spec, self.train, learnable, seed=self.ctx.seed)

    def refiner_config(self, params: dict[str, Any]) -> RefinerConfig:
        feature_channels = int(self.lr_model.feature_channels) if "features" in params["inputs"] else 0
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
        ctx = self.ctx
        features = self.features("train") if config.uses_features else None
        return trained_refiner(
            config,
            selector,
            self.train,
            features,
            self.training,
            self.baseline_config,
            ctx.seed,
            ctx.artifacts_dir,
            ctx.progress,
        )


def selection_spec(params: dict[str, Any]) -> SelectionSpec:
    return SelectionSpec(
        selector=params["selector"],
        alpha=params["alpha"],
        density=params["density"],
        threshold=params["threshold"],
        recall=params.get("recall", 0.0),
    )
