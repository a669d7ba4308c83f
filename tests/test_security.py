"""Issue 19: database passwords are never stored or shown, and no checkpoint is unpickled blindly.

The secret used throughout is ``s3cretPW``: every test greps for it in what a user could see or
share (the database, every report format, stdout, stderr, a baseline file) and also checks the
masked form is there, so a test cannot pass by finding nothing at all.
"""

from __future__ import annotations

import collections
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pypdf import PdfReader
from sqlalchemy import create_engine, text

import methods.microbench.trials  # noqa: F401 - registers micro.conv2d
from harness.cli import main
from harness.context import TrialContext
from harness.errors import UserError
from harness.redact import mask_command, mask_secrets, mask_url
from harness.registry import Metric, Param, trial
from harness.reports import FORMATS
from harness.results import MetricValue, ResultRow, Status, UnitIdentity
from harness.runner import RunOptions, run_suite
from harness.store import SCHEMA_VERSION, Store
from harness.suite import load_suite
from methods.artifacts import artifact_paths, cached_artifact, file_sha256, load_checkpoint
from methods.hfgd.backbone import build_backbone, load_backbone_weights
from methods.mmseg_models import load_user_checkpoint
from methods.safe_load import safe_torch_load

SECRET = "s3cretPW"
LEAKY_COMMAND = (
    f"harness run suites/s.yaml --db postgresql+psycopg2://user:{SECRET}@db.example:5432/results "
    f"--db=mysql://other:{SECRET}@h/d HARNESS_DB=postgresql://third:{SECRET}@h/d"
)


# --- throwaway trials ------------------------------------------------------------------------------


@trial(
    "test.security_leak",
    doc="Fails with a message that carries a URL with a password (as a fetch error would).",
    metrics=[Metric("value", "", "none")],
)
def leak(ctx: TrialContext) -> None:
    raise RuntimeError(f"cannot fetch https://user:{SECRET}@weights.example/model.pth: 401")


@trial(
    "test.security_checkpoint",
    doc="Loads a user checkpoint under the rule of methods.safe_load, trusted if the run says so.",
    params=[Param("path", str, "", doc="checkpoint file")],
    metrics=[Metric("value", "", "none")],
)
def load_user_file(ctx: TrialContext) -> None:
    checkpoint = safe_torch_load(ctx.params["path"], trusted=ctx.trust_checkpoints)
    ctx.record("value", float(checkpoint["state_dict"]["w"].sum()))


class WritesMarker:
    """Pickles as a call that writes a marker file: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


class GetattrOf:
    """Pickles as ``getattr(owner, name)``: the stand-in for getattr must refuse anything else
    than HistoryBuffer's statistic methods."""

    def __init__(self, owner: object, name: str) -> None:
        self.owner, self.name = owner, name

    def __reduce__(self) -> tuple[object, tuple[object, str]]:
        return getattr, (self.owner, self.name)


def malicious_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": {"hook": WritesMarker(marker)}}, path)
    return path, marker


