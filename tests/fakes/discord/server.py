"""A fake of Discord's REST API and gateway on loopback, for driving the real discord.py client in tests.

Discord cannot be reached from the test machines, so the Discord bot is tested end to end against this
server instead: discord.py logs in over REST, connects to the gateway WebSocket, syncs its application
commands, and answers interactions that the test dispatches, exactly as it would against Discord. The fake
keeps what a user of the Discord app would see (the original response after its edits, the follow-ups,
channel messages and DMs), records every REST request, and can misbehave on purpose (429s with Discord's
headers, 5xx, delays, expired interaction tokens). It serves only the routes and gateway opcodes the bots
use: no RESUME, no member chunks, no guild or user lookups; of the CDN, only attachments' bytes at their
``url``.

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

import contextlib
from collections.abc import Iterator

from aiohttp import web

from tests.fakes.discord.rest import DiscordRest


class FakeDiscord(DiscordRest):
    """A fake Discord on 127.0.0.1, random port: REST under ``api_base_url``, gateway at ``gateway_url``.

    ``token``: when set, REST calls must carry ``Authorization: Bot <token>`` and IDENTIFY must carry it
    (401 / close code 4004 otherwise); when None any bot token is accepted.
    """

    _runner: web.AppRunner | None = None

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
