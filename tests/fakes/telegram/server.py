"""A fake Telegram Bot API server on loopback, for end-to-end tests of the Telegram front.

The real python-telegram-bot client talks to it over HTTP as it would to api.telegram.org:

    async with FakeTelegram() as fake:
        app = (
            ApplicationBuilder()
            .token(fake.token)
            .base_url(fake.base_url)
            .build()
        )
        ...
        update = fake.send_message(42, "/imagine a fox")
        call = await fake.wait_for_call("sendPhoto")
        assert fake.bot_messages(42)[-1].photo is not None

It keeps what Telegram keeps (updates until the bot confirms them, chats, messages, uploaded files, callback
queries, commands, the webhook), answers with the objects and the error descriptions Telegram answers with,
and enforces the limits that cheaply show bugs: photo size and dimensions, text and caption length, callback
data length, "message is not modified", unknown chats and messages. It carries only the methods the bots
call, and refuses any parse_mode: the bots send plain text. Every call is recorded.
"""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp
from aiohttp import web

from tests.fakes.telegram.records import JSON, REGISTERED_SECRET, WebhookDelivery, _Registered
from tests.fakes.telegram.routes import BotApiRoutes


class FakeTelegram(BotApiRoutes):
    """The fake Bot API. Use as `async with FakeTelegram() as fake:` or `await start()` / `await close()`."""

    # ---------------------------------------------------------------------------------------------- life

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle_method)
        app.router.add_get("/file/bot{token}/{path:.+}", self._handle_file)
        # handler_cancellation: a long poll whose client went away (PTB cancels it at stop) ends at once.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        await self._listen(0)

    async def close(self) -> None:
        self._closing = True
        self._notify()
        if self._reopening is not None:
            self._reopening.cancel()
            await asyncio.gather(self._reopening, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        assert self._port is not None, "FakeTelegram is not started"
        return self._port

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """python-telegram-bot's `base_url` form: the token is appended (TELEGRAM_API_BASE_URL)."""
        return f"{self.root_url}/bot"

    @property
    def base_file_url(self) -> str:
        """Where files ``getFile`` describes are downloaded (the token and the file_path are appended)."""
        return f"{self.root_url}/file/bot"

    def method_url(self, method: str) -> str:
        return f"{self.base_url}{self.token}/{method}"

    # ---------------------------------------------------------------------------------------- webhooks

    async def post_webhook_update(
        self,
        update: JSON,
        *,
        url: str | None = None,
        secret_token: str | _Registered | None = REGISTERED_SECRET,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> int:
        """POST `update` as Telegram does to `url` (default: the registered webhook) with the
        X-Telegram-Bot-Api-Secret-Token header: the registered secret, the given one, or none (None).
        Returns the HTTP status."""
        hook = self._webhook
        if url is None:
            if hook is None:
                raise LookupError("no webhook is set; pass url=")
            url = hook.url
        if secret_token is REGISTERED_SECRET:
            secret_token = hook.secret_token if hook is not None else None
        headers = {"Content-Type": "application/json"}
        if isinstance(secret_token, str):
            headers["X-Telegram-Bot-Api-Secret-Token"] = secret_token
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.post(url, data=json.dumps(update), headers=headers) as response,
        ):
            await response.read()
            status = response.status
        sent_secret = secret_token if isinstance(secret_token, str) else None
        self.webhook_deliveries.append(WebhookDelivery(update["update_id"], url, sent_secret, status))
        return status

    async def deliver_webhook_updates(self) -> list[int]:
        """Push every pending update to the registered webhook, in order, as Telegram does; those answered
        2xx are done, the others stay pending. Returns the statuses."""
        if self._webhook is None:
            raise LookupError("no webhook is set")
        statuses = []
        for queued in list(self._updates):
            status = await self.post_webhook_update(queued.update)
            statuses.append(status)
            if 200 <= status < 300:
                self._updates.remove(queued)
        return statuses


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a bot's own webhook server in tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
