"""Interactions as a user makes them: slash commands and button presses, delivered over the gateway."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from types import EllipsisType
from typing import Any

from tests.fakes.discord.gateway import DiscordGateway
from tests.fakes.discord.records import (
    BOT_PERMISSIONS,
    JSON,
    MEMBER_PERMISSIONS,
    FakeInteraction,
    FakeMessage,
    InteractionType,
    OptionType,
    UploadedFile,
    check_length,
    check_visible,
)


class DiscordInteractions(DiscordGateway):
    """What users do: run a command, press a button; and the messages an interaction's answers become."""

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
            check_visible(command, permissions)
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
        return await self._create_interaction(
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
        return await self._create_interaction(
            InteractionType.MESSAGE_COMPONENT,
            data,
            user_id=user_id,
            guild_id=message.guild_id,
            channel_id=message.channel_id,
            permissions=permissions,
            locale=locale,
            message=message,
        )

    async def redispatch(self, interaction: FakeInteraction) -> FakeInteraction:
        """Deliver the very same INTERACTION_CREATE payload (same id and token) again."""
        return await self._deliver(interaction)

    async def _create_interaction(
        self,
        interaction_type: int,
        data: JSON,
        *,
        user_id: int | None,
        guild_id: int | EllipsisType | None,
        channel_id: int | None = None,
        permissions: int = MEMBER_PERMISSIONS,
        app_permissions: int = BOT_PERMISSIONS,
        attachment_size_limit: int | None = None,
        locale: str = "en-US",
        message: FakeMessage | None = None,
    ) -> FakeInteraction:
        """Build the INTERACTION_CREATE payload as Discord would, keep it, and deliver it to the bot."""
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
        return await self._deliver(interaction)

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
                check_length(declared.get(key), key, value)
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
