"""A fake of Discord's REST API and gateway on loopback, for driving the real discord.py client in tests.

Discord cannot be reached from the test machines, so the Discord bot is tested end to end against this
server instead: discord.py logs in over REST, connects to the gateway WebSocket, syncs its application
commands, and answers interactions that the test dispatches, exactly as it would against Discord. The fake
keeps what a user of the Discord app would see (the original response after its edits, the follow-ups,
channel messages and DMs), records every REST request, and can misbehave on purpose (429s with Discord's
headers, 5xx, delays, expired interaction tokens). It serves only the routes and gateway opcodes the bots
use: no RESUME, no member chunks, no guild or user lookups, no CDN.

Pointing discord.py at it (what the bot does with ``DISCORD_API_BASE_URL`` and ``DISCORD_GATEWAY_URL``)::

    discord.http.Route.BASE = fake.api_base_url                      # REST and interaction webhooks
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)

``Client`` and ``AutoShardedClient(shard_count=N)`` connect to ``DEFAULT_GATEWAY``; only
``AutoShardedClient`` without a shard count asks ``GET /gateway/bot``, which answers with the same URL.
:func:`discord_py_pointed_at` does both and restores them afterwards.

A test, in short::

    async with FakeDiscord(token=TOKEN) as fake:
        with discord_py_pointed_at(fake):
            task = asyncio.create_task(bot.start(TOKEN))
            await fake.wait_until_ready()
            ix = await fake.dispatch_slash_command("imagine", {"prompt": "a lighthouse --seed 42"})
            await fake.wait_for(lambda: ix.followups)
            assert ix.followups[0].attachments[0].data.startswith(b"\x89PNG")
            await bot.close()
            await task

What discord.py expects and this fake therefore does (learnt from discord.py 2.7):

- JSON answers carry exactly ``Content-Type: application/json`` (no charset), or discord.py reads them as
  text and fails on the first dict access.
- A 429 is retried only with a ``Via`` header and a JSON body (``retry_after`` from the body, not the
  headers); without ``Via`` it is taken for a Cloudflare ban and raised as ``HTTPException``.
- Interaction callbacks are sent with ``?with_response=1`` and must answer ``{"interaction", "resource"}``.
- ``INTERACTION_CREATE`` needs ``attachment_size_limit`` (read into ``Interaction.filesize_limit``).
- The gateway URL gets ``?v=10&encoding=json&compress=zlib-stream`` (``zstd-stream`` when a zstd module
  is importable); frames are zlib-stream compressed when asked, else text, which discord.py also reads.
- ``on_ready`` comes ``guild_ready_timeout`` (2 s by default) after the last GUILD_CREATE, and every
  IDENTIFY but the first waits 5 s in ``Client.before_identify_hook``: tests shorten both.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import mimetypes
import re
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from types import EllipsisType
from typing import Any, TypeVar
from urllib.parse import quote

from aiohttp import BodyPartReader, WSMsgType, hdrs, web

from tests.helpers.png import png_dimensions

__all__ = [
    "ADMINISTRATOR",
    "MANAGE_GUILD",
    "MEMBER_PERMISSIONS",
    "CallbackType",
    "DiscordAPIError",
    "FakeAttachment",
    "FakeChannel",
    "FakeDiscord",
    "FakeGuild",
    "FakeInteraction",
    "FakeMessage",
    "FakeUser",
    "GatewaySession",
    "InjectedFault",
    "InteractionType",
    "OptionType",
    "RecordedRequest",
    "UploadedFile",
    "discord_py_pointed_at",
    "pings",
]

T = TypeVar("T")
JSON = dict[str, Any]

DISCORD_EPOCH_MS = 1_420_070_400_000
INTERACTION_TOKEN_TTL = 15 * 60.0
INITIAL_RESPONSE_DEADLINE = 3.0
DEFAULT_ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024
MAX_CONTENT_LENGTH = 2000
MAX_EMBEDS = 10
MAX_FILES = 10

# Gateway intents the fake honours when it decides which events a session gets.
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12

# Message flags.
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7

_PERMISSION_BITS = (
    6,  # ADD_REACTIONS
    10,  # VIEW_CHANNEL
    11,  # SEND_MESSAGES
    14,  # EMBED_LINKS
    15,  # ATTACH_FILES
    16,  # READ_MESSAGE_HISTORY
    18,  # USE_EXTERNAL_EMOJIS
    26,  # CHANGE_NICKNAME
    31,  # USE_APPLICATION_COMMANDS
    35,  # CREATE_PUBLIC_THREADS
    38,  # SEND_MESSAGES_IN_THREADS
)
MEMBER_PERMISSIONS = sum(1 << bit for bit in _PERMISSION_BITS)
BOT_PERMISSIONS = MEMBER_PERMISSIONS | (1 << 13)  # + MANAGE_MESSAGES
ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5  # "Manage Server" in the Discord app

# Mentions in message content, as Discord parses them.
_USER_MENTION = re.compile(r"<@!?([0-9]+)>")
_ROLE_MENTION = re.compile(r"<@&([0-9]+)>")
_EVERYONE_MENTION = re.compile(r"@(?:everyone|here)\b")
# The routes whose body (for the callback: its ``data``) creates or edits a message.
_MESSAGE_WRITES = (
    ("POST", "/interactions/{interaction_id}/{token}/callback"),
    ("POST", "/webhooks/{application_id}/{token}"),
    ("PATCH", "/webhooks/{application_id}/{token}/messages/@original"),
    ("PATCH", "/webhooks/{application_id}/{token}/messages/{message_id}"),
    ("POST", "/channels/{channel_id}/messages"),
    ("PATCH", "/channels/{channel_id}/messages/{message_id}"),
)


class Op(IntEnum):
    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    PRESENCE_UPDATE = 3
    VOICE_STATE_UPDATE = 4
    RESUME = 6
    RECONNECT = 7
    REQUEST_GUILD_MEMBERS = 8
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11


class InteractionType(IntEnum):
    PING = 1
    APPLICATION_COMMAND = 2
    MESSAGE_COMPONENT = 3
    APPLICATION_COMMAND_AUTOCOMPLETE = 4
    MODAL_SUBMIT = 5


class CallbackType(IntEnum):
    PONG = 1
    CHANNEL_MESSAGE_WITH_SOURCE = 4
    DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE = 5
    DEFERRED_UPDATE_MESSAGE = 6
    UPDATE_MESSAGE = 7
    APPLICATION_COMMAND_AUTOCOMPLETE_RESULT = 8
    MODAL = 9


class OptionType(IntEnum):
    SUB_COMMAND = 1
    SUB_COMMAND_GROUP = 2
    STRING = 3
    INTEGER = 4
    BOOLEAN = 5
    USER = 6
    CHANNEL = 7
    ROLE = 8
    MENTIONABLE = 9
    NUMBER = 10
    ATTACHMENT = 11


_ALLOWED_CALLBACKS: dict[int, frozenset[int]] = {
    InteractionType.PING: frozenset({CallbackType.PONG}),
    InteractionType.APPLICATION_COMMAND: frozenset({4, 5, 9}),
    InteractionType.MESSAGE_COMPONENT: frozenset({4, 5, 6, 7, 9}),
    InteractionType.APPLICATION_COMMAND_AUTOCOMPLETE: frozenset({8}),
    InteractionType.MODAL_SUBMIT: frozenset({4, 5, 6, 7}),
}
# The callbacks that carry a message; the deferrals carry none.
_MESSAGE_CALLBACKS = frozenset({CallbackType.CHANNEL_MESSAGE_WITH_SOURCE, CallbackType.UPDATE_MESSAGE})


class DiscordAPIError(Exception):
    """An error answer in Discord's shape: ``{"message", "code"[, "errors"]}`` with an HTTP status."""

    def __init__(self, status: int, code: int, message: str, errors: JSON | None = None) -> None:
        super().__init__(f"{status} {message} (code {code})")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> JSON:
        body: JSON = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def _form_error(path: str, code: str, message: str) -> DiscordAPIError:
    errors: JSON = {"_errors": [{"code": code, "message": message}]}
    for part in reversed(path.split(".")):
        errors = {part: errors}
    return DiscordAPIError(400, 50035, "Invalid Form Body", errors)


UNAUTHORIZED = (401, 0, "401: Unauthorized")
UNKNOWN_CHANNEL = (404, 10003, "Unknown Channel")
UNKNOWN_MESSAGE = (404, 10008, "Unknown Message")
UNKNOWN_USER = (404, 10013, "Unknown User")
UNKNOWN_WEBHOOK = (404, 10015, "Unknown Webhook")
UNKNOWN_INTERACTION = (404, 10062, "Unknown interaction")
UNKNOWN_COMMAND = (404, 10063, "Unknown application command")
INVALID_WEBHOOK_TOKEN = (401, 50027, "Invalid Webhook Token")
ALREADY_ACKNOWLEDGED = (400, 40060, "Interaction has already been acknowledged.")
EMPTY_MESSAGE = (400, 50006, "Cannot send an empty message")
NOT_AUTHOR = (403, 50005, "Cannot edit a message authored by another user")
TOO_LARGE = (413, 40005, "Request entity too large")
INVALID_JSON = (400, 50109, "The request body contains invalid JSON.")


def _error(spec: tuple[int, int, str]) -> DiscordAPIError:
    return DiscordAPIError(*spec)


# --------------------------------------------------------------------------------------------------------
# Records and state a test looks at
# --------------------------------------------------------------------------------------------------------


@dataclass
class UploadedFile:
    """A file part of a multipart request, as it arrived (also usable as an attachment option value)."""

    filename: str
    data: bytes
    content_type: str = "application/octet-stream"
    field: str = "files[0]"


