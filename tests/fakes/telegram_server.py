"""A fake Telegram Bot API server on loopback, for end-to-end tests of the Telegram front.

The real python-telegram-bot client talks to it over HTTP as it would to api.telegram.org:

    async with FakeTelegram() as fake:
        app = (
            ApplicationBuilder()
            .token(fake.token)
            .base_url(fake.base_url)
            .build()
        )
        ...
        update = fake.send_message(42, "/imagine a fox")
        call = await fake.wait_for_call("sendPhoto")
        assert fake.bot_messages(42)[-1].photo is not None

It keeps what Telegram keeps (updates until the bot confirms them, chats, messages, uploaded files, callback
queries, commands, the webhook), answers with the objects and the error descriptions Telegram answers with,
and enforces the limits that cheaply show bugs: photo size and dimensions, text and caption length, callback
data length, "message is not modified", unknown chats and messages. It carries only the methods the bots
call, and refuses any parse_mode: the bots send plain text. Every call is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import io
import json
import re
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import aiohttp
from aiohttp import web
from PIL import Image

JSON = dict[str, Any]

DEFAULT_TOKEN: Final = "123456789:TEST-fake-telegram-token"

MAX_TEXT_LENGTH: Final = 4096
MAX_CAPTION_LENGTH: Final = 1024
MAX_PHOTO_BYTES: Final = 10 * 1024 * 1024
MAX_PHOTO_SIDES_SUM: Final = 10000
MAX_PHOTO_RATIO: Final = 20
MAX_DOCUMENT_BYTES: Final = 50 * 1024 * 1024
MAX_CALLBACK_DATA_BYTES: Final = 64

# Telegram keeps photos at these longest sides: a thumbnail per step below the original, the original last.
_PHOTO_STEPS: Final = (90, 320, 800, 1280)
_PHOTO_MAX_SIDE: Final = 2560

ALL_UPDATE_TYPES: Final = frozenset(
    {
        "message",
        "edited_message",
        "channel_post",
        "edited_channel_post",
        "business_connection",
        "business_message",
        "edited_business_message",
        "deleted_business_messages",
        "message_reaction",
        "message_reaction_count",
        "inline_query",
        "chosen_inline_result",
        "callback_query",
        "shipping_query",
        "pre_checkout_query",
        "purchased_paid_media",
        "poll",
        "poll_answer",
        "my_chat_member",
        "chat_member",
        "chat_join_request",
        "chat_boost",
        "removed_chat_boost",
    }
)
# What a bot gets when it names no allowed_updates (or an empty list).
DEFAULT_UPDATE_TYPES: Final = ALL_UPDATE_TYPES - {"chat_member", "message_reaction", "message_reaction_count"}

CHAT_ACTIONS: Final = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)

NOT_MODIFIED: Final = (
    "Bad Request: message is not modified: specified new message content and reply markup are exactly "
    "the same as a current content and reply markup of the message"
)
QUERY_TOO_OLD: Final = "Bad Request: query is too old and response timeout expired or query ID is invalid"
PHOTO_INVALID_DIMENSIONS: Final = "Bad Request: PHOTO_INVALID_DIMENSIONS"

# Form fields arrive as strings (python-telegram-bot JSON-encodes everything but plain strings); these are
# decoded back so recorded params look like the Bot API documents them.
_JSON_FIELDS: Final = frozenset(
    {
        "reply_markup",
        "media",
        "allowed_updates",
        "commands",
        "scope",
        "entities",
        "caption_entities",
        "reply_parameters",
        "link_preview_options",
        "message_ids",
        "results",
    }
)
_INT_FIELDS: Final = frozenset(
    {
        "chat_id",
        "from_chat_id",
        "message_id",
        "message_thread_id",
        "reply_to_message_id",
        "user_id",
        "offset",
        "limit",
        "timeout",
        "max_connections",
        "cache_time",
        "width",
        "height",
        "duration",
    }
)
_BOOL_FIELDS: Final = frozenset(
    {
        "drop_pending_updates",
        "disable_notification",
        "protect_content",
        "allow_sending_without_reply",
        "show_alert",
        "has_spoiler",
        "disable_web_page_preview",
        "disable_content_type_detection",
        "show_caption_above_media",
        "allow_paid_broadcast",
    }
)
_SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
_BOT_COMMAND_NAME = re.compile(r"[a-z0-9_]{1,32}")
_COMMAND_AT_START = re.compile(r"/[A-Za-z0-9_]{1,64}(?:@[A-Za-z0-9_]{3,32})?(?![\w/<>])")


class _Registered(enum.Enum):
    SECRET = "the secret_token given to setWebhook"


REGISTERED_SECRET: Final = _Registered.SECRET
"""Default of `post_webhook_update(secret_token=...)`: the secret the bot registered, as Telegram sends."""


# --------------------------------------------------------------------------------------------------------
# What tests read


@dataclass(frozen=True)
class UploadedFile:
    """One multipart file part of a call, as the client sent it."""

    field: str
    filename: str | None
    data: bytes
    content_type: str


@dataclass
class Call:
    """One HTTP request to the Bot API. `status` is None while the answer is pending, and stays None when
    the client went away first (a long poll cancelled at shutdown)."""

    method: str
    params: dict[str, Any]
    files: list[UploadedFile]
    received_at: float
    http_method: str = "POST"
    status: int | None = None
    response: JSON | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def result(self) -> Any:
        assert self.response is not None and self.response.get("ok"), f"{self.method} failed: {self.response}"
        return self.response["result"]

    @property
    def description(self) -> str | None:
        return None if self.response is None else self.response.get("description")

    @property
    def chat_id(self) -> int | str | None:
        value = self.params.get("chat_id")
        return value if isinstance(value, int | str) else None

    def file(self, name: str) -> UploadedFile:
        """The uploaded part named `name`: a field name ("photo"), or the target of an attach:// URI."""
        name = name.removeprefix("attach://")
        for upload in self.files:
            if upload.field == name:
                return upload
        raise KeyError(
            f"{self.method} call has no file part {name!r}; parts: {[f.field for f in self.files]}"
        )


