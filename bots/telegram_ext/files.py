"""Pictures fetched back from Telegram: a user's photo for an image prompt, or a delivered image a U/V
button acts on.

Only Telegram's own file endpoint is asked (``getFile``, then the file URL under the configured file
base), never a URL a user typed; the size is checked from what Telegram declares and again while the
bytes stream in, so a lying size costs at most the cap in memory.
"""

from __future__ import annotations

import logging

import httpx
from telegram import Document, Message, PhotoSize
from telegram.error import BadRequest

from bots.telegram_ext.context import Bot
from gateway.errors import InvalidRequest
from gateway.picture import MAX_PICTURE_BYTES, too_big

log = logging.getLogger("imagine.telegram")

DOWNLOAD_TIMEOUT = 30.0  # seconds for one picture
NOT_A_PICTURE = "Send the picture as a photo or an image file, with /imagine and your prompt as its caption."


def file_base_url(api_base_url: str) -> str:
    """Telegram's file base from its method base (``.../bot`` -> ``.../file/bot``), as the local Bot
    API server lays them out too."""
    root = api_base_url.rstrip("/").removesuffix("/bot")
    return f"{root}/file/bot"


def picture_of(message: Message | None) -> PhotoSize | Document | None:
    """The photo (the largest size within the cap) or the document a message carries, if any."""
    if message is None:
        return None
    if message.photo:
        fitting = [size for size in message.photo if (size.file_size or 0) <= MAX_PICTURE_BYTES]
        return max(fitting or message.photo, key=lambda size: size.width * size.height)
    return message.document


async def download_picture(
    bot: Bot, file_id: str, *, declared: int | None = None, limit: int = MAX_PICTURE_BYTES
) -> bytes:
    """The picture's bytes; one over ``limit`` (as declared, or as it streams in) is one
    :class:`InvalidRequest` sentence, and nothing past the limit is read."""
    if declared is not None and declared > limit:
        raise too_big(declared)
    try:
        telegram_file = await bot.get_file(file_id)
    except BadRequest as exc:
        if "too big" in exc.message.lower():  # over the 20 MB Telegram lets bots download
            raise too_big(declared or limit + 1) from None
        raise
    if telegram_file.file_size is not None and telegram_file.file_size > limit:
        raise too_big(telegram_file.file_size)
    return await download_file(bot, telegram_file.file_path, limit=limit)


async def download_file(bot: Bot, url: str | None, *, limit: int) -> bytes:
    """GET a file URL that ``getFile`` gave, only under this bot's file base, stopping past ``limit``.

    A client per download: downloads are rare (an image prompt, a button) and the URL carries the
    token, so it is never logged, nor are redirects followed.
    """
    base = bot.base_file_url.rstrip("/") + "/"
    if not url or not url.startswith(base):
        raise InvalidRequest(NOT_A_PICTURE)
    data = bytearray()
    async with (
        httpx.AsyncClient(timeout=DOWNLOAD_TIMEOUT, follow_redirects=False) as client,
        client.stream("GET", url) as response,
    ):
        if response.status_code != 200:
            log.warning("Telegram's file endpoint answered %d for a picture", response.status_code)
            raise InvalidRequest("Telegram did not hand over the picture; send it again.")
        async for chunk in response.aiter_bytes():
            data += chunk
            if len(data) > limit:
                raise too_big(max(len(data), int(response.headers.get("content-length") or 0)))
    return bytes(data)
