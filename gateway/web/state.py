"""The web front's options and the state its routes share (on ``app.state.web``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import cast

from starlette.requests import Request

from gateway.pickup import PickupLimits, Pickups
from gateway.picture import MAX_PICTURE_BYTES
from gateway.service import ImagineService
from gateway.settings import Settings
from gateway.web.guard import Client, ClientResolver, RateLimiter
from gateway.web.page import Page


@dataclass(frozen=True)
class WebOptions:
    """Limits of the web front; the defaults are what `imagine web` runs with."""

    #: Every JSON body but ``POST /api/jobs``'s (the image actions, for one).
    max_body_bytes: int = 16 * 1024
    #: ``POST /api/jobs``: room for a picture of the largest size allowed as a base64 data URI
    #: (4 characters for every 3 bytes), plus the rest of the body.
    max_image_body_bytes: int = 16 * 1024 + 4 * -(-MAX_PICTURE_BYTES // 3)
    #: A finished image waits this long for its first download; then it is refunded.
    pickup_seconds: float = 300.0
    #: Images stay downloadable this long after they are made (while the byte budget allows).
    image_ttl_seconds: float = 3600.0
    #: PNG bytes kept for download (a folder on SQLite, the database on PostgreSQL); oldest go first past it.
    image_cache_bytes: int = 1024 * 1024 * 1024
    max_kept_jobs: int = 20_000
    #: ``POST /api/jobs`` per client: a burst, then this many a second (None: no limit).
    post_rate: float | None = 0.5
    post_burst: int = 10
    max_wait_seconds: float = 30.0
    #: A long poll answers news no sooner than this (unless the job finished): polls per client are bounded.
    poll_pace_seconds: float = 0.5
    queued_poll_pace_seconds: float = 2.0
    sweep_seconds: float = 5.0
    graceful_shutdown_seconds: int = 5
    #: A request head, then its body, must arrive within these (else 408 and the connection closes).
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 10.0
    #: Open connections at most (fewer if the open-file limit is low); see gateway/web/server.py.
    max_connections: int = 1000

    @property
    def pickup(self) -> PickupLimits:
        return PickupLimits(
            pickup_seconds=self.pickup_seconds,
            image_ttl_seconds=self.image_ttl_seconds,
            image_cache_bytes=self.image_cache_bytes,
            max_kept_jobs=self.max_kept_jobs,
        )


@dataclass(eq=False)
class WebState:
    settings: Settings
    service: ImagineService
    options: WebOptions
    resolver: ClientResolver
    limiter: RateLimiter | None
    page: Page
    #: ``/admin``: the operator's page (served only with ``IMAGINE_ADMIN_TOKEN``).
    admin_page: Page
    pickups: Pickups
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


#: Where :class:`~gateway.web.guard.ClientMiddleware` leaves the client it resolved, in the ASGI scope.
CLIENT_KEY = "imagine.client"


def web_of(request: Request) -> WebState:
    return cast(WebState, request.app.state.web)


def client_of(request: Request) -> Client:
    return cast(Client, request.scope[CLIENT_KEY])
