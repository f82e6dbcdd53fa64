"""Pictures a Discord user hands the bot, fetched from Discord's CDN and nowhere else.

An attachment's ``url`` comes from Discord's own payload, never from text a user typed; it is still
checked against Discord's CDN hosts (or the host of ``DISCORD_API_BASE_URL``, for a proxy or the test
fake) before anything connects. The size and content type Discord reports are checked first; the
download is then capped while it streams, so a CDN answer larger than reported never sits in memory
whole. :func:`gateway.picture.read_picture` checks the bytes themselves.
"""

from __future__ import annotations

import logging

import aiohttp
import discord
import yarl

from gateway import InvalidRequest
from gateway.picture import MAX_PICTURE_BYTES

log = logging.getLogger("imagine.discord")

CDN_HOSTS = frozenset({"cdn.discordapp.com", "media.discordapp.net"})
PICTURE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})
CHUNK_BYTES = 64 * 1024
DOWNLOAD_SECONDS = 30.0

NOT_A_PICTURE = "The picture must be a PNG, JPEG or WebP image."
NOT_ON_CDN = "Imagine reads pictures only from Discord's CDN; attach the picture to the command."
UNREADABLE = "Discord did not hand over the picture; try again in a moment."


def too_big(size: int | None, limit: int) -> InvalidRequest:
    """The sentence of :func:`gateway.picture.read_picture`; ``size`` None: cut off while streaming."""
    shown = f"more than {limit / 2**20:g}" if size is None else f"{size / 2**20:.1f}"
    return InvalidRequest(f"The picture is {shown} MB; the limit is {limit / 2**20:g} MB.")


class PictureFetcher:
    """Downloads attachments' bytes from Discord's CDN, at most ``limit`` bytes each."""

    def __init__(self, *, api_base_url: str, limit: int = MAX_PICTURE_BYTES) -> None:
        self.limit = limit
        api = yarl.URL(api_base_url)
        # Discord's CDN, and the configured API's own origin (a proxy, or the fake in tests).
        self._origins = {("https", host, 443) for host in CDN_HOSTS} | {(api.scheme, api.host, api.port)}
        self._session: aiohttp.ClientSession | None = None

    def from_discord(self, url: str) -> bool:
        parsed = yarl.URL(url)
        return parsed.user is None and (parsed.scheme, parsed.host, parsed.port) in self._origins

    def check(self, attachment: discord.Attachment) -> None:
        """What Discord says about the attachment, checked before a byte is fetched."""
        content_type = (attachment.content_type or "").split(";")[0].strip().lower()
        if content_type and content_type not in PICTURE_TYPES:
            raise InvalidRequest(NOT_A_PICTURE)
        if attachment.size > self.limit:
            raise too_big(attachment.size, self.limit)
        if not self.from_discord(attachment.url):
            raise InvalidRequest(NOT_ON_CDN)

    async def fetch(self, attachment: discord.Attachment) -> bytes:
        """The attachment's bytes, or one sentence (an :class:`InvalidRequest`) saying why not."""
        self.check(attachment)
        return await self.download(attachment.url)

    async def download(self, url: str) -> bytes:
        """``url``'s body, cut off once it passes ``limit`` bytes; no redirects are followed."""
        if not self.from_discord(url):
            raise InvalidRequest(NOT_ON_CDN)
        session = self._session_now()
        data = bytearray()
        try:
            async with session.get(url, allow_redirects=False) as response:
                if response.status != 200:
                    log.warning("the CDN answered %s for an attachment", response.status)
                    raise InvalidRequest(UNREADABLE)
                if response.content_length is not None and response.content_length > self.limit:
                    raise too_big(response.content_length, self.limit)
                async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                    data += chunk
                    if len(data) > self.limit:
                        raise too_big(None, self.limit)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("could not download an attachment: %r", exc)
            raise InvalidRequest(UNREADABLE) from None
        return bytes(data)

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=DOWNLOAD_SECONDS), trust_env=False
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def attachment_at(message: discord.Message | None, index: int) -> discord.Attachment | None:
    """Image ``index`` (0-based) of a result message, as Discord sent the message with the interaction."""
    attachments = message.attachments if message is not None else []
    return attachments[index] if 0 <= index < len(attachments) else None
