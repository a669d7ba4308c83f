"""The trial registry: named, typed, documented experiments.

A trial is a function taking a :class:`harness.context.TrialContext`. It is registered under a
dotted name with its parameters, the metrics it yields and the axes (precision, batch size,
device) it supports::

    @trial(
        "sparserefine.selector",
        doc="Pixel selector quality and latency.",
        params=[Param("selector", str, "entropy", choices=("entropy", "random"), doc="...")],
        metrics=[Metric("recall", "%", "higher")],
        axes=("precision", "device"),
    )
    def selector(ctx): ...
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from harness.errors import UserError

ParamType = type  # one of int, float, str, bool
Better = Literal["higher", "lower", "none"]
AXES = ("precision", "batch_size", "device")
PRECISIONS = ("fp32", "bf16", "fp16")


def coerce_scalar(kind: type, value: Any) -> Any:
    """``value`` as ``kind`` (bool, int, float or str; an int is a float, a bool is neither), or
    ValueError saying what was expected."""
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true/false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


@dataclass(frozen=True)
class Param:
    """A typed trial parameter with a default, optional allowed values or bounds, and a doc line."""

    name: str
    type: ParamType
    default: Any
    doc: str = ""
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        if self.type not in (int, float, str, bool):
            raise TypeError(f"parameter {self.name!r}: type must be int, float, str or bool")
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        self.coerce(self.default)

    def coerce(self, value: Any) -> Any:
        """Return ``value`` as this parameter's type, or raise ValueError saying why not."""
        out = coerce_scalar(self.type, value)
        if self.choices is not None and out not in self.choices:
            allowed = ", ".join(map(str, self.choices))
            raise ValueError(f"{out!r} is not one of: {allowed}")
        if self.low is not None and out < self.low:
            raise ValueError(f"{out!r} is below the minimum {self.low}")
        if self.high is not None and out > self.high:
            raise ValueError(f"{out!r} is above the maximum {self.high}")
        return out

    def describe(self) -> str:
        parts = [self.type.__name__, f"default={self.default!r}"]
        if self.choices is not None:
            parts.append("one of {" + ", ".join(map(str, self.choices)) + "}")
        if self.low is not None or self.high is not None:
            parts.append(
                f"range [{self.low if self.low is not None else '-inf'}, "
                f"{self.high if self.high is not None else 'inf'}]"
            )
        return "; ".join(parts)


@dataclass(frozen=True)
class Metric:
    """A quantity a trial yields: name, unit and which direction is better.

    A name with ``{placeholder}`` parts declares a family of metrics the trial names at run time
    (``iou_{class}``: one per class present, the class name with spaces as ``_``); a placeholder
    stands for one or more of ``[A-Za-z0-9_]``. Such a family must be ``optional`` (no single name of
    it is recorded by every unit).
    """

    name: str
    unit: str = ""
    better: Better = "none"
    doc: str = ""
    optional: bool = False  # a unit may end ok without it (e.g. a latency only some parameters measure)

    def __post_init__(self) -> None:
        if self.is_pattern and not self.optional:
            raise ValueError(f"metric {self.name!r}: a name pattern must be declared optional=True")

    @property
    def is_pattern(self) -> bool:
        return "{" in self.name

    def matches(self, name: str) -> dict[str, str] | None:
        """The placeholder values if ``name`` is this metric (or one of its family), else None."""
        if not self.is_pattern:
            return {} if name == self.name else None
        found = re.fullmatch(_pattern_regex(self.name), name)
        return None if found is None else found.groupdict()


def _pattern_regex(name: str) -> str:
    parts = re.split(r"\{(\w+)\}", name)
    out = []
    for i, part in enumerate(parts):
        out.append(re.escape(part) if i % 2 == 0 else f"(?P<{part}>[A-Za-z0-9_]+)")
    return "".join(out)


