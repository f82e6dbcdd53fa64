"""The Telegram bot: ``/imagine`` with a live status message, inline re-roll, ``/quota`` and admin commands.

Handlers are module-level coroutines that turn a Telegram update into the shared request, call the
gateway and render its answer; :func:`build_application` wires them in one place, and
:class:`TelegramFront` runs the application (long polling, or a webhook with a secret token).
Every sentence a user reads comes from the gateway (errors, ``gateway.messages``); only the
Telegram-specific wording (command usage, button labels) lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeAlias, TypeVar
from urllib.parse import urlsplit

import httpx
from telegram import (
    BotCommand,
    BotCommandScopeChat,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    InputMediaDocument,
    InputMediaPhoto,
    Message,
    ReplyParameters,
    Update,
)
from telegram.constants import ChatAction, ChatType
from telegram.error import BadRequest, InvalidToken, NetworkError, TelegramError
from telegram.ext import (
    Application,
    BaseRateLimiter,
    CallbackContext,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    ExtBot,
    MessageHandler,
    filters,
)

from bots.telegram_ext.ratelimit import (
    CAPTION_LIMIT,
    RATE_LIMIT_RETRIES,
    TEXT_LIMIT,  # noqa: F401  (the tests read it here)
    AnswersFirstRateLimiter,
    TelegramLimits,
)
from gateway import (
    DeliveryRefused,
    ImageRequest,
    ImagineError,
    ImagineService,
    InvalidRequest,
    Job,
    JobResult,
    JobStatus,
    JobUpdate,
    Settings,
    SettingsError,
    parse_prompt,
    parse_user,
)
from gateway.messages import HELP, RESTARTING, progress_text, queue_text, result_caption
from gateway.request import MAX_IMAGES
from gateway.settings import require

log = logging.getLogger("imagine.telegram")
_Sent = TypeVar("_Sent")

PLATFORM = "telegram"
CALLBACK_DATA_LIMIT = 64  # bytes
PHOTO_MAX_BYTES = 10 * 1024 * 1024  # larger photos must go as documents
PHOTO_MAX_SIDES = 10_000  # width + height
PHOTO_MAX_RATIO = 20
EDIT_EVERY_PRIVATE = 2.0  # seconds between status edits: about one message a second per chat
EDIT_EVERY_GROUP = 6.0  # groups allow about 20 messages a minute
CHAT_ACTION_EVERY = 4.5  # a chat action shows for 5 s
RECOVERY_CHECK_EVERY = 15.0
SEND_ATTEMPTS = 3  # tries of a result send whose request never reached Telegram
SEND_RETRY_PAUSE = 1.0  # seconds before the second try; doubles after
RESULT_READ_TIMEOUT = 30.0  # seconds for Telegram's answer to an upload; a late answer is ambiguous
CONNECTIONS = 32  # to the Bot API, for everything but getUpdates
POOL_TIMEOUT = 30.0  # seconds a request may wait for a free connection under a burst
REMEMBERED_UPDATES = 10_000
REROLL, VARIATIONS = "reroll", "vary"
COMMAND = re.compile(r"^/\S+")  # /imagine or /imagine@botname

WELCOME = "Hi! I turn a description into a picture with Stable Diffusion."
GONE = "That image is too old to re-roll; send /imagine again."
SOMETHING_WENT_WRONG = "Something went wrong on our side; please try again in a minute."
MORE_LIKE_THESE = "More like these?"

USAGE = {
    "setquota": "Usage: /setquota <user id> <images a day, or default>; "
    "or reply to the user's message with /setquota <n>.",
    "grant": "Usage: /grant <user id> <credits> (negative takes back); "
    "or reply to the user's message with /grant <credits>.",
    "ban": "Usage: /ban <user id> [reason]; or reply to the user's message with /ban [reason].",
    "unban": "Usage: /unban <user id>; or reply to the user's message with /unban.",
}

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


class BotState:
    """What every handler reads from ``context.bot_data``; filled in once by :func:`build_application`."""

    service: ImagineService
    settings: Settings

    def __init__(self) -> None:
        # Update ids this process has handled: a redelivered update is answered once.
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.in_flight: dict[str, Job] = {}
        self.handlers: set[asyncio.Task[Any]] = set()  # handlers following a job, for a graceful stop


Bot: TypeAlias = ExtBot[int]
Context: TypeAlias = CallbackContext[Bot, dict[Any, Any], dict[Any, Any], BotState]
TelegramApp: TypeAlias = Application[Bot, Context, dict[Any, Any], dict[Any, Any], BotState, None]


@dataclass(frozen=True)
class Where:
    """Where to answer: the chat, the forum topic and the message to reply to."""

    chat_id: int
    reply_to: int | None
    thread_id: int | None
    group: bool

    @classmethod
    def of(cls, message: Message) -> Where:
        return cls(
            chat_id=message.chat_id,
            reply_to=message.message_id,
            thread_id=message.message_thread_id if message.is_topic_message else None,
            group=message.chat.type != ChatType.PRIVATE,
        )

    def reply(self) -> ReplyParameters | None:
        if self.reply_to is None:
            return None
        return ReplyParameters(self.reply_to, allow_sending_without_reply=True)


# --- public commands -----------------------------------------------------------------------------


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
    if not await _claim(context.bot_data, job_id):
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
    if not await _claim(context.bot_data, job_id):
        return
    action, _, original_id = query.data.partition(":")
    original = await context.bot_data.service.find_job(original_id)
    message = query.message
    if original is None or not isinstance(message, Message):
        await query.answer(GONE, show_alert=True)
        return
    await query.answer()
    request = original.request.with_seed(None)
    if action == VARIATIONS:
        request = replace(request, num_images=MAX_IMAGES)
    await make_images(
        context, job_id=job_id, user_id=user_of(query.from_user.id), request=request, where=Where.of(message)
    )


# --- admin commands ------------------------------------------------------------------------------


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


async def error_handler(update: object, context: Context) -> None:
    """Show a gateway refusal as its sentence; log anything else and say something went wrong."""
    error = context.error
    if not isinstance(error, ImagineError):
        log.error("handler failed", exc_info=error)
    if isinstance(update, Update) and update.effective_message is not None:
        text = str(error) if isinstance(error, ImagineError) else SOMETHING_WENT_WRONG
        with contextlib.suppress(TelegramError):
            await update.effective_message.reply_text(text)


# --- one job, from the status message to the photo -----------------------------------------------


def user_of(telegram_user_id: int) -> str:
    return f"{PLATFORM}:{telegram_user_id}"


def job_id_of(update: Update) -> str:
    """The job id is the update id: Telegram redelivering an update must not charge twice."""
    return f"{PLATFORM}:{update.update_id}"


async def _claim(state: BotState, job_id: str) -> bool:
    """True the first time this update is seen, here or (for a restarted bot) in the database."""
    if job_id in state.seen:
        return False
    state.seen[job_id] = None
    while len(state.seen) > REMEMBERED_UPDATES:
        state.seen.popitem(last=False)
    return await state.service.find_job(job_id) is None


async def make_images(
    context: Context, *, job_id: str, user_id: str, request: ImageRequest, where: Where
) -> None:
    """Status message -> submit -> edits while queued and running -> the photo(s), then settle."""
    bot, service = context.bot, context.bot_data.service
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
        await _edit(status, str(error))
        return
    if job.duplicate:
        with contextlib.suppress(TelegramError):
            await status.delete()
        return
    context.bot_data.in_flight[job.id] = job
    handler = asyncio.current_task()
    assert handler is not None
    context.bot_data.handlers.add(handler)
    try:
        # 3. Follow the job, editing the status message no faster than the chat allows.
        final = await _follow(bot, job, status, shown, where)
        if final.status is JobStatus.FAILED:
            assert final.error is not None
            await _edit(status, str(final.error))
            return
        assert final.result is not None
        # 4. Post the image(s) if the job is still ours to deliver (no one refunded it meanwhile).
        try:
            await service.claim_delivery(job.id)
        except DeliveryRefused as refused:
            await _edit(status, str(refused))
            return
        # 5. Settle: charged once Telegram took the image, or may have; refunded only if it certainly did not.
        try:
            await send_result(bot, final.result, where)
        except TelegramError as exc:
            if not telegram_refused(exc):
                log.warning(
                    "Telegram may have taken the images of %s (%r); charged as delivered", job.id, exc
                )
            else:
                log.warning("Telegram did not take the images of %s: %r", job.id, exc)
                refund = await service.delivery_failed(job.id, "Telegram did not accept the image")
                await _edit(status, str(refund) if refund else SOMETHING_WENT_WRONG)
                return
        await service.delivered(job.id)
        with contextlib.suppress(TelegramError):
            await status.delete()
    finally:
        context.bot_data.in_flight.pop(job.id, None)
        context.bot_data.handlers.discard(handler)


async def _follow(bot: Bot, job: Job, status: Message, shown: str, where: Where) -> JobUpdate:
    """Edit the status with queue position and progress until the job ends; return its last update."""
    latest = job.snapshot()
    changed, finished = asyncio.Event(), asyncio.Event()

    async def read_updates() -> None:
        nonlocal latest
        async for update in job.updates():
            latest = update
            changed.set()
        finished.set()

    reader = asyncio.create_task(read_updates())
    every = EDIT_EVERY_GROUP if where.group else EDIT_EVERY_PRIVATE
    last_action: float | None = None
    try:
        while not finished.is_set():
            await changed.wait()
            changed.clear()
            update = latest
            if update.status.finished:
                break
            now = time.monotonic()
            if update.status is JobStatus.RUNNING and (
                last_action is None or (not where.group and now - last_action >= CHAT_ACTION_EVERY)
            ):
                last_action = now
                action = bot.send_chat_action(
                    where.chat_id, ChatAction.UPLOAD_PHOTO, message_thread_id=where.thread_id
                )
                await _unless_finished(action, finished)
            text = status_text(update)
            if text != shown:
                shown = text
                await _unless_finished(status.edit_text(text), finished)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(finished.wait(), every)
        await reader
        return latest
    finally:
        reader.cancel()


def status_text(update: JobUpdate) -> str:
    if update.status is JobStatus.QUEUED:
        return queue_text(update.position)
    return progress_text(update.step, update.total_steps)


def result_keyboard(job_id: str) -> InlineKeyboardMarkup | None:
    buttons = [
        InlineKeyboardButton("🎲 Re-roll", callback_data=f"{REROLL}:{job_id}"),
        InlineKeyboardButton(f"🔀 Variations ×{MAX_IMAGES}", callback_data=f"{VARIATIONS}:{job_id}"),
    ]
    if any(len(str(b.callback_data).encode()) > CALLBACK_DATA_LIMIT for b in buttons):
        return None
    return InlineKeyboardMarkup([buttons])


async def send_result(bot: Bot, result: JobResult, where: Where) -> list[Message]:
    """One photo with caption and keyboard, or an album with the keyboard on a follow-up message.

    Images that break Telegram's photo rules go as documents (PNG files) instead.
    """
    images = result.images
    caption = result_caption(result, limit=CAPTION_LIMIT)
    as_photos = all(fits_photo_rules(png) for png in images)
    keyboard = result_keyboard(result.job_id)
    names = [f"imagine-{seed}.png" for seed in result.seeds]
    names += [f"imagine-{i + 1}.png" for i in range(len(names), len(images))]
    common: dict[str, Any] = {
        "reply_parameters": where.reply(),
        "message_thread_id": where.thread_id,
        "read_timeout": RESULT_READ_TIMEOUT,
    }
    if len(images) == 1:
        upload = InputFile(images[0], filename=names[0])
        if as_photos:
            sent = await _until_sent(
                lambda: bot.send_photo(
                    where.chat_id, upload, caption=caption, reply_markup=keyboard, **common
                )
            )
        else:
            sent = await _until_sent(
                lambda: bot.send_document(
                    where.chat_id, upload, caption=caption, reply_markup=keyboard, **common
                )
            )
        return [sent]
    media: list[InputMediaPhoto] | list[InputMediaDocument]
    if as_photos:
        media = [
            InputMediaPhoto(png, caption=caption if i == 0 else None, filename=names[i])
            for i, png in enumerate(images)
        ]
    else:
        media = [
            InputMediaDocument(png, caption=caption if i == len(images) - 1 else None, filename=names[i])
            for i, png in enumerate(images)
        ]
    album = list(await _until_sent(lambda: bot.send_media_group(where.chat_id, media, **common)))
    if keyboard is not None:
        try:  # the images are delivered: a lost keyboard must not refund them
            follow_up = await bot.send_message(
                where.chat_id,
                MORE_LIKE_THESE,
                reply_markup=keyboard,
                reply_parameters=ReplyParameters(album[0].message_id, allow_sending_without_reply=True),
                message_thread_id=where.thread_id,
            )
            album.append(follow_up)
        except TelegramError as exc:
            log.warning("could not send the buttons under the album of %s: %s", result.job_id, exc)
    return album


async def _until_sent(send: Callable[[], Awaitable[_Sent]]) -> _Sent:
    """One result send, tried again (a bounded number of times) only while its request never left.

    A request that may have reached Telegram is not repeated: the photo would show twice. Flood
    waits are the rate limiter's to retry, not this loop's.
    """
    pause = SEND_RETRY_PAUSE
    for attempt in range(1, SEND_ATTEMPTS):
        try:
            return await send()
        except NetworkError as exc:
            if not never_sent(exc):
                raise
            log.info("Telegram could not be reached (try %d of %d): %r", attempt, SEND_ATTEMPTS, exc)
        await asyncio.sleep(pause)
        pause *= 2
    return await send()


def never_sent(error: TelegramError) -> bool:
    """True when the request never left this process: no connection, or none free in the pool.

    python-telegram-bot raises these from httpx's own exceptions; a test that takes the fake Telegram
    off the network fails loudly if it stops doing so.
    """
    return isinstance(error.__cause__, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def telegram_refused(error: TelegramError) -> bool:
    """True when Telegram certainly did not post the message, so a refund gives nothing away free.

    Telegram answering with a refusal (400 Bad Request, 403 Forbidden, a flood wait we did not wait
    out) or the request never leaving is certain; a timeout, a dropped connection or a 5xx after the
    upload went out is not: Telegram may have posted it.
    """
    if isinstance(error, BadRequest) or not isinstance(error, NetworkError):
        return True
    return never_sent(error)


def png_size(png: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG header, without decoding the image."""
    if len(png) < 24 or png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)


