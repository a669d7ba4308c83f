"""Suites: YAML files that run registered trials over grids of parameters and axes.

This is the one module that reads suite YAML (and the layout files a suite points to). A suite is
parsed once, with any ``--set KEY=VALUE`` overrides applied, into a :class:`Suite` carrying its
units per scale, its report layout and its gate settings. Loading validates the whole file before
anything runs; every error names the file, the line and the key (or the ``--set`` it came from).
Each unit carries its :class:`~harness.results.UnitIdentity`. The file format is documented in
README.md ("Writing a suite").
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from harness.devices import parse_device
from harness.errors import UserError
from harness.registry import (
    AXES,
    PRECISIONS,
    TrialSpec,
    did_you_mean,
    get_trial,
    scale_setting_check,
    validate_settings,
)
from harness.reports.layout import ReportLayout, parse_layout
from harness.results import IdentityFields, UnitIdentity, suite_name_of
from harness.timing import TimingConfig

SCALES = ("smoke", "default", "paper")
TOP_KEYS = (
    "name", "title", "paper", "reproduces", "description", "seed", "dataset", "timing", "scales",
    "matrix", "benchmarks", "tables", "figures", "layout", "notes", "gate", "trust_checkpoints", "baselines",
    "seeds", "targets",
)  # fmt: skip
ENTRY_KEYS = ("trial", "section", "label", "params", "matrix", "cases", "notes", "dataset", "seeds")
SCALE_BLOCK_KEYS = ("dataset", "timing", "baselines")
GATE_KEYS = ("min_effect", "accuracy_tolerance", "alpha", "rounds", "warmup_rounds", "metrics")
GATE_METRIC_KEYS = ("min_effect", "accuracy_tolerance")


@dataclass(frozen=True)
class GateSettings:
    """A suite's ``gate:`` block. Latency: a change is a regression when the same-machine A/B over
    ``rounds`` rounds (after ``warmup_rounds``) gives a ratio beyond ``1 + min_effect`` with a t-test
    p below ``alpha``. Other metrics with a direction: an absolute ``accuracy_tolerance``."""

    min_effect: float = 0.10
    accuracy_tolerance: float = 0.3
    alpha: float = 0.01
    rounds: int = 5
    warmup_rounds: int = 1
    per_metric: dict[str, dict[str, float]] = field(default_factory=dict)

    def for_metric(self, name: str) -> tuple[float, float]:
        override = self.per_metric.get(name, {})
        return (
            float(override.get("min_effect", self.min_effect)),
            float(override.get("accuracy_tolerance", self.accuracy_tolerance)),
        )

    def with_overrides(self, **given: float | int | None) -> GateSettings:
        kept = {k: v for k, v in given.items() if v is not None}
        return GateSettings(**{**self.__dict__, **kept}) if kept else self


# --- YAML with line numbers -------------------------------------------------------------------------


class _Located:
    """Maps a key path (tuple of keys / indices) to the 1-based line where it appears."""

    def __init__(self) -> None:
        self.lines: dict[tuple[Any, ...], int] = {}
        self.overrides: dict[tuple[Any, ...], str] = {}  # key path -> the ``--set`` that gave it

    def override(self, path: tuple[Any, ...]) -> str | None:
        """The ``--set`` behind ``path``: one setting it or a key inside it (the most specific)."""
        related = [p for p in self.overrides if p == path[: len(p)] or path == p[: len(path)]]
        if not related:
            return None
        longest = max(map(len, related))
        # several equally specific (dataset.name and dataset.root behind a dataset error): name them all
        return ", --set ".join(self.overrides[p] for p in related if len(p) == longest)

    def line(self, path: tuple[Any, ...]) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())


def _construct(node: yaml.Node, path: tuple[Any, ...], loc: _Located, source: str) -> Any:
    loc.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node))
            if not isinstance(key, (str, int, float, bool)):
                raise UserError(f"{source}:{key_node.start_mark.line + 1}: mapping keys must be scalars")
            if key in out:
                raise UserError(f"{source}:{key_node.start_mark.line + 1}: key {key!r} appears twice")
            loc.lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, path + (key,), loc, source)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, path + (i,), loc, source) for i, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def _load_yaml(path: Path, what: str = "suite file") -> tuple[Any, _Located]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a directory") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror}") from None
    loc = _Located()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: malformed YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: malformed YAML: {exc}") from None
    if node is None:
        raise UserError(f"{path}: the {what} is empty")
    return _construct(node, (), loc, str(path)), loc


def read_layout_file(path: Path) -> dict[str, Any]:
    """A layout file a suite points to (``layout: layouts/x.yaml``), as a mapping."""
    data, _ = _load_yaml(path, "layout file")
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping with 'tables' and/or 'figures'")
    return data


# --- --set overrides ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Override:
    """``--set KEY=VALUE``: a dotted path into the suite's top-level mapping and a YAML value."""

    text: str
    path: tuple[str, ...]
    value: Any

    @classmethod
    def parse(cls, text: str) -> Override:
        key, eq, raw_value = text.partition("=")
        key = key.strip()
        if not eq or not key:
            raise UserError(f"--set {text}: expected KEY=VALUE (e.g. dataset.root=/data/VOCdevkit)")
        path = tuple(key.split("."))
        if any(not part for part in path):
            raise UserError(f"--set {text}: {key!r} is not a dotted key path")
        try:
            value = yaml.safe_load(raw_value) if raw_value.strip() else ""
        except yaml.YAMLError as exc:
            raise UserError(f"--set {text}: the value is not valid YAML: {one_line_yaml(exc)}") from None
        return cls(text, path, value)

    def apply(self, raw: dict[str, Any], loc: _Located) -> None:
        """Set the value at the path (a mapping value replaces the mapping there), creating the
        mappings on the way. A number indexes a list: ``benchmarks.2.dataset.root`` is the third
        entry's dataset root."""
        node: Any = raw
        located: list[Any] = []
        for depth, part in enumerate(self.path):
            key = self._step(node, part, depth)
            located.append(key)
            if depth == len(self.path) - 1:
                node[key] = self.value
                break
            child = node[key] if isinstance(node, list) else node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, (dict, list)):
                where = ".".join(self.path[: depth + 1])
                raise UserError(f"--set {self.text}: {where} is a {type(child).__name__}, not a mapping")
            node = child
        loc.overrides[tuple(located)] = self.text

    def _step(self, node: Any, part: str, depth: int) -> Any:
        """The key (or list index) ``part`` names in ``node``."""
        if not isinstance(node, list):
            return part
        if not part.isdigit() or int(part) >= len(node):
            where = ".".join(self.path[:depth])
            raise UserError(
                f"--set {self.text}: {where} is a list of {len(node)}: {part!r} is not an index (0 to {len(node) - 1})"
            )
        return int(part)

    def as_pair(self) -> tuple[str, Any]:
        return ".".join(self.path), self.value


