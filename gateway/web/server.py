"""Serving the web front: uvicorn inside the `imagine` process, with every client's time and number bounded.

uvicorn waits forever for a request head that never ends, for a connection that never sends a byte,
and for a body that never arrives, and accepts connections until the process runs out of file
descriptors (then it cannot even answer ``/healthz``). :class:`GuardedHttpProtocol` adds what
DESIGN.md asks for: a deadline on the request head and one on the body (a 408 where an answer can
still be sent, then the connection is closed), and a cap on open connections. At the cap a new
connection first pushes out the connection that has waited longest without sending a whole request
head (a slow client or an idle keep-alive), so a few thousand idle sockets cannot lock out
``/healthz``; only when every connection is busy with a request is the newcomer answered 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import socket
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.settings import SettingsError

log = logging.getLogger("imagine.web")

BACKLOG = 2048
#: asyncio accepts up to ``backlog`` connections in one go before any of them reaches the protocol (and
#: the cap): the server starts with this backlog, then the socket gets its real one back.
ACCEPT_BATCH = 64
#: File descriptors kept free beyond the cap: two accept batches (one arriving, one being closed) and
#: the database, logs, backend calls and bots of the same process.
FD_RESERVE = 2 * ACCEPT_BATCH + 128


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_seconds: float
    body_seconds: float
    max_connections: int


def _canned(status: str, message: str, kind: str, extra: bytes = b"") -> bytes:
    """A whole response written straight to the socket, in the API's error shape, closing the connection."""
    body = json.dumps({"error": message, "kind": kind}, separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncache-control: no-store\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n"
    ).encode()
    return head + extra + b"\r\n" + body


TIMED_OUT = _canned("408 Request Timeout", "The request took too long to arrive; send it again.", "timeout")
FULL = _canned(
    "503 Service Unavailable",
    "Imagine has too many open connections; try again soon.",
    "busy",
    b"retry-after: 1\r\n",
)


class Connections:
    """One server's open connections, and those waiting for a request head, longest-waiting first."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open: set[GuardedHttpProtocol] = set()
        self.waiting: dict[GuardedHttpProtocol, None] = {}

    def admit(self, connection: GuardedHttpProtocol) -> bool:
        """Make room for a new connection if the cap is reached; False when every connection is busy."""
        if len(self.open) >= self.limits.max_connections:
            if not self.waiting:
                return False
            oldest = next(iter(self.waiting))
            self.drop(oldest)
            oldest.transport.close()
        self.open.add(connection)
        self.waiting[connection] = None
        return True

    def drop(self, connection: GuardedHttpProtocol) -> None:
        self.open.discard(connection)
        self.waiting.pop(connection, None)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head deadline, a body deadline and the connection cap.

    The head deadline runs from the connection's start (uvicorn has none for a connection that never
    sends a byte) and from the first byte of each later request (uvicorn's keep-alive timeout covers
    the idle time between requests); the body deadline from the end of the head to the end of the body.
    """

    book: Connections  # set on the subclass that :func:`protocol_for` makes for each server

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._deadline: asyncio.TimerHandle | None = None
        self._head_started = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.book.admit(self):
            log.warning("web connection refused: %d connections open", len(self.book.open))
            transport.write(FULL)
            transport.close()
            return
        self._arm(self.book.limits.header_seconds, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.book.drop(self)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_started = True
        if self._deadline is None:
            self._arm(self.book.limits.header_seconds, self._head_timed_out)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._head_started = False
        self.book.waiting.pop(self, None)
        super().on_headers_complete()
        if not self.transport.is_closing():
            self._arm(self.book.limits.body_seconds, self._body_timed_out)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None and self in self.book.open:
            self.book.waiting[self] = None  # idle now: first in line to make room at the cap

    def _arm(self, seconds: float, expire: Callable[[], None]) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        idle = self.cycle is None or self.cycle.response_complete
        if self._head_started and idle:
            self.transport.write(TIMED_OUT)  # a connection that sent nothing is closed without a word
        self._close()

    def _body_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_started:
            self.transport.write(TIMED_OUT)
        self._close()

    def _close(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            # The app sees the client gone at once and writes nothing after the 408.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.book.drop(self)
        self.transport.close()


def protocol_for(limits: ConnectionLimits) -> type[GuardedHttpProtocol]:
    """A protocol class with its own connection book: one per server."""

    class ServerProtocol(GuardedHttpProtocol):
        book = Connections(limits)

    return ServerProtocol


def connection_cap(wanted: int) -> int:
    """``wanted``, or fewer where the open-file limit would leave too little for the rest of the process.

    The soft limit is raised towards the hard one first, as most servers do; it is often 1,024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    needed = wanted + FD_RESERVE
    if soft != infinite and soft < needed:
        raised = needed if hard == infinite else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    if soft == infinite:
        return wanted
    cap = max(1, min(wanted, soft - FD_RESERVE))
    if cap < wanted:
        log.warning("web front: at most %d connections (open-file limit %d)", cap, soft)
    return cap


def server_config(app: Any, limits: ConnectionLimits, graceful_shutdown_seconds: int) -> uvicorn.Config:
    limits = ConnectionLimits(
        limits.header_seconds, limits.body_seconds, connection_cap(limits.max_connections)
    )
    return uvicorn.Config(
        app,
        http=protocol_for(limits),
        lifespan="off",
        proxy_headers=False,  # forwarded-for is read by ClientMiddleware, from trusted proxies only
        server_header=False,
        access_log=False,
        log_config=None,
        log_level="warning",
        ws="none",
        backlog=ACCEPT_BATCH,  # EmbeddedServer.startup restores BACKLOG on the socket
        timeout_graceful_shutdown=graceful_shutdown_seconds,
    )


class EmbeddedServer(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        for sock in sockets or ():
            sock.listen(BACKLOG)  # the kernel's queue; asyncio keeps accepting ACCEPT_BATCH at a time

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the `imagine` command owns SIGTERM and SIGINT and stops the fronts itself


def listen(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves, so a busy port is a clear error and port 0 works."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are TCP,
    # and with Nagle on, a kept-alive connection waits 40 ms for the client's delayed ACK every answer.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise SettingsError(
            f"The web front cannot listen on {host}:{port} ({exc.strerror}); "
            "set IMAGINE_WEB_HOST / IMAGINE_WEB_PORT to a free address."
        ) from None
    return sock
