"""The Discord front: an auto-sharded discord.py bot whose features are the cogs in ``EXTENSIONS``.

``imagine`` builds the settings and the started :class:`gateway.ImagineService` and hands them to
:class:`DiscordFront`; this module imports discord.py and the gateway, never torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import discord
import discord.http
import yarl
from discord.ext import commands
from discord.gateway import DiscordWebSocket

from bots.discord_ext import EXTENSIONS
from bots.discord_ext.delivery import NO_PINGS
from gateway import ImagineService, Settings
from gateway.settings import require

log = logging.getLogger("imagine.discord")

READY_TIMEOUT = 60.0
IDENTIFY_INTERVAL = 5.0  # Discord's window for session starts
PROGRESS_INTERVAL = 1.5  # at most one edit of a progress message per this many seconds


def point_discord_py_at(api_base_url: str, gateway_url: str | yarl.URL) -> tuple[str, yarl.URL]:
    """Use DISCORD_API_BASE_URL and DISCORD_GATEWAY_URL; return what was there before.

    discord.py reads its REST root and its gateway from class attributes, so this holds for the whole
    process: one Discord bot per process, as ``imagine`` runs it.
    """
    before = (discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
    discord.http.Route.BASE = api_base_url.rstrip("/")
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
    return before


class _ChosenLimits(logging.Filter):
    """discord.py warns that the guilds intent is off; this bot turns it off on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Guilds intent seems to be disabled")


def quiet_expected_warnings() -> None:
    """No voice, no guilds intent: by design, so not worth a warning at every start."""
    discord.VoiceClient.warn_nacl = False
    discord.VoiceClient.warn_dave = False
    state_log = logging.getLogger("discord.state")
    if not any(isinstance(f, _ChosenLimits) for f in state_log.filters):
        state_log.addFilter(_ChosenLimits())


class ImagineBot(commands.AutoShardedBot):
    """Interactions only: no privileged intents, no member or message cache (the bot stays small)."""

    def __init__(
        self,
        settings: Settings,
        service: ImagineService,
        *,
        identify_interval: float = IDENTIFY_INTERVAL,
        progress_interval: float = PROGRESS_INTERVAL,
    ) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.none(),
            help_command=None,
            allowed_mentions=NO_PINGS,  # the default of every send and edit; a message may name its requester
            max_messages=None,
            member_cache_flags=discord.MemberCacheFlags.none(),
            chunk_guilds_at_startup=False,
            guild_ready_timeout=0.0,  # without the guilds intent no GUILD_CREATE comes to wait for
        )
        self.settings = settings
        self.service = service
        self.identify_interval = identify_interval
        self.progress_interval = progress_interval
        self.identify_concurrency = 1

    async def setup_hook(self) -> None:
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        synced = await self.tree.sync()
        log.info("synced %d application commands", len(synced))

    async def launch_shards(self) -> None:
        # Discord recommends the shard count; the shards connect to DISCORD_GATEWAY_URL.
        if self.shard_count is None:
            self.shard_count, _, limits = await self.http.get_bot_gateway()
            self.identify_concurrency = max(1, int(limits.get("max_concurrency", 1)))
        await super().launch_shards()

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        # Discord takes ``max_concurrency`` IDENTIFYs per 5 s; the shards start one bucket at a time.
        if not initial and (shard_id or 0) % self.identify_concurrency == 0:
            await asyncio.sleep(self.identify_interval)


class DiscordFront:
    """The Discord bot as one of ``imagine``'s fronts."""

    name = "discord"
    stop_grace = 20.0  # on stop, jobs in flight get this long to finish and be delivered
    identify_interval = IDENTIFY_INTERVAL
    progress_interval = PROGRESS_INTERVAL

    def __init__(self, settings: Settings, service: ImagineService) -> None:
        self.settings = settings
        self.service = service
        self.bot: ImagineBot | None = None
        self._gateway: asyncio.Task[None] | None = None
        self._discord_py_before: tuple[str, yarl.URL] | None = None

    async def start(self) -> str:
        """Log in, sync the commands, connect every shard; return who and how many shards."""
        token = require(self.settings.discord_token, "DISCORD_TOKEN", "The Discord bot")
        self._discord_py_before = point_discord_py_at(
            self.settings.discord_api_base_url, self.settings.discord_gateway_url
        )
        quiet_expected_warnings()
        bot = self.bot = ImagineBot(
            self.settings,
            self.service,
            identify_interval=self.identify_interval,
            progress_interval=self.progress_interval,
        )
        try:
            await bot.login(token.get())
            self._gateway = asyncio.create_task(bot.connect(reconnect=True), name="imagine-discord-gateway")
            self._gateway.add_done_callback(_log_gateway_end)
            ready = asyncio.create_task(bot.wait_until_ready())
            done, _ = await asyncio.wait(
                {self._gateway, ready}, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
            if ready not in done:
                ready.cancel()
                if self._gateway in done:
                    self._gateway.result()  # raises what stopped it (a bad token, a refused intent)
                raise TimeoutError(f"Discord did not send READY within {READY_TIMEOUT:g} s")
        except BaseException:
            await self.stop()
            raise
        shards = bot.shard_count or 1
        return f"Discord as {bot.user} ({shards} shard{'s' if shards != 1 else ''})"

    async def stop(self) -> None:
        """Finish (or cancel and refund, telling the users) the jobs in flight, then disconnect."""
        bot, self.bot = self.bot, None
        if bot is None:
            return
        images = bot.get_cog("ImageCommands")
        if images is not None and bot.is_ready():
            await images.drain(self.stop_grace)  # type: ignore[attr-defined]
        await bot.close()
        if self._gateway is not None:
            self._gateway.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._gateway
            self._gateway = None
        if self._discord_py_before is not None:
            point_discord_py_at(*self._discord_py_before)
            self._discord_py_before = None


def _log_gateway_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the Discord connection ended: %s", task.exception())
