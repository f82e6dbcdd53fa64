"""The fake Bot API server, driven through the real python-telegram-bot client."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from PIL import Image
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, InputMediaPhoto, Message, Update
from telegram.constants import ChatAction, ParseMode
from telegram.error import BadRequest, Conflict, InvalidToken, RetryAfter
from telegram.ext import (
    AIORateLimiter,
    Application,
    ApplicationBuilder,
    BaseHandler,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from tests.fakes.telegram_server import (
    NOT_MODIFIED,
    PHOTO_INVALID_DIMENSIONS,
    QUERY_TOO_OLD,
    FakeTelegram,
    free_port,
)

CHAT = 4242


def png(width: int, height: int, color: tuple[int, int, int] = (200, 80, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


def build_app(
    fake: FakeTelegram, *, rate_limiter: AIORateLimiter | None = None
) -> Application[Any, Any, Any, Any, Any, Any]:
    builder: Any = (  # ApplicationBuilder's generics change with each call
        ApplicationBuilder().token(fake.token).base_url(fake.base_url).concurrent_updates(True)
    )
    if rate_limiter is not None:
        builder = builder.rate_limiter(rate_limiter)
    app: Application[Any, Any, Any, Any, Any, Any] = builder.build()
    return app


@asynccontextmanager
async def polling(
    fake: FakeTelegram,
    *handlers: BaseHandler[Any, Any, Any],
    rate_limiter: AIORateLimiter | None = None,
) -> AsyncIterator[Application[Any, Any, Any, Any, Any, Any]]:
    app = build_app(fake, rate_limiter=rate_limiter)
    for handler in handlers:
        app.add_handler(handler)
    await app.initialize()
    await app.start()
    # poll_interval=0: the next getUpdates goes out at once; stop() cancels the pending long poll.
    await app.updater.start_polling(poll_interval=0.0, timeout=10)  # type: ignore[union-attr]
    try:
        yield app
    finally:
        await app.updater.stop()  # type: ignore[union-attr]
        await app.stop()
        await app.shutdown()


async def test_start_command_reaches_its_handler_and_the_reply_appears(fake: FakeTelegram) -> None:
    async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None
        await update.effective_message.reply_text("Welcome to Imagine")

    async with polling(fake, CommandHandler("start", start)):
        update = fake.send_message(CHAT, "/start", username="alice")
        await fake.wait_for_call("sendMessage")
        view = fake.chat_view(CHAT)
        assert [(m.from_bot, m.body) for m in view] == [(False, "/start"), (True, "Welcome to Imagine")]
        # PTB's reply_text quotes the command only in groups (do_quote's default).
        assert view[1].reply_to_message_id is None
        assert view[1].message_id == view[0].message_id + 1
        # PTB confirms the update on its next poll.
        await fake.wait_until(lambda: not fake.pending_updates)
    assert fake.calls("getMe") and fake.calls("deleteWebhook")
    offsets = [call.params.get("offset") for call in fake.calls("getUpdates")]
    assert update["update_id"] + 1 in offsets
    # The long poll in flight at stop() was cancelled: the client went away before an answer.
    assert all(call.status in (200, None) for call in fake.calls("getUpdates"))


async def test_group_command_addressed_to_the_bot(fake: FakeTelegram) -> None:
    seen: list[tuple[list[str], int]] = []

    async def imagine(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_user is not None
        seen.append((list(context.args or []), update.effective_user.id))

    async with polling(fake, CommandHandler("imagine", imagine)):
        fake.send_message(-100123, "/imagine@imaginebot a fox", user_id=77, chat_type="supergroup")
        await fake.wait_until(lambda: bool(seen))
    assert seen == [(["a", "fox"], 77)]


async def test_photo_with_caption_and_keyboard_arrives_intact(fake: FakeTelegram) -> None:
    image = png(640, 384)
    sent: list[Message] = []

    async def imagine(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None and update.effective_chat is not None
        await update.effective_chat.send_action(ChatAction.UPLOAD_PHOTO)
        keyboard = InlineKeyboardMarkup(
            [
                [
                    InlineKeyboardButton("Re-roll", callback_data="reroll:1"),
                    InlineKeyboardButton("Variations", callback_data="vary:1"),
                ]
            ]
        )
        sent.append(
            await update.effective_message.reply_photo(
                image, caption="a fox <seed 42>", reply_markup=keyboard
            )
        )

    async with polling(fake, CommandHandler("imagine", imagine)):
        fake.send_message(CHAT, "/imagine a fox")
        call = await fake.wait_for_call("sendPhoto")

    assert call.ok
    assert call.file("photo").data == image
    assert call.params["caption"] == "a fox <seed 42>"
    assert call.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "reroll:1"
    assert fake.calls("sendChatAction", chat_id=CHAT)[0].params["action"] == "upload_photo"

    [message] = sent  # what PTB parsed from the fake's answer
    assert (message.photo[-1].width, message.photo[-1].height) == (640, 384)
    assert message.photo[0].width == 90 and message.caption == "a fox <seed 42>"
    assert message.reply_markup is not None

    shown = fake.bot_messages(CHAT)[-1]
    assert shown.photo is not None and shown.photo.data == image
    assert (shown.photo.width, shown.photo.height) == (640, 384)
    assert shown.caption == "a fox <seed 42>"
    assert [button.text for button in shown.buttons] == ["Re-roll", "Variations"]


async def test_status_message_is_edited_in_place(fake: FakeTelegram) -> None:
    errors: list[str] = []

    async def imagine(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None
        status = await update.effective_message.reply_text("Queued: position 2")
        await status.edit_text("Generating… 50%")
        await status.edit_text("Generating… 50%")  # unchanged: Telegram refuses

    async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        errors.append(str(context.error))

    async with polling(fake, CommandHandler("imagine", imagine)) as app:
        app.add_error_handler(on_error)
        fake.send_message(CHAT, "/imagine a fox")
        await fake.wait_for_call("editMessageText", n=2)
        await fake.wait_until(lambda: bool(errors))

    [status] = fake.bot_messages(CHAT)
    assert status.text == "Generating… 50%" and status.edit_count == 1
    assert [call.status for call in fake.calls("editMessageText")] == [200, 400]
    assert errors == [NOT_MODIFIED.removeprefix("Bad Request: ").capitalize()]


async def test_callback_query_reaches_its_handler_and_is_answered(fake: FakeTelegram) -> None:
    pressed: list[str] = []

    async def show(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None
        keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Re-roll", callback_data="reroll:7")]])
        await update.effective_message.reply_text("done", reply_markup=keyboard)

    async def reroll(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        assert query is not None and query.data is not None
        await query.answer("Re-rolling…")
        pressed.append(query.data)

    async with polling(fake, CommandHandler("show", show), CallbackQueryHandler(reroll, pattern=r"^reroll:")):
        fake.send_message(CHAT, "/show")
        await fake.wait_for_call("sendMessage")
        message = fake.bot_messages(CHAT)[-1]
        with pytest.raises(LookupError, match="no button"):
            fake.press_button(CHAT, message.message_id, "vary:7")
        update = fake.press_button(CHAT, message.message_id, "reroll:7")
        call = await fake.wait_for_call("answerCallbackQuery")

    assert pressed == ["reroll:7"]
    query_id = update["callback_query"]["id"]
    assert call.params == {"callback_query_id": query_id, "text": "Re-rolling…"}
    assert fake.callback_answer(query_id) == call.params


async def test_the_same_update_delivered_twice_reaches_the_handler_twice(fake: FakeTelegram) -> None:
    seen: list[int] = []

    async def prompt(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        seen.append(update.update_id)

    async with polling(fake, MessageHandler(filters.TEXT, prompt)):
        update = fake.send_message(CHAT, "a lighthouse at dusk")
        await fake.wait_until(lambda: len(seen) == 1)
        fake.resend_update(update)
        await fake.wait_until(lambda: len(seen) == 2)
        later = fake.send_message(CHAT, "a second prompt")
        await fake.wait_until(lambda: len(seen) == 3)
        await asyncio.sleep(0.1)
    assert seen == [update["update_id"], update["update_id"], later["update_id"]]


async def test_rate_limiter_waits_out_a_429_on_send_photo(
    fake: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without PTB_TIMEDELTA, building RetryAfter itself warns (PTBDeprecationWarning) in PTB 22.
    monkeypatch.setenv("PTB_TIMEDELTA", "1")
    image = png(64, 64)

    async def imagine(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None
        await update.effective_message.reply_photo(image, caption="a fox")

    fake.flood("sendPhoto", retry_after=1)
    limiter = AIORateLimiter(max_retries=1)
    async with polling(fake, CommandHandler("imagine", imagine), rate_limiter=limiter):
        fake.send_message(CHAT, "/imagine a fox")
        delivered = await fake.wait_for_call("sendPhoto", lambda call: call.ok, timeout=5)

    refused, accepted = fake.calls("sendPhoto")
    assert refused.status == 429 and refused.response is not None
    assert refused.response["parameters"] == {"retry_after": 1}
    assert accepted is delivered and accepted.received_at - refused.received_at >= 1.0
    assert accepted.file("photo").data == image
    assert fake.bot_messages(CHAT)[-1].photo is not None


async def test_without_a_rate_limiter_the_429_surfaces_as_retry_after(
    fake: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", "1")
    fake.add_chat(CHAT)
    fake.flood("sendMessage", retry_after=3)
    async with Bot(fake.token, base_url=fake.base_url) as bot:
        with pytest.raises(RetryAfter) as raised:
            await bot.send_message(CHAT, "hello")
        assert raised.value.retry_after == timedelta(seconds=3)
        await bot.send_message(CHAT, "hello")
    assert [call.status for call in fake.calls("sendMessage")] == [429, 200]


async def test_set_my_commands_is_recorded(fake: FakeTelegram) -> None:
    async with polling(fake) as app:
        await app.bot.set_my_commands([("imagine", "Generate an image"), ("quota", "Your remaining images")])
        with pytest.raises(BadRequest, match="Bot_command_invalid"):
            await app.bot.set_my_commands([("/Imagine", "a leading slash is not allowed")])
    assert fake.commands() == [
        {"command": "imagine", "description": "Generate an image"},
        {"command": "quota", "description": "Your remaining images"},
    ]
    assert fake.calls("setMyCommands")[0].ok


async def test_webhook_mode_checks_the_secret(fake: FakeTelegram) -> None:
    replies: list[str] = []

    async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None
        await update.effective_message.reply_text("hi")
        replies.append("hi")

    app = build_app(fake)
    app.add_handler(CommandHandler("start", start))
    port = free_port()
    url = f"http://127.0.0.1:{port}/telegram"
    await app.initialize()
    await app.start()
    await app.updater.start_webhook(  # type: ignore[union-attr]
        listen="127.0.0.1", port=port, url_path="telegram", webhook_url=url, secret_token="s3cret-token"
    )
    try:
        assert fake.webhook is not None
        assert (fake.webhook.url, fake.webhook.secret_token) == (url, "s3cret-token")
        update = fake.send_message(CHAT, "/start")
        assert await fake.post_webhook_update(update, secret_token="wrong") == 403
        assert await fake.post_webhook_update(update, secret_token=None) == 403
        assert replies == []
        assert await fake.deliver_webhook_updates() == [200]
        await fake.wait_until(lambda: replies == ["hi"])
        assert fake.pending_updates == []
        async with Bot(fake.token, base_url=fake.base_url) as bot:
            with pytest.raises(Conflict, match="webhook is active"):
                await bot.get_updates()
    finally:
        await app.updater.stop()  # type: ignore[union-attr]
        await app.stop()
        await app.shutdown()
    assert [delivery.status for delivery in fake.webhook_deliveries] == [403, 403, 200]
    assert fake.webhook_deliveries[-1].secret_token == "s3cret-token"


async def test_get_updates_long_polls_and_confirms_by_offset(fake: FakeTelegram) -> None:
    async with Bot(fake.token, base_url=fake.base_url) as bot:
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await bot.get_updates(timeout=1) == ()
        assert loop.time() - started >= 1

        loop.call_later(0.1, fake.send_message, CHAT, "hello")
        started = loop.time()
        [update] = await bot.get_updates(timeout=5)
        assert loop.time() - started < 2
        assert update.message is not None and update.message.text == "hello"

        again = await bot.get_updates(timeout=0)  # not confirmed yet
        assert [u.update_id for u in again] == [update.update_id]
        assert await bot.get_updates(offset=update.update_id + 1, timeout=0) == ()

        fake.send_message(CHAT, "ignored")
        assert await bot.get_updates(timeout=0, allowed_updates=["callback_query"]) == ()

        # A second instance of the bot polling ends the first one's long poll, as on Telegram.
        poll = asyncio.create_task(bot.get_updates(timeout=5))
        await fake.wait_until(lambda: len(fake.calls("getUpdates")) == 6)
        async with Bot(fake.token, base_url=fake.base_url) as second_instance:
            assert await second_instance.get_updates(timeout=0, allowed_updates=[]) == ()
        with pytest.raises(Conflict, match="terminated by other getUpdates request"):
            await poll


async def test_telegram_limits_are_enforced(fake: FakeTelegram) -> None:
    # PTB strips "Bad Request: " and str.capitalize()s the rest: PHOTO_INVALID_DIMENSIONS reads
    # "Photo_invalid_dimensions"; "can't parse entities: Unsupported..." reads "...: unsupported...".
    fake.add_chat(CHAT)
    async with Bot(fake.token, base_url=fake.base_url) as bot:
        with pytest.raises(BadRequest, match="Photo_invalid_dimensions"):
            await bot.send_photo(CHAT, png(2100, 100))  # ratio 21
        with pytest.raises(BadRequest, match="Photo_invalid_dimensions"):
            await bot.send_photo(CHAT, png(6000, 4001, (0, 0, 0)))  # sides sum over 10000
        with pytest.raises(BadRequest, match="Photo_invalid_dimensions"):
            await bot.send_photo(CHAT, png(8, 8) + bytes(10 * 1024 * 1024))  # over 10 MB
        with pytest.raises(BadRequest, match="Image_process_failed"):
            await bot.send_photo(CHAT, b"not an image")
        with pytest.raises(BadRequest, match="Message caption is too long"):
            await bot.send_photo(CHAT, png(64, 64), caption="x" * 1025)
        with pytest.raises(BadRequest, match="Message is too long"):
            await bot.send_message(CHAT, "x" * 4097)
        with pytest.raises(BadRequest, match="Chat not found"):
            await bot.send_message(999, "hello")
        with pytest.raises(BadRequest, match="Button_data_invalid"):
            keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("x", callback_data="y" * 65)]])
            await bot.send_message(CHAT, "hello", reply_markup=keyboard)
        with pytest.raises(BadRequest, match="takes no parse_mode"):  # the bots send plain text
            await bot.send_message(CHAT, "<b>a fox</b>", parse_mode=ParseMode.HTML)
        with pytest.raises(BadRequest, match="Query is too old"):
            await bot.answer_callback_query("12345")
        with pytest.raises(BadRequest, match="Message to edit not found"):
            await bot.edit_message_text("x", chat_id=CHAT, message_id=99)
        fake.fail_next("sendMessage", description="Forbidden: bot was blocked by the user", error_code=403)
        with pytest.raises(Exception, match="bot was blocked by the user"):
            await bot.send_message(CHAT, "hello")
        shown = await bot.send_message(CHAT, "<b>a fox</b> &lt;3")
        assert shown.text == "<b>a fox</b> &lt;3"
    assert fake.calls("sendPhoto")[0].description == PHOTO_INVALID_DIMENSIONS
    assert fake.bot_messages(CHAT)[-1].text == "<b>a fox</b> &lt;3"


async def test_media_group_files_captions_downloads_and_deletion(fake: FakeTelegram) -> None:
    first, second = png(512, 512), png(768, 512, (0, 90, 200))
    fake.add_chat(CHAT)
    async with Bot(fake.token, base_url=fake.base_url, base_file_url=fake.base_file_url) as bot:
        messages = await bot.send_media_group(
            CHAT, [InputMediaPhoto(first, caption="four foxes"), InputMediaPhoto(second)]
        )
        assert len({m.media_group_id for m in messages}) == 1
        assert [(m.photo[-1].width, m.photo[-1].height) for m in messages] == [(512, 512), (768, 512)]
        downloaded = await (await bot.get_file(messages[1].photo[-1].file_id)).download_as_bytearray()
        assert bytes(downloaded) == second
        with pytest.raises(BadRequest, match="Invalid file_id"):
            await bot.get_file("no such file")
        assert await bot.delete_message(CHAT, messages[1].message_id)
        with pytest.raises(BadRequest, match="Message to delete not found"):
            await bot.delete_message(CHAT, messages[1].message_id)

    call = fake.calls("sendMediaGroup")[0]
    media = call.params["media"]
    assert media[0]["media"].startswith("attach://") and media[0]["caption"] == "four foxes"
    assert call.file(media[0]["media"]).data == first
    assert call.file(media[1]["media"]).data == second
    [left] = fake.bot_messages(CHAT)
    assert left.caption == "four foxes" and left.photo is not None and left.photo.data == first


async def test_json_form_and_get_requests_are_all_understood(fake: FakeTelegram) -> None:
    fake.add_chat(CHAT)
    markup = {"inline_keyboard": [[{"text": "Re-roll", "callback_data": "r"}]]}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            fake.method_url("sendMessage"), json={"chat_id": CHAT, "text": "json", "reply_markup": markup}
        ) as response:
            assert response.status == 200
        form = {"chat_id": str(CHAT), "text": "form", "reply_markup": json.dumps(markup)}
        async with session.post(fake.method_url("sendMessage"), data=form) as response:
            assert response.status == 200
        async with session.get(fake.method_url("getMe")) as response:
            assert (await response.json())["result"]["username"] == "imaginebot"
        wrong = f"{fake.base_url}0:wrong/getMe"
        async with session.get(wrong) as response:
            assert response.status == 401
            assert await response.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}
    assert [call.params for call in fake.calls("sendMessage")] == [
        {"chat_id": CHAT, "text": "json", "reply_markup": markup},
        {"chat_id": CHAT, "text": "form", "reply_markup": markup},
    ]
    assert [m.buttons[0].callback_data for m in fake.bot_messages(CHAT)] == ["r", "r"]


async def test_a_wrong_token_is_refused(fake: FakeTelegram) -> None:
    async with Bot(fake.token, base_url=fake.base_url) as bot:
        assert (await bot.get_me()).username == "imaginebot"
    with pytest.raises(InvalidToken):
        async with Bot("1:wrong", base_url=fake.base_url):
            pass
    assert QUERY_TOO_OLD.startswith("Bad Request: query is too old")


async def test_a_user_sends_a_photo_or_a_file_the_bot_can_download(fake: FakeTelegram) -> None:
    picture = png(640, 480)
    photo = fake.send_picture(CHAT, picture, caption="/imagine a fox")["message"]
    assert photo["caption_entities"][0] == {"type": "bot_command", "offset": 0, "length": 8}
    assert (photo["photo"][-1]["width"], photo["photo"][-1]["height"]) == (640, 480)
    document = fake.send_picture(CHAT, b"plain text", as_document=True, content_type="text/plain")["message"]
    assert document["document"]["file_size"] == len(b"plain text") and "caption" not in document
    async with Bot(fake.token, base_url=fake.base_url, base_file_url=fake.base_file_url) as bot:
        for file_id, data in (
            (photo["photo"][-1]["file_id"], picture),
            (document["document"]["file_id"], b"plain text"),
        ):
            assert bytes(await (await bot.get_file(file_id)).download_as_bytearray()) == data
    assert len(fake.file_downloads) == 2
