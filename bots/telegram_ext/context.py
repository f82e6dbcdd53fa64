"""What every Telegram handler is given: the bot's state, the typed context, and where to answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeAlias

from telegram import Message, ReplyParameters, Update
from telegram.constants import ChatType
from telegram.ext import Application, CallbackContext, ExtBot

from gateway import ImagineService, Job, Settings
from gateway.conversation import Conversation

PLATFORM = "telegram"
SOMETHING_WENT_WRONG = "Something went wrong on our side; please try again in a minute."


class BotState:
    """What every handler reads from ``context.bot_data``; filled in once by ``build_application``."""

    service: ImagineService
    settings: Settings
    conversation: Conversation

    def __init__(self) -> None:
        self.in_flight: dict[str, Job] = {}
        self.handlers: set[asyncio.Task[Any]] = set()  # handlers following a job, for a graceful stop

    async def first_time(self, job_id: str) -> bool:
        """True the first time this update is seen, here or (for a restarted bot) in the database.

        The store is asked too so that an update Telegram redelivers after a restart gets no second
        status message; ``submit`` would refuse to charge it again anyway.
        """
        if not self.conversation.first_time(job_id):
            return False
        return await self.service.find_job(job_id) is None

    @contextlib.contextmanager
    def in_flight_while(self, job: Job) -> Iterator[None]:
        """The job and the handler following it, known to ``TelegramFront.stop`` until the block ends."""
        handler = asyncio.current_task()
        assert handler is not None
        self.in_flight[job.id] = job
        self.handlers.add(handler)
        try:
            yield
        finally:
            self.in_flight.pop(job.id, None)
            self.handlers.discard(handler)


Bot: TypeAlias = ExtBot[int]
Context: TypeAlias = CallbackContext[Bot, dict[Any, Any], dict[Any, Any], BotState]
TelegramApp: TypeAlias = Application[Bot, Context, dict[Any, Any], dict[Any, Any], BotState, None]


@dataclass(frozen=True)
class Where:
    """Where to answer: the chat, the forum topic and the message to reply to."""

    chat_id: int
    reply_to: int | None
    thread_id: int | None
    group: bool

    @classmethod
    def of(cls, message: Message) -> Where:
        return cls(
            chat_id=message.chat_id,
            reply_to=message.message_id,
            thread_id=message.message_thread_id if message.is_topic_message else None,
            group=message.chat.type != ChatType.PRIVATE,
        )

    def reply(self) -> ReplyParameters | None:
        if self.reply_to is None:
            return None
        return ReplyParameters(self.reply_to, allow_sending_without_reply=True)


def user_of(telegram_user_id: int) -> str:
    return f"{PLATFORM}:{telegram_user_id}"


def job_id_of(update: Update) -> str:
    """The job id is the update id: Telegram redelivering an update must not charge twice."""
    return f"{PLATFORM}:{update.update_id}"