def fits_photo_rules(png: bytes) -> bool:
    """Telegram's sendPhoto rules: at most 10 MB, width + height at most 10000, ratio at most 20."""
    size = png_size(png)
    if size is None or len(png) > PHOTO_MAX_BYTES:
        return False
    width, height = size
    if width <= 0 or height <= 0:
        return False
    return width + height <= PHOTO_MAX_SIDES and max(width, height) / min(width, height) <= PHOTO_MAX_RATIO


async def _edit(status: Message, text: str) -> None:
    await _quietly(status.edit_text(text))


async def _unless_finished(call: Awaitable[object], finished: asyncio.Event) -> None:
    """A progress edit or chat action, dropped if the job ends while it waits for the rate limiter."""
    sending = asyncio.ensure_future(_quietly(call))
    ended = asyncio.ensure_future(finished.wait())
    try:
        await asyncio.wait((sending, ended), return_when=asyncio.FIRST_COMPLETED)
    finally:
        sending.cancel()
        ended.cancel()
        await asyncio.gather(sending, ended, return_exceptions=True)


async def _quietly(call: Awaitable[object]) -> None:
    """Status edits and chat actions are best effort: a failed one must not lose the image."""
    try:
        await call
    except TelegramError as exc:
        log.debug("status update failed: %s", exc)


