"""Result rows as a pandas DataFrame, for ``harness show`` and for notebooks.

>>> from harness.results import results_frame
>>> frame = results_frame("sqlite:///results/harness.db", "table5")
>>> frame[frame.status == "ok"].groupby("section")["latency"].median()

One row per stored unit result: identity and axes, ``p.<name>`` per parameter, one column per
metric (a metric named like an axis column, e.g. the selectors' ``precision``, becomes
``metric.<name>``), the wall time and the error of a unit that did not end ok.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Any

import pandas as pd

from harness.errors import UserError
from harness.store import Store

ID_COLUMNS = ("run_id", "suite", "trial", "label", "section", "precision", "batch_size", "device", "status")
FRAME_FORMATS = ("csv", "json", "parquet")


def _store(db: str | Store | None) -> Store:
    return db if isinstance(db, Store) else Store(db, create=False)


def _rows(store: Store, suite: str | None, run: int | None) -> list[dict[str, Any]]:
    if run is not None:
        if store.get_run(run) is None:
            raise UserError(f"no run with id {run}")
        return store.results(run_id=run, latest_per_unit=False)
    if suite is None:
        return store.results(latest_per_unit=False)
    from harness.suite import suite_name_of

    name = suite_name_of(suite)
    rows = store.results(suite=name)
    if not rows:
        raise UserError(f"no results stored for suite {name!r}")
    return rows


def flat_row(result: dict[str, Any]) -> dict[str, Any]:
    """One result dict (as :meth:`Store.results` gives it) flattened to scalar columns."""
    row = {k: result[k] for k in ID_COLUMNS}
    row.update({f"p.{k}": v for k, v in result["params"].items()})
    # a metric named like a column (the selectors' "precision") must not overwrite the axis
    row.update({(f"metric.{m}" if m in row else m): v["value"] for m, v in result["metrics"].items()})
    row["duration_s"] = result.get("duration_s")
    row["error"] = result["error"]
    return row


def results_frame(db: str | Store | None = None, suite: str | None = None, *, run: int | None = None) -> pd.DataFrame:
    """Results of ``suite`` (a name or suite file; its newest result per unit), of one ``run`` (every
    unit it stored) or, with neither, every stored result.

    ``db`` is a SQLAlchemy URL or an open :class:`~harness.store.Store` (default: ``$HARNESS_DB``,
    else ``sqlite:///results/harness.db``). Raises UserError for an unknown suite or run.
    """
    return pd.DataFrame([flat_row(r) for r in _rows(_store(db), suite, run)])


def _arrow_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns holding more than one type (a parameter that is a list in one row and a number
    in another) become JSON text, so that parquet can store them."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype != object:
            continue
        kinds = {type(v) for v in out[column] if v is not None and v == v}
        if len(kinds) > 1 or kinds & {list, dict, tuple}:
            out[column] = [None if v is None else json.dumps(v, default=str) for v in out[column]]
    return out


def write_frame(frame: pd.DataFrame, fmt: str, out: Path | None = None, stream: IO[str] | None = None) -> None:
    """Write ``frame`` as csv, json or parquet to ``out`` (a file) or else to stdout.

    Parquet is binary: to stdout only when stdout is not a terminal.
    """
    if fmt not in FRAME_FORMATS:
        raise UserError(f"--format: unknown format {fmt!r} (choose from {', '.join(FRAME_FORMATS)})")
    if fmt == "parquet":
        _write_parquet(frame, out)
        return
    text = frame.to_csv(index=False) if fmt == "csv" else frame.to_json(orient="records", indent=1) + "\n"
    if out is not None:
        _writable(out).write_text(text)
    else:
        (stream or sys.stdout).write(text)


def _write_parquet(frame: pd.DataFrame, out: Path | None) -> None:
    if out is None and sys.stdout.isatty():
        raise UserError("--format parquet is binary: give --out FILE or redirect stdout")
    target: Any = _writable(out) if out is not None else sys.stdout.buffer
    _arrow_safe(frame).to_parquet(target, index=False)


def _writable(path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out: cannot create {path.parent}: {exc.strerror}") from None
    return path