@dataclass
class RecordedRequest:
    """One REST request, recorded before it was answered (``status`` is 0 until then)."""

    method: str
    path: str  # below the API root, e.g. /webhooks/1/abc/messages/@original
    route: str  # the route template, e.g. /webhooks/{application_id}/{token}/messages/@original
    query: dict[str, str]
    json: Any  # the JSON body, or the payload_json part of a multipart body; None without one
    files: list[UploadedFile]
    time: float  # time.monotonic() when it arrived
    headers: dict[str, str]  # Authorization, Content-Type, User-Agent when present
    interaction_id: int | None = None
    status: int = 0
    response: Any = None

    @property
    def authorized(self) -> bool:
        return "Authorization" in self.headers

    @property
    def answered(self) -> bool:
        return self.status != 0

    def matches(self, method: str, path: str) -> bool:
        """Whether this is ``method`` (or ``*``) on ``path``, a pattern like ``/webhooks/{app}/{token}``."""
        return (method == "*" or method.upper() == self.method) and (
            path == self.route or _route_regex(path).fullmatch(self.path) is not None
        )

    @property
    def message_payload(self) -> JSON | None:
        """The message this request creates or edits (for a callback, its ``data``); None for the rest."""
        if not isinstance(self.json, dict) or (self.method, self.route) not in _MESSAGE_WRITES:
            return None
        if self.route.startswith("/interactions/"):
            if self.json.get("type") not in _MESSAGE_CALLBACKS:
                return None
            data = self.json.get("data")
            return data if isinstance(data, dict) else {}
        return self.json

    @property
    def allowed_mentions(self) -> JSON | None:
        """The message's ``allowed_mentions``; None when absent, and Discord then parses every mention."""
        payload = self.message_payload
        value = None if payload is None else payload.get("allowed_mentions")
        return value if isinstance(value, dict) else None

    def __repr__(self) -> str:
        return f"<RecordedRequest {self.method} {self.path} -> {self.status or 'pending'}>"


@dataclass
class FakeUser:
    id: int
    username: str
    global_name: str | None = None
    bot: bool = False
    discriminator: str = "0"

    def to_payload(self) -> JSON:
        payload: JSON = {
            "id": str(self.id),
            "username": self.username,
            "discriminator": self.discriminator,
            "global_name": self.global_name,
            "avatar": None,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
        }
        if self.bot:
            payload["bot"] = True
        return payload


@dataclass
class FakeChannel:
    id: int
    type: int  # 0 guild text, 1 DM
    name: str | None = None
    guild_id: int | None = None
    position: int = 0
    recipient_id: int | None = None
    topic: str | None = None
    last_message_id: int | None = None


@dataclass
class FakeGuild:
    id: int
    name: str
    owner_id: int
    joined_at: str
    channel_ids: list[int] = field(default_factory=list)
    member_ids: list[int] = field(default_factory=list)
    locale: str = "en-US"


@dataclass
class FakeAttachment:
    id: int
    filename: str
    data: bytes
    content_type: str
    url: str
    description: str | None = None
    ephemeral: bool = False

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def dimensions(self) -> tuple[int, int] | None:
        return png_dimensions(self.data)

    def to_payload(self) -> JSON:
        payload: JSON = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
        }
        if (dimensions := self.dimensions) is not None:
            payload["width"], payload["height"] = dimensions
        if self.description is not None:
            payload["description"] = self.description
        if self.ephemeral:
            payload["ephemeral"] = True
        return payload


@dataclass
class FakeMessage:
    """A message as Discord stores it; ``revisions`` holds every create/edit payload applied, in order."""

    id: int
    channel_id: int
    guild_id: int | None
    author: FakeUser
    timestamp: str
    content: str = ""
    embeds: list[JSON] = field(default_factory=list)
    components: list[JSON] = field(default_factory=list)
    attachments: list[FakeAttachment] = field(default_factory=list)
    flags: int = 0
    type: int = 0
    edited_timestamp: str | None = None
    webhook_id: int | None = None
    application_id: int | None = None
    interaction_metadata: JSON | None = None
    message_reference: JSON | None = None
    deleted: bool = False
    revisions: list[JSON] = field(default_factory=list)
    pings: set[str] = field(default_factory=set)  # every ``pings(...)`` of its creates and edits

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & FLAG_LOADING)

    def custom_ids(self) -> list[str]:
        """Every component ``custom_id`` on the message, depth first."""
        found: list[str] = []

        def walk(items: Sequence[Any]) -> None:
            for item in items:
                if isinstance(item, dict):
                    if "custom_id" in item:
                        found.append(str(item["custom_id"]))
                    walk(item.get("components") or [])
                    if isinstance(item.get("accessory"), dict):
                        walk([item["accessory"]])

        walk(self.components)
        return found

    def component(self, custom_id: str) -> JSON | None:
        def walk(items: Sequence[Any]) -> JSON | None:
            for item in items:
                if not isinstance(item, dict):
                    continue
                if item.get("custom_id") == custom_id:
                    return item
                children = list(item.get("components") or [])
                if isinstance(item.get("accessory"), dict):
                    children.append(item["accessory"])
                if (hit := walk(children)) is not None:
                    return hit
            return None

        return walk(self.components)

    def to_payload(self, *, include_guild_id: bool = False) -> JSON:
        payload: JSON = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "author": self.author.to_payload(),
            "content": self.content,
            "timestamp": self.timestamp,
            "edited_timestamp": self.edited_timestamp,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [attachment.to_payload() for attachment in self.attachments],
            "embeds": list(self.embeds),
            "components": list(self.components),
            "pinned": False,
            "type": self.type,
            "flags": self.flags,
        }
        if include_guild_id and self.guild_id is not None:
            payload["guild_id"] = str(self.guild_id)
        if self.webhook_id is not None:
            payload["webhook_id"] = str(self.webhook_id)
        if self.application_id is not None:
            payload["application_id"] = str(self.application_id)
        if self.interaction_metadata is not None:
            payload["interaction_metadata"] = self.interaction_metadata
        if self.message_reference is not None:
            payload["message_reference"] = self.message_reference
        return payload


@dataclass
class FakeInteraction:
    """An interaction the test dispatched, and everything the bot did with it as the user sees it."""

    id: int
    token: str
    type: int
    payload: JSON
    user_id: int
    guild_id: int | None
    channel_id: int
    created_at: float  # on the fake's clock (FakeDiscord.now())
    deliveries: int = 0
    callbacks: list[JSON] = field(default_factory=list)  # accepted callback bodies ({"type", "data"})
    response_type: int | None = None
    original: FakeMessage | None = None
    followups: list[FakeMessage] = field(default_factory=list)
    source_message: FakeMessage | None = None  # the message whose component was used
    token_expired: bool = False

    @property
    def name(self) -> str:
        data = self.payload.get("data") or {}
        return str(data.get("name") or data.get("custom_id") or "")

    @property
    def acknowledged(self) -> bool:
        return self.response_type is not None

    @property
    def deferred(self) -> bool:
        return self.response_type in (
            CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE,
            CallbackType.DEFERRED_UPDATE_MESSAGE,
        )

    @property
    def ephemeral(self) -> bool:
        return self.original is not None and self.original.ephemeral

    @property
    def messages(self) -> list[FakeMessage]:
        """The original response and the follow-ups (each once), deleted ones left out."""
        seen: list[FakeMessage] = []
        for message in [self.original, *self.followups]:
            if message is not None and not message.deleted and all(message is not m for m in seen):
                seen.append(message)
        return seen

    @property
    def attachments(self) -> list[FakeAttachment]:
        return [attachment for message in self.messages for attachment in message.attachments]


@dataclass
class InjectedFault:
    """A planned misbehaviour for the next ``remaining`` requests matching ``method`` and ``path``."""

    method: str
    path: str
    remaining: int
    status: int | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    retry_after: float | None = None  # for 429s: X-RateLimit-Reset is computed when the fault hits
    hits: list[RecordedRequest] = field(default_factory=list)

    def applies_to(self, record: RecordedRequest) -> bool:
        return self.remaining > 0 and record.matches(self.method, self.path)


@dataclass
class GatewaySession:
    """One IDENTIFYed gateway session (one per shard)."""

    session_id: str
    shard: tuple[int, int]
    intents: int
    identify: JSON
    sequence: int = 0
    connection: _GatewayConnection | None = None
    ready: bool = False


class _GatewayConnection:
    """One WebSocket; frames are zlib-stream compressed when the client asked for it."""

    def __init__(self, ws: web.WebSocketResponse, compress: str | None) -> None:
        self.ws = ws
        self.compress = compress
        self.session: GatewaySession | None = None
        self.heartbeats = 0
        self.received: list[JSON] = []
        self._compressor = zlib.compressobj() if compress == "zlib-stream" else None
        self._lock = asyncio.Lock()

    async def send(self, payload: JSON) -> None:
        text = json.dumps(payload, separators=(",", ":"))
        async with self._lock:
            if self.ws.closed:
                return
            if self._compressor is not None:
                data = self._compressor.compress(text.encode()) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
                await self.ws.send_bytes(data)
            else:
                await self.ws.send_str(text)


_RECORD = web.RequestKey("record", RecordedRequest)