def mmengine_checkpoint(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """A checkpoint laid out as mmengine 0.10's Runner.save_checkpoint writes it: meta, state_dict,
    the message hub's state (HistoryBuffers holding numpy arrays, numpy scalars) and optimizer."""
    from mmengine.logging import MessageHub

    hub = MessageHub.get_instance("segharness-security-test")
    for loss in (0.9, 0.6, 0.3):
        hub.update_scalar("train/loss", loss)
    hub.update_info("iter", np.int64(120))
    hub.update_info("lr_curve", np.linspace(0.01, 0.001, 4, dtype=np.float32))
    meta = {
        "epoch": 1,
        "iter": 120,
        "cfg": "model = dict(type='EncoderDecoder')",
        "seed": np.int64(2023),
        "experiment_name": "segharness",
        "time": "20240101_000000",
        "mmengine_version": "0.10.7",
        "dataset_meta": {"classes": ("road", "car"), "palette": [[128, 64, 128], [0, 0, 142]]},
        "best_miou": np.float64(0.75),
    }
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([weight], lr=0.01, momentum=0.9)
    weight.grad = torch.ones(2)
    optimizer.step()
    torch.save(
        {
            "meta": meta,
            "state_dict": collections.OrderedDict(state_dict),
            "message_hub": hub.state_dict(),
            "optimizer": optimizer.state_dict(),
        },
        path,
    )


def suite_file(tmp_path: Path, body: str, name: str = "sec", extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\n{extra}timing: {{warmup: 0, iters: 2}}\nbenchmarks:\n{body}")
    return path


def pdf_text(path: Path) -> str:
    return "\n".join(page.extract_text() or "" for page in PdfReader(str(path)).pages)


def report_texts(out_dir: Path) -> dict[str, str]:
    """Every report file written, as text (PDF through pypdf)."""
    texts = {}
    for path in sorted(out_dir.rglob("*")):
        if path.suffix == ".pdf" and "_figures" not in str(path):
            texts[path.name] = pdf_text(path)
        elif path.suffix in (".md", ".tex", ".html", ".svg", ".json"):
            texts[path.name] = path.read_text(errors="replace")
    return texts


# --- masking ---------------------------------------------------------------------------------------


def test_mask_url_hides_only_the_password() -> None:
    url = f"postgresql+psycopg2://user:{SECRET}@127.0.0.1:5432/db?sslmode=require"
    assert mask_url(url) == "postgresql+psycopg2://user:***@127.0.0.1:5432/db?sslmode=require"
    assert mask_url("sqlite:///results/harness.db") == "sqlite:///results/harness.db"
    assert mask_url("postgresql://user@host/db") == "postgresql://user@host/db"
    # unescaped '@' in the password: SQLAlchemy would show 'ss'; hidden up to the last '@'
    assert mask_url(f"postgresql://u:p@ss{SECRET}@host/db") == "postgresql://u:***@host/db"


def test_mask_command_masks_db_values_and_url_tokens() -> None:
    argv = ["harness", "run", "s.yaml", "--db", f"postgresql://u:my {SECRET} pw@h/d", "--scale", "smoke",
            f"--db=postgresql://u:{SECRET}@h:1/d", f"https://tok:{SECRET}@example.org/x.pth", "--force"]  # fmt: skip
    assert mask_command(argv) == (
        "harness run s.yaml --db postgresql://u:***@h/d --scale smoke --db=postgresql://u:***@h:1/d "
        "https://tok:***@example.org/x.pth --force"
    )


def test_mask_secrets_in_free_text() -> None:
    message = (
        f"cannot open database 'postgresql://u:{SECRET}@h/d': x; dsn host=h password={SECRET} user=u; "
        f'"mysql://a:{SECRET}@b/c"'
    )
    assert mask_secrets(message) == (
        "cannot open database 'postgresql://u:***@h/d': x; dsn host=h password=*** user=u; \"mysql://a:***@b/c\""
    )
    assert mask_secrets("sqlite:///a.db and http://host:80/path") == "sqlite:///a.db and http://host:80/path"


# --- SQLite end to end, with password-bearing URLs in the command line -------------------------------


def test_password_in_the_command_reaches_no_database_report_or_output(
    tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    body = "  - trial: micro.conv2d\n    params: {channels: 2, height: 8, width: 8}\n  - trial: test.security_leak\n"
    path = suite_file(tmp_path, body)
    from rich.console import Console

    console = Console(stderr=True, width=300)
    store = Store(db_url)
    summary = run_suite(load_suite(path), store, RunOptions(show_progress=True), console, command=LEAKY_COMMAND)
    assert [o.status for o in summary.outcomes] == ["ok", "failed"]
    out_dir = tmp_path / "reports"
    assert main(["report", str(path), "--db", db_url, "--format", ",".join(FORMATS), "--out", str(out_dir)]) == 0
    assert main(["runs", "--db", db_url]) == 0
    assert main(["show", "sec", "--db", db_url, "--format", "csv"]) == 0
    captured = capsys.readouterr()

    dump = "\n".join(sqlite3.connect(db_url.removeprefix("sqlite:///")).iterdump())
    texts = report_texts(out_dir)
    assert {f"sec.{fmt}" for fmt in FORMATS} <= set(texts)
    for where, content in {"db": dump, "stdout": captured.out, "stderr": captured.err, **texts}.items():
        assert SECRET not in content, where
    # the known answer: the command is stored and shown, masked
    masked = "--db postgresql+psycopg2://user:***@db.example:5432/results --db=mysql://other:***@h/d"
    assert store.runs("sec")[-1].command == f"harness run suites/s.yaml {masked} HARNESS_DB=postgresql://third:***@h/d"
    assert masked in texts["sec.md"] and "user:***@db.example" in texts["sec.tex"]
    failed = next(r for r in store.results(suite="sec") if r.status == "failed")
    assert failed.error == "RuntimeError: cannot fetch https://user:***@weights.example/model.pth: 401"
    assert "user:***@weights.example" in str(failed.notes["traceback"])
    assert "https://user:***@weights.example" in captured.err  # progress output of the failed unit


def test_a_run_stored_unmasked_is_masked_in_every_report_format(tmp_path: Path, db_url: str) -> None:
    """Databases written before this fix hold raw commands: the provenance masks them too."""
    path = suite_file(tmp_path, "  - trial: micro.conv2d\n    params: {channels: 2, height: 8, width: 8}\n")
    store = Store(db_url)
    run_suite(load_suite(path), store, RunOptions(show_progress=False), command="harness run")
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE runs SET command = :c"), {"c": f"harness run --db postgresql://u:{SECRET}@h/d"})
    out_dir = tmp_path / "reports"
    assert main(["report", str(path), "--db", db_url, "--format", ",".join(FORMATS), "--out", str(out_dir)]) == 0
    texts = report_texts(out_dir)
    assert texts and all(SECRET not in content for content in texts.values())
    assert "postgresql://u:***@h/d" in texts["sec.md"]


def test_baseline_file_holds_no_password(tmp_path: Path, db_url: str) -> None:
    path = suite_file(tmp_path, "  - trial: test.security_leak\n")
    store = Store(db_url)
    run_suite(load_suite(path), store, RunOptions(show_progress=False), command=LEAKY_COMMAND)
    with store.engine.begin() as conn:  # an error stored before masking existed
        conn.execute(text("UPDATE results SET error = :e"), {"e": f"failed at mysql://a:{SECRET}@b/c"})
        conn.execute(text("UPDATE runs SET git_sha = 'abc', git_dirty = :f"), {"f": False})
    from harness.gate import save_baseline

    out = save_baseline(store, "sec", tmp_path / "baseline.json")
    content = out.read_text()
    assert SECRET not in content and "mysql://a:***@b/c" in content


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg2://u:{SECRET}@127.0.0.1:1/x",  # nothing listens on port 1
        f"sqlite://u:{SECRET}@//TMP/x.db",  # SQLite takes no password: create_engine fails
        f"nosuchdialect://u:{SECRET}@h/d",
    ],
)
def test_failed_connection_is_one_masked_line(tmp_path: Path, url: str) -> None:
    (tmp_path / "x.db").touch()
    url = url.replace("/TMP", str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "runs", "--db", url], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("harness: error: cannot open database") and "u:***@" in lines[0]


# --- schema migration ------------------------------------------------------------------------------


def test_migration_adds_trust_checkpoints_and_keeps_old_runs(db_url: str) -> None:
    assert SCHEMA_VERSION == 5
    store = Store(db_url)
    run_id = store.start_run(suite="old", command="harness run")
    old = ResultRow("k1", "old", UnitIdentity("t", params={"a": 1}), Status.OK, metrics={"m": MetricValue("m", 2.0)})
    store.add_result(run_id, old)
    engine = create_engine(db_url)
    with engine.begin() as conn:  # make it a version-1 database
        for column in ("trust_checkpoints", "executor", "jobs", "overrides", "units"):
            conn.execute(text(f"ALTER TABLE runs DROP COLUMN {column}"))
        for column in ("baselines", "timing", "seed", "seed_index"):
            conn.execute(text(f"ALTER TABLE results DROP COLUMN {column}"))
        conn.execute(text("UPDATE meta SET value = '1' WHERE key = 'schema_version'"))
    engine.dispose()
    with pytest.raises(UserError, match="harness db upgrade"):
        Store(db_url)
    assert Store(db_url, check_version=False).upgrade() == [2, 3, 4, 5]
    upgraded = Store(db_url)
    run = upgraded.get_run(run_id)
    assert run is not None and run.trust_checkpoints is False and run.units is None and not run.overrides
    (row,) = upgraded.results(run_id=run_id)  # an old result reads back whole, with the new fields empty
    assert row.identity == UnitIdentity("t", params={"a": 1}) and row.value("m") == 2.0 and row.key == "k1"
    new_id = upgraded.start_run(suite="new", trust_checkpoints=True)
    assert upgraded.get_run(new_id).trust_checkpoints is True  # type: ignore[union-attr]


# --- checkpoints -----------------------------------------------------------------------------------


LOADERS = {
    "safe_torch_load": lambda path, trusted: safe_torch_load(path, trusted=trusted),
    "artifacts.load_checkpoint": lambda path, trusted: load_checkpoint(path, trusted=trusted),
    "mmseg load_user_checkpoint": lambda path, trusted: load_user_checkpoint(torch.nn.Module(), path, trusted=trusted),
    "hfgd load_backbone_weights": lambda path, trusted: load_backbone_weights(
        build_backbone("resnet_small"), path, trusted=trusted
    ),
}


@pytest.mark.parametrize("loader", LOADERS)
def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path: Path, loader: str) -> None:
    path, marker = malicious_checkpoint(tmp_path)
    with pytest.raises(UserError) as error:
        LOADERS[loader](path, False)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "posix.system" in message
    assert "--trust-checkpoints" in message
    assert not marker.exists()