@dataclass(frozen=True)
class TrialSpec:
    name: str
    fn: Callable[..., Any]
    doc: str
    params: tuple[Param, ...]
    metrics: tuple[Metric, ...]
    axes: tuple[str, ...]
    version: str
    module: str = field(default="")

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    def metric(self, name: str) -> Metric | None:
        for m in self.metrics:
            if m.name == name:
                return m
        return None

    def declares(self, name: str) -> Metric | None:
        """The declared metric ``name`` is, by its exact name or as one of a pattern's family."""
        exact = self.metric(name)
        if exact is not None:
            return exact
        return next((m for m in self.metrics if m.is_pattern and m.matches(name) is not None), None)

    def resolve_params(self, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with ``given``; raises ValueError naming the parameter at fault."""
        resolved = {p.name: p.default for p in self.params}
        for key, value in given.items():
            try:
                p = self.param(key)
            except KeyError:
                hint = did_you_mean(key, self.param_names())
                raise ValueError(f"unknown parameter {key!r} for trial {self.name}{hint}") from None
            try:
                resolved[key] = p.coerce(value)
            except ValueError as exc:
                raise ValueError(f"parameter {key!r} of trial {self.name}: {exc}") from None
        return resolved


_REGISTRY: dict[str, TrialSpec] = {}


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def trial(
    name: str,
    *,
    doc: str = "",
    params: Iterable[Param] = (),
    metrics: Iterable[Metric] = (),
    axes: Iterable[str] = (),
    version: str = "1",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as trial ``name``.

    ``version`` is part of every unit key: bump it when a change to the trial changes its results,
    so stored results of the old code are not mistaken for the new.
    """
    axes = tuple(axes)
    unknown = [a for a in axes if a not in AXES]
    if unknown:
        raise ValueError(f"trial {name}: unknown axes {unknown}; known: {AXES}")
    params = tuple(params)
    names = [p.name for p in params]
    clash = set(names) & set(AXES) | {n for n in names if names.count(n) > 1}
    if clash:
        raise ValueError(f"trial {name}: parameter names clash or repeat: {sorted(clash)}")

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"trial {name!r} is registered twice ({_REGISTRY[name].module})")
        _REGISTRY[name] = TrialSpec(
            name=name,
            fn=fn,
            doc=doc or _first_line(fn.__doc__),
            params=params,
            metrics=tuple(metrics),
            axes=axes,
            version=str(version),
            module=fn.__module__,
        )
        return fn

    return register


def get_trial(name: str) -> TrialSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown trial {name!r}{did_you_mean(name, _REGISTRY)}") from None


def all_trials() -> list[TrialSpec]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def unregister(name: str) -> None:
    """Remove a trial (tests register throwaway trials)."""
    _REGISTRY.pop(name, None)


# --- hooks the method packages register into ------------------------------------------------------

SettingsValidator = Callable[..., Any]
SETTINGS_BLOCKS = ("dataset", "baselines")
_SETTINGS_VALIDATORS: dict[str, list[SettingsValidator]] = {block: [] for block in SETTINGS_BLOCKS}
_TRACKED_PACKAGES: set[str] = set()


def settings_validator(block: str) -> Callable[[SettingsValidator], SettingsValidator]:
    """Register a check of a suite's ``dataset:`` or ``baselines:`` settings (as resolved at one
    scale, ``--set`` overrides applied). The suite loader calls it before anything runs, once per
    scale, ``dataset`` before ``baselines``; it raises :class:`UserError` or ``ValueError`` with one
    line saying what is wrong (the loader adds where).

    The check is called ``check(settings)``, or ``check(settings, resolved)`` if it takes two
    arguments: ``resolved`` holds every block at that scale (``{"dataset": {...}, "baselines":
    {...}, "scale": {...}}``, the last being the scale's own settings: iterations, sizes...), for a
    check that depends on another block (a checkpoint's class count on the dataset).
    """
    if block not in _SETTINGS_VALIDATORS:
        raise ValueError(f"settings_validator: unknown block {block!r}; known: {', '.join(SETTINGS_BLOCKS)}")

    def register(fn: SettingsValidator) -> SettingsValidator:
        if fn not in _SETTINGS_VALIDATORS[block]:
            _SETTINGS_VALIDATORS[block].append(fn)
        return fn

    return register


