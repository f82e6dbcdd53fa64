"""The web front's serving side against real sockets on loopback: slow clients, the connection cap,
IPv4-mapped addresses, clients that leave mid-body.

Every server here is the real :class:`WebFront` on a real port (one test runs `imagine web` itself);
the slow clients are raw sockets that send what a slow or hostile client sends.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from gateway import ImagineService, Settings
from gateway.fake_backend import FakeBackend
from gateway.settings import SettingsError
from gateway.web.app import WebFront, WebOptions
from gateway.web.guard import ClientResolver
from gateway.web.server import listen
from storage import Database

ROOT = Path(__file__).resolve().parents[1]
FAST = WebOptions(header_timeout_seconds=0.3, body_timeout_seconds=0.3)
#: Far longer than any deadline under test: what "never answered" means here.
PATIENCE = 5.0

Serve = Callable[..., Awaitable[WebFront]]


@pytest.fixture
async def serve(settings: Settings) -> AsyncIterator[Serve]:
    """Start web fronts on free loopback ports over one gateway: ``await serve(options, **settings)``."""
    db = await Database.open(settings.store)
    service = ImagineService(settings, db, FakeBackend(settings))
    await service.start()
    fronts: list[WebFront] = []

    async def start(options: WebOptions = FAST, **changes: Any) -> WebFront:
        front = WebFront(settings.with_overrides(web_port=0, **changes), service, options)
        await front.start()
        fronts.append(front)
        return front

    yield start
    for front in fronts:
        await front.stop()
    await service.close(drain_timeout=5)
    await db.close()


async def connect(
    front: WebFront, host: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    url = urlsplit(front.url or "")
    assert url.port is not None
    return await asyncio.open_connection(host or url.hostname, url.port)


async def read_all(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes; fails if it is still open after PATIENCE seconds."""
    return await asyncio.wait_for(reader.read(), PATIENCE)


async def get(front: WebFront, path: str, *, host: str | None = None, headers: str = "") -> tuple[int, Any]:
    reader, writer = await connect(front, host)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: imagine\r\nConnection: close\r\n{headers}\r\n".encode())
    answer = await read_all(reader)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    return int(answer.split()[1])


# --- deadlines -----------------------------------------------------------------------------------


async def test_a_half_sent_request_head_gets_408_and_the_connection_closes(serve: Serve) -> None:
    front = await serve()
    reader, writer = await connect(front)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: imagine\r\nX-Slow: ")
    started = time.monotonic()
    answer = await read_all(reader)
    assert status_of(answer) == 408
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["kind"] == "timeout"
    assert time.monotonic() - started < PATIENCE
    writer.close()


async def test_a_connection_that_sends_nothing_is_closed_without_an_answer(serve: Serve) -> None:
    front = await serve()
    reader, writer = await connect(front)
    assert await read_all(reader) == b""
    writer.close()


async def test_a_body_that_stops_arriving_gets_408_and_logs_no_error(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    front = await serve()
    reader, writer = await connect(front)
    writer.write(
        b"POST /api/jobs HTTP/1.1\r\nHost: imagine\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"prompt": '
    )
    answer = await read_all(reader)
    assert status_of(answer) == 408
    writer.close()
    status, health = await get(front, "/healthz")
    assert status == 200 and health["queue"] == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_kept_alive_connection_serves_the_next_request_within_the_deadlines(serve: Serve) -> None:
    """The head deadline starts again with each request: a connection that keeps talking is not cut."""
    front = await serve(WebOptions(header_timeout_seconds=0.5, body_timeout_seconds=0.5))
    reader, writer = await connect(front)
    for _ in range(4):
        await asyncio.sleep(0.2)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: imagine\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PATIENCE)
        assert status_of(head) == 200
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
    writer.close()


# --- a client that leaves mid-body -----------------------------------------------------------------