def one_line_yaml(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None)
    return str(problem or exc).splitlines()[0]


def parse_overrides(items: Sequence[str]) -> list[Override]:
    return [Override.parse(item) for item in items]


# --- the suite model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    trial: TrialSpec
    index: int
    section: str
    label: str
    params: dict[str, Any]
    matrix: dict[str, Any]
    cases: list[dict[str, Any]]
    dataset: dict[str, Any] = field(default_factory=dict)  # merged over the suite's, at the unit's scale
    seeds: Any = None  # the entry's ``seeds:`` (else the suite's), possibly per scale


@dataclass(frozen=True)
class Unit(IdentityFields):
    """One executable cell: a trial with resolved parameters and axes at one scale."""

    suite: str
    trial: TrialSpec
    identity: UnitIdentity
    scale: str  # the scale's name
    timing: TimingConfig
    key: str = ""  # identity.key, computed once

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", self.identity.key)

    @property
    def scale_settings(self) -> dict[str, Any]:
        return self.identity.scale

    @property
    def seed(self) -> int:
        return self.identity.seed

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.params.items())
        axes = f"{self.precision} b{self.batch_size} {self.device}"
        label = f"[{self.label}] " if self.label else ""
        seed = f" | seed {self.identity.seed_index}" if self.identity.seed_index else ""
        return f"{self.trial.name} {label}{shown} | {axes}{seed}"

    def listing(self) -> dict[str, Any]:
        """How a run records the unit it planned (``runs.units``)."""
        return {"key": self.key, "describe": self.describe(), "identity": self.identity.to_json()}

    @classmethod
    def from_listing(cls, suite: str, scale: str, listing: dict[str, Any]) -> Unit:
        """A unit a run planned, rebuilt from ``runs.units`` (its trial from the registry): a
        cluster job runs exactly what the run expanded, ``--set`` overrides included."""
        identity = UnitIdentity.from_json(listing["identity"])
        spec = get_trial(identity.trial)
        if spec.version != identity.version:
            raise UserError(
                f"trial {spec.name} is at version {spec.version}, the run planned version {identity.version}"
            )
        unit = cls(suite, spec, identity, scale, TimingConfig.from_dict(identity.timing))
        if unit.key != listing["key"]:
            raise UserError(f"unit {listing['key']} does not rebuild to the same key (suite or harness changed)")
        return unit


