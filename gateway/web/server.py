"""Serving the web front: uvicorn inside the `imagine` process, on a socket bound here."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Generator
from typing import Any

import uvicorn

from gateway.settings import SettingsError

BACKLOG = 2048


def server_config(app: Any, graceful_shutdown_seconds: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        lifespan="off",
        proxy_headers=False,  # forwarded-for is read by ClientMiddleware, from trusted proxies only
        server_header=False,
        access_log=False,
        log_config=None,
        log_level="warning",
        ws="none",
        backlog=BACKLOG,
        timeout_graceful_shutdown=graceful_shutdown_seconds,
    )


class EmbeddedServer(uvicorn.Server):
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
