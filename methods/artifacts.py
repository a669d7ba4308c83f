"""Cached training artifacts (checkpoints, precomputed tensors) and user-given checkpoints.

An artifact is a dict saved with ``torch.save`` under ``<artifacts_dir>/<kind>/<key>.pt``, where the
key is the sha256 of the canonical JSON of ``(kind, config)``. A sidecar ``<key>.json`` records the
config, the sha256 of the ``.pt`` bytes, the creation time and how long the build took. Loading
verifies the checksum; a corrupt or truncated artifact is reported and rebuilt, never used.
The checksum guards against corruption, not tampering (the sidecar sits beside the file, and the
cache directory may be shared or copied), so artifacts hold weights-only data (tensors, plain
containers, numbers, strings: checked when saved) and are read weights-only
(:mod:`methods.safe_load`); a file that would need more is rebuilt, never unpickled.
Writes are atomic (temporary file + ``os.replace``) and a per-artifact ``fcntl`` lock keeps two
processes from building the same artifact at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from harness.errors import UserError
from methods.safe_load import load_weights_only, offending_type, safe_torch_load, unsafe_globals

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace; paths and other non-JSON scalars become strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def artifact_key(kind: str, config: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json([kind, config]).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_paths(artifacts_dir: Path | str, kind: str, config: dict[str, Any]) -> tuple[Path, Path]:
    """(``.pt`` path, sidecar ``.json`` path) of the artifact for ``(kind, config)``."""
    key = artifact_key(kind, config)
    folder = Path(artifacts_dir) / kind
    return folder / f"{key}.pt", folder / f"{key}.json"


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file in ``path``'s folder, then move it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        tmp.chmod(0o644)  # mkstemp creates 0600; artifacts are shared, not secret
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _warn(progress: Progress | None, message: str) -> None:
    log.warning(message)
    if progress is not None:
        progress(message)


def _load_verified(pt_path: Path, sidecar_path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(artifact, None) if both files exist and agree; (None, reason) if present but bad;
    (None, None) if absent."""
    if not pt_path.exists() and not sidecar_path.exists():
        return None, None
    if not pt_path.exists():
        return None, "the .pt file is missing"
    try:
        sidecar = json.loads(sidecar_path.read_text())
        expected = sidecar["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, "its sidecar .json is missing or unreadable"
    if file_sha256(pt_path) != expected:
        return None, "checksum mismatch (corrupt or truncated)"
    try:
        artifact = load_weights_only(pt_path)
    except Exception as exc:  # noqa: BLE001 - any load failure means the file cannot be used
        refused = offending_type(exc)
        return None, f"unreadable ({type(exc).__name__}{f': needs type {refused}' if refused else ''})"
    if not isinstance(artifact, dict):
        return None, f"holds a {type(artifact).__name__}, not a dict"
    return artifact, None


def cached_artifact(
    artifacts_dir: Path | str,
    kind: str,
    config: dict[str, Any],
    build: Callable[[], dict[str, Any]],
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Return the artifact for ``(kind, config)``, building and storing it on a miss.

    ``config`` must fully determine what ``build`` returns: it is the cache key. A stored artifact
    that fails its checksum or cannot be loaded is reported (one line naming the file, to the log
    and to ``progress``) and rebuilt.
    """
    pt_path, sidecar_path = artifact_paths(artifacts_dir, kind, config)
    with _exclusive_lock(pt_path.with_suffix(".lock")):
        artifact, problem = _load_verified(pt_path, sidecar_path)
        if artifact is not None:
            return artifact
        if problem is not None:
            _warn(progress, f"artifact {pt_path} is unusable: {problem}; rebuilding")
        t0 = time.perf_counter()
        artifact = build()
        build_seconds = time.perf_counter() - t0
        if not isinstance(artifact, dict):
            raise TypeError(f"build() for artifact kind {kind!r} returned {type(artifact).__name__}, not dict")
        _atomic_write(pt_path, lambda tmp: _save_weights_only(artifact, tmp, kind))
        sidecar = {
            "kind": kind,
            "key": pt_path.stem,
            "config": json.loads(canonical_json(config)),
            "sha256": file_sha256(pt_path),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(build_seconds, 3),
        }
        _atomic_write(sidecar_path, lambda tmp: tmp.write_text(json.dumps(sidecar, indent=2)))
        return artifact


def _save_weights_only(artifact: dict[str, Any], path: Path, kind: str) -> None:
    torch.save(artifact, path)
    unsafe = unsafe_globals(path)
    if unsafe:
        raise TypeError(f"artifact kind {kind!r} holds {', '.join(unsafe)}: store tensors and plain data only")


def artifact_info(artifacts_dir: Path | str, kind: str, config: dict[str, Any]) -> dict[str, Any] | None:
    """The sidecar of a stored artifact (config, sha256, created, build_seconds), or None."""
    _, sidecar_path = artifact_paths(artifacts_dir, kind, config)
    try:
        return json.loads(sidecar_path.read_text())
    except (OSError, ValueError):
        return None


def load_checkpoint(path: Path | str, *, trusted: bool = False) -> dict[str, Any]:
    """Load a user-given checkpoint (a dict). Raises UserError, one line, if it is missing,
    truncated, corrupt, refused or not a dict.

    The rule of :func:`methods.safe_load.safe_torch_load`: only tensors, plain containers and the
    allow-listed checkpoint metadata types are unpickled unless ``trusted`` is set.
    """
    path = Path(path)
    checkpoint = safe_torch_load(path, trusted=trusted)
    if not isinstance(checkpoint, dict):
        raise UserError(f"checkpoint {path} holds a {type(checkpoint).__name__}, expected a dict")
    return checkpoint
