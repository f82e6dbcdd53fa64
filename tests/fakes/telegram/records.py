"""What the fake Telegram keeps and what tests read: limits, recorded calls, chats as users see them."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final

JSON = dict[str, Any]

DEFAULT_TOKEN: Final = "123456789:TEST-fake-telegram-token"

MAX_TEXT_LENGTH: Final = 4096
MAX_CAPTION_LENGTH: Final = 1024
MAX_PHOTO_BYTES: Final = 10 * 1024 * 1024
MAX_PHOTO_SIDES_SUM: Final = 10000
MAX_PHOTO_RATIO: Final = 20
MAX_DOCUMENT_BYTES: Final = 50 * 1024 * 1024
MAX_DOWNLOAD_BYTES: Final = 20 * 1024 * 1024  # getFile refuses bigger files
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


class _Registered(enum.Enum):
    SECRET = "the secret_token given to setWebhook"


REGISTERED_SECRET: Final = _Registered.SECRET
"""Default of `post_webhook_update(secret_token=...)`: the secret the bot registered, as Telegram sends."""


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


class ApiError(Exception):
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


def bad_request(detail: str) -> ApiError:
    return ApiError(400, f"Bad Request: {detail}")


@dataclass
class StoredFile:
    file_id: str
    file_unique_id: str
    data: bytes
    content_type: str
    filename: str | None
    file_path: str
    width: int = 0
    height: int = 0


@dataclass
class StoredMessage:
    data: JSON
    from_bot: bool
    photo: StoredFile | None = None
    document: StoredFile | None = None
    content_key: tuple[Any, ...] | None = None  # rendered text/caption plus its source: "not modified" check
    edit_count: int = 0
    deleted: bool = False


@dataclass
class QueuedUpdate:
    update: JSON
    forced: bool = False  # delivered once whatever the offset (a duplicate delivery)


@dataclass
class CallbackQuery:
    query_id: str
    created_at: float
    answer: JSON | None = None


@dataclass
class Webhook:
    url: str
    secret_token: str | None
    allowed_updates: list[str] | None
    max_connections: int
    drop_pending_updates: bool
