"""Sending a finished job's images, and the contract with the gateway around it: claim, send, settle.

An image is posted only for a job this process still owns (``claim_delivery``); it is charged once
Telegram took it or may have (an ambiguous send is never given away free nor charged twice), and
refunded only when Telegram certainly did not post it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
from telegram import (
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    InputMediaDocument,
    InputMediaPhoto,
    Message,
    ReplyParameters,
)
from telegram.error import BadRequest, NetworkError, TelegramError

from bots.telegram_ext.context import Bot, Where
from bots.telegram_ext.progress import show
from bots.telegram_ext.ratelimit import CAPTION_LIMIT
from gateway import ImagineError, Job, JobResult
from gateway.conversation import Conversation
from gateway.errors import AmbiguousDelivery
from gateway.messages import result_caption
from gateway.request import MAX_IMAGES

log = logging.getLogger("imagine.telegram")
_Sent = TypeVar("_Sent")

CALLBACK_DATA_LIMIT = 64  # bytes
PHOTO_MAX_BYTES = 10 * 1024 * 1024  # larger photos must go as documents
PHOTO_MAX_SIDES = 10_000  # width + height
PHOTO_MAX_RATIO = 20
SEND_ATTEMPTS = 3  # tries of a result send whose request never reached Telegram
SEND_RETRY_PAUSE = 1.0  # seconds before the second try; doubles after
RESULT_READ_TIMEOUT = 30.0  # seconds for Telegram's answer to an upload; a late answer is ambiguous
REROLL, VARIATIONS = "reroll", "vary"
RELAX = "relax"  # the button under an out-of-credits sentence: ``relax:<key>``
#: The per-image buttons' callback_data starts with one of these and the image's number, e.g. ``U2:``.
IMAGE_ACTIONS = {"U": "upscale", "V": "vary", "S": "vary_strong"}
MORE_LIKE_THESE = "More like these?"


async def deliver_and_settle(
    bot: Bot, conversation: Conversation, job: Job, where: Where, status: Message
) -> None:
    """Post the image(s) inside the gateway's delivery fence: charged once Telegram took them or may
    have (an ambiguous send), refunded with the sentence shown only if it certainly did not."""
    try:
        async with conversation.delivery(job, failed="Telegram did not accept the image") as result:
            try:
                sent = await send_result(bot, result, where)
            except TelegramError as exc:
                if not telegram_refused(exc):
                    raise AmbiguousDelivery(repr(exc)) from exc
                raise
            await remember_files(conversation, job, sent, len(result.images))
    except ImagineError as error:  # refunded meanwhile, or Telegram certainly did not take it
        await show(status, str(error))
        return
    with contextlib.suppress(TelegramError):
        await status.delete()


async def remember_files(conversation: Conversation, job: Job, sent: list[Message], count: int) -> None:
    """Keep Telegram's file ids of the posted images in the job's reply record, for the U/V buttons.

    The record, not the message: an album's keyboard sits on a follow-up message that can point at
    one image only, and the Bot API cannot read a message back; the record outlives a restart. Never
    raises: the images are out, and a lost record only makes the buttons say the image is gone.
    """
    files = [file.file_id for m in sent if (file := m.photo[-1] if m.photo else m.document) is not None]
    if len(files) != count:
        return
    try:
        await conversation.service.set_reply(job.id, {**(job.reply or {}), "files": files})
    except Exception:
        log.exception("could not keep the file ids of %s; its U/V buttons will not work", job.id)


def result_keyboard(job_id: str, count: int = 1) -> InlineKeyboardMarkup | None:
    """Re-roll and variations, then ``U1..Un`` (upscale), ``V1..Vn`` (vary) and the strong variations."""
    numbers = range(1, count + 1)
    rows = [
        [
            InlineKeyboardButton("🎲 Re-roll", callback_data=f"{REROLL}:{job_id}"),
            InlineKeyboardButton(f"🔀 Variations ×{MAX_IMAGES}", callback_data=f"{VARIATIONS}:{job_id}"),
        ],
        [InlineKeyboardButton(f"U{n}", callback_data=f"U{n}:{job_id}") for n in numbers],
        [InlineKeyboardButton(f"V{n}", callback_data=f"V{n}:{job_id}") for n in numbers],
        [
            InlineKeyboardButton(
                "Vary (Strong)" if count == 1 else f"V{n} strong", callback_data=f"S{n}:{job_id}"
            )
            for n in numbers
        ],
    ]
    if any(len(str(b.callback_data).encode()) > CALLBACK_DATA_LIMIT for row in rows for b in row):
        return None
    return InlineKeyboardMarkup(rows)


async def send_result(bot: Bot, result: JobResult, where: Where) -> list[Message]:
    """One photo with caption and keyboard, or an album with the keyboard on a follow-up message.

    Images that break Telegram's photo rules go as documents (PNG files) instead.
    """
    images = result.images
    caption = result_caption(result, limit=CAPTION_LIMIT)
    as_photos = all(fits_photo_rules(png) for png in images)
    keyboard = result_keyboard(result.job_id, len(images))
    names = [f"imagine-{seed}.png" for seed in result.seeds]
    names += [f"imagine-{i + 1}.png" for i in range(len(names), len(images))]
    common: dict[str, Any] = {
        "reply_parameters": where.reply(),
        "message_thread_id": where.thread_id,
        "read_timeout": RESULT_READ_TIMEOUT,
    }
    if len(images) == 1:
        upload = InputFile(images[0], filename=names[0])
        if as_photos:
            sent = await _until_sent(
                lambda: bot.send_photo(
                    where.chat_id, upload, caption=caption, reply_markup=keyboard, **common
                )
            )
        else:
            sent = await _until_sent(
                lambda: bot.send_document(
                    where.chat_id, upload, caption=caption, reply_markup=keyboard, **common
                )
            )
        return [sent]
    media: list[InputMediaPhoto] | list[InputMediaDocument]
    if as_photos:
        media = [
            InputMediaPhoto(png, caption=caption if i == 0 else None, filename=names[i])
            for i, png in enumerate(images)
        ]
    else:
        media = [
            InputMediaDocument(png, caption=caption if i == len(images) - 1 else None, filename=names[i])
            for i, png in enumerate(images)
        ]
    album = list(await _until_sent(lambda: bot.send_media_group(where.chat_id, media, **common)))
    if keyboard is not None:
        try:  # the images are delivered: a lost keyboard must not refund them
            follow_up = await bot.send_message(
                where.chat_id,
                MORE_LIKE_THESE,
                reply_markup=keyboard,
                reply_parameters=ReplyParameters(album[0].message_id, allow_sending_without_reply=True),
                message_thread_id=where.thread_id,
            )
            album.append(follow_up)
        except TelegramError as exc:
            log.warning("could not send the buttons under the album of %s: %s", result.job_id, exc)
    return album


async def _until_sent(send: Callable[[], Awaitable[_Sent]]) -> _Sent:
    """One result send, tried again (a bounded number of times) only while its request never left.

    A request that may have reached Telegram is not repeated: the photo would show twice. Flood
    waits are the rate limiter's to retry, not this loop's.
    """
    pause = SEND_RETRY_PAUSE
    for attempt in range(1, SEND_ATTEMPTS):
        try:
            return await send()
        except NetworkError as exc:
            if not never_sent(exc):
                raise
            log.info("Telegram could not be reached (try %d of %d): %r", attempt, SEND_ATTEMPTS, exc)
        await asyncio.sleep(pause)
        pause *= 2
    return await send()


def never_sent(error: TelegramError) -> bool:
    """True when the request never left this process: no connection, or none free in the pool.

    python-telegram-bot raises these from httpx's own exceptions; a test that takes the fake Telegram
    off the network fails loudly if it stops doing so.
    """
    return isinstance(error.__cause__, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def telegram_refused(error: TelegramError) -> bool:
    """True when Telegram certainly did not post the message, so a refund gives nothing away free.

    Telegram answering with a refusal (400 Bad Request, 403 Forbidden, a flood wait we did not wait
    out) or the request never leaving is certain; a timeout, a dropped connection or a 5xx after the
    upload went out is not: Telegram may have posted it.
    """
    if isinstance(error, BadRequest) or not isinstance(error, NetworkError):
        return True
    return never_sent(error)


def png_size(png: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG header, without decoding the image."""
    if len(png) < 24 or png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)


def fits_photo_rules(png: bytes) -> bool:
    """Telegram's sendPhoto rules: at most 10 MB, width + height at most 10000, ratio at most 20."""
    size = png_size(png)
    if size is None or len(png) > PHOTO_MAX_BYTES:
        return False
    width, height = size
    if width <= 0 or height <= 0:
        return False
    return width + height <= PHOTO_MAX_SIDES and max(width, height) / min(width, height) <= PHOTO_MAX_RATIO
