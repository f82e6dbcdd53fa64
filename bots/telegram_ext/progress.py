"""The status message: queue position and progress edited in no faster than the chat allows."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable

from telegram import Message
from telegram.constants import ChatAction
from telegram.error import TelegramError

from bots.telegram_ext.context import Bot, Where
from gateway import Job, JobStatus, JobUpdate
from gateway.conversation import Conversation, until_finished
from gateway.messages import status_text

log = logging.getLogger("imagine.telegram")

EDIT_EVERY_PRIVATE = 2.0  # seconds between status edits: about one message a second per chat
EDIT_EVERY_GROUP = 6.0  # groups allow about 20 messages a minute
CHAT_ACTION_EVERY = 4.5  # a chat action shows for 5 s


async def follow(
    bot: Bot, conversation: Conversation, job: Job, status: Message, shown: str, where: Where
) -> JobUpdate:
    """Edit the status with queue position and progress until the job ends; return its last update.

    The gateway's ``follow`` paces the edits (about one a second in a private chat, 20 a minute in a
    group); an edit still waiting for the rate limiter when the job ends is dropped.
    """
    every = EDIT_EVERY_GROUP if where.group else EDIT_EVERY_PRIVATE
    finished = asyncio.ensure_future(until_finished(job))
    last_action: float | None = None
    update = job.snapshot()
    try:
        async for update in conversation.follow(job, every=every):
            if update.status.finished:
                break
            now = time.monotonic()
            if update.status is JobStatus.RUNNING and (
                last_action is None or (not where.group and now - last_action >= CHAT_ACTION_EVERY)
            ):
                last_action = now
                action = bot.send_chat_action(
                    where.chat_id, ChatAction.UPLOAD_PHOTO, message_thread_id=where.thread_id
                )
                await _unless_finished(action, finished)
            if (text := status_text(update)) != shown:
                shown = text
                await _unless_finished(status.edit_text(text), finished)
        return update
    finally:
        finished.cancel()


async def show(status: Message, text: str) -> None:
    """The status message now says ``text`` (best effort)."""
    await quietly(status.edit_text(text))


async def _unless_finished(call: Awaitable[object], finished: asyncio.Future[None]) -> None:
    """A progress edit or chat action, dropped if the job ends while it waits for the rate limiter."""
    sending = asyncio.ensure_future(quietly(call))
    try:
        await asyncio.wait((sending, finished), return_when=asyncio.FIRST_COMPLETED)
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)


async def quietly(call: Awaitable[object]) -> None:
    """Status edits and chat actions are best effort: a failed one must not lose the image."""
    try:
        await call
    except TelegramError as exc:
        log.debug("status update failed: %s", exc)