@dataclass
class Suite:
    path: Path
    name: str
    title: str
    paper: str
    reproduces: list[str]
    seed: int
    dataset: dict[str, Any]
    timing: dict[str, Any]
    scales: dict[str, dict[str, Any]]
    matrix: dict[str, Any]
    entries: list[Entry]
    raw: dict[str, Any] = field(repr=False)
    seeds: Any = 1  # training seeds per row (``seeds: N``, possibly per scale)
    sha: str = ""
    gate: GateSettings = field(default_factory=GateSettings)
    trust_checkpoints: bool = False  # fully unpickle user checkpoints (as --trust-checkpoints)
    baselines: dict[str, Any] = field(default_factory=dict)
    layout: ReportLayout = field(default_factory=lambda: ReportLayout(paper=None))
    overrides: dict[str, Any] = field(default_factory=dict)  # --set KEY=VALUE, as {KEY: VALUE}
    _checker: _Checker | None = field(default=None, repr=False)
    _units: dict[str, list[Unit]] = field(default_factory=dict, repr=False)

    def units(self, scale: str) -> list[Unit]:
        """The suite's units at ``scale`` (expanded once, on load)."""
        if scale not in self._units:
            self._units[scale] = expand(self, scale)
        return self._units[scale]

    def scale_names(self) -> list[str]:
        return list(self.scales or {"default": {}})