@dataclass(frozen=True)
class Button:
    text: str
    callback_data: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class Photo:
    """The photo as uploaded (bytes intact) with the dimensions read from it."""

    data: bytes
    width: int
    height: int
    file_id: str
    file_unique_id: str
    content_type: str
    filename: str | None


@dataclass(frozen=True)
class Document:
    data: bytes
    file_id: str
    file_name: str | None
    mime_type: str


@dataclass(frozen=True)
class ChatMessage:
    """A message as the user sees it now: after every edit, with its current keyboard."""

    message_id: int
    from_bot: bool
    user_id: int
    date: int
    text: str | None
    caption: str | None
    photo: Photo | None
    document: Document | None
    keyboard: tuple[tuple[Button, ...], ...]
    reply_to_message_id: int | None
    media_group_id: str | None
    edit_count: int

    @property
    def buttons(self) -> list[Button]:
        return [button for row in self.keyboard for button in row]

    @property
    def body(self) -> str:
        return self.text if self.text is not None else self.caption or ""


@dataclass(frozen=True)
class WebhookInfo:
    url: str
    secret_token: str | None
    allowed_updates: list[str] | None
    max_connections: int
    drop_pending_updates: bool


@dataclass(frozen=True)
class WebhookDelivery:
    update_id: int
    url: str
    secret_token: str | None
    status: int


# --------------------------------------------------------------------------------------------------------
# Internal state


