from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest
import torch

from harness.errors import UserError
from methods.artifacts import artifact_info, artifact_paths, cached_artifact, load_checkpoint


class CountingBuilder:
    def __init__(self, value: float = 1.0):
        self.calls = 0
        self.value = value

    def __call__(self) -> dict:
        self.calls += 1
        return {"weights": torch.full((4, 4), self.value), "note": "built"}


def test_miss_builds_then_hit_loads_without_building(tmp_path: Path) -> None:
    build = CountingBuilder()
    first = cached_artifact(tmp_path, "toy", {"a": 1}, build)
    second = cached_artifact(tmp_path, "toy", {"a": 1}, build)
    assert build.calls == 1
    assert torch.equal(first["weights"], second["weights"])
    pt_path, sidecar_path = artifact_paths(tmp_path, "toy", {"a": 1})
    assert pt_path.parent == tmp_path / "toy" and pt_path.suffix == ".pt"
    info = json.loads(sidecar_path.read_text())
    assert info["config"] == {"a": 1}
    assert info["build_seconds"] >= 0 and info["created"].endswith("Z")
    assert artifact_info(tmp_path, "toy", {"a": 1}) == info


def test_key_depends_on_config_and_kind_but_not_key_order(tmp_path: Path) -> None:
    build = CountingBuilder()
    cached_artifact(tmp_path, "toy", {"a": 1, "b": 2}, build)
    cached_artifact(tmp_path, "toy", {"b": 2, "a": 1}, build)
    assert build.calls == 1
    cached_artifact(tmp_path, "toy", {"a": 1, "b": 3}, build)
    cached_artifact(tmp_path, "other", {"a": 1, "b": 2}, build)
    assert build.calls == 3


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "delete_sidecar"])
def test_corrupt_artifact_is_reported_and_rebuilt(tmp_path: Path, damage: str, caplog) -> None:
    cached_artifact(tmp_path, "toy", {"a": 1}, CountingBuilder(1.0))
    pt_path, sidecar_path = artifact_paths(tmp_path, "toy", {"a": 1})
    data = pt_path.read_bytes()
    if damage == "truncate":
        pt_path.write_bytes(data[: len(data) // 2])
    elif damage == "flip_byte":
        pt_path.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    else:
        sidecar_path.unlink()
    messages: list[str] = []
    rebuild = CountingBuilder(2.0)
    with caplog.at_level(logging.WARNING):
        artifact = cached_artifact(tmp_path, "toy", {"a": 1}, rebuild, progress=messages.append)
    assert rebuild.calls == 1
    assert torch.equal(artifact["weights"], torch.full((4, 4), 2.0))
    assert len(messages) == 1 and str(pt_path) in messages[0] and "\n" not in messages[0]
    assert any(str(pt_path) in r.getMessage() for r in caplog.records)
    # The rebuilt artifact is valid again: loaded without another build.
    again = CountingBuilder(3.0)
    assert torch.equal(cached_artifact(tmp_path, "toy", {"a": 1}, again)["weights"], torch.full((4, 4), 2.0))
    assert again.calls == 0


def test_concurrent_builders_build_once(tmp_path: Path) -> None:
    build = CountingBuilder()
    results: list[dict] = []
    threads = [
        threading.Thread(target=lambda: results.append(cached_artifact(tmp_path, "toy", {"a": 1}, build)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert build.calls == 1 and len(results) == 3
    assert not list((tmp_path / "toy").glob("*.tmp"))


def test_build_must_return_a_dict(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        cached_artifact(tmp_path, "toy", {"a": 1}, lambda: [1, 2])  # type: ignore[arg-type,return-value]
    assert not artifact_paths(tmp_path, "toy", {"a": 1})[0].exists()


def test_load_checkpoint_reads_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    torch.save({"state_dict": {"w": torch.ones(3)}}, path)
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.ones(3))


@pytest.mark.parametrize("problem", ["missing", "truncated", "garbage", "not_a_dict"])
def test_load_checkpoint_raises_one_line_user_error(tmp_path: Path, problem: str) -> None:
    path = tmp_path / "model.pth"
    if problem != "missing":
        torch.save({"state_dict": {"w": torch.ones(1000)}}, path)
        data = path.read_bytes()
        if problem == "truncated":
            path.write_bytes(data[: len(data) // 3])
        elif problem == "garbage":
            path.write_bytes(b"not a checkpoint at all" * 10)
        else:
            torch.save([1, 2, 3], path)
    with pytest.raises(UserError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
