"""The REST routes the bots call, answered as Discord answers them; every request is recorded first."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiohttp import BodyPartReader, hdrs, web

from tests.fakes.discord.interactions import DiscordInteractions
from tests.fakes.discord.records import (
    ALLOWED_CALLBACKS,
    ALREADY_ACKNOWLEDGED,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    INVALID_JSON,
    INVALID_WEBHOOK_TOKEN,
    JSON,
    NOT_AUTHOR,
    RECORD,
    UNAUTHORIZED,
    UNKNOWN_CHANNEL,
    UNKNOWN_INTERACTION,
    UNKNOWN_MESSAGE,
    UNKNOWN_WEBHOOK,
    CallbackType,
    DiscordAPIError,
    FakeChannel,
    FakeInteraction,
    FakeMessage,
    RecordedRequest,
    UploadedFile,
    api_error,
    form_error,
    permissions_string,
)


class DiscordRest(DiscordInteractions):
    """REST under ``/api/v{n}``: users and DMs, the application, command sync, interactions, channels."""

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
        app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", self._cdn_attachment)

    @web.middleware
    async def _api_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        prefix = f"/api/v{self.api_version}"
        if not request.path.startswith(prefix + "/"):
            return await handler(request)
        record = await self._record(request, prefix)
        request[RECORD] = record
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
            raise api_error(UNAUTHORIZED)

    # ---- REST: users, gateway, application ---------------------------------------------------------

    async def _cdn_attachment(self, request: web.Request) -> web.StreamResponse:
        """An attachment's bytes at its ``url``, as Discord's CDN serves them (no auth, streamed)."""
        channel_id, attachment_id = request.match_info["channel_id"], request.match_info["attachment_id"]
        attachment = self._attachments.get(int(attachment_id)) if attachment_id.isdigit() else None
        if attachment is None or f"/attachments/{channel_id}/{attachment_id}/" not in attachment.url:
            raise web.HTTPNotFound()
        self.cdn_downloads.append(attachment.id)
        response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: attachment.content_type})
        if self.cdn_content_length:
            response.content_length = attachment.size
        await response.prepare(request)
        for start in range(0, attachment.size, 256 * 1024):
            await response.write(attachment.data[start : start + 256 * 1024])
        await response.write_eof()
        return response

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
            raise form_error("recipient_id", "USER_NOT_FOUND", "Unknown user")
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
            raise form_error(f"{index}name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length.")
        if command_type == 1:
            if not re.fullmatch(r"[-_\w]{1,32}", name) or name != name.lower():
                raise form_error(
                    f"{index}name", "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"
                )
            if not 1 <= len(payload.get("description") or "") <= 100:
                raise form_error(
                    f"{index}description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
                )
        self._validate_options(payload.get("options") or [], f"{index}options")

    def _validate_options(self, options: Sequence[JSON], path: str) -> None:
        if len(options) > 25:
            raise form_error(path, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        seen_optional = False
        for position, option in enumerate(options):
            if option.get("type") in (1, 2):
                self._validate_options(option.get("options") or [], f"{path}.{position}.options")
                continue
            if option.get("required"):
                if seen_optional:
                    raise form_error(
                        f"{path}.{position}.required",
                        "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                        "Required options must be placed before non-required options",
                    )
            else:
                seen_optional = True
            if len(option.get("choices") or []) > 25:
                raise form_error(f"{path}.{position}.choices", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer.")

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
            "default_member_permissions": permissions_string(payload.get("default_member_permissions")),
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
            raise form_error("_", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length.")
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
        body = request[RECORD].json
        if not isinstance(body, expect):
            raise api_error(INVALID_JSON)
        return body

    @staticmethod
    def _request_files(request: web.Request) -> list[UploadedFile]:
        files: list[UploadedFile] = request[RECORD].files
        return files

    async def _interaction_callback(self, request: web.Request) -> web.StreamResponse:
        interaction = self.interactions.get(int(request.match_info["interaction_id"]))
        if interaction is None or interaction.token != request.match_info["token"]:
            raise api_error(UNKNOWN_INTERACTION)
        too_late = (
            self.initial_response_deadline is not None
            and self.now() - interaction.created_at > self.initial_response_deadline
        )
        if not self._token_alive(interaction) or too_late:
            raise api_error(UNKNOWN_INTERACTION)
        if interaction.acknowledged:
            raise api_error(ALREADY_ACKNOWLEDGED)
        body = self._request_json(request)
        files = self._request_files(request)
        callback_type = int(body.get("type", 0))
        if callback_type not in ALLOWED_CALLBACKS.get(interaction.type, frozenset()):
            raise form_error(
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
                raise form_error(
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
            raise api_error(UNKNOWN_WEBHOOK)
        interaction = self._interactions_by_token.get(request.match_info["token"])
        if interaction is None or not self._token_alive(interaction):
            raise api_error(INVALID_WEBHOOK_TOKEN)
        if not interaction.acknowledged:
            raise api_error(UNKNOWN_WEBHOOK)
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
            raise api_error(UNKNOWN_MESSAGE)
        return await self._read_delete_or_edit(
            request, message, size_limit=int(interaction.payload["attachment_size_limit"])
        )

    # ---- REST: channels, guilds --------------------------------------------------------------------

    def _channel(self, request: web.Request) -> FakeChannel:
        self._require_bot(request)
        channel = self.channels.get(int(request.match_info["channel_id"]))
        if channel is None:
            raise api_error(UNKNOWN_CHANNEL)
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
            raise api_error(UNKNOWN_MESSAGE)
        if request.method == "PATCH" and message.author.id != self.bot_user.id:
            raise api_error(NOT_AUTHOR)
        return await self._read_delete_or_edit(request, message, size_limit=self.attachment_size_limit)

    async def _read_delete_or_edit(
        self, request: web.Request, message: FakeMessage, *, size_limit: int
    ) -> web.StreamResponse:
        """GET, DELETE or PATCH one message, by webhook or in its channel, echoing it to the bot."""
        if request.method == "GET":
            return self._json(message.to_payload())
        if request.method == "DELETE":
            message.deleted = True
            await self._echo("MESSAGE_DELETE", message)
            return web.Response(status=204)
        body = self._request_json(request)
        self._apply(message, body, self._request_files(request), creating=False, size_limit=size_limit)
        await self._echo("MESSAGE_UPDATE", message)
        return self._json(message.to_payload())
