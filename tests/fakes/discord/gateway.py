"""The gateway WebSocket: HELLO, IDENTIFY, heartbeats, one session per shard, zlib-stream frames."""

from __future__ import annotations

import asyncio
import json
import secrets
import zlib
from dataclasses import dataclass

from aiohttp import WSMsgType, web

from tests.fakes.discord.faults import DiscordFaults
from tests.fakes.discord.records import (
    INTENT_DIRECT_MESSAGES,
    INTENT_GUILD_MESSAGES,
    INTENT_GUILDS,
    JSON,
    FakeGuild,
    FakeMessage,
    Op,
)


@dataclass
class GatewaySession:
    """One IDENTIFYed gateway session (one per shard)."""

    session_id: str
    shard: tuple[int, int]
    intents: int
    identify: JSON
    sequence: int = 0
    connection: GatewayConnection | None = None
    ready: bool = False


class GatewayConnection:
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


class DiscordGateway(DiscordFaults):
    """Sessions the bot IDENTIFYed, and the events the fake sends them."""

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
        connection = GatewayConnection(ws, "zlib-stream" if compress == "zlib-stream" else None)
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

    async def _on_gateway_payload(self, connection: GatewayConnection, payload: JSON) -> None:
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

    async def _identify(self, connection: GatewayConnection, data: JSON) -> None:
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
