"""A real PostgreSQL server for the tests: Debian's binaries, a cluster in a temporary folder, a
free port on loopback, one fresh database per test.

The server refuses to run as root, so as root (CI, the developers' machines) the cluster belongs to
the ``postgres`` user and ``initdb``/``pg_ctl`` run through ``runuser``. When the binaries are
missing the tests that need them skip with that reason, except where ``IMAGINE_REQUIRE_POSTGRES=1``
(``.ci/run``), where they fail.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest


def binaries() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: on PATH, or Debian's versioned folder."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(folder, "pg_ctl").exists() and Path(folder, "initdb").exists():
            return Path(folder)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """``durable=True`` keeps the server's default fsync and synchronous commit, as in production
    (the benchmarks); the tests' throwaway clusters turn both off."""

    def __init__(self, bin_dir: Path, *, durable: bool = False, options: str = "") -> None:
        self.bin = bin_dir
        self.durable = durable
        self.options = options  # more ``-c name=value`` settings (the benchmark's statement statistics)
        self.folder = Path(tempfile.mkdtemp(prefix="imagine-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0

    def _run(self, *argv: str) -> None:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        if self._as_postgres:
            shutil.chown(self.folder, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c max_connections=300"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        if self.options:
            options += " " + self.options
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"), "-w", "start"
        )

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
        return self.url(name)


def start_or_skip() -> PostgresServer:
    bin_dir = binaries()
    if bin_dir is None:
        reason = "PostgreSQL's server binaries (initdb, pg_ctl) are not installed"
        if os.environ.get("IMAGINE_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + " and IMAGINE_REQUIRE_POSTGRES=1", pytrace=False)
        pytest.skip(reason + "; apt-get install postgresql")
    server = PostgresServer(bin_dir)
    server.start()
    return server
