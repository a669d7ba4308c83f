from __future__ import annotations

import engine_trials  # noqa: F401  (registers test trials)
import pytest

from harness.errors import UserError
from harness.registry import Metric, Param, get_trial, trial, unregister


def test_param_coercion_and_bounds() -> None:
    p = Param("alpha", float, 0.3, doc="threshold", low=0.0, high=1.0)
    assert p.coerce(1) == 1.0
    with pytest.raises(ValueError, match="below the minimum"):
        p.coerce(-0.1)
    with pytest.raises(ValueError, match="expected a number"):
        p.coerce("0.3")
    c = Param("mode", str, "a", choices=("a", "b"))
    with pytest.raises(ValueError, match="not one of: a, b"):
        c.coerce("c")
    with pytest.raises(ValueError, match="expected an integer"):
        Param("n", int, 1).coerce(True)
    with pytest.raises(ValueError):
        Param("bad", float, "x")


def test_resolve_params_defaults_and_errors() -> None:
    spec = get_trial("test.behave")
    resolved = spec.resolve_params({"index": 3})
    assert resolved == {"behaviour": "ok", "seconds": 0.0, "index": 3}
    with pytest.raises(ValueError, match="did you mean index"):
        spec.resolve_params({"indx": 3})


def test_unknown_trial_suggests() -> None:
    with pytest.raises(UserError, match="did you mean test.behave"):
        get_trial("test.behav")


def test_register_rejects_bad_axes_and_clashes() -> None:
    with pytest.raises(ValueError, match="unknown axes"):
        trial("test.bad", axes=("colour",))
    with pytest.raises(ValueError, match="clash"):
        trial("test.bad2", params=[Param("precision", str, "fp32")])
    with pytest.raises(ValueError, match="registered twice"):

        @trial("test.behave", metrics=[Metric("x")])
        def other(ctx):  # pragma: no cover
            pass

    unregister("test.bad")