async def test_a_client_leaving_mid_body_logs_one_quiet_line_and_costs_nothing(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    front = await serve(WebOptions())  # the real 10 s deadlines: the client leaves first
    _, writer = await connect(front)
    writer.write(
        b"POST /api/jobs HTTP/1.1\r\nHost: imagine\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"prompt": '
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    for _ in range(60):  # the server notices within a loop turn or two; allow 3 s on a busy machine
        if any("body" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.05)
    about_it = [r for r in caplog.records if "body" in r.getMessage()]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert len(about_it) == 1 and about_it[0].levelno < logging.WARNING
    status, quota = await get(front, "/api/quota")
    assert status == 200 and quota["used"] == 0 and quota["reserved"] == 0


# --- the connection cap ----------------------------------------------------------------------------


async def test_at_the_cap_the_longest_idle_connection_makes_room_for_healthz(serve: Serve) -> None:
    front = await serve(WebOptions(max_connections=4, header_timeout_seconds=60))
    idle = []
    for _ in range(4):
        idle.append(await connect(front))
        await asyncio.sleep(0.05)  # accepted in this order
    status, health = await get(front, "/healthz")
    assert status == 200 and health["status"] == "ok"
    assert await read_all(idle[0][0]) == b""  # the longest-waiting one was closed
    for _, writer in idle:
        writer.close()


async def test_at_the_cap_with_every_connection_busy_a_newcomer_gets_503_at_once(serve: Serve) -> None:
    front = await serve(WebOptions(max_connections=2, body_timeout_seconds=60))
    busy = []
    for _ in range(2):
        reader, writer = await connect(front)
        writer.write(
            b"POST /api/jobs HTTP/1.1\r\nHost: imagine\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        busy.append((reader, writer))
    await asyncio.sleep(0.2)
    reader, writer = await connect(front)
    answer = await read_all(reader)
    assert status_of(answer) == 503
    assert b"retry-after: 1" in answer.lower()
    writer.close()
    for _, busy_writer in busy:
        busy_writer.close()
    await asyncio.sleep(0.2)
    assert (await get(front, "/healthz"))[0] == 200


def test_imagine_web_answers_healthz_with_more_idle_sockets_than_file_descriptors(tmp_path: Path) -> None:
    """`imagine web` under a 512 open-file limit, 600 idle sockets: today's fd exhaustion, for real."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGINE_", "DISCORD_", "TELEGRAM_"))}
    env.update(
        IMAGINE_DB=str(tmp_path / "imagine.sqlite3"),
        IMAGINE_BACKEND="fake",
        IMAGINE_WEB_HOST="127.0.0.1",
        IMAGINE_WEB_PORT="0",
        PYTHONPATH=str(ROOT),
    )

    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))

    proc = subprocess.Popen(
        [sys.executable, "-c", "import imagine; imagine.main()", "web"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=low_fd_limit,
    )
    sockets: list[socket.socket] = []
    try:
        port = _port_from(proc)
        for _ in range(600):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=PATIENCE))
        with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE) as probe:
            probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: imagine\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := probe.recv(65536):
                answer += chunk
        assert status_of(answer) == 200
    finally:
        for sock in sockets:
            sock.close()
        proc.terminate()
        proc.communicate(timeout=30)


def _port_from(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "http://127.0.0.1:" in line:
            return int(line.split("http://127.0.0.1:")[1].split("/")[0])
    raise AssertionError("imagine web did not start:\n" + "".join(lines))


# --- IPv4-mapped addresses -------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["::ffff:127.0.0.1", "127.0.0.1", "::ffff:127.0.0.0/104"])
async def test_blocked_ips_match_ipv4_clients_on_a_dual_stack_socket(
    serve: Serve, settings: Settings, entry: str
) -> None:
    blocked = Settings.from_env({"IMAGINE_BLOCKED_IPS": entry}, env_file=None).blocked_ips
    front = await serve(web_host="::", blocked_ips=blocked)
    status, body = await get(front, "/healthz", host="127.0.0.1")  # seen as ::ffff:127.0.0.1
    assert status == 403 and body["kind"] == "blocked"
    status, body = await get(front, "/healthz", host="::1")
    assert status == 200


async def test_a_trusted_proxy_written_ipv4_mapped_is_believed(serve: Serve, settings: Settings) -> None:
    trusted = Settings.from_env(
        {"IMAGINE_TRUSTED_PROXIES": "::ffff:127.0.0.1"}, env_file=None
    ).trusted_proxies
    for host in ("::", "127.0.0.1"):
        front = await serve(web_host=host, trusted_proxies=trusted)
        status, quota = await get(
            front, "/api/quota", host="127.0.0.1", headers="X-Forwarded-For: 203.0.113.9\r\n"
        )
        assert status == 200 and quota["user"] == "web:203.0.113.9"


def test_ipv4_mapped_networks_read_as_ipv4() -> None:
    parsed = Settings.from_env(
        {"IMAGINE_BLOCKED_IPS": "::ffff:203.0.113.0/120, ::FFFF:198.51.100.7, 2001:db8::/32"}, env_file=None
    )
    assert [str(n) for n in parsed.blocked_ips] == ["203.0.113.0/24", "198.51.100.7/32", "2001:db8::/32"]
    with pytest.raises(SettingsError, match="IMAGINE_BLOCKED_IPS"):
        Settings.from_env({"IMAGINE_BLOCKED_IPS": "::ffff:203.0.113.0/90"}, env_file=None)


def test_a_resolver_given_mapped_networks_directly_matches_plain_ipv4_peers() -> None:
    mapped = Settings.from_env({"IMAGINE_BLOCKED_IPS": "2001:db8::/32"}, env_file=None).blocked_ips
    resolver = ClientResolver(
        trusted_proxies=[ipaddress.ip_network("::ffff:10.0.0.0/104")],
        blocked=[*mapped, ipaddress.ip_network("::ffff:203.0.113.9")],
    )
    assert resolver.resolve("203.0.113.9").blocked
    assert resolver.resolve("::ffff:203.0.113.9").blocked
    assert resolver.resolve("10.1.2.3", ["198.51.100.1"]).address == "198.51.100.1"


# --- the listening socket ----------------------------------------------------------------------------


def test_a_busy_port_is_one_sentence_naming_the_variables() -> None:
    with listen("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(SettingsError, match="IMAGINE_WEB_PORT"):
            listen("127.0.0.1", port)


@pytest.fixture(autouse=True)
def _no_leaked_limits() -> Iterator[None]:
    """The cap may raise this process's soft open-file limit; give the next test the limit it had."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, before)
