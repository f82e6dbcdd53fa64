"""A fake Telegram Bot API server on loopback, split by concern.

records: limits, recorded calls and messages as tests read them; state: chats, messages, files, updates and
what users do; faults: planned errors, stalls, downtime; routes: the Bot API methods; server: the
aiohttp server and webhook pushes. tests/fakes/telegram_server.py re-exports the names tests import.
"""

from __future__ import annotations

from tests.fakes.telegram.records import (
    ALL_UPDATE_TYPES,
    DEFAULT_TOKEN,
    DEFAULT_UPDATE_TYPES,
    MAX_CAPTION_LENGTH,
    MAX_TEXT_LENGTH,
    NOT_MODIFIED,
    PHOTO_INVALID_DIMENSIONS,
    QUERY_TOO_OLD,
    REGISTERED_SECRET,
    Button,
    Call,
    ChatMessage,
    Document,
    Photo,
    UploadedFile,
    WebhookDelivery,
    WebhookInfo,
)
from tests.fakes.telegram.server import FakeTelegram, free_port

__all__ = [
    "ALL_UPDATE_TYPES",
    "DEFAULT_TOKEN",
    "DEFAULT_UPDATE_TYPES",
    "MAX_CAPTION_LENGTH",
    "MAX_TEXT_LENGTH",
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
