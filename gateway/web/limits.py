"""What ``POST /api/jobs`` (and an image action) checks before it reads a body, and the body read
within its byte limit.

FastAPI reads and parses a route's body before any dependency runs, so the checks that need only
the request head (stopping, the client's rate, the content type, the Idempotency-Key) run in
:class:`JobPostRoute`, a custom ``APIRoute`` (FastAPI's documented hook), before FastAPI's own
handler; that handler then gets a :class:`gateway.bodies.BoundedJSONRequest`, whose body stops at
``max_image_body_bytes`` (room for a picture) or, for the actions, ``max_body_bytes``. The head
and body deadlines are the server's (gateway/web/server.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.requests import Request

from gateway.bodies import BoundedJSONRequest
from gateway.messages import duration
from gateway.web.schemas import BODY_HELP
from gateway.web.state import WebOptions, client_of, web_of
from gateway.web.views import error_response

IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_JSON_TYPE = re.compile(r"application/(?:[\w.+-]+\+)?json\s*(?:;.*)?", re.IGNORECASE)


def _no_body(request: Request) -> bool:
    return request.headers.get("content-length", "0") == "0" and "transfer-encoding" not in request.headers


def refused_by_head(request: Request, *, body_required: bool = True) -> Response | None:
    """The answer for a job request refused on its head alone, or None to go on to the body."""
    web = web_of(request)
    if web.stopping.is_set():
        return error_response(503, "Imagine is restarting; try again in a minute.", "busy", retry_after=60)
    user_id = client_of(request).user_id
    if web.limiter is not None and not web.service.is_admin(user_id):
        wait = web.limiter.take(user_id)
        if wait:
            return error_response(
                429,
                f"Too many requests from your address; try again in {duration(math.ceil(wait))}.",
                "rate_limited",
                retry_after=wait,
            )
    if (body_required or not _no_body(request)) and not _JSON_TYPE.fullmatch(
        request.headers.get("content-type", "")
    ):
        return error_response(
            415, f"Send the request as JSON (Content-Type: application/json). {BODY_HELP}", "unsupported"
        )
    key = request.headers.get("idempotency-key")
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        return error_response(
            400,
            "The Idempotency-Key header must be 1 to 255 visible ASCII characters, e.g. a UUID.",
            "invalid",
        )
    return None


class JobPostRoute(APIRoute):
    """A route whose head is checked first and whose body is read within ``max_image_body_bytes``."""

    #: An action's body is optional: with none, no Content-Type is needed either.
    body_required = True

    def body_limit(self, options: WebOptions) -> int:
        return options.max_image_body_bytes

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            refused = refused_by_head(request, body_required=self.body_required)
            if refused is not None:
                return refused
            limit = self.body_limit(web_of(request).options)
            return await handler(BoundedJSONRequest(request.scope, request.receive, limit=limit))

        return checked


class ActionPostRoute(JobPostRoute):
    """An image action (upscale, vary): the same head checks, a small optional body."""

    body_required = False

    def body_limit(self, options: WebOptions) -> int:
        return options.max_body_bytes
