"""The worker never runs open: a real ``imagine worker`` process, where it listens with and without a key."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from backend.worker import is_loopback

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No key from this machine's environment; a model that fails fast, since only the socket matters."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGINE_", "REPLICATE_"))}
    env.update(IMAGINE_MODEL=str(tmp_path / "no-such-model"), IMAGINE_DB=str(tmp_path / "unused.sqlite3"))
    env.update(extra)
    return env


def imagine_worker(tmp_path: Path, args: list[str], **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "imagine.py"), "worker", *args],
        env=worker_env(tmp_path, **env),
        cwd=tmp_path,  # no .env from the checkout
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def listening_on(process: subprocess.Popen[str], port: int) -> set[str]:
    """The addresses the process listens on at ``port``, once its health check answers."""
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, process.communicate()
        try:
            httpx.get(f"http://127.0.0.1:{port}/health-check", timeout=2)
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "the worker did not answer in 60 s"
            time.sleep(0.1)
    connections = psutil.Process(process.pid).net_connections(kind="inet")
    return {c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "example.com", ""])
def test_a_reachable_host_without_the_key_is_refused_with_one_sentence(tmp_path: Path, host: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "imagine.py"), "worker", "--host", host, "--port", str(free_port())],
        env=worker_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "IMAGINE_BACKEND_API_KEY" in lines[0] and lines[0].count(". ") == 0
    assert repr(host) in lines[0]


def test_without_the_key_it_listens_on_loopback_by_default(
    tmp_path: Path, started: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    started.append(process := imagine_worker(tmp_path, ["--port", str(port)]))
    assert listening_on(process, port) == {"127.0.0.1"}


def test_with_the_key_it_listens_everywhere_by_default(
    tmp_path: Path, started: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    started.append(process := imagine_worker(tmp_path, ["--port", str(port)], IMAGINE_BACKEND_API_KEY="k"))
    assert listening_on(process, port) == {"0.0.0.0"}
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 401


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