class _ApiError(Exception):
    def __init__(self, status: int, description: str, *, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.retry_after = retry_after

    def body(self) -> JSON:
        body: JSON = {"ok": False, "error_code": self.status, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


def _bad_request(detail: str) -> _ApiError:
    return _ApiError(400, f"Bad Request: {detail}")


@dataclass
class _StoredFile:
    file_id: str
    file_unique_id: str
    data: bytes
    content_type: str
    filename: str | None
    file_path: str
    width: int = 0
    height: int = 0


@dataclass
class _StoredMessage:
    data: JSON
    from_bot: bool
    photo: _StoredFile | None = None
    document: _StoredFile | None = None
    content_key: tuple[Any, ...] | None = None  # rendered text/caption plus its source: "not modified" check
    edit_count: int = 0
    deleted: bool = False


@dataclass
class _QueuedUpdate:
    update: JSON
    forced: bool = False  # delivered once whatever the offset (a duplicate delivery)


@dataclass
class _Failure:
    method: str
    remaining: int
    status: int
    description: str
    retry_after: int | None
    chat_id: int | str | None


@dataclass
class _Stall:
    method: str
    remaining: int
    seconds: float


@dataclass
class _CallbackQuery:
    query_id: str
    created_at: float
    answer: JSON | None = None


@dataclass
class _Webhook:
    url: str
    secret_token: str | None
    allowed_updates: list[str] | None
    max_connections: int
    drop_pending_updates: bool


MethodHandler = Callable[[dict[str, Any], list[UploadedFile]], Any]


class FakeTelegram:
    """The fake Bot API. Use as `async with FakeTelegram() as fake:` or `await start()` / `await close()`."""

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
        self._updates: list[_QueuedUpdate] = []
        self._allowed_updates: frozenset[str] = DEFAULT_UPDATE_TYPES
        self._poll_generation = 0
        self._chats: dict[int, JSON] = {}
        self._users: dict[int, JSON] = {}
        self._messages: dict[int, dict[int, _StoredMessage]] = {}
        self._next_message_id: dict[int, int] = {}
        self._files: dict[str, _StoredFile] = {}
        self._file_counter = 0
        self._media_group_counter = 0
        self._callback_queries: dict[str, _CallbackQuery] = {}
        self._callback_counter = 0
        self._commands: dict[tuple[str, str], list[JSON]] = {}
        self._webhook: _Webhook | None = None
        self._failures: list[_Failure] = []
        self._stalls: list[_Stall] = []
        self._site: web.SockSite | None = None
        self._reopening: asyncio.Task[None] | None = None
        self._calls: list[Call] = []
        self.webhook_deliveries: list[WebhookDelivery] = []
        self._tick = asyncio.Event()
        self._closing = False
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._methods: dict[str, tuple[str, MethodHandler]] = {}
        for name, handler in self._method_table().items():
            self._methods[name.lower()] = (name, handler)

    # ---------------------------------------------------------------------------------------------- life

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle_method)
        # handler_cancellation: a long poll whose client went away (PTB cancels it at stop) ends at once.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        await self._listen(0)

    async def _listen(self, port: int) -> None:
        assert self._runner is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        self._port = sock.getsockname()[1]
        self._site = web.SockSite(self._runner, sock)
        await self._site.start()

    async def close(self) -> None:
        self._closing = True
        self._notify()
        if self._reopening is not None:
            self._reopening.cancel()
            await asyncio.gather(self._reopening, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        assert self._port is not None, "FakeTelegram is not started"
        return self._port

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """python-telegram-bot's `base_url` form: the token is appended (TELEGRAM_API_BASE_URL)."""
        return f"{self.root_url}/bot"

    def method_url(self, method: str) -> str:
        return f"{self.base_url}{self.token}/{method}"

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
        return list(self._commands.get((_scope_key(scope), language_code), []))

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

    # -------------------------------------------------------------------------------- failure injection

    def fail_next(
        self,
        method: str,
        *,
        description: str = "Bad Request: injected failure",
        error_code: int = 400,
        times: int = 1,
        retry_after: int | None = None,
        chat_id: int | str | None = None,
    ) -> None:
        """Answer the next `times` calls of `method` (to `chat_id`, if given) with this error instead."""
        self._failures.append(_Failure(method.lower(), times, error_code, description, retry_after, chat_id))

    def flood(
        self, method: str, *, times: int = 1, retry_after: int = 1, chat_id: int | str | None = None
    ) -> None:
        """Answer the next `times` calls of `method` with Telegram's flood-control 429."""
        self.fail_next(
            method,
            description=f"Too Many Requests: retry after {retry_after}",
            error_code=429,
            times=times,
            retry_after=retry_after,
            chat_id=chat_id,
        )

    def stall_next(self, method: str, seconds: float, *, times: int = 1) -> None:
        """Do the next `times` calls of `method` (post the photo, ...) but answer only `seconds` later:
        a client whose read timeout is shorter cannot tell whether Telegram took the request. The call
        is recorded as answered at once, as what Telegram did."""
        self._stalls.append(_Stall(method.lower(), times, seconds))

    async def go_down(self, seconds: float) -> None:
        """Refuse connections for `seconds`: the port is closed and open connections are cut (a request
        in flight gets no answer), then it listens again on the same port. Returns once it is down."""
        assert self._runner is not None and self._site is not None and self._reopening is None
        await self._site.stop()
        self._site = None
        for connection in self._runner.server.connections if self._runner.server else []:
            connection.force_close()

        async def reopen() -> None:
            await asyncio.sleep(seconds)
            await self._listen(self.port)
            self._reopening = None

        self._reopening = asyncio.create_task(reopen())

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
        if reply_to_message_id is not None:
            target = self._messages.get(chat_id, {}).get(reply_to_message_id)
            if target is None or target.deleted:
                raise LookupError(f"no message {reply_to_message_id} in chat {chat_id} to reply to")
            content["reply_to_message"] = _without_reply(target.data)
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
        self._callback_queries[query_id] = _CallbackQuery(query_id, time.monotonic())
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
        if _update_type(update) in self._allowed_updates:
            self._updates.append(_QueuedUpdate(update))
        self._notify()
        return update

    def resend_update(self, update: JSON) -> JSON:
        """Deliver the same update (same update_id) once more, whatever the bot already confirmed."""
        self._updates.append(_QueuedUpdate(update, forced=True))
        self._notify()
        return update

    # ---------------------------------------------------------------------------------------- webhooks

    async def post_webhook_update(
        self,
        update: JSON,
        *,
        url: str | None = None,
        secret_token: str | _Registered | None = REGISTERED_SECRET,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> int:
        """POST `update` as Telegram does to `url` (default: the registered webhook) with the
        X-Telegram-Bot-Api-Secret-Token header: the registered secret, the given one, or none (None).
        Returns the HTTP status."""
        hook = self._webhook
        if url is None:
            if hook is None:
                raise LookupError("no webhook is set; pass url=")
            url = hook.url
        if secret_token is REGISTERED_SECRET:
            secret_token = hook.secret_token if hook is not None else None
        headers = {"Content-Type": "application/json"}
        if isinstance(secret_token, str):
            headers["X-Telegram-Bot-Api-Secret-Token"] = secret_token
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.post(url, data=json.dumps(update), headers=headers) as response,
        ):
            await response.read()
            status = response.status
        sent_secret = secret_token if isinstance(secret_token, str) else None
        self.webhook_deliveries.append(WebhookDelivery(update["update_id"], url, sent_secret, status))
        return status

    async def deliver_webhook_updates(self) -> list[int]:
        """Push every pending update to the registered webhook, in order, as Telegram does; those answered
        2xx are done, the others stay pending. Returns the statuses."""
        if self._webhook is None:
            raise LookupError("no webhook is set")
        statuses = []
        for queued in list(self._updates):
            status = await self.post_webhook_update(queued.update)
            statuses.append(status)
            if 200 <= status < 300:
                self._updates.remove(queued)
        return statuses

    # ------------------------------------------------------------------------------------------ HTTP

    async def _handle_method(self, request: web.Request) -> web.Response:
        method_name = request.match_info["method"]
        canonical, handler = self._methods.get(method_name.lower(), (method_name, None))
        call = Call(canonical, {}, [], time.monotonic(), request.method)
        self._calls.append(call)
        try:
            if request.match_info["token"] != self.token:
                raise _ApiError(401, "Unauthorized")
            call.params, call.files = await _read_params(request)
            failure = self._take_failure(canonical, call.params)
            if failure is not None:
                raise failure
            if handler is None:
                raise _ApiError(404, "Not Found")
            result = handler(call.params, call.files)
            if asyncio.iscoroutine(result):
                result = await result
            status, body = 200, {"ok": True, "result": result}
        except _ApiError as error:
            status, body = error.status, error.body()
        call.status, call.response = status, body
        self._notify()
        if (stall := self._take_stall(canonical)) is not None:
            await asyncio.sleep(stall)
        return web.json_response(body, status=status)

    def _take_failure(self, method: str, params: dict[str, Any]) -> _ApiError | None:
        for failure in self._failures:
            if failure.method != method.lower():
                continue
            if failure.chat_id is not None and params.get("chat_id") != failure.chat_id:
                continue
            failure.remaining -= 1
            if failure.remaining <= 0:
                self._failures.remove(failure)
            return _ApiError(failure.status, failure.description, retry_after=failure.retry_after)
        return None

    def _take_stall(self, method: str) -> float | None:
        for stall in self._stalls:
            if stall.method == method.lower():
                stall.remaining -= 1
                if stall.remaining <= 0:
                    self._stalls.remove(stall)
                return stall.seconds
        return None

    def _notify(self) -> None:
        self._tick.set()
        self._tick = asyncio.Event()

    # --------------------------------------------------------------------------------------- methods

    def _method_table(self) -> dict[str, MethodHandler]:
        return {
            "getMe": lambda params, files: {
                **self.bot_user,
                "can_join_groups": True,
                "can_read_all_group_messages": False,
                "supports_inline_queries": False,
            },
            "getUpdates": self._get_updates,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "setMyCommands": self._set_my_commands,
            "sendMessage": self._send_message,
            "editMessageText": self._edit_message_text,
            "deleteMessage": self._delete_message,
            "sendChatAction": self._send_chat_action,
            "sendPhoto": self._send_photo,
            "sendDocument": self._send_document,
            "sendMediaGroup": self._send_media_group,
            "answerCallbackQuery": self._answer_callback_query,
        }

    async def _get_updates(self, params: dict[str, Any], files: list[UploadedFile]) -> list[JSON]:
        if self._webhook is not None:
            raise _ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        limit = min(max(_int_param(params, "limit", 100), 1), 100)
        timeout = max(_number_param(params, "timeout", 0), 0)
        if "allowed_updates" in params:
            self._set_allowed_updates(params["allowed_updates"])
        offset = params.get("offset")
        if isinstance(offset, int) and offset != 0:
            self._confirm(offset)
        # A new getUpdates ends the one still waiting, as Telegram does (409 to the older one).
        self._poll_generation += 1
        generation = self._poll_generation
        self._notify()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            tick = self._tick
            batch = self._take_updates(limit)
            if batch or self._closing:
                return batch
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tick.wait(), remaining)
            if generation != self._poll_generation:
                raise _ApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; "
                    "make sure that only one bot instance is running",
                )

    def _confirm(self, offset: int) -> None:
        if offset > 0:
            self._updates = [q for q in self._updates if q.forced or q.update["update_id"] >= offset]
        else:
            keep = sorted(q.update["update_id"] for q in self._updates if not q.forced)[offset:]
            self._updates = [q for q in self._updates if q.forced or q.update["update_id"] in keep]

    def _take_updates(self, limit: int) -> list[JSON]:
        allowed = self._allowed_updates
        self._updates = [q for q in self._updates if _update_type(q.update) in allowed]
        forced = [q for q in self._updates if q.forced]
        normal = sorted((q for q in self._updates if not q.forced), key=lambda q: q.update["update_id"])
        # Duplicates first: PTB confirms up to the last update of a batch, so it must end on the newest.
        batch = (forced + normal)[:limit]
        for queued in batch:
            queued.forced = False
        return [queued.update for queued in batch]

    def _set_allowed_updates(self, value: Any) -> None:
        if not isinstance(value, list):
            raise _bad_request("can't parse allowed updates JSON object")
        self._allowed_updates = frozenset(value) & ALL_UPDATE_TYPES or DEFAULT_UPDATE_TYPES

    def _set_webhook(self, params: dict[str, Any], files: list[UploadedFile]) -> bool:
        url = params.get("url") or ""
        if not url:
            return self._delete_webhook(params, files)
        secret = params.get("secret_token")
        if secret is not None and not _SECRET_TOKEN.fullmatch(str(secret)):
            raise _bad_request("secret token contains unallowed characters")
        drop = bool(params.get("drop_pending_updates"))
        if drop:
            self._updates.clear()
        allowed = params.get("allowed_updates")
        if allowed is not None:
            self._set_allowed_updates(allowed)
        self._webhook = _Webhook(
            url=url,
            secret_token=secret,
            allowed_updates=allowed,
            max_connections=_int_param(params, "max_connections", 40),
            drop_pending_updates=drop,
        )
        return True

    def _delete_webhook(self, params: dict[str, Any], files: list[UploadedFile]) -> bool:
        self._webhook = None
        if params.get("drop_pending_updates"):
            self._updates.clear()
        return True

    def _set_my_commands(self, params: dict[str, Any], files: list[UploadedFile]) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise _bad_request("can't parse commands JSON object")
        for command in commands:
            name = command.get("command", "") if isinstance(command, dict) else ""
            if not _BOT_COMMAND_NAME.fullmatch(name):
                raise _bad_request("BOT_COMMAND_INVALID")
            if not 1 <= len(command.get("description", "")) <= 256:
                raise _bad_request("BOT_COMMAND_DESCRIPTION_INVALID")
        self._commands[(_scope_key(params.get("scope")), params.get("language_code", ""))] = commands
        return True

    def _send_message(self, params: dict[str, Any], files: list[UploadedFile]) -> JSON:
        chat = self._chat(params)
        text, key = _render(params.get("text"), params, "text")
        if not text.strip():
            raise _bad_request("message text is empty")
        if len(text) > MAX_TEXT_LENGTH:
            raise _bad_request("message is too long")
        content: JSON = {"text": text}
        self._add_markup_and_reply(content, chat, params)
        stored = self._new_message(chat, self.bot_user, from_bot=True, content=content)
        stored.content_key = key
        return stored.data

    def _edit_message_text(self, params: dict[str, Any], files: list[UploadedFile]) -> JSON:
        stored = self._editable(params)
        if "text" not in stored.data:
            raise _bad_request("there is no text in the message to edit")
        text, key = _render(params.get("text"), params, "text")
        if not text.strip():
            raise _bad_request("message text is empty")
        if len(text) > MAX_TEXT_LENGTH:
            raise _bad_request("MESSAGE_TOO_LONG")
        markup = _inline_markup(params.get("reply_markup"))
        if key == stored.content_key and markup == stored.data.get("reply_markup"):
            raise _ApiError(400, NOT_MODIFIED)
        stored.data["text"] = text
        stored.content_key = key
        return self._finish_edit(stored, markup)

    def _editable(self, params: dict[str, Any]) -> _StoredMessage:
        if "inline_message_id" in params:
            raise _bad_request("MESSAGE_ID_INVALID")
        chat = self._chat(params)
        stored = self._stored(chat["id"], params.get("message_id"), "message to edit not found")
        if not stored.from_bot:
            raise _bad_request("message can't be edited")
        return stored

    def _finish_edit(self, stored: _StoredMessage, markup: JSON | None) -> JSON:
        # An edit without reply_markup removes the inline keyboard, as on Telegram.
        if markup is None:
            stored.data.pop("reply_markup", None)
        else:
            stored.data["reply_markup"] = markup
        stored.data["edit_date"] = int(time.time())
        stored.edit_count += 1
        return stored.data

    def _delete_message(self, params: dict[str, Any], files: list[UploadedFile]) -> bool:
        chat = self._chat(params)
        self._stored(chat["id"], params.get("message_id"), "message to delete not found").deleted = True
        return True

    def _send_chat_action(self, params: dict[str, Any], files: list[UploadedFile]) -> bool:
        self._chat(params)
        if params.get("action") not in CHAT_ACTIONS:
            raise _bad_request("wrong parameter action in request")
        return True

    def _send_photo(self, params: dict[str, Any], files: list[UploadedFile]) -> JSON:
        chat = self._chat(params)
        photo = self._input_file(params.get("photo"), files, "photo", kind="photo")
        caption, key = _render(params.get("caption") or "", params, "caption")
        if len(caption) > MAX_CAPTION_LENGTH:
            raise _bad_request("message caption is too long")
        content: JSON = {"photo": _photo_sizes(photo)}
        if caption:
            content["caption"] = caption
        if params.get("has_spoiler"):
            content["has_media_spoiler"] = True
        self._add_markup_and_reply(content, chat, params)
        stored = self._new_message(chat, self.bot_user, from_bot=True, content=content)
        stored.photo, stored.content_key = photo, key
        return stored.data

    def _send_document(self, params: dict[str, Any], files: list[UploadedFile]) -> JSON:
        chat = self._chat(params)
        document = self._input_file(params.get("document"), files, "document", kind="document")
        caption, key = _render(params.get("caption") or "", params, "caption")
        if len(caption) > MAX_CAPTION_LENGTH:
            raise _bad_request("message caption is too long")
        content: JSON = {"document": _document_object(document)}
        if caption:
            content["caption"] = caption
        self._add_markup_and_reply(content, chat, params)
        stored = self._new_message(chat, self.bot_user, from_bot=True, content=content)
        stored.document, stored.content_key = document, key
        return stored.data

    def _send_media_group(self, params: dict[str, Any], files: list[UploadedFile]) -> list[JSON]:
        chat = self._chat(params)
        media = params.get("media")
        if not isinstance(media, list) or not all(isinstance(item, dict) for item in media):
            raise _bad_request("can't parse media JSON object")
        if not 2 <= len(media) <= 10:
            raise _bad_request("wrong number of messages to send")
        prepared = []
        for item in media:
            kind = item.get("type")
            if kind not in ("photo", "document"):
                raise _bad_request(f"unsupported media type {kind!r} in this fake")
            stored_file = self._input_file(item.get("media"), files, None, kind=kind)
            caption, key = _render(item.get("caption") or "", item, "caption")
            if len(caption) > MAX_CAPTION_LENGTH:
                raise _bad_request("message caption is too long")
            prepared.append((kind, stored_file, caption, key))
        self._media_group_counter += 1
        group_id = f"{13_000_000_000_000_000 + self._media_group_counter}"
        results = []
        reply: JSON = {}
        self._add_markup_and_reply(reply, chat, {k: v for k, v in params.items() if k != "reply_markup"})
        for kind, stored_file, caption, key in prepared:
            content: JSON = {"media_group_id": group_id, **reply}
            content[kind] = _photo_sizes(stored_file) if kind == "photo" else _document_object(stored_file)
            if caption:
                content["caption"] = caption
            stored = self._new_message(chat, self.bot_user, from_bot=True, content=content)
            stored.content_key = key
            if kind == "photo":
                stored.photo = stored_file
            else:
                stored.document = stored_file
            results.append(stored.data)
        return results

    def _answer_callback_query(self, params: dict[str, Any], files: list[UploadedFile]) -> bool:
        query = self._callback_queries.get(str(params.get("callback_query_id")))
        expired = query is not None and time.monotonic() - query.created_at > self.callback_query_ttl
        if query is None or query.answer is not None or expired:
            raise _ApiError(400, QUERY_TOO_OLD)
        query.answer = dict(params)
        return True

    # ---------------------------------------------------------------------------------------- helpers

    def _chat(self, params: dict[str, Any]) -> JSON:
        chat_id = params.get("chat_id")
        if chat_id is None or chat_id == "":
            raise _bad_request("chat_id is empty")
        if isinstance(chat_id, str):
            for chat in self._chats.values():
                if chat_id.startswith("@") and chat.get("username") == chat_id[1:]:
                    return chat
            raise _bad_request("chat not found")
        found = self._chats.get(chat_id)
        if found is None:
            raise _bad_request("chat not found")
        return found

    def _stored(self, chat_id: int, message_id: Any, missing: str) -> _StoredMessage:
        stored = self._messages.get(chat_id, {}).get(message_id) if isinstance(message_id, int) else None
        if stored is None or stored.deleted:
            raise _bad_request(missing)
        return stored

    def _new_message(self, chat: JSON, sender: JSON, *, from_bot: bool, content: JSON) -> _StoredMessage:
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
        stored = _StoredMessage(data, from_bot=from_bot)
        self._messages.setdefault(chat_id, {})[message_id] = stored
        return stored

    def _add_markup_and_reply(self, content: JSON, chat: JSON, params: dict[str, Any]) -> None:
        markup = _inline_markup(params.get("reply_markup"))
        if markup is not None:
            content["reply_markup"] = markup
        reply = params.get("reply_parameters")
        if isinstance(reply, dict):
            target_id, allow = reply.get("message_id"), bool(reply.get("allow_sending_without_reply"))
        else:
            target_id, allow = (
                params.get("reply_to_message_id"),
                bool(params.get("allow_sending_without_reply")),
            )
        if target_id is None:
            return
        target = self._messages.get(chat["id"], {}).get(target_id) if isinstance(target_id, int) else None
        if target is None or target.deleted:
            if not allow:
                raise _bad_request("message to be replied not found")
            return
        content["reply_to_message"] = _without_reply(target.data)

    def _input_file(
        self, value: Any, files: list[UploadedFile], field_name: str | None, *, kind: str
    ) -> _StoredFile:
        upload: UploadedFile | None = None
        if isinstance(value, str) and value.startswith("attach://"):
            upload = next((f for f in files if f.field == value.removeprefix("attach://")), None)
            if upload is None:
                raise _bad_request(f"wrong HTTP URL specified: {value} is not among the uploaded parts")
        elif value is None and field_name is not None:
            upload = next((f for f in files if f.field == field_name), None)
            if upload is None:
                raise _bad_request(f"there is no {kind} in the request")
        elif isinstance(value, str) and value.startswith(("http://", "https://")):
            raise _bad_request("failed to get HTTP URL content")
        elif isinstance(value, str):
            stored = self._files.get(value)
            if stored is None:
                raise _bad_request("wrong file identifier/HTTP URL specified")
            return stored
        else:
            raise _bad_request(f"there is no {kind} in the request")
        return self._store_upload(upload, kind=kind)

    def _store_upload(self, upload: UploadedFile, *, kind: str) -> _StoredFile:
        width = height = 0
        if kind == "photo":
            width, height = _photo_dimensions(upload.data)
        elif len(upload.data) > MAX_DOCUMENT_BYTES:
            raise _ApiError(413, "Request Entity Too Large")
        self._file_counter += 1
        number = self._file_counter
        extension = "jpg" if kind == "photo" else (upload.filename or "file").rsplit(".", 1)[-1]
        stored = _StoredFile(
            file_id=f"{'AgAC' if kind == 'photo' else 'BQAC'}fake{number:06d}",
            file_unique_id=f"AQADfake{number:06d}",
            data=upload.data,
            content_type=upload.content_type,
            filename=upload.filename,
            file_path=f"{kind}s/file_{number}.{extension}",
            width=width,
            height=height,
        )
        self._files[stored.file_id] = stored
        return stored

    def _view(self, stored: _StoredMessage) -> ChatMessage:
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


