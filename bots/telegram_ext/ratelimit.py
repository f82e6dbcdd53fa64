"""Telegram's limits on every Bot API request: text lengths, flood waits, and the order of a burst."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any, ClassVar, TypeAlias

from telegram.error import RetryAfter
from telegram.ext import AIORateLimiter, BaseRateLimiter

log = logging.getLogger("imagine.telegram")

TEXT_LIMIT = 4096  # Telegram's limit for a message text
CAPTION_LIMIT = 1024  # Telegram's limit for photo and document captions
ALERT_LIMIT = 200  # Telegram's limit for the text of a callback query answer
RATE_LIMIT_RETRIES = 3
MAX_FLOOD_WAIT = 30.0  # seconds; a longer retry_after fails the request instead of holding every chat

JSON: TypeAlias = dict[str, Any]
Answer: TypeAlias = bool | JSON | list[JSON]  # what the Bot API answers a request with
Send: TypeAlias = Callable[..., Coroutine[Any, Any, Answer]]  # the request, as ExtBot hands it to a limiter


class AnswersFirstRateLimiter(AIORateLimiter):
    """python-telegram-bot's limiter (Telegram's overall and per-group rates, ``retry_after`` obeyed),
    serving a burst in the order users feel it: new messages first, then images, then the rest.

    Under a burst the budget is the bottleneck; a user's first answer (the status message) should not
    wait behind other users' photos, nor a photo behind progress edits and chat actions.
    """

    LANES: ClassVar[dict[str, int]] = {
        "sendMessage": 0,
        "sendPhoto": 1,
        "sendDocument": 1,
        "sendMediaGroup": 1,
    }
    OTHER = 2

    def __init__(self, *, max_wait: float = 3.0, **kwargs: Any) -> None:
        """``max_wait``: the longest a request gives way to others (no lane starves)."""
        super().__init__(**kwargs)
        self.max_wait = max_wait
        self._pending = [0] * (self.OTHER + 1)
        self._changed = asyncio.Condition()

    async def process_request(
        self, callback: Send, args: Any, kwargs: JSON, endpoint: str, data: JSON, rate_limit_args: int | None
    ) -> Answer:
        lane = self.LANES.get(endpoint, self.OTHER)
        async with self._changed:
            self._pending[lane] += 1
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.max_wait):
                        await self._changed.wait_for(lambda: not any(self._pending[:lane]))
            except BaseException:
                self._pending[lane] -= 1
                self._changed.notify_all()
                raise
        try:
            return await super().process_request(callback, args, kwargs, endpoint, data, rate_limit_args)
        finally:
            async with self._changed:
                self._pending[lane] -= 1
                self._changed.notify_all()


class TelegramLimits(BaseRateLimiter[int]):
    """Telegram's hard limits kept on every request, around whichever rate limiter runs inside.

    The last guard for text: a sentence too long for Telegram (a quoted backend error, a long list) is
    clipped rather than refused, since a refused status edit leaves the user looking at a stale
    "Working…". Album captions sit inside frozen media objects; ``result_caption`` cuts those. This
    relies on ExtBot handing the callback the same ``data`` dict; the long-sentence test, through a
    fake that refuses an over-long text as Telegram does, fails if that changes.

    A flood wait longer than :data:`MAX_FLOOD_WAIT` is raised at once instead of slept through:
    python-telegram-bot's limiter holds every chat while it sleeps, and a photo an hour late is worth
    less than a refund now.
    """

    TEXT_FIELDS: ClassVar[dict[str, tuple[str, int]]] = {
        "sendMessage": ("text", TEXT_LIMIT),
        "editMessageText": ("text", TEXT_LIMIT),
        "sendPhoto": ("caption", CAPTION_LIMIT),
        "sendDocument": ("caption", CAPTION_LIMIT),
        "editMessageCaption": ("caption", CAPTION_LIMIT),
        "answerCallbackQuery": ("text", ALERT_LIMIT),
    }

    def __init__(self, inner: BaseRateLimiter[int]) -> None:
        self.inner = inner

    async def initialize(self) -> None:
        await self.inner.initialize()

    async def shutdown(self) -> None:
        await self.inner.shutdown()

    async def process_request(
        self, callback: Send, args: Any, kwargs: JSON, endpoint: str, data: JSON, rate_limit_args: int | None
    ) -> Answer:
        field, limit = self.TEXT_FIELDS.get(endpoint, ("", 0))
        if isinstance(text := data.get(field), str):
            data[field] = clip(text, limit)  # ExtBot hands the callback this same dict, as it sends it

        async def within_cap(*call_args: Any, **call_kwargs: Any) -> Answer:
            try:
                return await callback(*call_args, **call_kwargs)
            except RetryAfter as error:
                if flood_wait(error) > MAX_FLOOD_WAIT:
                    raise _FloodWaitTooLong(error) from error
                raise

        try:
            return await self.inner.process_request(within_cap, args, kwargs, endpoint, data, rate_limit_args)
        except _FloodWaitTooLong as too_long:
            log.warning(
                "Telegram asked to wait %g s before %s; not waiting", flood_wait(too_long.error), endpoint
            )
            raise too_long.error from None


class _FloodWaitTooLong(Exception):
    """Carries a :class:`RetryAfter` past the inner limiter, which would sleep it out and retry."""

    def __init__(self, error: RetryAfter) -> None:
        super().__init__(str(error))
        self.error = error


def flood_wait(error: RetryAfter) -> float:
    """Seconds Telegram asked to wait (an int, or a timedelta once PTB_TIMEDELTA is on)."""
    after = error.retry_after
    return after.total_seconds() if isinstance(after, timedelta) else float(after)


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the cut shown by an ellipsis."""
    if len(text) <= limit:
        return text
    return text[: limit - 1].rstrip() + "…"
