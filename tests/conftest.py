from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'harness.db'}"


@pytest.fixture
def one_thread():
    """One torch intra-op thread for the test, restored after. Tiny problems run faster on one (no
    OpenMP spin-up, and a second thread spin-waits when other processes share the 2 cores), and
    results that must be reproduced bit for bit (golden values) are computed at one thread.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --- a throw-away PostgreSQL server ----------------------------------------------------------------


@dataclass(frozen=True)
class PostgresServer:
    """A running server: ``url`` (psycopg2, with the password), and the means to dump its database."""

    url: str
    password: str
    bin_dir: Path
    port: int
    user: str = "harness"
    database: str = "segharness"

    def dump(self) -> str:
        """``pg_dump`` of the whole database, as text."""
        env = {**os.environ, "PGPASSWORD": self.password}
        cmd = [str(self.bin_dir / "pg_dump"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, self.database]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=60).stdout


def _postgres_bin_dir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _postgres_unavailable(reason: str) -> None:
    """Skip -- or, in CI (CI=true), fail: CI installs PostgreSQL, so its absence there is a bug."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_server_user(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the ``postgres`` system user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _start_postgres(bin_dir: Path, root: Path, password: str) -> int:
    (root / "pwfile").write_text(password + "\n")
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        for path in (root, root / "pwfile"):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    initdb = [str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", "harness", f"--pwfile={root / 'pwfile'}",
              "--auth-local=trust", "--auth-host=scram-sha-256", "--no-locale", "-E", "UTF8", "--no-sync"]  # fmt: skip
    subprocess.run(_as_server_user(initdb), capture_output=True, text=True, check=True, timeout=120)
    port = _free_port()
    options = f"-h 127.0.0.1 -p {port} -k {root} -F"  # TCP on loopback only, socket in the tmp dir, no fsync
    start = [str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"), "-w", "-t", "60",
             "-o", options, "start"]  # fmt: skip
    subprocess.run(_as_server_user(start), capture_output=True, text=True, check=True, timeout=120)
    return port


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of Debian's binaries, in a tmp dir, password-authenticated on 127.0.0.1,
    for the session; stopped and removed afterwards. Skipped (failed under CI=true) if absent."""
    bin_dir = _postgres_bin_dir()
    if bin_dir is None:
        _postgres_unavailable("no PostgreSQL server binaries (apt-get install postgresql)")
    try:
        import psycopg2
    except ImportError:
        _postgres_unavailable("psycopg2 is not installed (the 'postgres' extra)")
    if os.geteuid() == 0 and (shutil.which("runuser") is None or not _has_user("postgres")):
        _postgres_unavailable("running as root without runuser and a 'postgres' user to run the server as")
    root = Path(tempfile.mkdtemp(prefix="segharness-pg-"))
    password = f"s3cretPW{secrets.token_hex(8)}"
    port = None
    try:
        try:
            port = _start_postgres(bin_dir, root, password)
        except subprocess.CalledProcessError as exc:
            log = (root / "log").read_text() if (root / "log").exists() else ""
            pytest.fail(f"could not start PostgreSQL: {exc.stderr or exc.stdout} {log}", pytrace=False)
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="harness", password=password, dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("CREATE DATABASE segharness")
        conn.close()
        url = f"postgresql+psycopg2://harness:{password}@127.0.0.1:{port}/segharness"
        yield PostgresServer(url=url, password=password, bin_dir=bin_dir, port=port)
    finally:
        if port is not None:
            stop = [str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "-w", "stop"]
            subprocess.run(_as_server_user(stop), capture_output=True, timeout=60, check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """psycopg2 URL (password included) of a fresh database on the throw-away server."""
    return postgres_server.url


@pytest.fixture
def postgres_db(postgres_server: PostgresServer) -> Iterator[str]:
    """URL (password included) of a fresh, empty database on the throw-away server, dropped afterwards."""
    import psycopg2
    from sqlalchemy.engine import make_url

    name = f"t_{secrets.token_hex(6)}"

    def admin(sql: str) -> None:
        conn = psycopg2.connect(host="127.0.0.1", port=postgres_server.port, user=postgres_server.user,
                                password=postgres_server.password, dbname="postgres")  # fmt: skip
        conn.autocommit = True
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql)
        finally:
            conn.close()

    admin(f"CREATE DATABASE {name}")
    yield make_url(postgres_server.url).set(database=name).render_as_string(hide_password=False)
    admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgres"])
def any_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The result database on each back end: a SQLite file, then a fresh PostgreSQL database on the
    throw-away server (skipped without one, failed under CI=true). For the store, runner, resume,
    concurrency and gate tests."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'harness.db'}"
    return str(request.getfixturevalue("postgres_db"))


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
