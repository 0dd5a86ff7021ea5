"""A real PostgreSQL server for the tests: initdb + pg_ctl on a temporary directory and a free loopback port.

``postgres_server()`` is a context manager yielding a ``postgresql://`` URL; the server listens on
127.0.0.1 only (and a socket in its own directory) and is stopped (``pg_ctl stop -m fast``) on exit.
initdb refuses to run as root, so as root the server runs as the ``postgres`` system user (created
where missing). Where no PostgreSQL is installed, ``make test`` installs it (the ``postgres`` target);
a plain pytest run then fails with a clear message rather than skipping.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from kgrid_py.learning.store import store_url

__all__ = ["capture_url", "pg_bin", "pg_url", "postgres_server"]

START_TIMEOUT_S = 60


def pg_bin() -> Path:
    """The newest installed PostgreSQL's bin directory."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("PostgreSQL is not installed (no initdb); `make postgres` installs it")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _runas() -> list[str]:
    """The prefix that runs a command as a non-root user when we are root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
    return ["runuser", "-u", "postgres", "--"]


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a throwaway server; yield its URL (user ``kgrid``, database ``kgrid``, trust auth on loopback)."""
    bin_dir = pg_bin()
    prefix = _runas()
    root = Path(tempfile.mkdtemp(prefix="kgrid-pg-"))
    data = root / "data"
    if prefix:
        shutil.chown(root, "postgres", "postgres")
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    log = root / "server.log"

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, env=env, capture_output=True, timeout=START_TIMEOUT_S, cwd=root)

    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "kgrid", "-A", "trust", "-E", "UTF8", "--no-sync")
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "30", "start")
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "kgrid", "kgrid")
        yield f"postgresql://kgrid@127.0.0.1:{port}/kgrid"
    except subprocess.CalledProcessError as exc:
        tail = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(f"PostgreSQL failed: {exc.cmd}: {exc.stderr.decode()[-2000:]} {tail}") from exc
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(
                [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                env=env,
                capture_output=True,
                timeout=START_TIMEOUT_S,
                cwd=root,
            )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """One PostgreSQL server for the session (import this fixture into a test module to use it)."""
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def capture_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty capture store URL on each database (a new PostgreSQL database per test)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'capture.sqlite3'}"
    base: str = request.getfixturevalue("pg_url")
    name = f"t{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(store_url(base), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return base.rsplit("/", 1)[0] + "/" + name
