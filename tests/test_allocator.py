"""glibc malloc set up by the runner: mmap of large blocks and heap trimming off, recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.allocator import _glibc

SNIPPET = (
    "import json\n"
    "import torch\n"
    "from harness.allocator import tune_malloc, malloc_setting\n"
    "from harness.provenance import provenance\n"
    "before = malloc_setting()\n"
    "setting = tune_malloc()\n"
    "assert tune_malloc() == setting == malloc_setting()\n"
    "x = torch.arange(10_000_000, dtype=torch.float32)  # 40 MB: above glibc's largest mmap threshold\n"
    "y = torch.relu(x - 10.0)\n"
    "assert float(y[:11].sum()) == 0.0 and float(y[-1]) == 10_000_000 - 11 and int((y > 0).sum()) == 10_000_000 - 11\n"
    "print(json.dumps([before, setting, provenance(1)['packages'].get('malloc', '')]))\n"
)


def _run(env_extra: dict[str, str]) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "HARNESS_DEFAULT_MALLOC"} | env_extra
    out = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(_glibc() is None, reason="not a glibc platform")
def test_tune_malloc_sets_glibc_once_and_provenance_records_it() -> None:
    before, setting, recorded = _run({})
    assert before == ""
    assert setting.startswith("glibc ") and "mmap_max=0" in setting
    assert recorded == setting


def test_tune_malloc_opt_out_leaves_malloc_alone_and_records_nothing() -> None:
    before, setting, recorded = _run({"HARNESS_DEFAULT_MALLOC": "1"})
    assert before == setting == recorded == ""
