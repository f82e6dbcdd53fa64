"""The fake Telegram Bot API (now the package tests/fakes/telegram/): the names tests and bench/ import."""

from __future__ import annotations

from tests.fakes.telegram import (
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
    FakeTelegram,
    Photo,
    UploadedFile,
    WebhookDelivery,
    WebhookInfo,
    free_port,
)

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