async def tell_refunded(bot: Bot, service: ImagineService) -> int:
    """Tell each user whose job a restart refunded: edit its status message, or send a new message."""
    told = 0
    for record in await service.take_recovered(f"{PLATFORM}:"):
        reply = record.reply or {}
        chat_id = reply.get("chat_id")
        if chat_id is None:
            continue
        text = record.error or "Imagine restarted while making your image; your credits were refunded."
        if (status_id := reply.get("status_message_id")) is not None:
            try:
                await bot.edit_message_text(text, chat_id=chat_id, message_id=status_id)
                told += 1
                continue
            except TelegramError as exc:
                log.debug("could not edit status message of %s: %s", record.id, exc)
        reply_to = reply.get("message_id")
        try:
            await bot.send_message(
                chat_id,
                text,
                reply_parameters=(
                    ReplyParameters(reply_to, allow_sending_without_reply=True) if reply_to else None
                ),
                message_thread_id=reply.get("thread_id"),
            )
            told += 1
        except TelegramError as exc:
            log.warning("could not tell %s about the refund of %s: %s", record.user_id, record.id, exc)
    return told


# --- wiring --------------------------------------------------------------------------------------


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
        self._recovery = asyncio.create_task(self._tell_refunded_later(), name="telegram-refunds")
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

    async def _tell_refunded_later(self) -> None:
        """Jobs another (dead) process left open are refunded by the service's heartbeat; tell them too."""
        assert self.application is not None
        while True:
            await asyncio.sleep(RECOVERY_CHECK_EVERY)
            try:
                await tell_refunded(self.application.bot, self.service)
            except Exception:
                log.exception("telling users about refunds failed")

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