class _Checker:
    def __init__(self, path: Path, loc: _Located):
        self.path = path
        self.loc = loc

    def fail(self, keypath: tuple[Any, ...], message: str) -> UserError:
        key = ".".join(str(k) for k in keypath)
        override = self.loc.override(keypath) if keypath else None
        if override is not None:
            return UserError(f"--set {override}: {key + ': ' if key else ''}{message} (suite {self.path})")
        line = self.loc.line(keypath)
        where = f"{self.path}:{line}" if line else str(self.path)
        return UserError(f"{where}: {key + ': ' if key else ''}{message}")

    def mapping(self, value: Any, keypath: tuple[Any, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(keypath, f"expected a mapping, got {type(value).__name__}")
        return value

    def keys(self, value: dict[str, Any], allowed: tuple[str, ...], keypath: tuple[Any, ...]) -> None:
        for key in value:
            if key not in allowed:
                raise self.fail(keypath + (key,), f"unknown key{did_you_mean(str(key), allowed)}")


def _is_scaled(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and set(value) <= set(SCALES)


def _at_scale(value: Any, scale: str, chk: _Checker, keypath: tuple[Any, ...]) -> Any:
    """Resolve scale-dependent values ({smoke: .., default: .., paper: ..}) recursively."""
    if _is_scaled(value):
        if scale not in value:
            raise chk.fail(keypath, f"no value for scale {scale!r} (has {', '.join(value)})")
        return _at_scale(value[scale], scale, chk, keypath + (scale,))
    if isinstance(value, dict):
        return {k: _at_scale(v, scale, chk, keypath + (k,)) for k, v in value.items()}
    if isinstance(value, list):
        return [_at_scale(v, scale, chk, keypath + (i,)) for i, v in enumerate(value)]
    return value


__all__ = ["GateSettings", "Suite", "Unit", "load_suite", "suite_name_of"]


def load_suite(path: str | Path, overrides: Sequence[str] = (), *, with_units: bool = True) -> Suite:
    """Load and validate a suite, with ``--set KEY=VALUE`` ``overrides`` applied, at every scale it
    declares.

    ``with_units=False`` reads the suite without the trial registry (no method package imported):
    its name, layout, gate settings and settings blocks, but no entries and no units. ``report`` and
    ``check`` read a suite so; they take the units a run planned from the database.
    """
    path = Path(path)
    raw, loc = _load_yaml(path)
    chk = _Checker(path, loc)
    if not isinstance(raw, dict):
        raise chk.fail((), "a suite must be a mapping with name, title and benchmarks")
    parsed = parse_overrides(overrides)
    for override in parsed:
        override.apply(raw, loc)
    chk.keys(raw, TOP_KEYS, ())
    for required in ("name", "benchmarks") if with_units else ("name",):
        if required not in raw:
            raise chk.fail((), f"missing required key {required!r}")
    name = raw["name"]
    if not isinstance(name, str) or not name:
        raise chk.fail(("name",), "must be a non-empty string")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise chk.fail(("seed",), f"must be an integer, got {seed!r}")
    reproduces = raw.get("reproduces", [])
    if isinstance(reproduces, str):
        reproduces = [reproduces]
    scales = chk.mapping(raw.get("scales"), ("scales",))
    for scale_name, block in scales.items():
        if scale_name not in SCALES:
            raise chk.fail(("scales", scale_name), f"unknown scale{did_you_mean(str(scale_name), SCALES)}")
        block = chk.mapping(block, ("scales", scale_name))
        scales[scale_name] = block
        for sub in SCALE_BLOCK_KEYS:
            chk.mapping(block.get(sub), ("scales", scale_name, sub))
    entries = []
    if with_units:  # a report reads a suite for its layout: entries need the trial registry
        benchmarks = raw["benchmarks"]
        if not isinstance(benchmarks, list) or not benchmarks:
            raise chk.fail(("benchmarks",), "must be a non-empty list of entries")
        entries = [_parse_entry(item, i, chk) for i, item in enumerate(benchmarks)]
    suite = Suite(
        path=path,
        name=name,
        title=str(raw.get("title", name)),
        paper=str(raw.get("paper", "")),
        reproduces=[str(r) for r in reproduces],
        seed=seed,
        dataset=chk.mapping(raw.get("dataset"), ("dataset",)),
        timing=chk.mapping(raw.get("timing"), ("timing",)),
        scales=scales,
        matrix=chk.mapping(raw.get("matrix"), ("matrix",)),
        entries=entries,
        raw=raw,
        seeds=raw.get("seeds", 1),
        sha=hashlib.sha256(path.read_bytes()).hexdigest(),
        gate=_parse_gate(raw.get("gate"), chk),
        trust_checkpoints=_parse_flag(raw, "trust_checkpoints", chk),
        baselines=chk.mapping(raw.get("baselines"), ("baselines",)),
        overrides=dict(o.as_pair() for o in parsed),
        _checker=chk,
    )
    for key, _values in suite.matrix.items():
        if key not in AXES:
            raise chk.fail(("matrix", key), f"top-level matrix takes only axes {AXES}")
    try:
        suite.layout = parse_layout(raw, str(path))
    except UserError as exc:
        source = next(filter(None, (loc.override((key,)) for key in ("tables", "figures", "targets", "layout"))), None)
        raise (UserError(f"--set {source}: {exc}") if source else exc) from None
    for scale_name in suite.scale_names():
        settings = _scale_settings(suite, scale_name)
        if with_units:
            suite.units(scale_name)
        else:
            _check_settings(chk, settings)
    return suite


def _gate_number(value: Any, keypath: tuple[Any, ...], chk: _Checker, *, integer: bool = False, minimum: float = 0):
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
    if not ok or value < minimum:
        raise chk.fail(keypath, f"must be {'an integer' if integer else 'a number'} >= {minimum:g}, got {value!r}")
    return value


def _parse_flag(raw: dict[str, Any], key: str, chk: _Checker) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise chk.fail((key,), f"must be true or false, got {value!r}")
    return value


def _parse_gate(value: Any, chk: _Checker) -> GateSettings:
    block = chk.mapping(value, ("gate",))
    chk.keys(block, GATE_KEYS, ("gate",))
    numbers: dict[str, Any] = {}
    for key in ("min_effect", "accuracy_tolerance", "alpha", "rounds", "warmup_rounds"):
        if key in block:
            integer = key in ("rounds", "warmup_rounds")
            numbers[key] = _gate_number(
                block[key], ("gate", key), chk, integer=integer, minimum=2 if key == "rounds" else 0
            )
    if "alpha" in numbers and not 0 < numbers["alpha"] < 1:
        raise chk.fail(("gate", "alpha"), f"must be between 0 and 1, got {numbers['alpha']!r}")
    per_metric: dict[str, dict[str, float]] = {}
    for metric, override in chk.mapping(block.get("metrics"), ("gate", "metrics")).items():
        override = chk.mapping(override, ("gate", "metrics", metric))
        chk.keys(override, GATE_METRIC_KEYS, ("gate", "metrics", metric))
        per_metric[str(metric)] = {
            k: float(_gate_number(v, ("gate", "metrics", metric, k), chk)) for k, v in override.items()
        }
    return GateSettings(**numbers, per_metric=per_metric)


def _parse_entry(item: Any, index: int, chk: _Checker) -> Entry:
    keypath: tuple[Any, ...] = ("benchmarks", index)
    item = chk.mapping(item, keypath)
    chk.keys(item, ENTRY_KEYS, keypath)
    if "trial" not in item:
        raise chk.fail(keypath, "missing required key 'trial'")
    try:
        spec = get_trial(str(item["trial"]))
    except UserError as exc:
        raise chk.fail(keypath + ("trial",), str(exc)) from None
    matrix = chk.mapping(item.get("matrix"), keypath + ("matrix",))
    for key, values in matrix.items():
        if not _is_scaled(values) and not isinstance(values, list):
            raise chk.fail(keypath + ("matrix", key), "matrix values must be lists")
        if isinstance(values, list) and not values:
            raise chk.fail(keypath + ("matrix", key), "matrix list is empty")
    cases = item.get("cases", [])
    if not isinstance(cases, list):
        raise chk.fail(keypath + ("cases",), "must be a list of mappings")
    for i, case in enumerate(cases):
        chk.mapping(case, keypath + ("cases", i))
    return Entry(
        trial=spec,
        index=index,
        section=str(item.get("section", "")),
        label=str(item.get("label", "")),
        params=chk.mapping(item.get("params"), keypath + ("params",)),
        matrix=matrix,
        cases=cases,
        dataset=chk.mapping(item.get("dataset"), keypath + ("dataset",)),
        seeds=item.get("seeds"),
    )


# --- expansion ------------------------------------------------------------------------------------


def _combos(matrix: dict[str, list[Any]]) -> Iterator[dict[str, Any]]:
    keys = list(matrix)
    for values in itertools.product(*(matrix[k] for k in keys)):
        yield dict(zip(keys, values, strict=False))


@dataclass(frozen=True)
class ScaleSettings:
    """A suite's settings resolved at one scale: what every unit at that scale shares."""

    scale: str
    block: dict[str, Any]  # the scale's own settings (iterations, sizes...), without the blocks below
    dataset: dict[str, Any]
    baselines: dict[str, Any]
    timing: TimingConfig
    dataset_path: tuple[Any, ...]  # where a bad value of each block is reported
    baselines_path: tuple[Any, ...]


def _scale_settings(suite: Suite, scale: str) -> ScaleSettings:
    chk = suite._checker or _Checker(suite.path, _Located())
    if suite.scales and scale not in suite.scales:
        raise UserError(
            f"{suite.path}: suite {suite.name!r} declares no scale {scale!r} (it has: {', '.join(suite.scales)})"
        )
    block = _at_scale(suite.scales.get(scale, {}), scale, chk, ("scales", scale))
    merged = {}
    for name, top in (("dataset", suite.dataset), ("baselines", suite.baselines), ("timing", suite.timing)):
        value = {**_at_scale(top, scale, chk, (name,)), **block.get(name, {})}
        merged[name] = value
    try:
        timing = TimingConfig.from_dict(merged["timing"])
    except (TypeError, ValueError) as exc:
        raise chk.fail(("timing",), str(exc)) from None
    return ScaleSettings(
        scale=scale,
        block={k: v for k, v in block.items() if k not in SCALE_BLOCK_KEYS},
        dataset=merged["dataset"],
        baselines=merged["baselines"],
        timing=timing,
        dataset_path=_settings_path(chk, scale, "dataset", block),
        baselines_path=_settings_path(chk, scale, "baselines", block),
    )


def _settings_path(chk: _Checker, scale: str, name: str, block: dict[str, Any]) -> tuple[Any, ...]:
    """Where to report a bad value of a settings block at ``scale``: a ``--set`` of either the
    top-level block or the scale's, else the scale's block if it has one, else the top-level one."""
    scaled, top = ("scales", scale, name), (name,)
    for path in (scaled, top):
        if chk.loc.override(path) is not None:
            return path
    return scaled if block.get(name) else top


def _check_settings(chk: _Checker, settings: ScaleSettings) -> None:
    """The method packages' checks of the dataset and baselines blocks and of the scale settings
    they own (registered hooks)."""
    for key, value in settings.block.items():
        check = scale_setting_check(key)
        if check is None:
            continue
        try:
            check(value)
        except (UserError, ValueError, TypeError) as exc:
            raise chk.fail(("scales", settings.scale, key), f"{exc} (at scale {settings.scale})") from None
    resolved = {"dataset": settings.dataset, "baselines": settings.baselines, "scale": settings.block}
    for block, value, keypath in (
        ("dataset", settings.dataset, settings.dataset_path),
        ("baselines", settings.baselines, settings.baselines_path),
    ):
        try:
            validate_settings(block, value, resolved)
        except (UserError, ValueError, TypeError) as exc:
            raise chk.fail(keypath, f"{exc} (at scale {settings.scale})") from None


def expand(suite: Suite, scale: str) -> list[Unit]:
    """All units of ``suite`` at ``scale``, de-duplicated, in file order (use :meth:`Suite.units`,
    which expands once)."""
    chk: _Checker = suite._checker or _Checker(suite.path, _Located())
    settings = _scale_settings(suite, scale)
    _check_settings(chk, settings)
    top_axes = _at_scale(suite.matrix, scale, chk, ("matrix",))
    for key, values in top_axes.items():
        if not isinstance(values, list) or not values:
            raise chk.fail(("matrix", key), "matrix values must be non-empty lists")
    units: dict[str, Unit] = {}
    for entry in suite.entries:
        base = ("benchmarks", entry.index)
        entry_settings = _entry_settings(settings, entry, chk)
        seeds = _seed_count(suite, entry, scale, chk)
        matrix = _at_scale(entry.matrix, scale, chk, base + ("matrix",))
        for key, values in matrix.items():
            if not isinstance(values, list) or not values:
                raise chk.fail(base + ("matrix", key), "matrix values must be non-empty lists")
        axes_grid = {a: list(top_axes.get(a, [])) for a in AXES if a in top_axes}
        explicit_axes = set()
        for a in AXES:
            if a in matrix:
                axes_grid[a] = matrix.pop(a)
                explicit_axes.add(a)
        for a in list(axes_grid):
            if a not in entry.trial.axes:
                if a in explicit_axes:
                    raise chk.fail(base + ("matrix", a), f"trial {entry.trial.name} does not support axis {a!r}")
                del axes_grid[a]
        params_fixed = _at_scale(entry.params, scale, chk, base + ("params",))
        cases = [_at_scale(c, scale, chk, base + ("cases", i)) for i, c in enumerate(entry.cases)] or [{}]
        for combo in _combos({**axes_grid, **matrix}):
            for ci, case in enumerate(cases):
                case_path = base + ("cases", ci) if entry.cases else base
                from_top = {a: ("matrix", a) for a in axes_grid if a not in explicit_axes and a not in case}
                values = {**params_fixed, **combo, **case}
                for k in range(seeds):
                    unit = _make_unit(suite, entry, entry_settings, values, case_path, chk, from_top, seed_index=k)
                    units.setdefault(unit.key, unit)
    return list(units.values())


def _entry_settings(settings: ScaleSettings, entry: Entry, chk: _Checker) -> ScaleSettings:
    """``settings`` with the entry's own ``dataset:`` (at the scale) merged over the suite's, and
    checked by the same hooks as the suite's (the baselines again too: they may depend on it). A key
    whose value is null at the scale is left out (``height: {smoke: 128, paper: null}``: every image
    at its own size at paper scale)."""
    if not entry.dataset:
        return settings
    path = ("benchmarks", entry.index, "dataset")
    own = _at_scale(entry.dataset, settings.scale, chk, path)
    if not isinstance(own, dict):
        raise chk.fail(path, f"expected a mapping, got {type(own).__name__}")
    dataset = {**settings.dataset, **own}
    dataset = {k: v for k, v in dataset.items() if not (k in own and own[k] is None)}  # null: leave the key out
    merged = replace(settings, dataset=dataset, dataset_path=path)
    _check_settings(chk, merged)
    return merged


def _seed_count(suite: Suite, entry: Entry, scale: str, chk: _Checker) -> int:
    """How many training seeds each row of ``entry`` runs at ``scale``: the entry's ``seeds:``, else
    the suite's, else 1."""
    given, path = (
        (entry.seeds, ("benchmarks", entry.index, "seeds")) if entry.seeds is not None else (suite.seeds, ("seeds",))
    )
    value = _at_scale(given, scale, chk, path)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise chk.fail(path, f"must be a positive integer (training seeds per row), got {value!r}")
    return value


def _make_unit(
    suite: Suite,
    entry: Entry,
    settings: ScaleSettings,
    values: dict[str, Any],
    keypath: tuple[Any, ...],
    chk: _Checker,
    axis_paths: dict[str, tuple[Any, ...]] | None = None,
    *,
    seed_index: int = 0,
) -> Unit:
    """``axis_paths``: where an axis value came from when not from ``keypath`` (the top-level matrix);
    ``seed_index``: k of the row's seeds (the unit's seed is the suite's + k)."""
    values = dict(values)
    at = {a: (axis_paths or {}).get(a, keypath + (a,)) for a in AXES}
    label = str(values.pop("label", entry.label))
    axes = {"precision": "fp32", "batch_size": 1, "device": "cpu"}
    for a in AXES:
        if a in values:
            if a not in entry.trial.axes:
                raise chk.fail(keypath + (a,), f"trial {entry.trial.name} does not support axis {a!r}")
            axes[a] = values.pop(a)
    if axes["precision"] not in PRECISIONS:
        raise chk.fail(at["precision"], f"unknown precision {axes['precision']!r}; known: {', '.join(PRECISIONS)}")
    try:
        axes["device"] = parse_device(axes["device"])
    except ValueError as exc:
        raise chk.fail(at["device"], str(exc)) from None
    bs = axes["batch_size"]
    if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
        raise chk.fail(at["batch_size"], f"batch_size must be a positive integer, got {bs!r}")
    try:
        params = entry.trial.resolve_params(values)
    except ValueError as exc:
        bad = next((k for k in values if repr(k) in str(exc)), None)
        if bad is None:
            where = keypath
        elif bad in entry.params:
            where = ("benchmarks", entry.index, "params", bad)
        else:
            where = keypath + (bad,)
        raise chk.fail(where, str(exc)) from None
    identity = UnitIdentity(
        trial=entry.trial.name,
        version=entry.trial.version,
        label=label,
        section=entry.section,
        params=params,
        precision=axes["precision"],
        batch_size=axes["batch_size"],
        device=axes["device"],
        dataset=settings.dataset,
        scale=settings.block,
        baselines=settings.baselines,
        timing=dict(settings.timing.__dict__),
        seed=suite.seed + seed_index,
        seed_index=seed_index,
    )
    return Unit(suite=suite.name, trial=entry.trial, identity=identity, scale=settings.scale, timing=settings.timing)