@pytest.mark.parametrize("loader", LOADERS)
def test_trusted_malicious_checkpoint_is_unpickled(tmp_path: Path, loader: str) -> None:
    """The switch is real: with it the file is fully unpickled, and its code runs."""
    path, marker = malicious_checkpoint(tmp_path)
    try:
        LOADERS[loader](path, True)
    except (UserError, RuntimeError):
        pass  # the mmseg / hfgd loaders then find the weights do not fit their model
    assert marker.exists()


def test_mmengine_checkpoint_loads_without_trust(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    reference = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    path = tmp_path / "iter_120.pth"
    mmengine_checkpoint(path, reference)
    load_user_checkpoint(model, path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key])
    checkpoint = safe_torch_load(path)
    assert checkpoint["meta"]["seed"] == 2023 and isinstance(checkpoint["meta"]["seed"], np.int64)
    assert checkpoint["meta"]["dataset_meta"]["classes"] == ("road", "car")
    hub = checkpoint["message_hub"]
    buffer = hub["log_scalars"]["train/loss"]
    assert type(buffer).__name__ == "HistoryBuffer" and buffer.mean() == pytest.approx(0.6)
    assert buffer.min() == pytest.approx(0.3)
    np.testing.assert_allclose(hub["runtime_info"]["lr_curve"], np.linspace(0.01, 0.001, 4, dtype=np.float32))
    assert checkpoint["optimizer"]["param_groups"][0]["momentum"] == 0.9


