"""The fake Telegram's world: chats, users, messages, files, queued updates, and the calls it answered."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import time
from collections.abc import Callable
from typing import Any, Literal

from PIL import Image

from tests.fakes.telegram.records import (
    _PHOTO_MAX_SIDE,
    _PHOTO_STEPS,
    DEFAULT_TOKEN,
    DEFAULT_UPDATE_TYPES,
    JSON,
    Button,
    Call,
    CallbackQuery,
    ChatMessage,
    Document,
    Photo,
    QueuedUpdate,
    StoredFile,
    StoredMessage,
    Webhook,
    WebhookDelivery,
    WebhookInfo,
    bad_request,
)

_COMMAND_AT_START = re.compile(r"/[A-Za-z0-9_]{1,64}(?:@[A-Za-z0-9_]{3,32})?(?![\w/<>])")


class TelegramState:
    """Chats, messages, files and updates as Telegram keeps them, the calls it answered, and what users do."""

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        bot_username: str = "imaginebot",
        bot_first_name: str = "Imagine",
        callback_query_ttl: float = 15.0,
        first_update_id: int = 100_000,
    ) -> None:
        self.token = token
        bot_id = token.split(":", 1)[0]
        self.bot_user: JSON = {
            "id": int(bot_id) if bot_id.isdigit() else 1,
            "is_bot": True,
            "first_name": bot_first_name,
            "username": bot_username,
        }
        self.callback_query_ttl = callback_query_ttl
        self._next_update_id = first_update_id
        self._updates: list[QueuedUpdate] = []
        self._allowed_updates: frozenset[str] = DEFAULT_UPDATE_TYPES
        self._poll_generation = 0
        self._chats: dict[int, JSON] = {}
        self._users: dict[int, JSON] = {}
        self._messages: dict[int, dict[int, StoredMessage]] = {}
        self._next_message_id: dict[int, int] = {}
        self._files: dict[str, StoredFile] = {}
        self._file_counter = 0
        self.file_downloads: list[str] = []  # file paths the bot downloaded, in order
        self._media_group_counter = 0
        self._callback_queries: dict[str, CallbackQuery] = {}
        self._callback_counter = 0
        self._commands: dict[tuple[str, str], list[JSON]] = {}
        self._webhook: Webhook | None = None
        self._calls: list[Call] = []
        self.webhook_deliveries: list[WebhookDelivery] = []
        self._tick = asyncio.Event()
        self._closing = False

    # ------------------------------------------------------------------------------------------ records

    def calls(self, method: str | None = None, chat_id: int | str | None = None) -> list[Call]:
        """Recorded calls, oldest first, optionally of one method and/or to one chat."""
        return [
            call
            for call in self._calls
            if (method is None or call.method.lower() == method.lower())
            and (chat_id is None or call.chat_id == chat_id)
        ]

    async def wait_for_call(
        self,
        method: str,
        predicate: Callable[[Call], bool] | None = None,
        *,
        n: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> Call:
        """The n-th answered call of `method` matching `predicate`, counting calls made before the wait."""

        def matching() -> list[Call]:
            return [
                call
                for call in self.calls(method)
                if call.status is not None and (predicate is None or predicate(call))
            ]

        try:
            await self.wait_until(lambda: len(matching()) >= n, timeout=timeout)
        except AssertionError:
            seen = [(call.method, call.status, call.description) for call in self._calls[-20:]]
            raise AssertionError(
                f"expected {n} matching {method} call(s) within {timeout}s, got {len(matching())}; "
                f"latest calls: {seen}"
            ) from None
        return matching()[n - 1]

    async def wait_until(self, condition: Callable[[], bool], *, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until `condition()` holds: checked after every answered call and injected update, and every
        20 ms for conditions on state outside the fake (what a handler appended to a list)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            tick = self._tick
            if condition():
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"condition not met within {timeout}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tick.wait(), min(remaining, 0.02))

    def chat_view(self, chat_id: int) -> list[ChatMessage]:
        """The chat as its members see it: every message not deleted, in order, as last edited."""
        return [
            self._view(stored) for stored in self._messages.get(chat_id, {}).values() if not stored.deleted
        ]

    def bot_messages(self, chat_id: int) -> list[ChatMessage]:
        return [message for message in self.chat_view(chat_id) if message.from_bot]

    def message(self, chat_id: int, message_id: int) -> ChatMessage:
        stored = self._messages.get(chat_id, {}).get(message_id)
        if stored is None or stored.deleted:
            raise LookupError(f"no message {message_id} in chat {chat_id}")
        return self._view(stored)

    def callback_answer(self, query_id: str) -> JSON | None:
        """The params of answerCallbackQuery for this query, None while unanswered."""
        return self._callback_queries[query_id].answer

    def commands(self, *, scope: JSON | None = None, language_code: str = "") -> list[JSON]:
        return list(self._commands.get((scope_key(scope), language_code), []))

    @property
    def webhook(self) -> WebhookInfo | None:
        hook = self._webhook
        if hook is None:
            return None
        return WebhookInfo(
            hook.url, hook.secret_token, hook.allowed_updates, hook.max_connections, hook.drop_pending_updates
        )

    @property
    def pending_updates(self) -> list[JSON]:
        """Updates not yet confirmed by the bot (getUpdates offset) or delivered to its webhook."""
        return [queued.update for queued in self._updates]

    # ------------------------------------------------------------------------------------ what users do

    def add_chat(
        self,
        chat_id: int,
        *,
        chat_type: Literal["private", "group", "supergroup"] = "private",
        title: str | None = None,
        username: str | None = None,
        first_name: str | None = None,
    ) -> JSON:
        """Make a chat known (the bot can only write to chats it has seen). Returns the Chat object."""
        if chat_type == "private" and chat_id <= 0:
            raise ValueError(f"private chat ids are the user's id, positive; got {chat_id}")
        if chat_type != "private" and chat_id >= 0:
            raise ValueError(f"group chat ids are negative; got {chat_id}")
        existing = self._chats.get(chat_id)
        if existing is not None:
            if existing["type"] != chat_type:
                raise ValueError(f"chat {chat_id} is a {existing['type']} chat, not {chat_type}")
            return existing
        chat: JSON = {"id": chat_id, "type": chat_type}
        if chat_type == "private":
            chat["first_name"] = first_name or f"User{chat_id}"
            if username:
                chat["username"] = username
        else:
            chat["title"] = title or f"Group {chat_id}"
        self._chats[chat_id] = chat
        return chat

    def add_user(self, user_id: int, *, username: str | None = None, first_name: str | None = None) -> JSON:
        user = self._users.get(user_id)
        if user is None:
            user = {"id": user_id, "is_bot": False, "first_name": first_name or f"User{user_id}"}
            user["language_code"] = "en"
            self._users[user_id] = user
        if username:
            user["username"] = username
        if first_name:
            user["first_name"] = first_name
        return user

    def send_message(
        self,
        chat_id: int,
        text: str,
        *,
        user_id: int | None = None,
        chat_type: Literal["private", "group", "supergroup"] | None = None,
        username: str | None = None,
        first_name: str | None = None,
        title: str | None = None,
        reply_to_message_id: int | None = None,
    ) -> JSON:
        """A user writes `text` in the chat; returns the update the bot will get. A leading command
        (`/imagine`, `/imagine@imaginebot`) gets its bot_command entity."""
        if chat_type is None:
            chat_type = self._chats[chat_id]["type"] if chat_id in self._chats else "private"
        if user_id is None:
            if chat_type != "private":
                raise ValueError("user_id is required for a message in a group chat")
            user_id = chat_id
        user = self.add_user(user_id, username=username, first_name=first_name)
        chat = self.add_chat(
            chat_id, chat_type=chat_type, title=title, username=user.get("username"), first_name=first_name
        )
        content: JSON = {"text": text}
        command = _COMMAND_AT_START.match(text)
        if command:
            content["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command.group())}]
        return self._user_message(chat, user, content, reply_to_message_id)

    def send_picture(
        self,
        chat_id: int,
        data: bytes,
        *,
        caption: str | None = None,
        as_document: bool = False,
        content_type: str = "image/png",
        user_id: int | None = None,
        chat_type: Literal["private", "group", "supergroup"] | None = None,
    ) -> JSON:
        """A user sends a photo (or, ``as_document``, a file) with an optional caption; returns the update.

        Kept as sent (Telegram would re-encode a photo as JPEG); a photo must be an image, a file need not.
        """
        if chat_type is None:
            chat_type = self._chats[chat_id]["type"] if chat_id in self._chats else "private"
        if user_id is None:
            user_id = chat_id
        user = self.add_user(user_id)
        chat = self.add_chat(chat_id, chat_type=chat_type)
        self._file_counter += 1
        number, kind = self._file_counter, "document" if as_document else "photo"
        width = height = 0
        if not as_document:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        stored_file = StoredFile(
            file_id=f"{'BQAC' if as_document else 'AgAC'}user{number:06d}",
            file_unique_id=f"AQADuser{number:06d}",
            data=data,
            content_type=content_type,
            filename=f"picture_{number}" if as_document else None,
            file_path=f"{kind}s/file_{number}",
            width=width,
            height=height,
        )
        self._files[stored_file.file_id] = stored_file
        content: JSON = {kind: document_object(stored_file) if as_document else photo_sizes(stored_file)}
        if caption is not None:
            content["caption"] = caption
            command = _COMMAND_AT_START.match(caption)
            if command:
                content["caption_entities"] = [
                    {"type": "bot_command", "offset": 0, "length": len(command[0])}
                ]
        return self._user_message(chat, user, content, None)

    def _user_message(self, chat: JSON, user: JSON, content: JSON, reply_to_message_id: int | None) -> JSON:
        chat_id = chat["id"]
        if reply_to_message_id is not None:
            target = self._messages.get(chat_id, {}).get(reply_to_message_id)
            if target is None or target.deleted:
                raise LookupError(f"no message {reply_to_message_id} in chat {chat_id} to reply to")
            content["reply_to_message"] = without_reply(target.data)
        stored = self._new_message(chat, user, from_bot=False, content=content)
        return self.add_update({"message": json.loads(json.dumps(stored.data))})

    def press_button(
        self, chat_id: int, message_id: int, callback_data: str, *, user_id: int | None = None
    ) -> JSON:
        """A user presses the inline button carrying `callback_data` under the message; returns the update."""
        stored = self._messages.get(chat_id, {}).get(message_id)
        if stored is None or stored.deleted:
            raise LookupError(f"no message {message_id} in chat {chat_id}")
        buttons = [
            button for row in stored.data.get("reply_markup", {}).get("inline_keyboard", []) for button in row
        ]
        if not any(button.get("callback_data") == callback_data for button in buttons):
            available = [button.get("callback_data") for button in buttons]
            raise LookupError(
                f"message {message_id} has no button with callback_data {callback_data!r}: {available}"
            )
        chat = self._chats[chat_id]
        if user_id is None:
            if chat["type"] != "private":
                raise ValueError("user_id is required to press a button in a group chat")
            user_id = chat_id
        user = self.add_user(user_id)
        self._callback_counter += 1
        query_id = f"{4_000_000_000_000_000_000 + self._callback_counter}"
        self._callback_queries[query_id] = CallbackQuery(query_id, time.monotonic())
        query: JSON = {
            "id": query_id,
            "from": dict(user),
            "message": json.loads(json.dumps(stored.data)),
            "chat_instance": f"{abs(chat_id) * 7919 + 1}",
            "data": callback_data,
        }
        return self.add_update({"callback_query": query})

    def add_update(self, payload: JSON) -> JSON:
        """Queue any other update (edited_message, my_chat_member, ...): `payload` without update_id."""
        update = {"update_id": self._next_update_id, **payload}
        self._next_update_id += 1
        if update_type(update) in self._allowed_updates:
            self._updates.append(QueuedUpdate(update))
        self._notify()
        return update

    def resend_update(self, update: JSON) -> JSON:
        """Deliver the same update (same update_id) once more, whatever the bot already confirmed."""
        self._updates.append(QueuedUpdate(update, forced=True))
        self._notify()
        return update

    # ------------------------------------------------------------------------------------------ helpers

    def _notify(self) -> None:
        self._tick.set()
        self._tick = asyncio.Event()

    def _chat(self, params: dict[str, Any]) -> JSON:
        chat_id = params.get("chat_id")
        if chat_id is None or chat_id == "":
            raise bad_request("chat_id is empty")
        if isinstance(chat_id, str):
            for chat in self._chats.values():
                if chat_id.startswith("@") and chat.get("username") == chat_id[1:]:
                    return chat
            raise bad_request("chat not found")
        found = self._chats.get(chat_id)
        if found is None:
            raise bad_request("chat not found")
        return found

    def _stored(self, chat_id: int, message_id: Any, missing: str) -> StoredMessage:
        stored = self._messages.get(chat_id, {}).get(message_id) if isinstance(message_id, int) else None
        if stored is None or stored.deleted:
            raise bad_request(missing)
        return stored

    def _new_message(self, chat: JSON, sender: JSON, *, from_bot: bool, content: JSON) -> StoredMessage:
        chat_id = chat["id"]
        message_id = self._next_message_id.get(chat_id, 1)
        self._next_message_id[chat_id] = message_id + 1
        data: JSON = {
            "message_id": message_id,
            "from": dict(sender),
            "chat": dict(chat),
            "date": int(time.time()),
            **content,
        }
        stored = StoredMessage(data, from_bot=from_bot)
        self._messages.setdefault(chat_id, {})[message_id] = stored
        return stored

    def _view(self, stored: StoredMessage) -> ChatMessage:
        data = stored.data
        photo = None
        if stored.photo is not None:
            largest = data["photo"][-1]
            photo = Photo(
                data=stored.photo.data,
                width=stored.photo.width,
                height=stored.photo.height,
                file_id=largest["file_id"],
                file_unique_id=largest["file_unique_id"],
                content_type=stored.photo.content_type,
                filename=stored.photo.filename,
            )
        document = None
        if stored.document is not None:
            document = Document(
                data=stored.document.data,
                file_id=stored.document.file_id,
                file_name=stored.document.filename,
                mime_type=stored.document.content_type,
            )
        keyboard = tuple(
            tuple(
                Button(button.get("text", ""), button.get("callback_data"), button.get("url"))
                for button in row
            )
            for row in data.get("reply_markup", {}).get("inline_keyboard", [])
        )
        reply = data.get("reply_to_message")
        return ChatMessage(
            message_id=data["message_id"],
            from_bot=stored.from_bot,
            user_id=data["from"]["id"],
            date=data["date"],
            text=data.get("text"),
            caption=data.get("caption"),
            photo=photo,
            document=document,
            keyboard=keyboard,
            reply_to_message_id=reply["message_id"] if reply else None,
            media_group_id=data.get("media_group_id"),
            edit_count=stored.edit_count,
        )


def scope_key(scope: Any) -> str:
    return json.dumps(scope or {"type": "default"}, sort_keys=True)


def update_type(update: JSON) -> str:
    return next(key for key in update if key != "update_id")


def without_reply(message: JSON) -> JSON:
    copy: JSON = json.loads(json.dumps(message))
    copy.pop("reply_to_message", None)
    return copy


def photo_sizes(stored: StoredFile) -> list[JSON]:
    """PhotoSize list, smallest first, the full picture last (scaled to 2560 on its longest side at most)."""
    width, height = stored.width, stored.height
    longest = max(width, height)
    steps = [step for step in _PHOTO_STEPS if step < longest] + [min(longest, _PHOTO_MAX_SIDE)]
    sizes = []
    for index, side in enumerate(steps):
        scale = side / longest
        last = index == len(steps) - 1
        size_width, size_height = max(1, round(width * scale)), max(1, round(height * scale))
        sizes.append(
            {
                "file_id": stored.file_id if last else f"{stored.file_id}_{side}",
                "file_unique_id": stored.file_unique_id if last else f"{stored.file_unique_id}_{side}",
                "width": size_width,
                "height": size_height,
                "file_size": len(stored.data) if last else max(1, round(len(stored.data) * scale * scale)),
            }
        )
    return sizes


def document_object(stored: StoredFile) -> JSON:
    document: JSON = {
        "file_id": stored.file_id,
        "file_unique_id": stored.file_unique_id,
        "mime_type": stored.content_type,
        "file_size": len(stored.data),
    }
    if stored.filename:
        document["file_name"] = stored.filename
    return document
