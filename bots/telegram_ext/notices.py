"""Restart notices: telling users whose job a restart (this process's or another's) refunded."""

from __future__ import annotations

import asyncio
import logging

from telegram import ReplyParameters
from telegram.error import TelegramError

from bots.telegram_ext.context import PLATFORM, Bot
from gateway import ImagineService

log = logging.getLogger("imagine.telegram")

RECOVERY_CHECK_EVERY = 15.0


async def tell_refunded(bot: Bot, service: ImagineService) -> int:
    """Tell each user whose job a restart refunded: edit its status message, or send a new message."""
    told = 0
    for record in await service.take_recovered(f"{PLATFORM}:"):
        reply = record.reply or {}
        chat_id = reply.get("chat_id")
        if chat_id is None:
            continue
        text = record.error or "Imagine restarted while making your image; your credits were refunded."
        if (status_id := reply.get("status_message_id")) is not None:
            try:
                await bot.edit_message_text(text, chat_id=chat_id, message_id=status_id)
                told += 1
                continue
            except TelegramError as exc:
                log.debug("could not edit status message of %s: %s", record.id, exc)
        reply_to = reply.get("message_id")
        try:
            await bot.send_message(
                chat_id,
                text,
                reply_parameters=(
                    ReplyParameters(reply_to, allow_sending_without_reply=True) if reply_to else None
                ),
                message_thread_id=reply.get("thread_id"),
            )
            told += 1
        except TelegramError as exc:
            log.warning("could not tell %s about the refund of %s: %s", record.user_id, record.id, exc)
    return told


async def keep_telling_refunded(bot: Bot, service: ImagineService) -> None:
    """Jobs another (dead) process left open are refunded by the service's heartbeat; tell them too."""
    while True:
        await asyncio.sleep(RECOVERY_CHECK_EVERY)
        try:
            await tell_refunded(bot, service)
        except Exception:
            log.exception("telling users about refunds failed")
