"""Restart notices: telling a user whose job a restart (this process's or another's) refunded.

The gateway's conversation helper pushes each such job here once (``on_recovered``).
"""

from __future__ import annotations

import logging

from telegram import ReplyParameters
from telegram.error import TelegramError

from bots.telegram_ext.context import Bot
from gateway import JobRecord

log = logging.getLogger("imagine.telegram")


async def tell_refunded(bot: Bot, record: JobRecord) -> None:
    """Tell a user whose job a restart refunded: edit its status message, or send a new message."""
    reply = record.reply or {}
    chat_id = reply.get("chat_id")
    if chat_id is None:
        return
    text = record.error or "Imagine restarted while making your image; your credits were refunded."
    if (status_id := reply.get("status_message_id")) is not None:
        try:
            await bot.edit_message_text(text, chat_id=chat_id, message_id=status_id)
            return
        except TelegramError as exc:
            log.debug("could not edit status message of %s: %s", record.id, exc)
    reply_to = reply.get("message_id")
    try:
        await bot.send_message(
            chat_id,
            text,
            reply_parameters=ReplyParameters(reply_to, allow_sending_without_reply=True)
            if reply_to
            else None,
            message_thread_id=reply.get("thread_id"),
        )
    except TelegramError as exc:
        log.warning("could not tell %s about the refund of %s: %s", record.user_id, record.id, exc)