@pytest.mark.parametrize("name", ["__init__", "update", "__class__"])
def test_getattr_is_allowed_only_for_history_buffer_statistics(tmp_path: Path, name: str) -> None:
    from mmengine.logging import HistoryBuffer

    path = tmp_path / "getattr.pth"
    torch.save({"state_dict": {}, "meta": {"f": GetattrOf(HistoryBuffer, name)}}, path)
    with pytest.raises(UserError, match="needs type builtins.getattr"):
        safe_torch_load(path)
    torch.save({"meta": {"f": GetattrOf(HistoryBuffer, "mean")}}, path)
    assert safe_torch_load(path)["meta"]["f"] is HistoryBuffer.mean


def test_unsafe_cached_artifact_is_rebuilt_not_unpickled(tmp_path: Path) -> None:
    """A tampered artifact whose sidecar checksum matches is still never unpickled."""
    config = {"a": 1}
    first = cached_artifact(tmp_path, "toy", config, lambda: {"w": torch.ones(2)})
    assert torch.equal(first["w"], torch.ones(2))
    pt_path, sidecar_path = artifact_paths(tmp_path, "toy", config)
    marker = tmp_path / "marker"
    torch.save({"w": torch.zeros(2), "x": WritesMarker(marker)}, pt_path)
    sidecar_path.write_text(sidecar_path.read_text().replace(first_sha(sidecar_path), file_sha256(pt_path)))
    messages: list[str] = []
    rebuilt = cached_artifact(tmp_path, "toy", config, lambda: {"w": torch.full((2,), 3.0)}, messages.append)
    assert torch.equal(rebuilt["w"], torch.full((2,), 3.0)) and not marker.exists()
    assert len(messages) == 1 and "needs type posix.system" in messages[0] and "rebuilding" in messages[0]


def first_sha(sidecar_path: Path) -> str:
    import json

    return json.loads(sidecar_path.read_text())["sha256"]


def test_an_artifact_that_needs_unpickling_is_not_stored(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="artifact kind 'toy' holds"):
        cached_artifact(tmp_path, "toy", {"a": 2}, lambda: {"x": WritesMarker(tmp_path / "m")})
    assert not artifact_paths(tmp_path, "toy", {"a": 2})[0].exists()


# --- the trust switch through the runner -------------------------------------------------------------


