"""The fake Discord's model: guilds, channels, users, messages and interactions, its clock and ids,
what a user sees, and waiting for it to change."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import mimetypes
import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING
from urllib.parse import quote

from tests.fakes.discord.records import (
    DEFAULT_ATTACHMENT_SIZE_LIMIT,
    DISCORD_EPOCH_MS,
    EMPTY_MESSAGE,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    INITIAL_RESPONSE_DEADLINE,
    INTERACTION_TOKEN_TTL,
    JSON,
    MAX_CONTENT_LENGTH,
    MAX_EMBEDS,
    MAX_FILES,
    MEMBER_PERMISSIONS,
    TOO_LARGE,
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeInteraction,
    FakeMessage,
    FakeUser,
    RecordedRequest,
    T,
    UploadedFile,
    api_error,
    check_allowed_mentions,
    form_error,
    iso,
    pings,
)

if TYPE_CHECKING:
    from tests.fakes.discord.faults import InjectedFault
    from tests.fakes.discord.gateway import GatewayConnection, GatewaySession


class DiscordState:
    """Everything Discord would know, kept as records a test can read; no HTTP, no sockets."""

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
        self.connections: list[GatewayConnection] = []
        self._commands: dict[int | None, dict[tuple[int, str], JSON]] = {}
        self._interactions_by_token: dict[str, FakeInteraction] = {}
        self._attachments: dict[int, FakeAttachment] = {}
        self.cdn_downloads: list[int] = []  # attachment ids, in the order their bytes were fetched
        self.cdn_content_length = True  # False: attachments come chunked, their size unannounced
        self._changed: asyncio.Event | None = None
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
        return iso(self.now())

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
        files: Sequence[UploadedFile] = (),
    ) -> FakeMessage:
        """A message the bot posted earlier (before a restart, say), e.g. one carrying persistent buttons
        and the images they act on."""
        channel = self.channels[channel_id or self.channel_id]
        message = FakeMessage(self.snowflake(), channel.id, channel.guild_id, self.bot_user, self.timestamp())
        message.content = content
        message.components = list(components or [])
        message.embeds = list(embeds or [])
        message.attachments = [self._store_attachment(channel.id, upload) for upload in files]
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

    # ---- payloads ----------------------------------------------------------------------------------

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
            raise form_error("files", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_FILES} or fewer in length.")
        for upload in files:
            if len(upload.data) > size_limit:
                raise api_error(TOO_LARGE)
        content = data.get("content")
        if content is not None and len(str(content)) > MAX_CONTENT_LENGTH:
            raise form_error(
                "content", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CONTENT_LENGTH} or fewer in length."
            )
        if len(data.get("embeds") or []) > MAX_EMBEDS:
            raise form_error("embeds", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_EMBEDS} or fewer in length.")
        check_allowed_mentions(data.get("allowed_mentions"))

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
                    raise form_error("attachments", "ATTACHMENT_NOT_FOUND", f"Unknown attachment {entry_id}")
                kept_attachments.append(existing)
            message.attachments = kept_attachments
        for upload in new_files.values():
            message.attachments.append(
                self._store_attachment(message.channel_id, upload, ephemeral=message.ephemeral)
            )

        if creating and not (message.content or message.embeds or message.attachments or message.components):
            if not data.get("sticker_ids") and not data.get("poll"):
                raise api_error(EMPTY_MESSAGE)
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
