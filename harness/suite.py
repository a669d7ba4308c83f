"""Suites: YAML files that run registered trials over grids of parameters and axes.

Loading validates the whole file against the registry before anything runs; every error names
the file, the line and the key. ``expand`` turns a suite at one scale into units, each with a
stable key. The file format is documented in README.md ("Writing a suite").
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import UserError
from harness.registry import AXES, DEVICES, PRECISIONS, TrialSpec, did_you_mean, get_trial
from harness.timing import TimingConfig

SCALES = ("smoke", "default", "paper")
TOP_KEYS = (
    "name", "title", "paper", "reproduces", "description", "seed", "dataset", "timing", "scales",
    "matrix", "benchmarks", "tables", "figures", "layout", "notes", "gate", "trust_checkpoints",
)  # fmt: skip
ENTRY_KEYS = ("trial", "section", "label", "params", "matrix", "cases", "notes")
SCALE_BLOCK_KEYS = ("dataset", "timing")
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


def _load_yaml(path: Path) -> tuple[Any, _Located]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"suite file {path} does not exist") from None
    except OSError as exc:
        raise UserError(f"cannot read suite file {path}: {exc.strerror}") from None
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
        raise UserError(f"{path}: the suite file is empty")
    return _construct(node, (), loc, str(path)), loc


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


@dataclass(frozen=True)
class Unit:
    """One executable cell: a trial with resolved parameters and axes at one scale."""

    suite: str
    trial: TrialSpec
    params: dict[str, Any]
    precision: str
    batch_size: int
    device: str
    label: str
    section: str
    scale: str
    scale_settings: dict[str, Any]
    dataset: dict[str, Any]
    timing: TimingConfig
    seed: int
    key: str

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.params.items())
        axes = f"{self.precision} b{self.batch_size} {self.device}"
        label = f"[{self.label}] " if self.label else ""
        return f"{self.trial.name} {label}{shown} | {axes}"


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
    sha: str = ""
    gate: GateSettings = field(default_factory=GateSettings)
    trust_checkpoints: bool = False  # fully unpickle user checkpoints (as --trust-checkpoints)

    def units(self, scale: str) -> list[Unit]:
        return expand(self, scale)


class _Checker:
    def __init__(self, path: Path, loc: _Located):
        self.path = path
        self.loc = loc

    def fail(self, keypath: tuple[Any, ...], message: str) -> UserError:
        line = self.loc.line(keypath)
        where = f"{self.path}:{line}" if line else str(self.path)
        key = ".".join(str(k) for k in keypath)
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


def suite_name_of(target: str) -> str:
    """The suite name a CLI target means: a suite file's stem, or the name itself."""
    return Path(target).stem if target.endswith((".yaml", ".yml")) else target


def load_suite(path: str | Path) -> Suite:
    """Load and validate a suite at every scale it declares."""
    path = Path(path)
    raw, loc = _load_yaml(path)
    chk = _Checker(path, loc)
    if not isinstance(raw, dict):
        raise chk.fail((), "a suite must be a mapping with name, title and benchmarks")
    chk.keys(raw, TOP_KEYS, ())
    for required in ("name", "benchmarks"):
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
        sha=hashlib.sha256(path.read_bytes()).hexdigest(),
        gate=_parse_gate(raw.get("gate"), chk),
        trust_checkpoints=_parse_flag(raw, "trust_checkpoints", chk),
    )
    for key, _values in suite.matrix.items():
        if key not in AXES:
            raise chk.fail(("matrix", key), f"top-level matrix takes only axes {AXES}")
    suite._checker = chk  # type: ignore[attr-defined]
    for scale_name in scales or {"default": {}}:
        expand(suite, scale_name)
    _validate_layout(suite, raw, path)
    return suite


def _validate_layout(suite: Suite, raw: dict[str, Any], path: Path) -> None:
    if not any(k in raw for k in ("tables", "figures", "layout")):
        return
    try:
        from harness.reports.layout import parse_layout
    except ImportError:
        return
    parse_layout(raw, str(path))


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
    )


# --- expansion ------------------------------------------------------------------------------------


def _combos(matrix: dict[str, list[Any]]) -> Iterator[dict[str, Any]]:
    keys = list(matrix)
    for values in itertools.product(*(matrix[k] for k in keys)):
        yield dict(zip(keys, values, strict=False))


def unit_key(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def expand(suite: Suite, scale: str) -> list[Unit]:
    """All units of ``suite`` at ``scale``, de-duplicated, in file order."""
    chk: _Checker = getattr(suite, "_checker", None) or _Checker(suite.path, _Located())
    if suite.scales and scale not in suite.scales:
        raise UserError(
            f"{suite.path}: suite {suite.name!r} declares no scale {scale!r} (it has: {', '.join(suite.scales)})"
        )
    block = _at_scale(suite.scales.get(scale, {}), scale, chk, ("scales", scale))
    dataset = {**_at_scale(suite.dataset, scale, chk, ("dataset",)), **block.get("dataset", {})}
    timing_dict = {**_at_scale(suite.timing, scale, chk, ("timing",)), **block.get("timing", {})}
    try:
        timing = TimingConfig.from_dict(timing_dict)
    except (TypeError, ValueError) as exc:
        raise chk.fail(("timing",), str(exc)) from None
    scale_settings = {k: v for k, v in block.items() if k not in SCALE_BLOCK_KEYS}
    top_axes = _at_scale(suite.matrix, scale, chk, ("matrix",))
    units: dict[str, Unit] = {}
    for entry in suite.entries:
        base = ("benchmarks", entry.index)
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
                unit = _make_unit(suite, entry, scale, {**params_fixed, **combo, **case}, case_path, chk,
                                  scale_settings, dataset, timing)  # fmt: skip
                units.setdefault(unit.key, unit)
    return list(units.values())


def _make_unit(
    suite: Suite,
    entry: Entry,
    scale: str,
    values: dict[str, Any],
    keypath: tuple[Any, ...],
    chk: _Checker,
    scale_settings: dict[str, Any],
    dataset: dict[str, Any],
    timing: TimingConfig,
) -> Unit:
    values = dict(values)
    label = str(values.pop("label", entry.label))
    axes = {"precision": "fp32", "batch_size": 1, "device": "cpu"}
    for a in AXES:
        if a in values:
            if a not in entry.trial.axes:
                raise chk.fail(keypath + (a,), f"trial {entry.trial.name} does not support axis {a!r}")
            axes[a] = values.pop(a)
    if axes["precision"] not in PRECISIONS:
        raise chk.fail(
            keypath + ("precision",), f"unknown precision {axes['precision']!r}; known: {', '.join(PRECISIONS)}"
        )
    if axes["device"] not in DEVICES:
        raise chk.fail(keypath + ("device",), f"unknown device {axes['device']!r}; known: {', '.join(DEVICES)}")
    bs = axes["batch_size"]
    if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
        raise chk.fail(keypath + ("batch_size",), f"batch_size must be a positive integer, got {bs!r}")
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
    key = unit_key(
        {
            "trial": entry.trial.name,
            "version": entry.trial.version,
            "label": label,
            "params": params,
            "axes": axes,
            "dataset": dataset,
            "scale": scale_settings,
            "timing": timing.__dict__,
            "seed": suite.seed,
        }
    )
    return Unit(
        suite=suite.name,
        trial=entry.trial,
        params=params,
        precision=axes["precision"],
        batch_size=axes["batch_size"],
        device=axes["device"],
        label=label,
        section=entry.section,
        scale=scale,
        scale_settings=scale_settings,
        dataset=dataset,
        timing=timing,
        seed=suite.seed,
        key=key,
    )
