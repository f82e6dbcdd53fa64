"""A fake of Discord's REST API and gateway on loopback, split by concern.

records: ids, limits, enums, errors and the records a test reads; state: the model of guilds, channels,
users, messages and interactions; faults: planned 429s, errors and expired tokens; gateway: the WebSocket;
interactions: what users do; rest: the REST routes; server: the aiohttp server. tests/fakes/discord_server.py
re-exports the names tests and bench/ import.
"""

from __future__ import annotations

from tests.fakes.discord.faults import InjectedFault
from tests.fakes.discord.gateway import GatewaySession
from tests.fakes.discord.records import (
    ADMINISTRATOR,
    MANAGE_GUILD,
    MAX_CONTENT_LENGTH,
    MEMBER_PERMISSIONS,
    CallbackType,
    DiscordAPIError,
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeInteraction,
    FakeMessage,
    FakeUser,
    InteractionType,
    OptionType,
    RecordedRequest,
    UploadedFile,
    pings,
)
from tests.fakes.discord.server import FakeDiscord, discord_py_pointed_at

__all__ = [
    "ADMINISTRATOR",
    "MANAGE_GUILD",
    "MAX_CONTENT_LENGTH",
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
