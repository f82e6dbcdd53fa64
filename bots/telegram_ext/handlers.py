"""The public commands as typed module-level coroutines: ``/imagine`` (also on or in reply to a picture),
the re-roll and U/V buttons, ``/quota``, ``/help``, ``/start``, and the error handler that shows a
gateway refusal as its sentence.

Each turns a Telegram update into the shared request, calls the gateway and renders its answer; one
job's path from the status message to the photo is :func:`make_images`, whose steps (following the
job, delivering and settling) are separate functions in ``progress`` and ``delivery``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

from telegram import (
    CallbackQuery,
    Document,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    PhotoSize,
    Update,
)
from telegram.error import TelegramError

from bots.telegram_ext.context import SOMETHING_WENT_WRONG, Context, Where, job_id_of, user_of
from bots.telegram_ext.delivery import IMAGE_ACTIONS, RELAX, VARIATIONS, deliver_and_settle
from bots.telegram_ext.files import download_picture, picture_of
from bots.telegram_ext.progress import follow, quietly, show
from gateway import ImageRequest, ImagineError, InvalidRequest, JobStatus, OutOfCredits, parse_prompt
from gateway.conversation import RELAX_GONE
from gateway.messages import HELP, queue_text
from gateway.picture import action_request

log = logging.getLogger("imagine.telegram")

COMMAND = re.compile(r"^/\S+")  # /imagine or /imagine@botname
IMAGINE_CAPTION = re.compile(r"^/imagine(?:@(\w+))?(?=\s|$)")  # a picture's caption that asks for an image
WELCOME = "Hi! I turn a description into a picture with Stable Diffusion."
GONE = "That image is no longer kept; send /imagine to make a new one."


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
    """``/imagine <prompt --flags>`` (``/imagine@bot`` in groups); in reply to a picture, an image prompt."""
    message = update.effective_message
    assert message is not None and message.text is not None
    prompt = COMMAND.sub("", message.text, count=1)
    await _imagine(update, context, prompt, picture_of(message.reply_to_message))


async def picture_prompt(update: Update, context: Context) -> None:
    """A photo or file whose caption is ``/imagine <prompt>`` (in a private chat: any caption)."""
    message = update.effective_message
    assert message is not None and message.caption is not None
    command = IMAGINE_CAPTION.match(message.caption)
    if command is not None and command[1] is not None and command[1].lower() != context.bot.username.lower():
        return  # /imagine@another_bot
    prompt = message.caption[command.end() :] if command is not None else message.caption
    await _imagine(update, context, prompt, picture_of(message))


async def prompt_message(update: Update, context: Context) -> None:
    """Plain text in a private chat is a prompt."""
    assert update.effective_message is not None and update.effective_message.text is not None
    await _imagine(update, context, update.effective_message.text)


async def _imagine(
    update: Update, context: Context, text: str, picture: PhotoSize | Document | None = None
) -> None:
    message, user = update.effective_message, update.effective_user
    assert message is not None and user is not None
    job_id = job_id_of(update)
    if not await context.bot_data.first_time(job_id):
        return
    try:
        image = None
        if picture is not None:
            image = await download_picture(context.bot, picture.file_id, declared=picture.file_size)
        # Decoding a picture takes a while: off the event loop, as every front does.
        request = (
            await asyncio.to_thread(parse_prompt, text, image=image)
            if image is not None
            else parse_prompt(text)
        )
    except InvalidRequest as error:
        await message.reply_text(str(error))
        return
    await make_images(
        context, job_id=job_id, user_id=user_of(user.id), request=request, where=Where.of(message)
    )


async def _first_press(update: Update, context: Context) -> tuple[CallbackQuery, str, str] | None:
    """The pressed button's query, its data and the new job's id; None for a press seen before."""
    query = update.callback_query
    assert query is not None and query.data is not None
    job_id = job_id_of(update)
    if not await context.bot_data.first_time(job_id):
        return None
    return query, query.data, job_id


async def reroll_button(update: Update, context: Context) -> None:
    """Re-roll (same request, new seed) or variations (same prompt, several new seeds)."""
    if (pressed := await _first_press(update, context)) is None:
        return
    query, data, job_id = pressed
    action, _, original_id = data.partition(":")
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


async def relax_button(update: Update, context: Context) -> None:
    """Under an out-of-credits sentence: the same request in the relax lane."""
    if (pressed := await _first_press(update, context)) is None:
        return
    query, data, job_id = pressed
    user_id = user_of(query.from_user.id)
    request = context.bot_data.conversation.relax_offers.take(user_id, data.partition(":")[2])
    message = query.message
    if request is None or not isinstance(message, Message):
        await query.answer(RELAX_GONE, show_alert=True)
        return
    await query.answer()
    await quietly(message.edit_reply_markup(reply_markup=None))  # the button asks once
    await make_images(
        context, job_id=job_id, user_id=user_id, request=request.as_relax(), where=Where.of(message)
    )


async def image_action_button(update: Update, context: Context) -> None:
    """``U2`` (upscale the second image), ``V1`` (vary the first), ``S1`` (vary it strongly).

    The image comes back from Telegram by the file id its delivery kept in the job's reply record.
    """
    if (pressed := await _first_press(update, context)) is None:
        return
    query, data, job_id = pressed
    button, _, source_id = data.partition(":")
    action, index = IMAGE_ACTIONS[button[0]], int(button[1:]) - 1
    source = await context.bot_data.service.find_job(source_id)
    files = (source.reply or {}).get("files", []) if source is not None else []
    message = query.message
    if source is None or not isinstance(message, Message) or not 0 <= index < len(files):
        await query.answer(GONE, show_alert=True)
        return
    await query.answer()
    try:
        png = await download_picture(context.bot, files[index])
        request = await asyncio.to_thread(action_request, source.request, png, action, index)
    except InvalidRequest as error:
        await message.reply_text(str(error))
        return
    await make_images(
        context, job_id=job_id, user_id=user_of(query.from_user.id), request=request, where=Where.of(message)
    )


def rerolled(request: ImageRequest, action: str) -> ImageRequest:
    """The request a button asks for: the same with a new seed, or ``MAX_IMAGES`` of them for variations."""
    return request.variations() if action == VARIATIONS else request.reroll()


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
    except OutOfCredits as error:
        # With the relax lane open, a button under the sentence asks again there, for free.
        key = state.conversation.relax_offers.keep(user_id, request) if error.relax_offer else None
        markup = None
        if key is not None:
            button = InlineKeyboardButton("🐢 Relax", callback_data=f"{RELAX}:{key}")
            markup = InlineKeyboardMarkup([[button]])
        await quietly(status.edit_text(str(error), reply_markup=markup))
        return
    except ImagineError as error:
        await show(status, str(error))
        return
    if job.duplicate:
        with contextlib.suppress(TelegramError):
            await status.delete()
        return
    with state.in_flight_while(job):
        # 3. Follow the job, editing the status message no faster than the chat allows.
        final = await follow(bot, state.conversation, job, status, shown, where)
        if final.status is JobStatus.FAILED:
            assert final.error is not None
            await show(status, str(final.error))
            return
        assert final.result is not None
        # 4. Post the image(s), then settle or refund.
        await deliver_and_settle(bot, state.conversation, job, where, status)
