"""Who may spend the GPU: the bearer key on every route but the health check, and where to listen.

The two go together (DESIGN.md, "the worker never runs open"): with ``IMAGINE_BACKEND_API_KEY``
every route but ``/health-check`` needs ``Authorization: Bearer <key>``; without it every route is
open, so the worker listens on loopback only.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.worker.schema import quote
from gateway.settings import Settings, SettingsError


class BearerAuth:
    """Every route but the health check needs ``Authorization: Bearer <key>``, compared in constant time."""

    def __init__(self, app: ASGIApp, key: str | None, open_paths: Sequence[str] = ("/health-check",)) -> None:
        self.app = app
        self.key = key.encode("utf-8") if key else None
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key is None or scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        scheme, _, token = given.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            await self.app(scope, receive, send)
            return
        detail = "Missing bearer token." if not given else "Wrong bearer token."
        response = JSONResponse(
            {"detail": f"{detail} Send Authorization: Bearer <IMAGINE_BACKEND_API_KEY>."},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine: ``localhost`` or a loopback address."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_host(settings: Settings, host: str | None) -> str:
    """Where to listen: anywhere (0.0.0.0 by default) with a key, loopback only without one.

    Without ``IMAGINE_BACKEND_API_KEY`` every route is open, so anyone who could reach the port
    could spend the GPU; an open worker is never one the network can reach.
    """
    if settings.backend_api_key:
        return host or "0.0.0.0"
    if host is None:
        return "127.0.0.1"
    if not is_loopback(host):
        raise SettingsError(
            f"The worker will not listen on {quote(host)} without IMAGINE_BACKEND_API_KEY; set "
            "IMAGINE_BACKEND_API_KEY to a long random secret, or listen on 127.0.0.1."
        )
    return host
