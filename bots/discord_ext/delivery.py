"""Getting an answer to a Discord user whatever the platform does in between.

An interaction token lives 15 minutes; uploads are capped per interaction; any route can answer 429.
:class:`Reply` keeps what is needed to reach the user (also after a restart, as JSON in the job's
``reply``) and tries, in order: the interaction's own message, the channel, a DM.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import discord
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from gateway.errors import AmbiguousDelivery

log = logging.getLogger("imagine.discord")

TOKEN_LIFETIME = 15 * 60.0
# Stop using a token a little before Discord does: an upload that starts at 14:59 may end at 15:01.
TOKEN_MARGIN = 60.0
# What bots may upload where the interaction does not say (Discord's default for bots, 10 MiB).
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
# Room for the multipart envelope and the JSON payload next to the files.
UPLOAD_HEADROOM = 64 * 1024
MESSAGE_LIMIT = 2000
RETRY_ATTEMPTS = 5
MAX_RETRY_WAIT = 30.0

# Prompts, reasons and errors repeat what users typed: no message may turn that into a ping.
NO_PINGS = discord.AllowedMentions.none()

T = TypeVar("T")
# What a route to the user can fail with: Discord's answer, or the connection to it.
SEND_ERRORS = (discord.HTTPException, aiohttp.ClientError, OSError)


class AmbiguousSend(AmbiguousDelivery):
    """Every route failed, but one failed after Discord may have taken the message (a timeout,
    a 5xx answer): the image may be out, so it is charged, never refunded."""


def maybe_taken(exc: BaseException) -> bool:
    """Whether Discord may have posted the message despite ``exc``."""
    if isinstance(exc, discord.HTTPException):
        return exc.status >= 500
    return isinstance(exc, TimeoutError | aiohttp.ServerDisconnectedError)


async def with_retries(call: Callable[[], Awaitable[T]], *, attempts: int = RETRY_ATTEMPTS) -> T:
    """Run ``call`` again after a 429 (waiting what Discord asks) or a 5xx; re-raise anything else.

    discord.py retries most 429s itself, but raises the ones without a ``Via`` header (it reads those as
    Cloudflare's) and gives up after its own attempts; a result must not be lost to either.
    """
    # `async for` rather than `await retrying(call)`: tenacity calls a plain callable without awaiting
    # what it returns, and `call` is usually a lambda that returns a coroutine.
    async for attempt in AsyncRetrying(
        stop=stop_after_attempt(attempts),
        retry=retry_if_exception(_retryable),
        wait=_discord_wait,
        before_sleep=_log_retry,
        reraise=True,
    ):
        with attempt:
            return await call()
    raise AssertionError("unreachable: the last attempt returns or raises")


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, discord.HTTPException) and (exc.status == 429 or exc.status >= 500)


def _discord_wait(state: RetryCallState) -> float:
    """What a 429 asks for, else 1, 3, 5... seconds after a 5xx; never more than ``MAX_RETRY_WAIT``."""
    exc = state.outcome.exception() if state.outcome is not None else None
    assert isinstance(exc, discord.HTTPException), "only Discord's answers are retried"
    delay = retry_after(exc) if exc.status == 429 else 1.0 + 2 * (state.attempt_number - 1)
    return min(delay, MAX_RETRY_WAIT)


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    status = getattr(exc, "status", "?")
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning("Discord answered %s; retrying in %.2f s", status, wait)


def retry_after(exc: discord.HTTPException) -> float:
    headers: Any = getattr(exc.response, "headers", None) or {}
    for name in ("Retry-After", "X-RateLimit-Reset-After"):
        raw = headers.get(name)
        if raw is not None:
            try:
                return max(0.0, float(raw))
            except ValueError:
                continue
    return 1.0


def fit_message(content: str, limit: int = MESSAGE_LIMIT) -> str:
    """``content`` cut to Discord's limit: a longer message is refused whole, and the user hears nothing.

    The last guard for sentences that repeat what users or backends wrote; they should be short already.
    """
    return content if len(content) <= limit else content[: limit - 1] + "…"


def fit_images(images: Sequence[bytes], limit: int) -> list[bytes]:
    """The images as they are if they fit in one message under ``limit`` bytes, else re-encoded.

    Each image gets an equal share. Over its share: JPEG at falling quality, then smaller sizes.
    """
    share = max(16 * 1024, (limit - UPLOAD_HEADROOM) // max(1, len(images)))
    if all(len(image) <= share for image in images):
        return list(images)
    return [image if len(image) <= share else _shrink(image, share) for image in images]


def _shrink(png: bytes, budget: int) -> bytes:
    from PIL import Image  # only when an image is too big: keeps the bot's start light

    with Image.open(io.BytesIO(png)) as opened:
        image = opened.convert("RGB")
    for quality in (92, 85, 75, 60):
        data = _jpeg(image, quality)
        if len(data) <= budget:
            return data
    while min(image.size) > 64:
        smaller = (max(1, image.width * 3 // 4), max(1, image.height * 3 // 4))
        image = image.resize(smaller, Image.Resampling.LANCZOS)
        data = _jpeg(image, 80)
        if len(data) <= budget:
            return data
    return data


def _jpeg(image: Any, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()


def image_name(data: bytes, seed: int) -> str:
    extension = "png" if data.startswith(b"\x89PNG") else "jpg"
    return f"imagine-{seed}.{extension}"


FilesFactory = Callable[[], list[discord.File]]


@dataclass
class Reply:
    """Where one job's answers go. ``to_json()`` is stored with the job for after a restart."""

    client: discord.Client
    user_id: int
    channel_id: int | None
    application_id: int
    token: str
    deadline: float  # epoch seconds after which the token is not used
    upload_limit: int = DEFAULT_UPLOAD_LIMIT
    interaction: discord.Interaction[Any] | None = None  # None when rebuilt after a restart
    token_dead: bool = False

    @classmethod
    def from_interaction(cls, client: discord.Client, interaction: discord.Interaction[Any]) -> Reply:
        # Counted from when the event arrived, not from the snowflake: hosts' clocks drift.
        return cls(
            client=client,
            user_id=interaction.user.id,
            channel_id=interaction.channel_id,
            application_id=interaction.application_id,
            token=interaction.token,
            deadline=time.time() + TOKEN_LIFETIME - TOKEN_MARGIN,
            upload_limit=getattr(interaction, "filesize_limit", None) or DEFAULT_UPLOAD_LIMIT,
            interaction=interaction,
        )

    @classmethod
    def from_json(cls, client: discord.Client, data: dict[str, Any]) -> Reply:
        channel = data.get("channel_id")
        return cls(
            client=client,
            user_id=int(data["user_id"]),
            channel_id=int(channel) if channel else None,
            application_id=int(data["application_id"]),
            token=str(data["token"]),
            deadline=float(data["token_expires_at"]),
            upload_limit=int(data.get("upload_limit") or DEFAULT_UPLOAD_LIMIT),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "user_id": str(self.user_id),
            "channel_id": None if self.channel_id is None else str(self.channel_id),
            "application_id": str(self.application_id),
            "token": self.token,
            "token_expires_at": self.deadline,
            "upload_limit": self.upload_limit,
        }

    @property
    def token_alive(self) -> bool:
        return not self.token_dead and time.time() < self.deadline

    async def edit(self, content: str) -> bool:
        """Show ``content`` in the interaction's message (progress); False when the token is gone."""
        if self.interaction is None or not self.token_alive:
            return False
        try:
            await self.interaction.edit_original_response(
                content=fit_message(content), allowed_mentions=NO_PINGS
            )
        except SEND_ERRORS as exc:  # progress is best effort; the result has its own retries
            if isinstance(exc, discord.HTTPException) and _token_gone(exc):
                self.token_dead = True
            log.debug("progress edit failed: %r", exc)
            return False
        return True

    async def tell(self, content: str) -> bool:
        """A sentence the user must see (an error, a refund): by whichever route still works."""
        try:
            await self.send(content)
        except SEND_ERRORS:
            log.warning("could not tell discord user %s anything", self.user_id)
            return False
        return True

    async def send(
        self,
        content: str,
        *,
        files: FilesFactory | None = None,
        view: discord.ui.View | None = None,
    ) -> discord.Message | discord.InteractionMessage | discord.WebhookMessage | None:
        """Post ``content`` (and fresh files from ``files()``); raise the last error if no route works."""
        content = fit_message(content)
        routes: list[Callable[[], Awaitable[Any]]] = []
        if self.token_alive:
            routes.append(lambda: self._by_token(content, files, view))
        if self.channel_id is not None:
            routes.append(lambda: self._in_channel(content, files, view))
        routes.append(lambda: self._by_dm(content, files, view))
        error: BaseException | None = None
        ambiguous = False
        for route in routes:
            try:
                message: Any = await with_retries(route)
                return message  # type: ignore[no-any-return]
            except SEND_ERRORS as exc:
                if isinstance(exc, discord.HTTPException) and _token_gone(exc):
                    self.token_dead = True
                log.info("delivery route failed (%r); trying the next", exc)
                error = exc
                ambiguous = ambiguous or maybe_taken(exc)
        assert error is not None
        if ambiguous:
            raise AmbiguousSend(repr(error)) from error
        raise error

    async def _by_token(
        self, content: str, files: FilesFactory | None, view: discord.ui.View | None
    ) -> discord.InteractionMessage | discord.WebhookMessage:
        if self.interaction is not None:
            extras = _extras(None, view)
            return await self.interaction.edit_original_response(
                content=content, attachments=files() if files else [], allowed_mentions=NO_PINGS, **extras
            )
        # After a restart: a follow-up on the stored token (it replaces a "thinking…" message).
        webhook = discord.Webhook.partial(self.application_id, self.token, client=self.client)
        return await webhook.send(content, wait=True, allowed_mentions=NO_PINGS, **_extras(files, view))

    async def _in_channel(
        self, content: str, files: FilesFactory | None, view: discord.ui.View | None
    ) -> discord.Message:
        assert self.channel_id is not None
        channel = self.client.get_partial_messageable(self.channel_id)
        return await channel.send(
            _mention(self.user_id, content),
            allowed_mentions=_only(self.user_id),
            **_extras(files, view),
        )

    async def _by_dm(
        self, content: str, files: FilesFactory | None, view: discord.ui.View | None
    ) -> discord.Message:
        channel = await self.client.create_dm(discord.Object(id=self.user_id))
        return await channel.send(content, allowed_mentions=NO_PINGS, **_extras(files, view))


def _extras(files: FilesFactory | None, view: discord.ui.View | None) -> dict[str, Any]:
    extras: dict[str, Any] = {}
    if files is not None:
        extras["files"] = files()
    if view is not None:
        extras["view"] = view
    return extras


def _only(user_id: int) -> discord.AllowedMentions:
    """Ping the requester, whom the channel message names on purpose, and nobody the content names."""
    return discord.AllowedMentions(
        everyone=False, roles=False, replied_user=False, users=[discord.Object(user_id)]
    )


def _mention(user_id: int, content: str) -> str:
    prefix = f"<@{user_id}> "
    return prefix + fit_message(content, MESSAGE_LIMIT - len(prefix))


def _token_gone(exc: discord.HTTPException) -> bool:
    """401/404 on a webhook route: the interaction token expired or the interaction is unknown."""
    return exc.status in (401, 404) or exc.code in (10015, 10062, 50027)