# Scale settings a method package owns (``scales.<scale>.<key>``, read by its trials from ctx.scale),
# each with its check. A key no package registers reaches the trials unchecked: a user's trial may
# read its own settings there.
_SCALE_SETTINGS: dict[str, Callable[[Any], Any]] = {}


def scale_setting(key: str) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    """Register the check of the scale setting ``key``: ``check(value)`` raises ValueError,
    TypeError or UserError with one line saying what is wrong (the suite loader adds where and at
    which scale). The loader calls it before anything runs."""

    def register(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        owner = _SCALE_SETTINGS.get(key)
        if owner is not None and (owner.__module__, owner.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"scale setting {key!r} is already checked by {owner.__module__}.{owner.__qualname__}")
        _SCALE_SETTINGS[key] = fn
        return fn

    return register


def scale_setting_check(key: str) -> Callable[[Any], Any] | None:
    return _SCALE_SETTINGS.get(key)


def settings_fields(cls: type, given: Any, block: str, allowed: Iterable[str] | None = None) -> dict[str, Any]:
    """The keyword arguments for dataclass ``cls`` from a suite settings mapping ``given`` (named
    ``block`` in messages): every key a field of ``cls`` (or of ``allowed``), every value of its
    field's type (bool, int, float, str, a fixed-length tuple of those, None where the type allows
    it; lists become tuples). ValueError naming ``block.key`` otherwise; ranges are the dataclass's
    own ``__post_init__``'s to check."""
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise ValueError(f"{block}: expected a mapping of settings, got {given!r}")
    hints = typing.get_type_hints(cls)
    known = tuple(allowed) if allowed is not None else tuple(f.name for f in dataclasses.fields(cls))
    out = {}
    for key, value in given.items():
        if key not in known:
            raise ValueError(
                f"{block}: unknown setting {key!r}{did_you_mean(str(key), known)}; known: {', '.join(known)}"
            )
        try:
            out[key] = _coerce_typed(hints[key], value)
        except ValueError as exc:
            raise ValueError(f"{block}.{key}: {exc}") from None
    return out


def _coerce_typed(kind: Any, value: Any) -> Any:
    options = (
        typing.get_args(kind)
        if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union
        else (kind,)
    )
    if value is None:
        if type(None) in options:
            return None
        raise ValueError("expected a value, got null")
    errors = []
    for option in (o for o in options if o is not type(None)):
        try:
            if typing.get_origin(option) is tuple:
                items = typing.get_args(option)
                if not isinstance(value, (list, tuple)) or len(value) != len(items):
                    raise ValueError(f"expected a list of {len(items)}, got {value!r}")
                return tuple(coerce_scalar(item, v) for item, v in zip(items, value, strict=True))
            return coerce_scalar(option, value)
        except ValueError as exc:
            errors.append(str(exc))
    raise ValueError(errors[0])


def validate_settings(block: str, settings: dict[str, Any], resolved: dict[str, dict[str, Any]] | None = None) -> None:
    """Run the registered checks of ``block`` on ``settings`` (raises on the first failure)."""
    for check in _SETTINGS_VALIDATORS[block]:
        if _takes_two(check):
            check(settings, resolved if resolved is not None else {block: settings})
        else:
            check(settings)


def _takes_two(fn: SettingsValidator) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def track_packages(*names: str) -> None:
    """Declare distributions (e.g. a method's optional back ends) whose installed versions every
    run records in its provenance."""
    _TRACKED_PACKAGES.update(names)


def tracked_packages() -> tuple[str, ...]:
    return tuple(sorted(_TRACKED_PACKAGES))