# --------------------------------------------------------------------------------------------------------
# Request parsing


async def _read_params(request: web.Request) -> tuple[dict[str, Any], list[UploadedFile]]:
    raw: dict[str, Any] = dict(request.query)
    files: list[UploadedFile] = []
    if request.method == "POST" and request.can_read_body:
        if request.content_type == "application/json":
            try:
                body = await request.json()
            except ValueError:
                raise _bad_request("can't parse JSON encoded request body") from None
            if not isinstance(body, dict):
                raise _bad_request("JSON body must be an object")
            raw.update(body)
        elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.post()
            for key, value in form.items():
                if isinstance(value, web.FileField):
                    files.append(UploadedFile(key, value.filename, value.file.read(), value.content_type))
                else:
                    raw[key] = value
    return {key: _decode_field(key, value) for key, value in raw.items()}, files


def _decode_field(key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if key in _JSON_FIELDS:
        try:
            return json.loads(value)
        except ValueError:
            raise _bad_request(f"can't parse {key.replace('_', ' ')} JSON object") from None
    if key in _INT_FIELDS:
        with contextlib.suppress(ValueError):
            return int(value)
        with contextlib.suppress(ValueError):
            return float(value)
        return value
    if key in _BOOL_FIELDS:
        return value.lower() in ("true", "1")
    return value


def _number_param(params: dict[str, Any], key: str, default: float) -> float:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad_request(f"wrong parameter {key} in request")
    return value


def _int_param(params: dict[str, Any], key: str, default: int) -> int:
    return int(_number_param(params, key, default))


def _scope_key(scope: Any) -> str:
    return json.dumps(scope or {"type": "default"}, sort_keys=True)


def _update_type(update: JSON) -> str:
    return next(key for key in update if key != "update_id")


def _without_reply(message: JSON) -> JSON:
    copy: JSON = json.loads(json.dumps(message))
    copy.pop("reply_to_message", None)
    return copy


def _inline_markup(markup: Any) -> JSON | None:
    """The markup Telegram echoes back in the Message: inline keyboards only, after its validation."""
    if markup is None:
        return None
    if not isinstance(markup, dict):
        raise _bad_request("can't parse reply keyboard markup JSON object")
    if "inline_keyboard" not in markup:
        return None  # reply keyboards and keyboard removal are accepted but not part of the Message
    rows = markup["inline_keyboard"]
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise _bad_request('field "inline_keyboard" of the InlineKeyboardMarkup must be an Array of Arrays')
    for row in rows:
        for button in row:
            if not isinstance(button, dict) or not button.get("text"):
                raise _bad_request(
                    "can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard"
                )
            data = button.get("callback_data")
            if data is not None and not 1 <= len(str(data).encode()) <= MAX_CALLBACK_DATA_BYTES:
                raise _bad_request("BUTTON_DATA_INVALID")
            url = button.get("url")
            if url is not None and not str(url).startswith(("http://", "https://", "tg://")):
                raise _bad_request(f"inline keyboard button URL '{url}' is invalid: Unsupported URL protocol")
            if data is None and url is None and len(button) == 1:
                raise _bad_request(
                    "can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard"
                )
    if not any(rows):
        return None
    return {"inline_keyboard": rows}


# --------------------------------------------------------------------------------------------------------
# Files


def _photo_dimensions(data: bytes) -> tuple[int, int]:
    if len(data) > MAX_PHOTO_BYTES:
        raise _ApiError(400, PHOTO_INVALID_DIMENSIONS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        raise _ApiError(400, PHOTO_INVALID_DIMENSIONS) from None
    except (OSError, ValueError, SyntaxError):
        raise _bad_request("IMAGE_PROCESS_FAILED") from None
    if width + height > MAX_PHOTO_SIDES_SUM or max(width, height) > MAX_PHOTO_RATIO * min(width, height):
        raise _ApiError(400, PHOTO_INVALID_DIMENSIONS)
    return width, height


def _photo_sizes(stored: _StoredFile) -> list[JSON]:
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


def _document_object(stored: _StoredFile) -> JSON:
    document: JSON = {
        "file_id": stored.file_id,
        "file_unique_id": stored.file_unique_id,
        "mime_type": stored.content_type,
        "file_size": len(stored.data),
    }
    if stored.filename:
        document["file_name"] = stored.filename
    return document


# --------------------------------------------------------------------------------------------------------
# Text


def _render(text: Any, params: dict[str, Any], field_name: str) -> tuple[str, tuple[Any, ...]]:
    """The text as shown, and a key that changes whenever text or entities do ("not modified" check).

    The bots send plain text and never a parse mode (DESIGN's safety rules: a prompt is shown as typed),
    so this fake refuses any parse_mode instead of parsing Markdown or HTML.
    """
    if text is None:
        raise _bad_request(f"message {field_name} is empty" if field_name == "text" else "caption is empty")
    if params.get("parse_mode"):
        raise _bad_request("this fake takes no parse_mode: the bots send plain text")
    explicit = params.get("entities" if field_name == "text" else "caption_entities")
    return str(text), (str(text), json.dumps(explicit))


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a bot's own webhook server in tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


__all__ = [
    "ALL_UPDATE_TYPES",
    "DEFAULT_TOKEN",
    "DEFAULT_UPDATE_TYPES",
    "NOT_MODIFIED",
    "PHOTO_INVALID_DIMENSIONS",
    "QUERY_TOO_OLD",
    "REGISTERED_SECRET",
    "Button",
    "Call",
    "ChatMessage",
    "Document",
    "FakeTelegram",
    "Photo",
    "UploadedFile",
    "WebhookDelivery",
    "WebhookInfo",
    "free_port",
]
