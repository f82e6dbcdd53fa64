"""Telegram misbehaving on purpose: error answers (flood control 429s too), late answers, being down."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.telegram.records import ApiError
from tests.fakes.telegram.state import TelegramState


@dataclass
class _Failure:
    method: str
    remaining: int
    status: int
    description: str
    retry_after: int | None
    chat_id: int | str | None


@dataclass
class _Stall:
    method: str
    remaining: int
    seconds: float


class TelegramFaults(TelegramState):
    """Failures the test plans for the next calls, and the listening socket go_down closes and reopens."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._failures: list[_Failure] = []
        self._stalls: list[_Stall] = []
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._port: int | None = None
        self._reopening: asyncio.Task[None] | None = None

    # -------------------------------------------------------------------------------- failure injection

    def fail_next(
        self,
        method: str,
        *,
        description: str = "Bad Request: injected failure",
        error_code: int = 400,
        times: int = 1,
        retry_after: int | None = None,
        chat_id: int | str | None = None,
    ) -> None:
        """Answer the next `times` calls of `method` (to `chat_id`, if given) with this error instead."""
        self._failures.append(_Failure(method.lower(), times, error_code, description, retry_after, chat_id))

    def flood(
        self, method: str, *, times: int = 1, retry_after: int = 1, chat_id: int | str | None = None
    ) -> None:
        """Answer the next `times` calls of `method` with Telegram's flood-control 429."""
        self.fail_next(
            method,
            description=f"Too Many Requests: retry after {retry_after}",
            error_code=429,
            times=times,
            retry_after=retry_after,
            chat_id=chat_id,
        )

    def stall_next(self, method: str, seconds: float, *, times: int = 1) -> None:
        """Do the next `times` calls of `method` (post the photo, ...) but answer only `seconds` later:
        a client whose read timeout is shorter cannot tell whether Telegram took the request. The call
        is recorded as answered at once, as what Telegram did."""
        self._stalls.append(_Stall(method.lower(), times, seconds))

    async def go_down(self, seconds: float) -> None:
        """Refuse connections for `seconds`: the port is closed and open connections are cut (a request
        in flight gets no answer), then it listens again on the same port. Returns once it is down."""
        assert self._runner is not None and self._site is not None and self._reopening is None
        await self._site.stop()
        self._site = None
        for connection in self._runner.server.connections if self._runner.server else []:
            connection.force_close()

        async def reopen() -> None:
            await asyncio.sleep(seconds)
            await self._listen(self.port)
            self._reopening = None

        self._reopening = asyncio.create_task(reopen())

    def _take_failure(self, method: str, params: dict[str, Any]) -> ApiError | None:
        for failure in self._failures:
            if failure.method != method.lower():
                continue
            if failure.chat_id is not None and params.get("chat_id") != failure.chat_id:
                continue
            failure.remaining -= 1
            if failure.remaining <= 0:
                self._failures.remove(failure)
            return ApiError(failure.status, failure.description, retry_after=failure.retry_after)
        return None

    def _take_stall(self, method: str) -> float | None:
        for stall in self._stalls:
            if stall.method == method.lower():
                stall.remaining -= 1
                if stall.remaining <= 0:
                    self._stalls.remove(stall)
                return stall.seconds
        return None

    async def _listen(self, port: int) -> None:
        assert self._runner is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        self._port = sock.getsockname()[1]
        self._site = web.SockSite(self._runner, sock)
        await self._site.start()
