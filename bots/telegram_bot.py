"""The Telegram bot: ``/imagine`` with a live status message, inline re-roll, ``/quota`` and admin commands.

Handlers are module-level coroutines that turn a Telegram update into the shared request, call the
gateway and render its answer; :func:`build_application` wires them in one place, and
:class:`TelegramFront` runs the application (long polling, or a webhook with a secret token). The
status message, the delivery and the restart notices are in :mod:`bots.telegram_ext`.
Every sentence a user reads comes from the gateway (errors, ``gateway.messages``); only the
Telegram-specific wording (command usage, button labels) lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from dataclasses import replace
from urllib.parse import urlsplit

from telegram import BotCommand, BotCommandScopeChat, Message, Update
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

from bots.telegram_ext.context import (
    PLATFORM,
    SOMETHING_WENT_WRONG,
    Bot,
    BotState,
    Context,
    TelegramApp,
    Where,
    job_id_of,
    user_of,
)
from bots.telegram_ext.delivery import (
    REROLL,
    VARIATIONS,
    deliver_and_settle,
    fits_photo_rules,  # noqa: F401  (the tests read it here)
    png_size,  # noqa: F401  (the tests read it here)
)
from bots.telegram_ext.notices import keep_telling_refunded, tell_refunded
from bots.telegram_ext.progress import follow, show
from bots.telegram_ext.ratelimit import (
    RATE_LIMIT_RETRIES,
    TEXT_LIMIT,  # noqa: F401  (the tests read it here)
    AnswersFirstRateLimiter,
    TelegramLimits,
)
from gateway import (
    ImageRequest,
    ImagineError,
    ImagineService,
    InvalidRequest,
    JobStatus,
    Settings,
    SettingsError,
    parse_prompt,
    parse_user,
)
from gateway.messages import HELP, RESTARTING, queue_text
from gateway.request import MAX_IMAGES
from gateway.settings import require

log = logging.getLogger("imagine.telegram")

COMMAND = re.compile(r"^/\S+")  # /imagine or /imagine@botname
WELCOME = "Hi! I turn a description into a picture with Stable Diffusion."
GONE = "That image is too old to re-roll; send /imagine again."


async def start_command(update: Update, context: Context) -> None:
    """``/start``: a short welcome with an example."""
    assert update.effective_message is not None
    await update.effective_message.reply_text(f"{WELCOME}\n\n{HELP}")


async def help_command(update: Update, context: Context) -> None:
    assert update.effective_message is not None
    await update.effective_message.reply_text(HELP)


async def quota_command(update: Update, context: Context) -> None:
    assert update.effective_message is not None and update.effective_user is not None
    service = context.bot_data.service
    state = await service.quota(user_of(update.effective_user.id))
    await update.effective_message.reply_text(service.quota_text(state))


async def imagine_command(update: Update, context: Context) -> None:
    """``/imagine <prompt --flags>`` (``/imagine@bot`` in groups)."""
    message = update.effective_message
    assert message is not None and message.text is not None
    prompt = COMMAND.sub("", message.text, count=1)
    await _imagine(update, context, prompt)


async def prompt_message(update: Update, context: Context) -> None:
    """Plain text in a private chat is a prompt."""
    assert update.effective_message is not None and update.effective_message.text is not None
    await _imagine(update, context, update.effective_message.text)


async def _imagine(update: Update, context: Context, text: str) -> None:
    message, user = update.effective_message, update.effective_user
    assert message is not None and user is not None
    job_id = job_id_of(update)
    if not await context.bot_data.first_time(job_id):
        return
    try:
        request = parse_prompt(text)
    except InvalidRequest as error:
        await message.reply_text(str(error))
        return
    await make_images(
        context, job_id=job_id, user_id=user_of(user.id), request=request, where=Where.of(message)
    )


async def reroll_button(update: Update, context: Context) -> None:
    """Re-roll (same request, new seed) or variations (same prompt, several new seeds)."""
    query = update.callback_query
    assert query is not None and query.data is not None
    job_id = job_id_of(update)
    if not await context.bot_data.first_time(job_id):
        return
    action, _, original_id = query.data.partition(":")
    original = await context.bot_data.service.find_job(original_id)
    message = query.message
    if original is None or not isinstance(message, Message):
        await query.answer(GONE, show_alert=True)
        return
    await query.answer()
    request = rerolled(original.request, action)
    await make_images(
        context, job_id=job_id, user_id=user_of(query.from_user.id), request=request, where=Where.of(message)
    )


def rerolled(request: ImageRequest, action: str) -> ImageRequest:
    """The request a button asks for: the same with a new seed, or ``MAX_IMAGES`` of them for variations."""
    request = request.with_seed(None)
    if action == VARIATIONS:
        request = replace(request, num_images=MAX_IMAGES)
    return request


async def error_handler(update: object, context: Context) -> None:
    """Show a gateway refusal as its sentence; log anything else and say something went wrong."""
    error = context.error
    if not isinstance(error, ImagineError):
        log.error("handler failed", exc_info=error)
    if isinstance(update, Update) and update.effective_message is not None:
        text = str(error) if isinstance(error, ImagineError) else SOMETHING_WENT_WRONG
        with contextlib.suppress(TelegramError):
            await update.effective_message.reply_text(text)


async def make_images(
    context: Context, *, job_id: str, user_id: str, request: ImageRequest, where: Where
) -> None:
    """Status message -> submit -> edits while queued and running -> the photo(s), then settle."""
    bot, state = context.bot, context.bot_data
    service = state.service
    # 1. Answer at once; the job's reply record points at this message, so a restart can tell the user.
    shown = queue_text(service.queue_length)
    status = await bot.send_message(
        where.chat_id, shown, reply_parameters=where.reply(), message_thread_id=where.thread_id
    )
    reply = {
        "chat_id": where.chat_id,
        "status_message_id": status.message_id,
        "message_id": where.reply_to,
        "thread_id": where.thread_id,
    }
    # 2. Reserve credits and queue (refusals cost nothing and replace the status text).
    try:
        job = await service.submit(user_id, request, job_id=job_id, reply=reply, confirm_delivery=True)
    except ImagineError as error:
        await show(status, str(error))
        return
    if job.duplicate:
        with contextlib.suppress(TelegramError):
            await status.delete()
        return
    with state.in_flight_while(job):
        # 3. Follow the job, editing the status message no faster than the chat allows.
        final = await follow(bot, job, status, shown, where)
        if final.status is JobStatus.FAILED:
            assert final.error is not None
            await show(status, str(final.error))
            return
        assert final.result is not None
        # 4. Post the image(s), then settle or refund.
        await deliver_and_settle(bot, service, job.id, final.result, where, status)


USAGE = {
    "setquota": "Usage: /setquota <user id> <images a day, or default>; "
    "or reply to the user's message with /setquota <n>.",
    "grant": "Usage: /grant <user id> <credits> (negative takes back); "
    "or reply to the user's message with /grant <credits>.",
    "ban": "Usage: /ban <user id> [reason]; or reply to the user's message with /ban [reason].",
    "unban": "Usage: /unban <user id>; or reply to the user's message with /unban.",
}


async def setquota_command(update: Update, context: Context) -> None:
    actor, target, args, message = _admin_call(update, context, "setquota")
    if len(args) != 1:
        raise InvalidRequest(USAGE["setquota"])
    allowance = None if args[0].lower() in ("default", "reset") else _whole_number(args[0], "setquota")
    await message.reply_text(await context.bot_data.service.set_allowance(actor, target, allowance))


async def grant_command(update: Update, context: Context) -> None:
    actor, target, args, message = _admin_call(update, context, "grant")
    if len(args) != 1:
        raise InvalidRequest(USAGE["grant"])
    credits = _whole_number(args[0], "grant")
    await message.reply_text(await context.bot_data.service.grant(actor, target, credits))


async def ban_command(update: Update, context: Context) -> None:
    actor, target, args, message = _admin_call(update, context, "ban")
    await message.reply_text(await context.bot_data.service.ban(actor, target, " ".join(args)))


async def unban_command(update: Update, context: Context) -> None:
    actor, target, args, message = _admin_call(update, context, "unban")
    if args:
        raise InvalidRequest(USAGE["unban"])
    await message.reply_text(await context.bot_data.service.unban(actor, target))


async def stats_command(update: Update, context: Context) -> None:
    assert update.effective_message is not None and update.effective_user is not None
    service = context.bot_data.service
    stats = await service.stats(user_of(update.effective_user.id))
    await update.effective_message.reply_text(service.stats_text(stats))


def _admin_call(update: Update, context: Context, command: str) -> tuple[str, str, list[str], Message]:
    """The caller, the user the command is about (an id, or the author of the replied-to message), the rest.

    A caller who is not an admin gets the gateway's refusal from the service call itself.
    """
    message, user = update.effective_message, update.effective_user
    assert message is not None and user is not None
    args = list(context.args or [])
    replied = message.reply_to_message
    is_topic_root = (  # in a forum topic every message "replies" to the topic's first message
        message.is_topic_message and replied is not None and replied.message_id == message.message_thread_id
    )
    if replied is not None and not is_topic_root and replied.from_user and not replied.from_user.is_bot:
        return user_of(user.id), user_of(replied.from_user.id), args, message
    if not args:
        raise InvalidRequest(USAGE[command])
    return user_of(user.id), parse_user(args[0], PLATFORM), args[1:], message


def _whole_number(raw: str, command: str) -> int:
    if not re.fullmatch(r"[+-]?\d{1,9}", raw):
        raise InvalidRequest(USAGE[command])
    return int(raw)


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

    new_messages = filters.UpdateType.MESSAGE
    application.add_handlers(
        [
            CommandHandler("start", start_command, filters=new_messages),
            CommandHandler("help", help_command, filters=new_messages),
            CommandHandler("imagine", imagine_command, filters=new_messages),
            CommandHandler("quota", quota_command, filters=new_messages),
            CommandHandler("setquota", setquota_command, filters=new_messages),
            CommandHandler("grant", grant_command, filters=new_messages),
            CommandHandler("ban", ban_command, filters=new_messages),
            CommandHandler("unban", unban_command, filters=new_messages),
            CommandHandler("stats", stats_command, filters=new_messages),
            MessageHandler(
                new_messages & filters.ChatType.PRIVATE & filters.TEXT & ~filters.COMMAND, prompt_message
            ),
            CallbackQueryHandler(reroll_button, pattern=f"^({REROLL}|{VARIATIONS}):"),
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
        self._recovery: asyncio.Task[None] | None = None

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
            await tell_refunded(application.bot, self.service)
        except BaseException:
            await self.stop()
            raise
        self._recovery = asyncio.create_task(
            keep_telling_refunded(application.bot, self.service), name="telegram-refunds"
        )
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
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
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