def pings(content: str, allowed_mentions: JSON | None) -> set[str]:
    """Whom Discord notifies for ``content``: ``everyone`` (also @here), ``user:<id>``, ``role:<id>``.

    Without ``allowed_mentions`` Discord parses every mention in the content, which is why a bot that
    repeats what users typed must always send one.
    """
    rules: JSON = {"parse": ["everyone", "users", "roles"]} if allowed_mentions is None else allowed_mentions
    parse = set(rules.get("parse") or [])
    found: set[str] = set()
    if "everyone" in parse and _EVERYONE_MENTION.search(content):
        found.add("everyone")
    for kind, pattern in (("users", _USER_MENTION), ("roles", _ROLE_MENTION)):
        listed = {str(entry) for entry in rules.get(kind) or []}
        for mentioned in pattern.findall(content):
            if kind in parse or mentioned in listed:
                found.add(f"{kind[:-1]}:{mentioned}")
    return found


def _check_allowed_mentions(allowed_mentions: Any) -> None:
    """Refuse what Discord refuses: a type both parsed and listed, an unknown parse type."""
    if allowed_mentions is None:
        return
    if not isinstance(allowed_mentions, dict):
        raise _form_error(
            "allowed_mentions", "MODEL_TYPE_CONVERT", "Only dictionaries may be used in a ModelType"
        )
    parse = allowed_mentions.get("parse") or []
    for position, kind in enumerate(parse):
        if kind not in ("everyone", "users", "roles"):
            raise _form_error(
                f"allowed_mentions.parse.{position}",
                "BASE_TYPE_CHOICES",
                "Value must be one of {'everyone', 'users', 'roles'}.",
            )
    for kind in ("users", "roles"):
        if kind in parse and allowed_mentions.get(kind):
            raise _form_error(
                "allowed_mentions",
                "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
                f'parse:["{kind}"] and {kind}: [ids...] are mutually exclusive.',
            )


def _permissions_string(value: Any) -> str | None:
    """Discord takes a permission bit set as a number or a string and always answers with a string."""
    return None if value is None else str(int(value))


def _check_visible(command: JSON, permissions: int) -> None:
    """A guild member sees only the commands whose ``default_member_permissions`` they hold."""
    required = command.get("default_member_permissions")
    if required is None or permissions & ADMINISTRATOR:
        return
    needed = int(required)
    if needed == 0 or permissions & needed != needed:
        raise PermissionError(
            f"/{command['name']} needs permissions {needed}; Discord hides it from members with {permissions}"
        )


def _check_length(option: JSON | None, name: str, value: Any) -> None:
    """Discord's app lets nobody send a string option outside its ``min_length``/``max_length``."""
    if option is None or option.get("type") != OptionType.STRING or not isinstance(value, str):
        return
    low, high = option.get("min_length"), option.get("max_length")
    if (low is not None and len(value) < int(low)) or (high is not None and len(value) > int(high)):
        raise ValueError(f"option {name!r} is {len(value)} characters; Discord allows {low}..{high}")


def _route_regex(pattern: str) -> re.Pattern[str]:
    """``{name}`` and ``*`` match one path segment, ``**`` any number; everything else is literal."""
    parts = re.split(r"(\{[^}/]*\}|\*\*|\*)", pattern)
    regex = "".join(
        ".*" if part == "**" else "[^/]+" if part == "*" or part.startswith("{") else re.escape(part)
        for part in parts
    )
    return re.compile(regex)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds")


# --------------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------------


