"""The Telegram front's wiring and lifecycle: every handler registered in one place, then long polling
or a webhook with a secret token, and a graceful stop that refunds what it cannot finish."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from urllib.parse import urlsplit

from telegram import BotCommand, BotCommandScopeChat, Update
from telegram.error import InvalidToken, TelegramError
from telegram.ext import (
    Application,
    BaseRateLimiter,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bots.telegram_ext.admin import (
    ban_command,
    budget_command,
    grant_command,
    setquota_command,
    stats_command,
    unban_command,
)
from bots.telegram_ext.context import PLATFORM, Bot, BotState, TelegramApp
from bots.telegram_ext.delivery import IMAGE_ACTIONS, RELAX, REROLL, VARIATIONS
from bots.telegram_ext.files import file_base_url
from bots.telegram_ext.handlers import (
    IMAGINE_CAPTION,
    error_handler,
    help_command,
    image_action_button,
    imagine_command,
    picture_prompt,
    prompt_message,
    quota_command,
    relax_button,
    reroll_button,
    start_command,
)
from bots.telegram_ext.notices import tell_refunded
from bots.telegram_ext.ratelimit import RATE_LIMIT_RETRIES, AnswersFirstRateLimiter, TelegramLimits
from gateway import ImagineError, ImagineService, Settings, SettingsError
from gateway.conversation import Conversation
from gateway.messages import RESTARTING
from gateway.settings import require

log = logging.getLogger("imagine.telegram")

CONNECTIONS = 32  # to the Bot API, for everything but getUpdates
POOL_TIMEOUT = 30.0  # seconds a request may wait for a free connection under a burst

PUBLIC_COMMANDS = (
    BotCommand("imagine", "make an image: /imagine a lighthouse at dusk --ar 16:9"),
    BotCommand("quota", "your credits for today"),
    BotCommand("help", "how to write a prompt, and the flags"),
    BotCommand("start", "what this bot does"),
)
ADMIN_COMMANDS = (
    BotCommand("setquota", "admin: a user's daily allowance"),
    BotCommand("grant", "admin: bonus credits for a user"),
    BotCommand("ban", "admin: ban a user"),
    BotCommand("unban", "admin: lift a ban"),
    BotCommand("budget", "admin: this month's GPU budget"),
    BotCommand("stats", "admin: the last 24 hours"),
)


def build_application(
    settings: Settings, service: ImagineService, *, rate_limiter: BaseRateLimiter[int] | None = None
) -> TelegramApp:
    """The python-telegram-bot application with every handler registered, not yet started."""
    token = require(settings.telegram_token, "TELEGRAM_TOKEN", "The Telegram bot")
    application = (
        Application.builder()
        .token(token.get())
        .base_url(settings.telegram_api_base_url)
        .base_file_url(file_base_url(settings.telegram_api_base_url))
        .concurrent_updates(True)
        # httpcore's pool costs O(requests x connections) per request: PTB's 256 connections spend more
        # CPU on the pool than on the requests under a burst, and Telegram's rates need far fewer.
        .connection_pool_size(CONNECTIONS)
        .pool_timeout(POOL_TIMEOUT)
        .rate_limiter(TelegramLimits(rate_limiter or AnswersFirstRateLimiter(max_retries=RATE_LIMIT_RETRIES)))
        .context_types(ContextTypes(bot_data=BotState))
        .job_queue(None)
        .build()
    )
    state = application.bot_data
    state.service, state.settings = service, settings
    state.conversation = Conversation(service, PLATFORM)

    new_messages = filters.UpdateType.MESSAGE
    application.add_handlers(
        [
            CommandHandler("start", start_command, filters=new_messages),
            CommandHandler("help", help_command, filters=new_messages),
            CommandHandler("imagine", imagine_command, filters=new_messages),
            CommandHandler("quota", quota_command, filters=new_messages),
            CommandHandler("setquota", setquota_command, filters=new_messages),
            CommandHandler("budget", budget_command, filters=new_messages),
            CommandHandler("grant", grant_command, filters=new_messages),
            CommandHandler("ban", ban_command, filters=new_messages),
            CommandHandler("unban", unban_command, filters=new_messages),
            CommandHandler("stats", stats_command, filters=new_messages),
            MessageHandler(
                new_messages & filters.ChatType.PRIVATE & filters.TEXT & ~filters.COMMAND, prompt_message
            ),
            MessageHandler(
                new_messages
                & (filters.PHOTO | filters.Document.ALL)
                & (filters.CaptionRegex(IMAGINE_CAPTION) | (filters.ChatType.PRIVATE & filters.CAPTION)),
                picture_prompt,
            ),
            CallbackQueryHandler(reroll_button, pattern=f"^({REROLL}|{VARIATIONS}):"),
            CallbackQueryHandler(relax_button, pattern=f"^{RELAX}:[0-9a-f]+$"),
            CallbackQueryHandler(image_action_button, pattern=f"^[{''.join(IMAGE_ACTIONS)}][0-9]+:"),
        ]
    )
    application.add_error_handler(error_handler)
    return application


async def register_commands(bot: Bot, settings: Settings) -> None:
    """The command list clients show; admins also see the admin commands in their private chat.

    Only cosmetic: a failure is logged once and the bot runs on (users can still type the commands),
    rather than taking down the process and every other front ``imagine run`` serves with it.
    """
    try:
        await bot.set_my_commands(PUBLIC_COMMANDS)
    except TelegramError as exc:
        log.warning("could not register the command list with Telegram; running without it: %r", exc)
        return
    for admin in sorted(settings.admins):
        platform, _, ident = admin.partition(":")
        if platform != PLATFORM or not ident.lstrip("-").isdigit():
            continue
        try:
            await bot.set_my_commands(PUBLIC_COMMANDS + ADMIN_COMMANDS, scope=BotCommandScopeChat(int(ident)))
        except TelegramError as exc:  # the admin has not started a chat with the bot yet
            log.info("admin commands not shown to %s: %s", admin, exc)


def webhook_secret(settings: Settings) -> str:
    """``TELEGRAM_WEBHOOK_SECRET``, or one derived from the token: the same on every bot host behind a
    load balancer (a random one per start would lock the other hosts out)."""
    if settings.telegram_webhook_secret:
        return settings.telegram_webhook_secret.get()
    token = require(settings.telegram_token, "TELEGRAM_TOKEN", "The Telegram bot")
    return hashlib.sha256(b"imagine telegram webhook secret:" + token.get().encode()).hexdigest()


class TelegramFront:
    """The Telegram front as ``imagine`` runs it: ``await start()`` ... ``await stop()``."""

    name = "telegram"

    def __init__(
        self,
        settings: Settings,
        service: ImagineService,
        *,
        rate_limiter: BaseRateLimiter[int] | None = None,
        webhook_listen: str = "0.0.0.0",
        webhook_port: int | None = None,
        stop_grace: float = 30.0,
    ) -> None:
        self.settings = settings
        self.service = service
        self.rate_limiter = rate_limiter
        self.webhook_listen = webhook_listen
        self.webhook_port = settings.telegram_webhook_port if webhook_port is None else webhook_port
        self.stop_grace = stop_grace
        self.application: TelegramApp | None = None

    async def start(self) -> str:
        application = build_application(self.settings, self.service, rate_limiter=self.rate_limiter)
        try:
            await application.initialize()  # getMe: the bot's name, and a bad token fails here
        except InvalidToken:  # its message quotes the token
            raise SettingsError(
                "Telegram rejected TELEGRAM_TOKEN (401 Unauthorized); copy the token @BotFather gave the bot."
            ) from None
        self.application = application
        try:
            mode = await self._receive_updates(application)
            await application.start()
        except BaseException:
            await self.stop()
            raise
        bot = application.bot
        application.bot_data.conversation.on_recovered(lambda record: tell_refunded(bot, record))
        return f"Telegram as @{application.bot.username} ({mode})"

    async def _receive_updates(self, application: TelegramApp) -> str:
        """Register the commands, then long polling or the webhook; returns which, for the start-up line."""
        await register_commands(application.bot, self.settings)
        assert application.updater is not None
        allowed = [Update.MESSAGE, Update.CALLBACK_QUERY]
        url = self.settings.telegram_webhook_url
        if not url:
            await application.updater.start_polling(allowed_updates=allowed)
            return "polling"
        await application.updater.start_webhook(
            listen=self.webhook_listen,
            port=self.webhook_port,
            url_path=urlsplit(url).path.lstrip("/"),
            webhook_url=url,
            secret_token=webhook_secret(self.settings),
            allowed_updates=allowed,
        )
        parts = urlsplit(url)
        return f"webhook at {parts.scheme}://{parts.netloc}"

    async def stop(self) -> None:
        """Take no new updates; let jobs in flight finish for a while, then cancel (refund) the rest."""
        application, self.application = self.application, None
        if application is None:
            return
        await application.bot_data.conversation.close()  # the recovery notices' push loop
        if application.updater is not None and application.updater.running:
            await application.updater.stop()
        state = application.bot_data
        if state.handlers:
            await asyncio.wait(list(state.handlers), timeout=self.stop_grace)
        for job in list(state.in_flight.values()):
            with contextlib.suppress(ImagineError):
                await self.service.cancel(job.id, by=job.user_id, reason=RESTARTING)
        if application.running:
            await application.stop()
        await application.shutdown()
