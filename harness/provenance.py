"""Where and with what a run was made: git commit, host, CPU/GPU, threads and package versions."""

from __future__ import annotations

import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from harness.registry import tracked_packages

DISTRIBUTION = "segharness"
UNTRACKED_EXTRAS = ("dev",)  # test and lint tools do not change a result


def git(*args: str) -> str:
    """``git ARGS`` in the working directory; "" when git or the repository is absent."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def declared_packages() -> tuple[str, ...]:
    """segharness and the distributions it declares (dependencies and extras such as ``sparse``,
    ``mmseg``, ``knn``, but not ``dev``): read from the installed package's metadata, so a new
    extra is tracked without a list here."""
    try:
        requirements = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        requirements = []
    names = [DISTRIBUTION]
    for requirement in requirements:
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", requirement)
        if extra and extra.group(1) in UNTRACKED_EXTRAS:
            continue
        names.append(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0])
    return tuple(dict.fromkeys(names))


def package_versions() -> dict[str, str]:
    """Installed versions of the declared packages and of those the method packages track
    (:func:`harness.registry.track_packages`); a package that is not installed is left out."""
    versions = {}
    for name in (*declared_packages(), *tracked_packages()):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _malloc() -> dict[str, str]:
    from harness.allocator import malloc_setting

    setting = malloc_setting()
    return {"malloc": setting} if setting else {}


def provenance(threads: int) -> dict[str, Any]:
    """The provenance columns of a run (see :class:`harness.store.Run`)."""
    gpu = ""
    if torch.cuda.is_available():
        gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return {
        "git_sha": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "host": platform.node(),
        "cpu": cpu_model(),
        "gpu": gpu,
        "threads": threads,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "",
        "packages": {**package_versions(), "python": platform.python_version(), **_malloc()},
    }