class FakeDiscord:
    """A fake Discord on 127.0.0.1, random port: REST under ``api_base_url``, gateway at ``gateway_url``.

    ``token``: when set, REST calls must carry ``Authorization: Bot <token>`` and IDENTIFY must carry it
    (401 / close code 4004 otherwise); when None any bot token is accepted.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        api_version: int = 10,
        clock: Callable[[], float] = time.time,
        recommended_shards: int = 1,
        heartbeat_interval_ms: int = 41_250,
        attachment_size_limit: int = DEFAULT_ATTACHMENT_SIZE_LIMIT,
        interaction_token_ttl: float = INTERACTION_TOKEN_TTL,
        initial_response_deadline: float | None = INITIAL_RESPONSE_DEADLINE,
        echo_message_events: bool = True,
        ratelimit_headers: bool = True,
    ) -> None:
        self.token = token
        self.api_version = api_version
        self.recommended_shards = recommended_shards
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.attachment_size_limit = attachment_size_limit
        self.interaction_token_ttl = interaction_token_ttl
        self.initial_response_deadline = initial_response_deadline
        self.echo_message_events = echo_message_events
        self.ratelimit_headers = ratelimit_headers

        self._clock = clock
        self._time_offset = 0.0
        self._last_snowflake = 0
        self._increment = itertools.count()

        self.requests: list[RecordedRequest] = []
        self.unknown_requests: list[RecordedRequest] = []
        self.faults: list[InjectedFault] = []
        self.interactions: dict[int, FakeInteraction] = {}
        self.messages: dict[int, FakeMessage] = {}
        self.users: dict[int, FakeUser] = {}
        self.channels: dict[int, FakeChannel] = {}
        self.guilds: dict[int, FakeGuild] = {}
        self.identifies: list[JSON] = []
        self.presence_updates: list[JSON] = []
        self.sessions: dict[str, GatewaySession] = {}
        self.connections: list[_GatewayConnection] = []
        self._commands: dict[int | None, dict[tuple[int, str], JSON]] = {}
        self._interactions_by_token: dict[str, FakeInteraction] = {}
        self._attachments: dict[int, FakeAttachment] = {}
        self._changed: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._base_url = ""

        bot = FakeUser(self.snowflake(), "Imagine", bot=True, discriminator="0001")
        self.bot_user = self.users.setdefault(bot.id, bot)
        self.application_id = bot.id  # as for every application created since 2020
        self.application_flags = 1 << 23  # APPLICATION_COMMAND_BADGE
        user = self.add_user("alice", global_name="Alice")
        self.default_user_id = user.id
        guild = self.add_guild("Imagine Test Guild", owner_id=user.id)
        self.guild_id = guild.id
        self.channel_id = guild.channel_ids[0]

    # ---- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(middlewares=[self._api_middleware], client_max_size=64 * 1024 * 1024)
        self._add_routes(app)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self._base_url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        """Stop the server; close the discord.py client first, or it will try to reconnect."""
        for connection in list(self.connections):
            with contextlib.suppress(Exception):
                await connection.ws.close(code=1001, message=b"server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        if not self._base_url:
            raise RuntimeError("FakeDiscord is not started; await fake.start() first")
        return self._base_url

    @property
    def api_base_url(self) -> str:
        """The REST root, for ``DISCORD_API_BASE_URL`` / ``discord.http.Route.BASE``."""
        return f"{self.base_url}/api/v{self.api_version}"

    @property
    def gateway_url(self) -> str:
        """The gateway WebSocket, for ``DISCORD_GATEWAY_URL`` / ``DiscordWebSocket.DEFAULT_GATEWAY``."""
        return f"{self.base_url.replace('http://', 'ws://', 1)}/gateway"

    @property
    def cdn_base_url(self) -> str:
        return self.base_url

    # ---- time and ids ------------------------------------------------------------------------------

    def now(self) -> float:
        """The fake's wall clock (Unix seconds): the real clock plus whatever :meth:`advance_time` added."""
        return self._clock() + self._time_offset

    def advance_time(self, seconds: float) -> None:
        """Move the fake's clock on, e.g. 16 minutes so that every open interaction token has expired."""
        self._time_offset += seconds
        self._notify()

    def snowflake(self) -> int:
        """A fresh id in Discord's format: milliseconds since 2015 << 22 | worker | process | increment."""
        milliseconds = max(int(self.now() * 1000) - DISCORD_EPOCH_MS, 0)
        candidate = (milliseconds << 22) | (1 << 17) | (next(self._increment) & 0xFFF)
        self._last_snowflake = max(candidate, self._last_snowflake + 1)
        return self._last_snowflake

    def timestamp(self) -> str:
        return _iso(self.now())

    # ---- world set-up ------------------------------------------------------------------------------

    def add_user(
        self, username: str, *, global_name: str | None = None, user_id: int | None = None
    ) -> FakeUser:
        user = FakeUser(user_id or self.snowflake(), username, global_name=global_name)
        self.users[user.id] = user
        for guild in self.guilds.values():
            if user.id not in guild.member_ids:
                guild.member_ids.append(user.id)
        return user

    def add_guild(
        self,
        name: str,
        *,
        owner_id: int | None = None,
        guild_id: int | None = None,
        channel_name: str = "general",
    ) -> FakeGuild:
        """A guild with a text channel; every known user and the bot are members (add before connecting)."""
        guild = FakeGuild(
            guild_id or self.snowflake(), name, owner_id or self.default_user_id, joined_at=self.timestamp()
        )
        guild.member_ids = list(self.users)
        self.guilds[guild.id] = guild
        self.add_channel(channel_name, guild_id=guild.id)
        return guild

    def add_channel(self, name: str, *, guild_id: int | None = None) -> FakeChannel:
        guild = self.guilds[guild_id or self.guild_id]
        channel = FakeChannel(self.snowflake(), 0, name, guild.id, position=len(guild.channel_ids))
        self.channels[channel.id] = channel
        guild.channel_ids.append(channel.id)
        return channel

    def dm_channel(self, user_id: int) -> FakeChannel:
        """The DM channel of the bot and ``user_id``, opened on first use (``POST /users/@me/channels``)."""
        for channel in self.channels.values():
            if channel.type == 1 and channel.recipient_id == user_id:
                return channel
        self._user(user_id)
        channel = FakeChannel(self.snowflake(), 1, None, None, recipient_id=user_id)
        self.channels[channel.id] = channel
        return channel

    def add_bot_message(
        self,
        content: str = "",
        *,
        components: Sequence[JSON] | None = None,
        embeds: Sequence[JSON] | None = None,
        channel_id: int | None = None,
    ) -> FakeMessage:
        """A message the bot posted earlier (before a restart, say), e.g. one carrying persistent buttons."""
        channel = self.channels[channel_id or self.channel_id]
        message = FakeMessage(self.snowflake(), channel.id, channel.guild_id, self.bot_user, self.timestamp())
        message.content = content
        message.components = list(components or [])
        message.embeds = list(embeds or [])
        return self._store_message(message)

    def _user(self, user_id: int) -> FakeUser:
        if user_id not in self.users:
            self.add_user(f"user{user_id}", user_id=user_id)
        return self.users[user_id]

    # ---- what a user sees --------------------------------------------------------------------------

    def channel_messages(
        self, channel_id: int | None = None, *, include_ephemeral: bool = False
    ) -> list[FakeMessage]:
        """Messages visible in a channel (the test channel by default), oldest first, without deleted ones."""
        channel_id = channel_id or self.channel_id
        return [
            message
            for message in self.messages.values()
            if message.channel_id == channel_id
            and not message.deleted
            and (include_ephemeral or not message.ephemeral)
        ]

    def dm_messages(self, user_id: int | None = None) -> list[FakeMessage]:
        """Messages in the DM between the bot and a user (the default user by default)."""
        user_id = user_id or self.default_user_id
        for channel in self.channels.values():
            if channel.type == 1 and channel.recipient_id == user_id:
                return self.channel_messages(channel.id)
        return []

    def commands(self, guild_id: int | None = None) -> dict[str, JSON]:
        """The application commands synced globally (or to ``guild_id``), by name."""
        return {name: command for (_, name), command in self._commands.get(guild_id, {}).items()}

    def requests_for(self, interaction: FakeInteraction) -> list[RecordedRequest]:
        """REST requests made with this interaction's id or token, in arrival order."""
        return [request for request in self.requests if request.interaction_id == interaction.id]

    def message_writes(self) -> list[RecordedRequest]:
        """Every request that created or edited a message (or tried to), in order."""
        return [record for record in self.requests if record.message_payload is not None]

    def requests_matching(self, method: str, path: str) -> list[RecordedRequest]:
        return [request for request in self.requests if request.matches(method, path)]

    # ---- waiting -----------------------------------------------------------------------------------

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
        self._changed = None

    async def wait_for(self, condition: Callable[[], T | None], timeout: float = 5.0) -> T:  # noqa: ASYNC109
        """Wait until ``condition()`` is truthy (re-checked whenever the fake's state changes); return it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = condition()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                recent = ", ".join(repr(request) for request in self.requests[-8:]) or "none"
                raise TimeoutError(f"condition not met within {timeout}s; last requests: {recent}")
            if self._changed is None:
                self._changed = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.25))

    async def wait_for_request(
        self,
        predicate: Callable[[RecordedRequest], bool],
        timeout: float = 5.0,  # noqa: ASYNC109
        *,
        answered: bool = True,
        after: int = 0,
    ) -> RecordedRequest:
        """The first request from index ``after`` matching ``predicate``, once answered (or not, if asked)."""

        def find() -> RecordedRequest | None:
            for request in self.requests[after:]:
                if (request.answered or not answered) and predicate(request):
                    return request
            return None

        return await self.wait_for(find, timeout)

    async def wait_for_response(self, interaction: FakeInteraction, timeout: float = 5.0) -> int:  # noqa: ASYNC109
        """Wait until the bot acknowledged the interaction; return the callback type."""
        await self.wait_for(lambda: interaction.acknowledged, timeout)
        assert interaction.response_type is not None
        return interaction.response_type

    async def wait_until_ready(
        self,
        shard_count: int | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> list[GatewaySession]:
        """Wait until a client IDENTIFYed and got READY and its GUILD_CREATEs on every shard it announced."""

        def ready() -> list[GatewaySession]:
            sessions = [s for s in self.sessions.values() if s.ready and s.connection is not None]
            if not sessions:
                return []
            expected = shard_count or sessions[-1].shard[1]
            by_shard = {s.shard[0]: s for s in sessions if s.shard[1] == expected}
            return [by_shard[i] for i in range(expected)] if len(by_shard) == expected else []

        return await self.wait_for(ready, timeout)

    # ---- faults ------------------------------------------------------------------------------------

    def inject_rate_limit(
        self,
        method: str,
        path: str,
        *,
        count: int = 1,
        retry_after: float = 0.2,
        is_global: bool = False,
        scope: str = "user",
        bucket: str | None = None,
        cloudflare: bool = False,
    ) -> InjectedFault:
        """Answer the next ``count`` matching requests with 429 as Discord does (body and ``X-RateLimit-*``).

        ``path`` is a pattern below the API root: ``{name}`` or ``*`` stand for one segment, ``**`` for any.
        ``cloudflare=True`` answers like Cloudflare's ban page instead (HTML, no ``Via``), which discord.py
        does not retry.
        """
        if cloudflare:
            fault = InjectedFault(
                method.upper(),
                path,
                count,
                status=429,
                body="<html><body>error code: 1015</body></html>",
                headers={"Content-Type": "text/html", "Retry-After": str(math.ceil(retry_after))},
            )
        else:
            headers = {
                "Retry-After": str(math.ceil(retry_after)),
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset-After": f"{retry_after:.3f}",
                "X-RateLimit-Bucket": bucket or secrets.token_hex(16),
                "X-RateLimit-Scope": "global" if is_global else scope,
                "Via": "1.1 google",
            }
            if is_global:
                headers["X-RateLimit-Global"] = "true"
            body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": is_global}
            if is_global:
                body["code"] = 0
            fault = InjectedFault(
                method.upper(), path, count, status=429, body=body, headers=headers, retry_after=retry_after
            )
        self.faults.append(fault)
        return fault

    def inject_error(
        self,
        method: str,
        path: str,
        *,
        status: int = 500,
        count: int = 1,
        code: int = 0,
        message: str | None = None,
        delay: float = 0.0,
    ) -> InjectedFault:
        """Answer the next ``count`` matching requests with ``status`` (after ``delay`` seconds)."""
        body = {"message": message or f"{status}: Internal Server Error", "code": code}
        fault = InjectedFault(method.upper(), path, count, status=status, body=body, delay=delay)
        self.faults.append(fault)
        return fault

    def expire_interaction(self, interaction: FakeInteraction) -> None:
        """Make the token dead as after 15 minutes: webhooks answer 401 ``Invalid Webhook Token`` (50027)."""
        interaction.token_expired = True
        self._notify()

    def _token_alive(self, interaction: FakeInteraction) -> bool:
        return (
            not interaction.token_expired and self.now() - interaction.created_at < self.interaction_token_ttl
        )

    # ---- gateway driver ----------------------------------------------------------------------------

    def _session_for(self, guild_id: int | None) -> GatewaySession:
        live = [s for s in self.sessions.values() if s.ready and s.connection is not None]
        if not live:
            raise RuntimeError(
                "no client is connected to the fake gateway; await fake.wait_until_ready() first"
            )
        shard_count = live[-1].shard[1]
        shard_id = (guild_id >> 22) % shard_count if guild_id else 0
        for session in reversed(live):
            if session.shard == (shard_id, shard_count):
                return session
        raise RuntimeError(f"no gateway session for shard {shard_id} of {shard_count}")

    async def _dispatch(self, session: GatewaySession, event: str, data: JSON) -> None:
        session.sequence += 1
        payload = {"op": Op.DISPATCH, "t": event, "s": session.sequence, "d": data}
        if session.connection is not None:
            await session.connection.send(payload)

    # ---- interactions ------------------------------------------------------------------------------

    def _member_payload(self, user_id: int, guild: FakeGuild, *, with_user: bool = True) -> JSON:
        payload: JSON = {
            "roles": [],
            "joined_at": guild.joined_at,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "nick": None,
            "avatar": None,
            "banner": None,
            "premium_since": None,
            "communication_disabled_until": None,
        }
        if with_user:
            payload["user"] = self._user(user_id).to_payload()
        return payload

    def _channel_payload(self, channel: FakeChannel, *, permissions: int | None = None) -> JSON:
        if channel.type == 1:
            recipient = self._user(channel.recipient_id or self.default_user_id)
            payload: JSON = {
                "id": str(channel.id),
                "type": 1,
                "last_message_id": str(channel.last_message_id) if channel.last_message_id else None,
                "recipients": [recipient.to_payload()],
                "flags": 0,
            }
        else:
            payload = {
                "id": str(channel.id),
                "type": channel.type,
                "guild_id": str(channel.guild_id),
                "name": channel.name,
                "position": channel.position,
                "permission_overwrites": [],
                "parent_id": None,
                "topic": channel.topic,
                "nsfw": False,
                "rate_limit_per_user": 0,
                "last_message_id": str(channel.last_message_id) if channel.last_message_id else None,
                "flags": 0,
            }
        if permissions is not None:
            payload["permissions"] = str(permissions)
        return payload

    def _interaction_envelope(
        self,
        interaction_type: int,
        data: JSON,
        *,
        user_id: int | None,
        guild_id: int | EllipsisType | None,
        channel_id: int | None,
        permissions: int,
        app_permissions: int,
        attachment_size_limit: int | None,
        locale: str,
        message: FakeMessage | None = None,
    ) -> FakeInteraction:
        user = self._user(user_id or self.default_user_id)
        if guild_id is ...:
            guild_id = self.guild_id
        if guild_id is None:
            channel = self.channels[channel_id] if channel_id else self.dm_channel(user.id)
        else:
            channel = self.channels[channel_id or self.guilds[guild_id].channel_ids[0]]
        interaction_id = self.snowflake()
        token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(96)
        payload: JSON = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": interaction_type,
            "data": data,
            "channel_id": str(channel.id),
            "channel": self._channel_payload(channel, permissions=permissions),
            "token": token,
            "version": 1,
            "app_permissions": str(app_permissions),
            "locale": locale,
            "entitlements": [],
            "entitlement_sku_ids": [],
            "attachment_size_limit": attachment_size_limit or self.attachment_size_limit,
        }
        if guild_id is not None:
            guild = self.guilds[guild_id]
            if user.id not in guild.member_ids:
                guild.member_ids.append(user.id)
            member = self._member_payload(user.id, guild)
            member["permissions"] = str(permissions)
            payload |= {
                "guild_id": str(guild_id),
                "guild": {"id": str(guild_id), "locale": guild.locale, "features": []},
                "guild_locale": guild.locale,
                "member": member,
                "authorizing_integration_owners": {"0": str(guild_id)},
                "context": 0,
            }
        else:
            payload |= {
                "user": user.to_payload(),
                "authorizing_integration_owners": {"0": "0"},
                "context": 1,
            }
        if message is not None:
            payload["message"] = message.to_payload()
        interaction = FakeInteraction(
            interaction_id,
            token,
            interaction_type,
            payload,
            user.id,
            guild_id,
            channel.id,
            created_at=self.now(),
            source_message=message,
        )
        self.interactions[interaction_id] = interaction
        self._interactions_by_token[token] = interaction
        return interaction

    async def _deliver(self, interaction: FakeInteraction) -> FakeInteraction:
        session = self._session_for(interaction.guild_id)
        interaction.deliveries += 1
        await self._dispatch(session, "INTERACTION_CREATE", interaction.payload)
        return interaction

    def _command_options(
        self,
        name: str,
        options: Mapping[str, Any] | Sequence[JSON] | None,
        subcommand: str | None,
        guild_id: int | None,
    ) -> tuple[JSON | None, list[JSON], JSON]:
        """The synced command (if any), the typed option tree, and ``resolved`` data for it."""
        command = None
        if guild_id is not None:
            command = self._commands.get(guild_id, {}).get((1, name))
        command = command or self._commands.get(None, {}).get((1, name))
        schema: list[JSON] = list(command.get("options") or []) if command else []

        path = subcommand.split() if subcommand else []
        path_types: list[int] = []
        for depth, part in enumerate(path):
            declared = next((o for o in schema if o.get("name") == part and o.get("type") in (1, 2)), None)
            if declared is not None:
                path_types.append(int(declared["type"]))
                schema = list(declared.get("options") or [])
            else:
                path_types.append(
                    OptionType.SUB_COMMAND_GROUP if depth < len(path) - 1 else OptionType.SUB_COMMAND
                )
                schema = []

        resolved: JSON = {}
        leaf: list[JSON]
        if options is None:
            leaf = []
        elif isinstance(options, Mapping):
            declared = {o.get("name"): o for o in schema}
            leaf = []
            for key, value in options.items():
                _check_length(declared.get(key), key, value)
                option_type = (declared.get(key) or {}).get("type") or self._infer_option_type(value)
                option: JSON = {
                    "name": key,
                    "type": int(option_type),
                    "value": self._option_value(int(option_type), value, resolved, guild_id),
                }
                leaf.append(option)
        else:
            leaf = [dict(option) for option in options]

        for part, part_type in reversed(list(zip(path, path_types, strict=True))):
            leaf = [{"name": part, "type": part_type, "options": leaf}]
        return command, leaf, resolved

    @staticmethod
    def _infer_option_type(value: Any) -> int:
        if isinstance(value, UploadedFile):
            return OptionType.ATTACHMENT
        if isinstance(value, bool):
            return OptionType.BOOLEAN
        if isinstance(value, int):
            return OptionType.INTEGER
        if isinstance(value, float):
            return OptionType.NUMBER
        return OptionType.STRING

    def _option_value(self, option_type: int, value: Any, resolved: JSON, guild_id: int | None) -> Any:
        if option_type in (OptionType.USER, OptionType.MENTIONABLE):
            user = self._user(int(value))
            resolved.setdefault("users", {})[str(user.id)] = user.to_payload()
            if guild_id is not None:
                member = self._member_payload(user.id, self.guilds[guild_id], with_user=False)
                member["permissions"] = str(MEMBER_PERMISSIONS)
                resolved.setdefault("members", {})[str(user.id)] = member
            return str(user.id)
        if option_type == OptionType.CHANNEL:
            channel = self.channels[int(value)]
            resolved.setdefault("channels", {})[str(channel.id)] = self._channel_payload(
                channel, permissions=MEMBER_PERMISSIONS
            )
            return str(channel.id)
        if option_type == OptionType.ROLE:
            resolved.setdefault("roles", {})[str(int(value))] = self._role_payload(int(value))
            return str(int(value))
        if option_type == OptionType.ATTACHMENT:
            if not isinstance(value, UploadedFile):
                raise TypeError("an attachment option takes an UploadedFile")
            attachment = self._store_attachment(self.channel_id, value, ephemeral=True)
            resolved.setdefault("attachments", {})[str(attachment.id)] = attachment.to_payload()
            return str(attachment.id)
        return value

    @staticmethod
    def _role_payload(role_id: int, permissions: int = MEMBER_PERMISSIONS) -> JSON:
        return {
            "id": str(role_id),
            "name": "@everyone",
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": 0,
            "permissions": str(permissions),
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }

    async def dispatch_slash_command(
        self,
        name: str,
        options: Mapping[str, Any] | Sequence[JSON] | None = None,
        *,
        subcommand: str | None = None,
        user_id: int | None = None,
        guild_id: int | EllipsisType | None = ...,
        channel_id: int | None = None,
        locale: str = "en-US",
        permissions: int = MEMBER_PERMISSIONS,
        app_permissions: int = BOT_PERMISSIONS,
        attachment_size_limit: int | None = None,
    ) -> FakeInteraction:
        """Send an APPLICATION_COMMAND interaction as if ``user_id`` ran ``/name subcommand options``.

        ``options`` maps option names to values; the types come from the synced command when there is one
        (so ``7`` for a NUMBER option arrives as a number), else from the value (str 3, int 4, bool 5,
        float 10, :class:`UploadedFile` 11). USER / CHANNEL / ROLE values are ids and get ``resolved``
        data. A list of raw option dicts is sent as it is. ``subcommand="grant"`` or ``"quota set"`` nests
        the options under a subcommand (group). ``guild_id=None`` sends it from the user's DM; the default
        is the test guild.
        """
        gid = self.guild_id if guild_id is ... else guild_id
        command, tree, resolved = self._command_options(name, options, subcommand, gid)
        if command is not None and gid is not None:
            _check_visible(command, permissions)
        data: JSON = {
            "id": command["id"] if command else str(self.snowflake()),
            "name": name,
            "type": 1,
            "options": tree,
        }
        if resolved:
            data["resolved"] = resolved
        if command and "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        interaction = self._interaction_envelope(
            InteractionType.APPLICATION_COMMAND,
            data,
            user_id=user_id,
            guild_id=gid,
            channel_id=channel_id,
            permissions=permissions,
            app_permissions=app_permissions,
            attachment_size_limit=attachment_size_limit,
            locale=locale,
        )
        return await self._deliver(interaction)

    async def dispatch_component(
        self,
        custom_id: str,
        message_id: int,
        *,
        user_id: int | None = None,
        component_type: int | None = None,
        values: Sequence[str] | None = None,
        locale: str = "en-US",
        permissions: int = MEMBER_PERMISSIONS,
    ) -> FakeInteraction:
        """Press the button (or pick ``values`` in the select) ``custom_id`` on a message the bot sent."""
        message = self.messages.get(message_id)
        if message is None or message.deleted:
            raise KeyError(f"no message {message_id} in the fake (it was never sent, or was deleted)")
        component = message.component(custom_id)
        data: JSON = {
            "custom_id": custom_id,
            "component_type": component_type or (component or {}).get("type", 2),
        }
        if values is not None:
            data["values"] = list(values)
        interaction = self._interaction_envelope(
            InteractionType.MESSAGE_COMPONENT,
            data,
            user_id=user_id,
            guild_id=message.guild_id,
            channel_id=message.channel_id,
            permissions=permissions,
            app_permissions=BOT_PERMISSIONS,
            attachment_size_limit=None,
            locale=locale,
            message=message,
        )
        return await self._deliver(interaction)

    async def redispatch(self, interaction: FakeInteraction) -> FakeInteraction:
        """Deliver the very same INTERACTION_CREATE payload (same id and token) again."""
        return await self._deliver(interaction)

    # ---- messages ----------------------------------------------------------------------------------

    def _store_message(self, message: FakeMessage) -> FakeMessage:
        self.messages[message.id] = message
        channel = self.channels.get(message.channel_id)
        if channel is not None:
            channel.last_message_id = message.id
        return message

    def _store_attachment(
        self,
        channel_id: int,
        upload: UploadedFile,
        *,
        description: str | None = None,
        ephemeral: bool = False,
    ) -> FakeAttachment:
        attachment_id = self.snowflake()
        content_type = upload.content_type
        if content_type in ("", "application/octet-stream"):
            content_type = mimetypes.guess_type(upload.filename)[0] or "application/octet-stream"
        url = f"{self.cdn_base_url}/attachments/{channel_id}/{attachment_id}/{quote(upload.filename)}"
        attachment = FakeAttachment(
            attachment_id, upload.filename, upload.data, content_type, url, description, ephemeral
        )
        self._attachments[attachment_id] = attachment
        return attachment

    def _apply(
        self,
        message: FakeMessage,
        data: JSON,
        files: Sequence[UploadedFile],
        *,
        creating: bool,
        size_limit: int,
    ) -> None:
        """Apply a create/edit payload the way Discord does (v10: ``attachments`` lists what stays)."""
        if len(files) > MAX_FILES:
            raise _form_error("files", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_FILES} or fewer in length.")
        for upload in files:
            if len(upload.data) > size_limit:
                raise _error(TOO_LARGE)
        content = data.get("content")
        if content is not None and len(str(content)) > MAX_CONTENT_LENGTH:
            raise _form_error(
                "content", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CONTENT_LENGTH} or fewer in length."
            )
        if len(data.get("embeds") or []) > MAX_EMBEDS:
            raise _form_error("embeds", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_EMBEDS} or fewer in length.")
        _check_allowed_mentions(data.get("allowed_mentions"))

        if "content" in data:
            message.content = "" if content is None else str(content)
        if "embeds" in data:
            message.embeds = list(data["embeds"] or [])
        if "components" in data:
            message.components = list(data["components"] or [])
        if data.get("flags") is not None:
            # Ephemerality is fixed when a message is created (by the caller); loading is Discord's own.
            fixed = FLAG_EPHEMERAL | FLAG_LOADING
            message.flags = (message.flags & fixed) | (int(data["flags"]) & ~fixed)

        new_files: dict[int, UploadedFile] = {}
        for position, upload in enumerate(files):
            match = re.fullmatch(r"files\[(\d+)\]", upload.field)
            new_files[int(match.group(1)) if match else position] = upload
        if data.get("attachments") is not None:
            kept_attachments: list[FakeAttachment] = []
            for entry in data["attachments"]:
                entry_id = int(entry["id"])
                if entry_id in new_files:
                    kept_attachments.append(
                        self._store_attachment(
                            message.channel_id,
                            new_files.pop(entry_id),
                            description=entry.get("description"),
                            ephemeral=message.ephemeral,
                        )
                    )
                    continue
                existing = next((a for a in message.attachments if a.id == entry_id), None)
                if existing is None:
                    raise _form_error("attachments", "ATTACHMENT_NOT_FOUND", f"Unknown attachment {entry_id}")
                kept_attachments.append(existing)
            message.attachments = kept_attachments
        for upload in new_files.values():
            message.attachments.append(
                self._store_attachment(message.channel_id, upload, ephemeral=message.ephemeral)
            )

        if creating and not (message.content or message.embeds or message.attachments or message.components):
            if not data.get("sticker_ids") and not data.get("poll"):
                raise _error(EMPTY_MESSAGE)
        if not creating:
            message.flags &= ~FLAG_LOADING
            message.edited_timestamp = self.timestamp()
        pinged = pings(str(content or ""), data.get("allowed_mentions"))
        message.pings |= pinged
        message.revisions.append(
            {
                "edit": not creating,
                "data": data,
                "files": [upload.filename for upload in files],
                "pings": sorted(pinged),
            }
        )

    def _interaction_message(self, interaction: FakeInteraction, *, followup: bool) -> FakeMessage:
        guild_id = interaction.guild_id
        command_type = 20 if interaction.type == InteractionType.APPLICATION_COMMAND and not followup else 0
        metadata: JSON = {
            "id": str(interaction.id),
            "type": interaction.type,
            "user": self._user(interaction.user_id).to_payload(),
            "authorizing_integration_owners": interaction.payload.get("authorizing_integration_owners", {}),
        }
        if interaction.type == InteractionType.APPLICATION_COMMAND:
            metadata["name"] = interaction.name
            metadata["command_type"] = 1
        if interaction.source_message is not None:
            metadata["interacted_message_id"] = str(interaction.source_message.id)
        if followup and interaction.original is not None:
            metadata["original_response_message_id"] = str(interaction.original.id)
        return FakeMessage(
            self.snowflake(),
            interaction.channel_id,
            guild_id,
            self.bot_user,
            self.timestamp(),
            type=command_type,
            webhook_id=self.application_id,
            application_id=self.application_id,
            interaction_metadata=metadata,
        )

    async def _echo(self, event: str, message: FakeMessage) -> None:
        """Send MESSAGE_CREATE / UPDATE / DELETE to the bot as Discord does, when its intents ask for them."""
        if not self.echo_message_events or message.ephemeral:
            return
        intent = INTENT_GUILD_MESSAGES if message.guild_id is not None else INTENT_DIRECT_MESSAGES
        try:
            session = self._session_for(message.guild_id)
        except RuntimeError:
            return
        if not session.intents & intent:
            return
        if event == "MESSAGE_DELETE":
            data: JSON = {"id": str(message.id), "channel_id": str(message.channel_id)}
            if message.guild_id is not None:
                data["guild_id"] = str(message.guild_id)
        else:
            data = message.to_payload(include_guild_id=True)
            if message.guild_id is not None and message.author.id in self.guilds[message.guild_id].member_ids:
                data["member"] = self._member_payload(
                    message.author.id, self.guilds[message.guild_id], with_user=False
                )
        await self._dispatch(session, event, data)

    # ---- HTTP plumbing -----------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        api = f"/api/v{self.api_version}"
        webhook = "/webhooks/{application_id}/{token}"
        routes: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
            ("GET", "/users/@me", self._get_current_user),
            ("POST", "/users/@me/channels", self._open_dm),
            ("GET", "/gateway/bot", self._get_gateway_bot),
            ("GET", "/oauth2/applications/@me", self._get_application),
            ("GET", "/applications/@me", self._get_application),
            ("PUT", "/applications/{application_id}/commands", self._bulk_overwrite_commands),
            (
                "PUT",
                "/applications/{application_id}/guilds/{guild_id}/commands",
                self._bulk_overwrite_commands,
            ),
            ("POST", "/interactions/{interaction_id}/{token}/callback", self._interaction_callback),
            ("POST", webhook, self._execute_webhook),
            ("GET", webhook + "/messages/@original", self._webhook_message),
            ("PATCH", webhook + "/messages/@original", self._webhook_message),
            ("DELETE", webhook + "/messages/@original", self._webhook_message),
            ("GET", webhook + "/messages/{message_id}", self._webhook_message),
            ("PATCH", webhook + "/messages/{message_id}", self._webhook_message),
            ("DELETE", webhook + "/messages/{message_id}", self._webhook_message),
            ("POST", "/channels/{channel_id}/messages", self._create_channel_message),
            ("GET", "/channels/{channel_id}/messages/{message_id}", self._channel_message),
            ("PATCH", "/channels/{channel_id}/messages/{message_id}", self._channel_message),
            ("DELETE", "/channels/{channel_id}/messages/{message_id}", self._channel_message),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, api + path, handler)
        app.router.add_get("/gateway", self._gateway)

    @web.middleware
    async def _api_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        prefix = f"/api/v{self.api_version}"
        if not request.path.startswith(prefix + "/"):
            return await handler(request)
        record = await self._record(request, prefix)
        request[_RECORD] = record
        response: web.StreamResponse
        try:
            fault = next((f for f in self.faults if f.applies_to(record)), None)
            if fault is not None:
                fault.remaining -= 1
                fault.hits.append(record)
                if fault.delay:
                    await asyncio.sleep(fault.delay)
            if fault is not None and fault.status is not None:
                response = self._fault_response(fault)
                record.response = fault.body
            else:
                try:
                    response = await handler(request)
                except web.HTTPNotFound:
                    self.unknown_requests.append(record)
                    raise DiscordAPIError(404, 0, "404: Not Found") from None
                except web.HTTPMethodNotAllowed:
                    self.unknown_requests.append(record)
                    raise DiscordAPIError(405, 0, "405: Method Not Allowed") from None
        except DiscordAPIError as exc:
            response = self._json(exc.body(), status=exc.status)
            record.response = exc.body()
        if record.response is None and isinstance(response, web.Response) and response.body:
            with contextlib.suppress(ValueError, TypeError):
                record.response = json.loads(response.body)  # type: ignore[arg-type]
        if self.ratelimit_headers and response.status < 300:
            response.headers.update(self._ratelimit_headers(record))
        record.status = response.status
        self._notify()
        return response

    async def _record(self, request: web.Request, prefix: str) -> RecordedRequest:
        body: Any = None
        files: list[UploadedFile] = []
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            form: JSON = {}
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    continue
                if part.name == "payload_json":
                    body = json.loads(await part.text())
                elif part.filename is not None:
                    files.append(
                        UploadedFile(
                            part.filename,
                            bytes(await part.read(decode=False)),
                            part.headers.get(hdrs.CONTENT_TYPE, "application/octet-stream"),
                            field=part.name or f"files[{len(files)}]",
                        )
                    )
                elif part.name:
                    form[part.name] = await part.text()
            if body is None and form:
                body = form
        elif request.can_read_body:
            raw = await request.read()
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
        resource = request.match_info.route.resource
        route = resource.canonical[len(prefix) :] if resource is not None else request.path[len(prefix) :]
        path = request.path[len(prefix) :]
        headers = {
            name: request.headers[name]
            for name in ("Authorization", "Content-Type", "User-Agent")
            if name in request.headers
        }
        record = RecordedRequest(
            request.method, path, route, dict(request.query), body, files, time.monotonic(), headers
        )
        record.interaction_id = self._interaction_id_for(request)
        self.requests.append(record)
        self._notify()
        return record

    def _interaction_id_for(self, request: web.Request) -> int | None:
        info = request.match_info
        if "interaction_id" in info:
            with contextlib.suppress(ValueError):
                return int(info["interaction_id"])
        if "token" in info and (interaction := self._interactions_by_token.get(info["token"])) is not None:
            return interaction.id
        return None

    def _fault_response(self, fault: InjectedFault) -> web.Response:
        if isinstance(fault.body, str):
            response = web.Response(status=fault.status or 500, text=fault.body)
            response.headers.update(fault.headers)
            return response
        headers = dict(fault.headers)
        if fault.retry_after is not None:
            headers["X-RateLimit-Reset"] = f"{self.now() + fault.retry_after:.3f}"
        return self._json(fault.body, status=fault.status or 500, headers=headers)

    def _ratelimit_headers(self, record: RecordedRequest) -> dict[str, str]:
        bucket = zlib.crc32(f"{record.method} {record.route}".encode())
        return {
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "4",
            "X-RateLimit-Reset": f"{self.now() + 1:.3f}",
            "X-RateLimit-Reset-After": "1.000",
            "X-RateLimit-Bucket": f"{bucket:08x}",
        }

    @staticmethod
    def _json(data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
        # Exactly "application/json", no charset: discord.py compares the header verbatim and treats
        # anything else as text (which is how it recognises Cloudflare's HTML pages).
        body = json.dumps(data, separators=(",", ":")).encode()
        response = web.Response(status=status, body=body, headers={"Content-Type": "application/json"})
        if headers:
            response.headers.update({k: v for k, v in headers.items() if k.lower() != "content-type"})
        return response

    def _require_bot(self, request: web.Request) -> None:
        authorization = request.headers.get("Authorization", "")
        if not authorization.startswith("Bot ") or (
            self.token is not None and authorization != f"Bot {self.token}"
        ):
            raise _error(UNAUTHORIZED)

    # ---- REST: users, gateway, application ---------------------------------------------------------

    async def _get_current_user(self, request: web.Request) -> web.Response:
        self._require_bot(request)
        payload = self.bot_user.to_payload() | {
            "verified": True,
            "mfa_enabled": True,
            "email": None,
            "locale": "en-US",
        }
        return self._json(payload)

    async def _open_dm(self, request: web.Request) -> web.Response:
        self._require_bot(request)
        body = self._request_json(request)
        recipient = int(body.get("recipient_id", 0))
        if recipient not in self.users:
            raise _form_error("recipient_id", "USER_NOT_FOUND", "Unknown user")
        return self._json(self._channel_payload(self.dm_channel(recipient)))

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        self._require_bot(request)
        limit = {"total": 1000, "remaining": 999, "reset_after": 14_400_000, "max_concurrency": 1}
        return self._json(
            {"url": self.gateway_url, "shards": self.recommended_shards, "session_start_limit": limit}
        )

    def _application_payload(self) -> JSON:
        return {
            "id": str(self.application_id),
            "name": self.bot_user.username,
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": secrets.token_hex(32),
            "flags": self.application_flags,
            "owner": self.users[self.default_user_id].to_payload(),
            "team": None,
            "bot": self.bot_user.to_payload(),
            "hook": True,
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "tags": [],
            "install_params": None,
            "integration_types_config": {"0": {}},
            "approximate_guild_count": len(self.guilds),
        }

    async def _get_application(self, request: web.Request) -> web.Response:
        self._require_bot(request)
        return self._json(self._application_payload())

    # ---- REST: application commands ----------------------------------------------------------------

    def _command_scope(self, request: web.Request) -> int | None:
        self._require_bot(request)
        if int(request.match_info["application_id"]) != self.application_id:
            raise DiscordAPIError(403, 50001, "Missing Access")
        guild = request.match_info.get("guild_id")
        if guild is not None and int(guild) not in self.guilds:
            raise DiscordAPIError(403, 50001, "Missing Access")
        return int(guild) if guild is not None else None

    def _validate_command(self, payload: JSON, index: str) -> None:
        name = payload.get("name")
        command_type = int(payload.get("type", 1))
        if not isinstance(name, str) or not 1 <= len(name) <= 32:
            raise _form_error(f"{index}name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length.")
        if command_type == 1:
            if not re.fullmatch(r"[-_\w]{1,32}", name) or name != name.lower():
                raise _form_error(
                    f"{index}name", "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"
                )
            if not 1 <= len(payload.get("description") or "") <= 100:
                raise _form_error(
                    f"{index}description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
                )
        self._validate_options(payload.get("options") or [], f"{index}options")

    def _validate_options(self, options: Sequence[JSON], path: str) -> None:
        if len(options) > 25:
            raise _form_error(path, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        seen_optional = False
        for position, option in enumerate(options):
            if option.get("type") in (1, 2):
                self._validate_options(option.get("options") or [], f"{path}.{position}.options")
                continue
            if option.get("required"):
                if seen_optional:
                    raise _form_error(
                        f"{path}.{position}.required",
                        "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                        "Required options must be placed before non-required options",
                    )
            else:
                seen_optional = True
            if len(option.get("choices") or []) > 25:
                raise _form_error(
                    f"{path}.{position}.choices", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer."
                )

    def _store_command(self, payload: JSON, guild_id: int | None) -> JSON:
        commands = self._commands.setdefault(guild_id, {})
        key = (int(payload.get("type", 1)), str(payload["name"]))
        existing = commands.get(key)
        command: JSON = {
            "id": existing["id"] if existing else str(self.snowflake()),
            "application_id": str(self.application_id),
            "version": str(self.snowflake()),
            "type": key[0],
            "name": key[1],
            "name_localizations": payload.get("name_localizations"),
            "description": payload.get("description", ""),
            "description_localizations": payload.get("description_localizations"),
            "options": payload.get("options") or [],
            "default_member_permissions": _permissions_string(payload.get("default_member_permissions")),
            "dm_permission": payload.get("dm_permission", True),
            "contexts": payload.get("contexts"),
            "integration_types": payload.get("integration_types") or [0],
            "nsfw": payload.get("nsfw", False),
        }
        if guild_id is not None:
            command["guild_id"] = str(guild_id)
        commands[key] = command
        return command

    async def _bulk_overwrite_commands(self, request: web.Request) -> web.Response:
        scope = self._command_scope(request)
        payload = self._request_json(request, expect=list)
        if len(payload) > 100:
            raise _form_error("_", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length.")
        for position, command in enumerate(payload):
            self._validate_command(command, f"{position}.")
        previous = self._commands.get(scope, {})
        self._commands[scope] = {}
        stored = []
        for command in payload:
            key = (int(command.get("type", 1)), str(command["name"]))
            if key in previous:
                self._commands[scope][key] = previous[key]
            stored.append(self._store_command(command, scope))
        return self._json(stored)

    # ---- REST: interactions ------------------------------------------------------------------------

    @staticmethod
    def _request_json(request: web.Request, *, expect: type = dict) -> Any:
        body = request[_RECORD].json
        if not isinstance(body, expect):
            raise _error(INVALID_JSON)
        return body

    @staticmethod
    def _request_files(request: web.Request) -> list[UploadedFile]:
        files: list[UploadedFile] = request[_RECORD].files
        return files

    async def _interaction_callback(self, request: web.Request) -> web.StreamResponse:
        interaction = self.interactions.get(int(request.match_info["interaction_id"]))
        if interaction is None or interaction.token != request.match_info["token"]:
            raise _error(UNKNOWN_INTERACTION)
        too_late = (
            self.initial_response_deadline is not None
            and self.now() - interaction.created_at > self.initial_response_deadline
        )
        if not self._token_alive(interaction) or too_late:
            raise _error(UNKNOWN_INTERACTION)
        if interaction.acknowledged:
            raise _error(ALREADY_ACKNOWLEDGED)
        body = self._request_json(request)
        files = self._request_files(request)
        callback_type = int(body.get("type", 0))
        if callback_type not in _ALLOWED_CALLBACKS.get(interaction.type, frozenset()):
            raise _form_error(
                "type", "INTERACTION_CALLBACK_TYPE_INVALID", "Interaction callback type is invalid"
            )
        data: JSON = body.get("data") or {}
        limit = int(interaction.payload["attachment_size_limit"])
        message: FakeMessage | None = None

        if callback_type in (
            CallbackType.CHANNEL_MESSAGE_WITH_SOURCE,
            CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE,
        ):
            message = self._interaction_message(interaction, followup=False)
            message.flags = int(data.get("flags") or 0) & FLAG_EPHEMERAL
            if callback_type == CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE:
                message.flags |= FLAG_LOADING
                message.revisions.append({"edit": False, "data": data, "files": []})
            else:
                self._apply(message, data, files, creating=True, size_limit=limit)
            interaction.original = self._store_message(message)
        elif callback_type in (CallbackType.DEFERRED_UPDATE_MESSAGE, CallbackType.UPDATE_MESSAGE):
            target = interaction.source_message
            if target is None:
                raise _form_error(
                    "type", "INTERACTION_CALLBACK_TYPE_INVALID", "This interaction has no message"
                )
            if callback_type == CallbackType.UPDATE_MESSAGE:
                self._apply(target, data, files, creating=False, size_limit=limit)
            interaction.original = message = target

        interaction.callbacks.append(body)
        interaction.response_type = callback_type
        if message is not None:
            await self._echo(
                "MESSAGE_UPDATE" if message is interaction.source_message else "MESSAGE_CREATE", message
            )
        if request.query.get("with_response", "").lower() not in ("1", "true"):
            return web.Response(status=204)
        result: JSON = {"interaction": {"id": str(interaction.id), "type": interaction.type}}
        resource: JSON = {"type": callback_type}
        if message is not None:
            result["interaction"] |= {
                "response_message_id": str(message.id),
                "response_message_loading": message.loading,
                "response_message_ephemeral": message.ephemeral,
            }
            if callback_type != CallbackType.DEFERRED_UPDATE_MESSAGE:
                resource["message"] = message.to_payload()
        result["resource"] = resource
        return self._json(result)

    def _webhook_interaction(self, request: web.Request) -> FakeInteraction:
        if int(request.match_info["application_id"]) != self.application_id:
            raise _error(UNKNOWN_WEBHOOK)
        interaction = self._interactions_by_token.get(request.match_info["token"])
        if interaction is None or not self._token_alive(interaction):
            raise _error(INVALID_WEBHOOK_TOKEN)
        if not interaction.acknowledged:
            raise _error(UNKNOWN_WEBHOOK)
        return interaction

    async def _execute_webhook(self, request: web.Request) -> web.StreamResponse:
        interaction = self._webhook_interaction(request)
        body = self._request_json(request)
        files = self._request_files(request)
        limit = int(interaction.payload["attachment_size_limit"])
        original = interaction.original
        if (
            original is not None
            and original.loading
            and interaction.response_type == CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
        ):
            # The first follow-up after a deferred reply resolves the loading message (with its ephemerality).
            self._apply(original, body, files, creating=False, size_limit=limit)
            message = original
            await self._echo("MESSAGE_UPDATE", message)
        else:
            message = self._interaction_message(interaction, followup=True)
            message.flags = int(body.get("flags") or 0) & FLAG_EPHEMERAL
            self._apply(message, body, files, creating=True, size_limit=limit)
            self._store_message(message)
            await self._echo("MESSAGE_CREATE", message)
        interaction.followups.append(message)
        return self._json(message.to_payload())  # for interaction follow-ups "wait" is always true

    async def _webhook_message(self, request: web.Request) -> web.StreamResponse:
        interaction = self._webhook_interaction(request)
        message_id = request.match_info.get("message_id", "@original")
        if message_id == "@original":
            message = interaction.original
        else:
            # Any message of this application's in the interaction's channel, like the one with the button.
            message = self.messages.get(int(message_id)) if message_id.isdigit() else None
            if message is not None and not (
                any(message is m for m in interaction.messages)
                or message is interaction.source_message
                or (
                    message.webhook_id == self.application_id and message.channel_id == interaction.channel_id
                )
            ):
                message = None
        if message is None or message.deleted:
            raise _error(UNKNOWN_MESSAGE)
        if request.method == "GET":
            return self._json(message.to_payload())
        if request.method == "DELETE":
            message.deleted = True
            await self._echo("MESSAGE_DELETE", message)
            return web.Response(status=204)
        body = self._request_json(request)
        limit = int(interaction.payload["attachment_size_limit"])
        self._apply(message, body, self._request_files(request), creating=False, size_limit=limit)
        await self._echo("MESSAGE_UPDATE", message)
        return self._json(message.to_payload())

    # ---- REST: channels, guilds --------------------------------------------------------------------

    def _channel(self, request: web.Request) -> FakeChannel:
        self._require_bot(request)
        channel = self.channels.get(int(request.match_info["channel_id"]))
        if channel is None:
            raise _error(UNKNOWN_CHANNEL)
        return channel

    async def _create_channel_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        body = self._request_json(request)
        message = FakeMessage(self.snowflake(), channel.id, channel.guild_id, self.bot_user, self.timestamp())
        if body.get("message_reference"):
            message.type = 19
            message.message_reference = body["message_reference"]
        self._apply(
            message, body, self._request_files(request), creating=True, size_limit=self.attachment_size_limit
        )
        self._store_message(message)
        await self._echo("MESSAGE_CREATE", message)
        return self._json(message.to_payload())

    async def _channel_message(self, request: web.Request) -> web.StreamResponse:
        channel = self._channel(request)
        message = self.messages.get(int(request.match_info["message_id"]))
        if message is None or message.deleted or message.ephemeral or message.channel_id != channel.id:
            raise _error(UNKNOWN_MESSAGE)
        if request.method == "GET":
            return self._json(message.to_payload())
        if request.method == "DELETE":
            message.deleted = True
            await self._echo("MESSAGE_DELETE", message)
            return web.Response(status=204)
        if message.author.id != self.bot_user.id:
            raise _error(NOT_AUTHOR)
        body = self._request_json(request)
        self._apply(
            message, body, self._request_files(request), creating=False, size_limit=self.attachment_size_limit
        )
        await self._echo("MESSAGE_UPDATE", message)
        return self._json(message.to_payload())

    def _guild_payload(self, guild: FakeGuild, *, full: bool) -> JSON:
        payload: JSON = {
            "id": str(guild.id),
            "name": guild.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(guild.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [self._role_payload(guild.id)],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": str(guild.channel_ids[0]) if guild.channel_ids else None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": guild.locale,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "max_members": 500_000,
            "max_video_channel_users": 25,
        }
        if full:
            members = [*guild.member_ids, self.bot_user.id]
            payload |= {
                "joined_at": guild.joined_at,
                "large": False,
                "unavailable": False,
                "member_count": len(members),
                "voice_states": [],
                "members": [self._member_payload(user_id, guild) for user_id in dict.fromkeys(members)],
                "channels": [self._channel_payload(self.channels[cid]) for cid in guild.channel_ids],
                "threads": [],
                "presences": [],
                "stage_instances": [],
                "guild_scheduled_events": [],
                "soundboard_sounds": [],
                "lazy": True,
            }
        return payload

    # ---- gateway -----------------------------------------------------------------------------------

    def _guilds_of_shard(self, shard: tuple[int, int]) -> list[FakeGuild]:
        return [guild for guild in self.guilds.values() if (guild.id >> 22) % shard[1] == shard[0]]

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(timeout=1.0, max_msg_size=0)
        await ws.prepare(request)
        if request.query.get("encoding", "json") != "json":
            await ws.close(code=4002, message=b"Error while decoding payload.")
            return ws
        compress = request.query.get("compress")
        # zstd-stream needs a zstd compressor this environment may lack; discord.py reads text frames as well.
        connection = _GatewayConnection(ws, "zlib-stream" if compress == "zlib-stream" else None)
        self.connections.append(connection)
        try:
            await connection.send(
                {
                    "op": Op.HELLO,
                    "d": {"heartbeat_interval": self.heartbeat_interval_ms},
                    "s": None,
                    "t": None,
                }
            )
            async for frame in ws:
                if frame.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                try:
                    payload = json.loads(frame.data)
                except ValueError:
                    await ws.close(code=4002, message=b"Error while decoding payload.")
                    break
                connection.received.append(payload)
                await self._on_gateway_payload(connection, payload)
                self._notify()
        finally:
            self.connections.remove(connection)
            if connection.session is not None and connection.session.connection is connection:
                connection.session.connection = None
            self._notify()
        return ws

    async def _on_gateway_payload(self, connection: _GatewayConnection, payload: JSON) -> None:
        op = payload.get("op")
        data = payload.get("d")
        if op == Op.HEARTBEAT:
            connection.heartbeats += 1
            await connection.send({"op": Op.HEARTBEAT_ACK, "d": None, "s": None, "t": None})
        elif op == Op.IDENTIFY:
            await self._identify(connection, data or {})
        elif op == Op.PRESENCE_UPDATE:
            self.presence_updates.append(data or {})
        elif op == Op.VOICE_STATE_UPDATE:
            pass
        else:
            await connection.ws.close(code=4001, message=b"Unknown opcode.")

    def _token_ok(self, token: object) -> bool:
        return isinstance(token, str) and bool(token) and (self.token is None or token == self.token)

    async def _identify(self, connection: _GatewayConnection, data: JSON) -> None:
        if connection.session is not None:
            await connection.ws.close(code=4005, message=b"Already authenticated.")
            return
        if not self._token_ok(data.get("token")):
            await connection.ws.close(code=4004, message=b"Authentication failed.")
            return
        if "intents" not in data:
            await connection.ws.close(code=4013, message=b"Invalid intent(s).")
            return
        raw_shard = data.get("shard")
        shard = (int(raw_shard[0]), int(raw_shard[1])) if raw_shard else (0, 1)
        if not 0 <= shard[0] < shard[1]:
            await connection.ws.close(code=4010, message=b"Invalid shard.")
            return
        identify = data | {"token": "<redacted>"}
        self.identifies.append(identify)
        session = GatewaySession(
            secrets.token_hex(16), shard, int(data["intents"]), identify, connection=connection
        )
        connection.session = session
        self.sessions[session.session_id] = session
        guilds = self._guilds_of_shard(shard)
        ready: JSON = {
            "v": self.api_version,
            "user": self.bot_user.to_payload() | {"verified": True, "mfa_enabled": True, "email": None},
            "guilds": [{"id": str(guild.id), "unavailable": True} for guild in guilds],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": self.application_flags},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["rotterdam"],
            "user_settings": {},
            "auth": {},
            "_trace": ['["fake-discord-gateway",{"micros":1}]'],
        }
        if raw_shard:
            ready["shard"] = [shard[0], shard[1]]
        await self._dispatch(session, "READY", ready)
        if session.intents & INTENT_GUILDS:
            for guild in guilds:
                await self._dispatch(session, "GUILD_CREATE", self._guild_payload(guild, full=True))
        session.ready = True


@contextlib.contextmanager
def discord_py_pointed_at(fake: FakeDiscord) -> Iterator[None]:
    """Point discord.py's REST root and default gateway at ``fake`` for the block, then restore them."""
    import discord.gateway
    import discord.http
    import yarl

    old_base = discord.http.Route.BASE
    old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = fake.api_base_url
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    try:
        yield
    finally:
        discord.http.Route.BASE = old_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway
