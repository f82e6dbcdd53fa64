"""What the fake Discord keeps and a test reads: ids, limits, enums, errors, and the records of users,
channels, guilds, messages, attachments, interactions and REST requests."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, TypeVar

from aiohttp import web

from tests.helpers.png import png_dimensions

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


ALLOWED_CALLBACKS: dict[int, frozenset[int]] = {
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


def form_error(path: str, code: str, message: str) -> DiscordAPIError:
    errors: JSON = {"_errors": [{"code": code, "message": message}]}
    for part in reversed(path.split(".")):
        errors = {part: errors}
    return DiscordAPIError(400, 50035, "Invalid Form Body", errors)


UNAUTHORIZED = (401, 0, "401: Unauthorized")
UNKNOWN_CHANNEL = (404, 10003, "Unknown Channel")
UNKNOWN_MESSAGE = (404, 10008, "Unknown Message")
UNKNOWN_WEBHOOK = (404, 10015, "Unknown Webhook")
UNKNOWN_INTERACTION = (404, 10062, "Unknown interaction")
INVALID_WEBHOOK_TOKEN = (401, 50027, "Invalid Webhook Token")
ALREADY_ACKNOWLEDGED = (400, 40060, "Interaction has already been acknowledged.")
EMPTY_MESSAGE = (400, 50006, "Cannot send an empty message")
NOT_AUTHOR = (403, 50005, "Cannot edit a message authored by another user")
TOO_LARGE = (413, 40005, "Request entity too large")
INVALID_JSON = (400, 50109, "The request body contains invalid JSON.")


def api_error(spec: tuple[int, int, str]) -> DiscordAPIError:
    return DiscordAPIError(*spec)


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


RECORD = web.RequestKey("record", RecordedRequest)


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


def check_allowed_mentions(allowed_mentions: Any) -> None:
    """Refuse what Discord refuses: a type both parsed and listed, an unknown parse type."""
    if allowed_mentions is None:
        return
    if not isinstance(allowed_mentions, dict):
        raise form_error(
            "allowed_mentions", "MODEL_TYPE_CONVERT", "Only dictionaries may be used in a ModelType"
        )
    parse = allowed_mentions.get("parse") or []
    for position, kind in enumerate(parse):
        if kind not in ("everyone", "users", "roles"):
            raise form_error(
                f"allowed_mentions.parse.{position}",
                "BASE_TYPE_CHOICES",
                "Value must be one of {'everyone', 'users', 'roles'}.",
            )
    for kind in ("users", "roles"):
        if kind in parse and allowed_mentions.get(kind):
            raise form_error(
                "allowed_mentions",
                "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
                f'parse:["{kind}"] and {kind}: [ids...] are mutually exclusive.',
            )


def permissions_string(value: Any) -> str | None:
    """Discord takes a permission bit set as a number or a string and always answers with a string."""
    return None if value is None else str(int(value))


def check_visible(command: JSON, permissions: int) -> None:
    """A guild member sees only the commands whose ``default_member_permissions`` they hold."""
    required = command.get("default_member_permissions")
    if required is None or permissions & ADMINISTRATOR:
        return
    needed = int(required)
    if needed == 0 or permissions & needed != needed:
        raise PermissionError(
            f"/{command['name']} needs permissions {needed}; Discord hides it from members with {permissions}"
        )


def check_length(option: JSON | None, name: str, value: Any) -> None:
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


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds")