def test_trust_switch_reaches_trials_and_is_recorded(tmp_path: Path, db_url: str) -> None:
    """No suite in suites/ takes a user checkpoint yet, so a test trial stands for one."""
    from rich.console import Console

    path, marker = malicious_checkpoint(tmp_path)
    suite = load_suite(suite_file(tmp_path, f"  - trial: test.security_checkpoint\n    params: {{path: '{path}'}}\n"))
    store = Store(db_url)
    console = Console(stderr=True, record=True, width=300)
    refused = run_suite(suite, store, RunOptions(show_progress=False), console)
    assert refused.outcomes[0].status == "failed" and "needs type posix.system" in refused.outcomes[0].error
    assert not marker.exists() and store.runs("sec")[-1].trust_checkpoints is False
    assert "warning" not in console.export_text()

    trusted = run_suite(suite, store, RunOptions(show_progress=False, trust_checkpoints=True), console)
    assert trusted.outcomes[0].status == "ok" and trusted.outcomes[0].metrics == {"value": 2.0}
    assert marker.exists() and store.runs("sec")[-1].trust_checkpoints is True
    assert "--trust-checkpoints: user checkpoints will be fully unpickled" in console.export_text()
    out_dir = tmp_path / "reports"
    assert main(["report", str(suite.path), "--db", db_url, "--format", "md", "--out", str(out_dir)]) == 0
    assert "| checkpoints | TRUSTED: user checkpoints were fully unpickled" in (out_dir / "sec.md").read_text()


def test_suite_key_trust_checkpoints(tmp_path: Path, db_url: str) -> None:
    path, marker = malicious_checkpoint(tmp_path)
    body = f"  - trial: test.security_checkpoint\n    params: {{path: '{path}'}}\n"
    suite = load_suite(suite_file(tmp_path, body, extra="trust_checkpoints: true\n"))
    assert suite.trust_checkpoints is True
    summary = run_suite(suite, Store(db_url), RunOptions(show_progress=False))
    assert summary.outcomes[0].status == "ok" and marker.exists()
    with pytest.raises(UserError, match=r"sec.yaml:2: trust_checkpoints: must be true or false"):
        load_suite(suite_file(tmp_path, body, extra="trust_checkpoints: sure\n"))


def test_trust_checkpoints_flag_on_the_cli(tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = suite_file(tmp_path, "  - trial: micro.conv2d\n    params: {channels: 2, height: 8, width: 8}\n")
    assert main(["run", str(path), "--db", db_url, "--no-progress", "--trust-checkpoints"]) == 0
    assert "--trust-checkpoints: user checkpoints will be fully unpickled" in capsys.readouterr().err
    assert Store(db_url).runs("sec")[-1].trust_checkpoints is True


# --- a real PostgreSQL server ----------------------------------------------------------------------


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "300"}
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def test_postgres_password_appears_nowhere(tmp_path: Path, postgres_server) -> None:  # noqa: ANN001
    url, password = postgres_server.url, postgres_server.password
    path = suite_file(tmp_path, "  - trial: micro.conv2d\n    params: {channels: 2, height: 8, width: 8}\n")
    out_dir = tmp_path / "reports"
    calls = {
        "run": _cli("run", str(path), "--db", url, cwd=tmp_path),
        "report": _cli(
            "report", str(path), "--db", url, "--format", ",".join(FORMATS), "--out", str(out_dir), cwd=tmp_path
        ),  # fmt: skip
        "runs": _cli("runs", "--db", url, cwd=tmp_path),
        "show": _cli("show", "sec", "--db", url, cwd=tmp_path),
        "bad password": _cli("runs", "--db", url.replace(password, f"{SECRET}wrong"), cwd=tmp_path),
    }
    for name, proc in calls.items():
        assert proc.returncode == (2 if name == "bad password" else 0), (name, proc.stderr)
        assert password not in proc.stdout + proc.stderr and SECRET not in proc.stdout + proc.stderr, name
    bad = calls["bad password"].stderr.strip().splitlines()
    assert len(bad) == 1 and "password authentication failed" in bad[0] and "harness:***@127.0.0.1" in bad[0]
    dump = postgres_server.dump()
    assert "sec" in dump and password not in dump
    runs = Store(url).runs("sec")
    assert runs[-1].status == "ok" and f"--db postgresql+psycopg2://harness:***@127.0.0.1:{postgres_server.port}" in (
        runs[-1].command
    )
    texts = report_texts(out_dir)
    assert {f"sec.{fmt}" for fmt in FORMATS} <= set(texts)
    for name, content in texts.items():
        assert password not in content, name
    assert "harness:***@127.0.0.1" in texts["sec.md"]
