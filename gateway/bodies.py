"""Request bodies read within a byte limit and decoded as bounded JSON, for the project's HTTP services.

FastAPI reads a route's whole body before it validates anything and has no size limit of its own
that answers in the API's error shape; :class:`BoundedJSONRequest` is the framework's documented
hook for that (a custom ``Request`` class, installed by a custom ``APIRoute``). The worker can call
:func:`read_body` and :func:`loads` on its own requests.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive, Scope

from gateway.errors import MAX_NUMBER_DIGITS
from gateway.request import TOO_LONG_NUMBER


class BodyTooLarge(HTTPException):
    """The body is (or says it is) larger than ``limit`` bytes; none of it was kept past the limit.

    An ``HTTPException``, so that FastAPI lets it through its body reading to the app's handler.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than {limit} bytes.")
        self.limit = limit


class BodyEndedEarly(HTTPException):
    """The client left before its body ended: no fault of the server, and nothing is charged."""

    def __init__(self) -> None:
        super().__init__(400, "The request body ended early.")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused past ``limit`` bytes (by its Content-Length, or while it streams in)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise BodyEndedEarly() from None
    return b"".join(chunks)


def _bounded_int(digits: str) -> int:
    """Past 20 digits a JSON number stands as TOO_LONG_NUMBER: int() of a huge string is slow or refused."""
    if len(digits.lstrip("-")) > MAX_NUMBER_DIGITS:
        return -TOO_LONG_NUMBER if digits.startswith("-") else TOO_LONG_NUMBER
    return int(digits)


def loads(body: bytes) -> Any:
    """JSON with bounded numbers; anything that cannot be decoded (bad UTF-8, nesting too deep) is a
    :class:`json.JSONDecodeError`, which FastAPI answers as ``json_invalid``."""
    try:
        return json.loads(body, parse_int=_bounded_int)
    except json.JSONDecodeError:
        raise
    except (ValueError, RecursionError) as exc:
        raise json.JSONDecodeError(f"cannot decode the body ({type(exc).__name__})", "", 0) from None


class BoundedJSONRequest(Request):
    """A request whose body is read within ``limit`` bytes and whose JSON is decoded by :func:`loads`."""

    def __init__(self, scope: Scope, receive: Receive, *, limit: int) -> None:
        super().__init__(scope, receive)
        self.limit = limit

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            self._body = await read_body(self, self.limit)
        return self._body

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json
