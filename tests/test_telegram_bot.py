"""The Telegram bot end to end: the real python-telegram-bot client against the fake Bot API on loopback.

Every test runs ``bots.telegram_bot.TelegramFront`` with the gateway service on a real SQLite file and
the fake backend, and asserts what a Telegram user would see, as the fake (tests/fakes/telegram_server.py)
recorded it. Nothing is mocked; the status-edit throttle is shortened so the tests run fast.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bots import telegram_bot
from bots.telegram_bot import TelegramFront, fits_photo_rules
from bots.telegram_ext import delivery, files, progress, ratelimit
from gateway import (
    DeliveryRefused,
    ImageRequest,
    ImagineService,
    InvalidRequest,
    Secret,
    Settings,
    SettingsError,
    parse_prompt,
)
from gateway.backend import GenerationResult, ProgressCallback
from gateway.errors import BackendError
from gateway.fake_backend import FakeBackend, solid_png
from gateway.messages import HELP, utc_day
from storage import Database
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.telegram_server import Call, ChatMessage, FakeTelegram, free_port
from tests.helpers.imagine_process import DISCORD_TEST_TOKEN, fronts_env, imagine_running
from tests.helpers.png import png_size

ROOT = Path(__file__).resolve().parent.parent
ADMIN, ALICE, BOB = 1001, 1002, 1003
GROUP = -100_500


class World:
    """The fake Telegram, the gateway over a temp SQLite file, and the bot between them."""

    def __init__(
        self,
        fake: FakeTelegram,
        settings: Settings,
        db: Database,
        backend: FakeBackend,
        service_class: type[ImagineService] = ImagineService,
    ) -> None:
        self.fake = fake
        self.settings = settings
        self.db = db
        self.backend = backend
        self.service = service_class(settings, db, backend)
        self.front: TelegramFront | None = None
        self._sent_at: dict[int, float] = {}

    async def start_bot(self, **kwargs: Any) -> str:
        self.front = TelegramFront(self.settings, self.service, **kwargs)
        return await self.front.start()

    async def stop_bot(self) -> None:
        if self.front is not None:
            await self.front.stop()
            self.front = None

    def says(self, chat_id: int, text: str, **kwargs: Any) -> dict[str, Any]:
        update = self.fake.send_message(chat_id, text, **kwargs)
        self._sent_at[update["update_id"]] = time.monotonic()
        return update

    async def reply_to(self, update: dict[str, Any], *, within: float = 5.0) -> Call:
        """The bot's first sendMessage answering the message of ``update`` (quoting it, or not in private)."""
        message = update["message"]
        since = self._sent_at[update["update_id"]]

        def answers(call: Call) -> bool:
            quoted = (call.params.get("reply_parameters") or {}).get("message_id")
            return (
                call.chat_id == message["chat"]["id"]
                and call.received_at >= since
                and quoted in (None, message["message_id"])
            )

        return await self.fake.wait_for_call("sendMessage", answers, timeout=within)

    async def text_of(self, chat_id: int, message_id: int, contains: str, *, within: float = 5.0) -> str:
        """Wait until the message shows ``contains`` (after edits); its text."""
        await self.fake.wait_until(lambda: contains in self._body(chat_id, message_id), timeout=within)
        return self._body(chat_id, message_id)

    def _body(self, chat_id: int, message_id: int) -> str:
        try:
            return self.fake.message(chat_id, message_id).body
        except LookupError:
            return ""

    async def settled(self, job_id: str) -> str:
        async with asyncio.timeout(5):
            while True:
                job = await self.db.get_job(job_id)
                if job is not None and job.status in ("succeeded", "failed") and job.spent + job.refunded:
                    return job.status
                await asyncio.sleep(0.02)

    async def used(self, user: int) -> int:
        quota = await self.db.quota(
            f"telegram:{user}", day=utc_day(time.time()), default_allowance=self.settings.daily_quota
        )
        return quota.used


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        fake.add_chat(ADMIN)
        yield fake


@pytest.fixture
def bot_settings(settings: Settings, fake: FakeTelegram, request: pytest.FixtureRequest) -> Settings:
    """A test may change them with ``parametrize("bot_settings", [{...}], indirect=True)``."""
    changes = {"daily_quota": 10, **getattr(request, "param", {})}
    return settings.with_overrides(
        telegram_token=Secret(fake.token),
        telegram_api_base_url=fake.base_url,
        admins=frozenset({f"telegram:{ADMIN}"}),
        **changes,
    )


async def make_world(
    fake: FakeTelegram,
    settings: Settings,
    backend: FakeBackend | None = None,
    service_class: type[ImagineService] = ImagineService,
) -> AsyncIterator[World]:
    db = await Database.open(settings.store)
    world = World(fake, settings, db, backend or FakeBackend(), service_class)
    await world.service.start()
    try:
        yield world
    finally:
        await world.stop_bot()
        await world.service.close(drain_timeout=1)
        assert await db.check_ledger() == []
        assert await db.integrity_check() == "ok"
        await db.close()


@pytest.fixture
async def world(
    fake: FakeTelegram, bot_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[World]:
    monkeypatch.setattr(progress, "EDIT_EVERY_PRIVATE", 0.05)
    monkeypatch.setattr(progress, "EDIT_EVERY_GROUP", 0.05)
    async for world in make_world(fake, bot_settings):
        await world.start_bot(stop_grace=1.0)
        yield world


def image_of(call: Call, field: str = "photo") -> Image.Image:
    return Image.open(io.BytesIO(call.file(field).data))


def callback_data(message: ChatMessage) -> list[str]:
    return [button.callback_data or "" for button in message.buttons]


# --- /imagine ------------------------------------------------------------------------------------


async def test_imagine_shows_status_then_progress_then_the_photo(world: World) -> None:
    fake = world.fake
    world.backend.delay = 0.03
    update = world.says(ALICE, "/imagine a red fox in the snow --ar 3:2 --steps 8 --seed 7")
    expected = parse_prompt("a red fox in the snow --ar 3:2 --steps 8 --seed 7")

    status = await world.reply_to(update)
    status_id = status.result["message_id"]
    assert status.params["text"] in ("Starting…", "In the queue: 0 ahead of you.")
    edit = await fake.wait_for_call("editMessageText", lambda c: "Working…" in c.params["text"])
    assert edit.params["message_id"] == status_id
    action = await fake.wait_for_call("sendChatAction")
    assert action.params["action"] == "upload_photo"

    photo_call = await fake.wait_for_call("sendPhoto", timeout=10)
    assert photo_call.params["reply_parameters"]["message_id"] == update["message"]["message_id"]
    image = image_of(photo_call)
    assert image.format == "PNG" and image.size == (expected.width, expected.height)
    caption = photo_call.params["caption"]
    assert caption.startswith("a red fox in the snow\nseed 7 · ")
    assert caption.endswith("9 credits left")
    job_id = f"telegram:{update['update_id']}"
    assert photo_call.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == f"reroll:{job_id}"

    # The status message goes once the photo is there; the chat holds the prompt and the photo.
    await fake.wait_for_call("deleteMessage", lambda c: c.params["message_id"] == status_id)
    view = fake.chat_view(ALICE)
    assert [m.from_bot for m in view] == [False, True]
    assert view[1].photo is not None
    assert callback_data(view[1]) == [f"{button}:{job_id}" for button in ("reroll", "vary", "U1", "V1", "S1")]
    assert await world.settled(job_id) == "succeeded"
    assert await world.used(ALICE) == 1


async def test_group_command_with_bot_name_and_plain_text_in_private(world: World) -> None:
    fake = world.fake
    in_group = world.says(GROUP, "/imagine@imaginebot a cat", user_id=BOB, chat_type="supergroup")
    await world.reply_to(in_group)
    photo = await fake.wait_for_call("sendPhoto", lambda c: c.chat_id == GROUP)
    assert photo.params["caption"].startswith("a cat\n")
    chatter = world.says(GROUP, "just chatting", user_id=BOB)
    private = world.says(ALICE, "a lighthouse at dusk --n 2")
    album = await fake.wait_for_call("sendMediaGroup", lambda c: c.chat_id == ALICE)
    assert len(album.params["media"]) == 2
    assert album.params["media"][0]["caption"].startswith("a lighthouse at dusk\nseeds ")
    for item in album.params["media"]:
        assert image_of(album, item["media"]).size == (512, 512)
    follow_up = await fake.wait_for_call("sendMessage", lambda c: "reply_markup" in c.params)
    job_id = f"telegram:{private['update_id']}"
    assert follow_up.params["reply_markup"]["inline_keyboard"][0][1]["callback_data"] == f"vary:{job_id}"
    await world.settled(job_id)
    assert await world.used(ALICE) == 2 and await world.used(BOB) == 1
    assert not fake.calls("sendMessage", chat_id=GROUP)[1:], f"answered {chatter['message']['text']!r}"


async def test_a_slow_job_does_not_hold_up_other_chats(world: World, fake: FakeTelegram) -> None:
    world.backend.delay = 0.1
    slow = world.says(ALICE, "/imagine a slow fox --steps 20")
    await fake.wait_for_call("editMessageText", lambda c: "Working…" in c.params["text"])
    quota = world.says(BOB, "/quota")
    assert "Left: 10 credits" in (await world.reply_to(quota, within=1.0)).params["text"]
    assert not fake.calls("sendPhoto")
    await fake.wait_for_call("sendPhoto", timeout=10)
    assert await world.settled(f"telegram:{slow['update_id']}") == "succeeded"


async def test_stop_cancels_refunds_and_tells_what_outlasts_the_grace(
    world: World, fake: FakeTelegram
) -> None:
    world.backend.delay = 0.2
    update = world.says(ALICE, "/imagine a fox that takes too long --steps 50")
    status = await world.reply_to(update)
    await fake.wait_for_call("editMessageText", lambda c: "Working…" in c.params["text"])
    assert world.front is not None
    world.front.stop_grace = 0.3
    await world.stop_bot()  # the grace runs out: the job is cancelled, refunded and the user told
    text = fake.message(ALICE, status.result["message_id"]).body
    assert text == "Imagine is restarting and could not finish your image; your 1 credit was refunded."
    assert await world.settled(f"telegram:{update['update_id']}") == "failed"
    assert await world.used(ALICE) == 0


@pytest.mark.parametrize("bot_settings", [{"daily_quota": 1, "relax_daily": 1}], indirect=True)
async def test_out_of_credits_offers_a_relax_button_that_asks_again_for_free(world: World) -> None:
    fake = world.fake
    first = world.says(ALICE, "/imagine a blue bird --seed 7")
    await fake.wait_for_call("sendPhoto")
    await world.settled(f"telegram:{first['update_id']}")
    world.says(ALICE, "/imagine a red bird --seed 8")
    refusal = await fake.wait_for_call(
        "editMessageText", lambda c: "Or add --relax for a free image" in c.params["text"]
    )
    status = fake.message(ALICE, refusal.result["message_id"])
    [relax] = callback_data(status)
    assert relax.startswith("relax:")

    press = fake.press_button(ALICE, status.message_id, relax)
    photo = await fake.wait_for_call("sendPhoto", n=2)
    assert photo.params["caption"].startswith("a red bird\nseed 8 · ")
    assert "relax, no credits" in photo.params["caption"]
    await fake.wait_until(lambda: callback_data(fake.message(ALICE, status.message_id)) == [])  # asks once
    job = await world.db.get_job(f"telegram:{press['update_id']}")
    assert job is not None and job.relax == 1 and job.cost == 0
    assert await world.used(ALICE) == 1  # the relax image cost nothing


async def test_reroll_gives_a_new_seed_and_charges_again_variations_an_album(world: World) -> None:
    fake = world.fake
    first = world.says(ALICE, "/imagine a blue bird --seed 7")
    await fake.wait_for_call("sendPhoto")
    await world.settled(f"telegram:{first['update_id']}")
    photo = fake.bot_messages(ALICE)[-1]

    press = fake.press_button(ALICE, photo.message_id, f"reroll:telegram:{first['update_id']}")
    again = await fake.wait_for_call("sendPhoto", n=2)
    assert fake.callback_answer(press["callback_query"]["id"]) is not None
    assert again.params["reply_parameters"]["message_id"] == photo.message_id
    assert again.params["caption"].startswith("a blue bird\nseed ")
    assert "seed 7 " not in again.params["caption"]
    assert await world.settled(f"telegram:{press['update_id']}") == "succeeded"
    assert await world.used(ALICE) == 2
    assert [request.seed == 7 for _, request in world.backend.calls] == [True, False]

    rerolled = fake.bot_messages(ALICE)[-1]
    vary = fake.press_button(ALICE, rerolled.message_id, f"vary:telegram:{press['update_id']}")
    album = await fake.wait_for_call("sendMediaGroup")
    assert len(album.params["media"]) == 4
    assert await world.settled(f"telegram:{vary['update_id']}") == "succeeded"
    assert await world.used(ALICE) == 6
    assert {request.prompt for _, request in world.backend.calls} == {"a blue bird"}


# --- image actions and image prompts --------------------------------------------------------


def picture(width: int, height: int, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 40)).save(out, format=fmt)
    return out.getvalue()


async def test_u2_and_v1_under_an_album_act_on_those_images_and_charge_each(world: World) -> None:
    fake = world.fake
    first = world.says(ALICE, "/imagine two foxes --n 2 --seed 5 --steps 10")
    source_id = f"telegram:{first['update_id']}"
    await world.settled(source_id)
    buttons = fake.bot_messages(ALICE)[-1]
    assert buttons.text == delivery.MORE_LIKE_THESE
    assert callback_data(buttons)[2:] == [f"{b}:{source_id}" for b in ("U1", "U2", "V1", "V2", "S1", "S2")]
    album = fake.calls("sendMediaGroup")[-1]
    second_image = album.file(album.params["media"][1]["media"]).data

    # Double-tapped U2: one job, the second image at 2x with its own seed, refined at 0.3.
    upscale = fake.press_button(ALICE, buttons.message_id, f"U2:{source_id}")
    fake.resend_update(upscale)
    upscaled = await fake.wait_for_call("sendPhoto")
    assert image_of(upscaled).size == (1024, 1024)
    assert await world.settled(f"telegram:{upscale['update_id']}") == "succeeded"
    _, request = world.backend.calls[-1]
    assert (request.kind, request.seed, request.strength) == ("upscale", 6, 0.3)
    assert request.init_image is not None and png_size(request.init_image) == (1024, 1024)
    assert Image.open(io.BytesIO(request.init_image)).getpixel((0, 0)) == Image.open(
        io.BytesIO(second_image)
    ).getpixel((0, 0))

    # V1 on the album, then the strong variation of the upscaled image (its keyboard is on the photo).
    vary = fake.press_button(ALICE, buttons.message_id, f"V1:{source_id}")
    varied = await fake.wait_for_call("sendPhoto", n=2)
    assert image_of(varied).size == (512, 512)
    assert await world.settled(f"telegram:{vary['update_id']}") == "succeeded"
    assert (world.backend.calls[-1][1].kind, world.backend.calls[-1][1].strength) == ("vary", 0.35)
    photo = fake.message(ALICE, upscaled.result["message_id"])
    strong = fake.press_button(ALICE, photo.message_id, f"S1:telegram:{upscale['update_id']}")
    await fake.wait_for_call("sendPhoto", n=3)
    assert await world.settled(f"telegram:{strong['update_id']}") == "succeeded"
    assert (world.backend.calls[-1][1].width, world.backend.calls[-1][1].strength) == (1024, 0.7)
    assert len(world.backend.calls) == 4 and await world.used(ALICE) == 2 + 1 + 1 + 1
    assert len(fake.file_downloads) == 3  # each button fetched its image from Telegram's file endpoint


async def test_a_photo_with_imagine_as_caption_or_in_reply_is_an_image_prompt(world: World) -> None:
    fake = world.fake
    caption = fake.send_picture(ALICE, picture(640, 480, "JPEG"), caption="/imagine a fox --steps 10")
    photo = await fake.wait_for_call("sendPhoto")
    assert photo.params["reply_parameters"]["message_id"] == caption["message"]["message_id"]
    assert image_of(photo).size == (1024, 768)
    assert await world.settled(f"telegram:{caption['update_id']}") == "succeeded"
    _, request = world.backend.calls[-1]
    assert (request.kind, request.strength, request.prompt) == ("image", 0.6, "a fox")

    in_group = fake.send_picture(GROUP, picture(300, 600), user_id=BOB, chat_type="supergroup")
    chatter = fake.send_picture(GROUP, picture(300, 600), caption="my cat", user_id=BOB)
    reply = world.says(
        GROUP,
        "/imagine@imaginebot a cat --strength 0.3",
        user_id=BOB,
        reply_to_message_id=in_group["message"]["message_id"],
    )
    answer = await fake.wait_for_call("sendPhoto", lambda c: c.chat_id == GROUP)
    assert image_of(answer).size == (512, 1024)
    assert await world.settled(f"telegram:{reply['update_id']}") == "succeeded"
    assert (world.backend.calls[-1][1].kind, world.backend.calls[-1][1].strength) == ("image", 0.3)
    assert await world.used(ALICE) == 1 and await world.used(BOB) == 1
    assert await world.service.find_job(f"telegram:{chatter['update_id']}") is None


async def test_a_bad_picture_gets_one_sentence_and_costs_nothing(world: World) -> None:
    fake = world.fake
    not_an_image = fake.send_picture(
        ALICE,
        b"%PDF-1.4 not a picture",
        as_document=True,
        content_type="application/pdf",
        caption="/imagine x",
    )
    answer = await fake.wait_for_call("sendMessage", lambda c: c.chat_id == ALICE)
    assert answer.params["text"] == "The picture must be a PNG, JPEG or WebP image."

    too_big = fake.send_picture(ALICE, b"\x89PNG" + bytes(11 * 2**20), as_document=True, caption="a fox")
    answer = await fake.wait_for_call("sendMessage", lambda c: c.chat_id == ALICE, n=2)
    assert answer.params["text"] == "The picture is 11.0 MB; the limit is 10 MB."
    assert fake.file_downloads == ["documents/file_1"]  # the big one was never fetched

    assert len(fake.calls("sendMessage")) == 2 and not world.backend.calls
    for update in (not_an_image, too_big):
        assert await world.service.find_job(f"telegram:{update['update_id']}") is None
    assert await world.used(ALICE) == 0


async def test_downloads_stop_at_the_cap_and_only_from_telegrams_file_endpoint(
    world: World, fake: FakeTelegram
) -> None:
    sent = fake.send_picture(BOB, picture(64, 64), as_document=True)["message"]["document"]
    assert world.front is not None and world.front.application is not None
    bot = world.front.application.bot
    telegram_file = await bot.get_file(sent["file_id"])
    with pytest.raises(InvalidRequest, match="limit is 10 MB"):
        await files.download_file(bot, telegram_file.file_path, limit=100)  # cut off while streaming
    with pytest.raises(InvalidRequest, match="limit is 10 MB"):
        await files.download_picture(bot, sent["file_id"], limit=100)  # getFile's size, before streaming
    with pytest.raises(InvalidRequest):
        await files.download_file(bot, f"{fake.root_url}/elsewhere/{telegram_file.file_path}", limit=10**6)
    assert await files.download_picture(bot, sent["file_id"]) == picture(64, 64)
    assert files.file_base_url("https://api.telegram.org/bot") == "https://api.telegram.org/file/bot"


async def test_refusals_say_why_and_charge_nothing(world: World, fake: FakeTelegram) -> None:
    # Invalid flags: the parser's sentence, no status message, no job.
    bad = world.says(ALICE, "/imagine a fox --steps 99")
    with pytest.raises(InvalidRequest) as invalid:
        parse_prompt("a fox --steps 99")
    assert (await world.reply_to(bad)).params["text"] == str(invalid.value)

    # Out of credits: the status message turns into the gateway's sentence.
    await world.service.set_allowance(None, f"telegram:{ALICE}", 1)
    world.says(ALICE, "/imagine a fox")
    await fake.wait_for_call("sendPhoto")
    poor = world.says(ALICE, "/imagine another fox")
    status = await world.reply_to(poor)
    text = await world.text_of(ALICE, status.result["message_id"], "You have used all 1 credit")
    assert "reset at 00:00 UTC" in text

    # Banned, by an admin from the chat: the reason given.
    ban = world.says(ADMIN, f"/ban {BOB} spamming the group")
    assert (await world.reply_to(ban)).params["text"] == f"telegram:{BOB} is banned: spamming the group"
    banned = world.says(BOB, "/imagine a fox")
    status = await world.reply_to(banned)
    await world.text_of(BOB, status.result["message_id"], "You are banned from Imagine: spamming the group")

    assert len(world.backend.calls) == 1
    assert await world.used(ALICE) == 1 and await world.used(BOB) == 0
    assert [row["kind"] for row in await world.db.ledger(f"telegram:{BOB}")] == []


async def test_admin_commands_only_for_admins(world: World, fake: FakeTelegram) -> None:
    ledger_before = await world.db.ledger()
    refused = world.says(BOB, f"/grant {BOB} 100")
    assert (await world.reply_to(refused)).params["text"] == (
        "Only Imagine admins can do that; nothing was changed."
    )
    refused = world.says(BOB, "/stats")
    assert "Only Imagine admins" in (await world.reply_to(refused)).params["text"]
    assert await world.db.ledger() == ledger_before
    assert (await world.service.quota(f"telegram:{BOB}")).bonus == 0

    # An admin answers Bob's message in a group: the reply names the user.
    question = world.says(GROUP, "can I have more credits?", user_id=BOB, chat_type="supergroup")
    grant = world.says(
        GROUP, "/grant 5", user_id=ADMIN, reply_to_message_id=question["message"]["message_id"]
    )
    assert (await world.reply_to(grant)).params[
        "text"
    ] == f"Granted 5 credits to telegram:{BOB}; bonus now 5."
    setquota = world.says(ADMIN, f"/setquota {BOB} 3")
    assert (await world.reply_to(setquota)).params["text"] == f"telegram:{BOB} may now make 3 images a day."
    usage = world.says(ADMIN, "/grant")
    assert (await world.reply_to(usage)).params["text"] == telegram_bot.USAGE["grant"]
    stats = world.says(ADMIN, "/stats")
    assert (await world.reply_to(stats)).params["text"].startswith("Last 24 hours:\nJobs: 0")
    quota = world.says(BOB, "/quota")
    text = (await world.reply_to(quota)).params["text"]
    assert "Used today: 0 of 3 (set by an admin)" in text and "Bonus credits: 5" in text

    helped = world.says(BOB, "/help")
    assert (await world.reply_to(helped)).params["text"] == HELP
    started = world.says(BOB, "/start")
    assert (await world.reply_to(started)).params["text"].endswith(HELP)
    # The command list is registered; the admin sees the admin commands in their chat.
    assert [c["command"] for c in fake.commands()] == ["imagine", "quota", "help", "start"]
    admin_scope = {"type": "chat", "chat_id": ADMIN}
    assert "grant" in [c["command"] for c in fake.commands(scope=admin_scope)]


async def test_the_same_update_twice_is_generated_and_charged_once(world: World, fake: FakeTelegram) -> None:
    world.backend.delay = 0.02
    update = world.says(ALICE, "/imagine a fox --steps 5")
    await world.reply_to(update)
    fake.resend_update(update)  # while the job runs
    await fake.wait_for_call("sendPhoto")
    await world.settled(f"telegram:{update['update_id']}")
    fake.resend_update(update)  # after it finished
    ping = world.says(ALICE, "/help")
    await world.reply_to(ping)
    await asyncio.sleep(0.2)
    assert len(fake.calls("sendPhoto")) == 1
    assert len(fake.calls("sendMessage", chat_id=ALICE)) == 2  # one status message, one /help answer
    assert len(world.backend.calls) == 1
    reserves = [r for r in await world.db.ledger(f"telegram:{ALICE}") if r["kind"] == "reserve"]
    assert len(reserves) == 1 and await world.used(ALICE) == 1


async def test_flood_control_on_send_photo_is_waited_out(world: World, fake: FakeTelegram) -> None:
    fake.flood("sendPhoto", retry_after=1)
    started = time.monotonic()
    update = world.says(ALICE, "/imagine a fox")
    delivered = await fake.wait_for_call("sendPhoto", lambda c: c.ok, timeout=10)
    assert time.monotonic() - started >= 1.0
    assert [c.status for c in fake.calls("sendPhoto")] == [429, 200]
    assert image_of(delivered).size == (512, 512)
    assert await charged(world, update) == ("succeeded", 1, 0)
    assert await world.used(ALICE) == 1


async def test_a_photo_that_breaks_telegram_rules_is_sent_as_a_document(
    fake: FakeTelegram, bot_settings: Settings
) -> None:
    class PanoramaBackend(FakeBackend):
        async def generate(
            self, job_id: str, request: ImageRequest, progress: ProgressCallback
        ) -> GenerationResult:
            assert request.seed is not None
            return GenerationResult([solid_png(2048, 64, (10, 20, 30))], [request.seed], "fake")

    async for world in make_world(fake, bot_settings, PanoramaBackend()):
        await world.start_bot(stop_grace=1.0)
        update = world.says(ALICE, "/imagine a very long panorama")
        document = await fake.wait_for_call("sendDocument")
        assert png_size(document.file("document").data) == (2048, 64)
        assert document.params["caption"].startswith("a very long panorama\n")
        assert "reroll:" in str(document.params["reply_markup"])
        assert not fake.calls("sendPhoto")
        assert await world.settled(f"telegram:{update['update_id']}") == "succeeded"


def test_photo_rules() -> None:
    assert fits_photo_rules(solid_png(1024, 1024, (0, 0, 0)))
    assert not fits_photo_rules(solid_png(64, 1344, (0, 0, 0)))  # ratio 21
    assert fits_photo_rules(solid_png(64, 1280, (0, 0, 0)))  # ratio 20
    assert not fits_photo_rules(b"GIF89a not a png")


async def test_webhook_refuses_a_wrong_secret(fake: FakeTelegram, bot_settings: Settings) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/telegram-hook"
    settings = bot_settings.with_overrides(
        telegram_webhook_url=url, telegram_webhook_secret=Secret("s3cret-token")
    )
    async for world in make_world(fake, settings):
        where = await world.start_bot(webhook_listen="127.0.0.1", webhook_port=port, stop_grace=1.0)
        assert where == f"Telegram as @imaginebot (webhook at http://127.0.0.1:{port})"
        assert fake.webhook is not None and fake.webhook.url == url
        assert fake.webhook.secret_token == "s3cret-token"
        update = world.says(ALICE, "/imagine a fox")
        assert await fake.post_webhook_update(update, secret_token="wrong") == 403
        assert await fake.post_webhook_update(update, secret_token=None) == 403
        await asyncio.sleep(0.1)
        assert not fake.calls("sendMessage") and not world.backend.calls
        assert await fake.deliver_webhook_updates() == [200]
        await fake.wait_for_call("sendPhoto")
        assert await world.settled(f"telegram:{update['update_id']}") == "succeeded"


async def test_killed_mid_job_and_restarted_refunds_and_tells_the_user(
    fake: FakeTelegram, bot_settings: Settings, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGINE_", "TELEGRAM_", "DISCORD_"))}
    env |= {
        "PYTHONPATH": str(ROOT),
        "TELEGRAM_TOKEN": fake.token,
        "TELEGRAM_API_BASE_URL": fake.base_url,
        "IMAGINE_DB": str(bot_settings.db_path),
        "IMAGINE_BACKEND": "fake",
        "IMAGINE_FAKE_DELAY": "1.0",
    }

    output = bytearray()

    async def start_bot() -> asyncio.subprocess.Process:
        """`imagine -v telegram`, the real entry point, in a child process."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "imagine", "-v", "telegram", cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            while b"telegram is on" not in (line := await proc.stdout.readline()):
                assert line, f"the bot exited before it started: {output.decode()}"
                output.extend(line)
        return proc

    async def finish(proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            output.extend(await proc.stdout.read())
            await proc.wait()

    first = await start_bot()
    update = fake.send_message(ALICE, "/imagine a fox --steps 20")
    status = await fake.wait_for_call("sendMessage", timeout=10)
    await fake.wait_for_call("editMessageText", lambda c: "Working…" in c.params["text"], timeout=10)
    first.send_signal(signal.SIGKILL)
    await finish(first)

    second = await start_bot()
    try:
        told = await fake.wait_for_call(
            "editMessageText", lambda c: "refunded" in c.params["text"], timeout=10
        )
        assert told.params["message_id"] == status.result["message_id"]
        assert fake.message(ALICE, told.params["message_id"]).body == (
            "Imagine restarted while making your image; your 1 credit was refunded. Please try again."
        )
    finally:
        second.send_signal(signal.SIGTERM)
        await finish(second)
    assert second.returncode == 0
    assert b"imagine: stopped" in output
    assert fake.token.encode() not in output  # not even with -v (debug logging)
    db = await Database.open(bot_settings.store)
    try:
        job = await db.get_job(f"telegram:{update['update_id']}")
        assert job is not None and (job.status, job.refunded, job.spent) == ("failed", 1, 0)
        assert job.reply is not None and job.reply["status_message_id"] == status.result["message_id"]
        assert await db.check_ledger() == []
        assert await db.integrity_check() == "ok"
        quota = await db.quota(f"telegram:{ALICE}", day=utc_day(time.time()), default_allowance=25)
        assert (quota.used, quota.reserved) == (0, 0)
    finally:
        await db.close()
    assert not fake.calls("sendPhoto")


async def test_a_rejected_token_is_a_clear_error_without_the_token(
    world: World, fake: FakeTelegram, bot_settings: Settings
) -> None:
    wrong = "987654:this-is-not-the-token"
    front = TelegramFront(bot_settings.with_overrides(telegram_token=Secret(wrong)), world.service)
    with pytest.raises(SettingsError) as error:
        await front.start()
    assert "TELEGRAM_TOKEN" in str(error.value) and wrong not in str(error.value)
    assert "this-is-not" not in repr(error.value.__cause__) and error.value.__suppress_context__


async def test_rate_limiter_serves_new_messages_then_images_then_the_rest() -> None:
    limiter = telegram_bot.AnswersFirstRateLimiter(overall_max_rate=0, max_wait=0.3)
    order: list[str] = []
    release = asyncio.Event()

    async def send(endpoint: str, gate: asyncio.Event | None = None) -> bool:
        if gate is not None:
            await gate.wait()
        order.append(endpoint)
        return True

    def request(endpoint: str, gate: asyncio.Event | None = None) -> asyncio.Task[Any]:
        return asyncio.create_task(
            limiter.process_request(send, (endpoint, gate), {}, endpoint, {"chat_id": ALICE}, None)
        )

    status = request("sendMessage", release)
    await asyncio.sleep(0.01)
    later = [request("editMessageText"), request("sendPhoto")]
    await asyncio.sleep(0.05)
    assert order == []  # both give way to the status message still in flight
    release.set()
    await asyncio.gather(status, *later)
    assert order == ["sendMessage", "sendPhoto", "editMessageText"]

    # No lane starves: past max_wait a request goes even while a new message is still pending.
    stuck = request("sendMessage", asyncio.Event())
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await request("sendPhoto")
    assert 0.25 <= time.monotonic() - started < 2
    stuck.cancel()
    await asyncio.gather(stuck, return_exceptions=True)


# --- delivery: the fence, and Telegram's faults during the send -----------------------------------


async def charged(world: World, update: dict[str, Any]) -> tuple[str, int, int]:
    """The job's end as the ledger has it: status, credits spent, credits refunded."""
    job_id = f"telegram:{update['update_id']}"
    await world.settled(job_id)
    job = await world.db.get_job(job_id)
    assert job is not None
    return job.status, job.spent, job.refunded


def shown_texts(fake: FakeTelegram, chat_id: int) -> list[str]:
    """Every text the bot sent or edited in the chat, including those since replaced or deleted."""
    calls = fake.calls("sendMessage", chat_id=chat_id) + fake.calls("editMessageText", chat_id=chat_id)
    return [str(call.params.get("text")) for call in calls]


class RefundedMeanwhile(ImagineService):
    """Another process refunds each job just before this one claims its delivery: the race the fence stops."""

    refusal = ""

    async def claim_delivery(self, job_id: str) -> None:
        await self.delivery_failed(job_id, "Imagine restarted elsewhere")
        try:
            await super().claim_delivery(job_id)
        except DeliveryRefused as refused:
            type(self).refusal = str(refused)
            raise


async def test_a_job_refunded_before_its_delivery_is_not_posted(
    fake: FakeTelegram, bot_settings: Settings
) -> None:
    async for world in make_world(fake, bot_settings, service_class=RefundedMeanwhile):
        await world.start_bot(stop_grace=1.0)
        update = world.says(ALICE, "/imagine a fox the fence keeps")
        status = await world.reply_to(update)
        assert await charged(world, update) == ("failed", 0, 1)
        await world.text_of(ALICE, status.result["message_id"], RefundedMeanwhile.refusal or "?")
        assert RefundedMeanwhile.refusal
        assert not fake.calls("sendPhoto") and [m.photo for m in fake.chat_view(ALICE) if m.photo] == []
        assert await world.used(ALICE) == 0


async def test_a_photo_telegram_took_but_answered_late_is_charged_once(
    world: World, fake: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "RESULT_READ_TIMEOUT", 0.5)
    fake.stall_next("sendPhoto", 1.5)  # posted at once, answered after the client gave up
    update = world.says(ALICE, "/imagine a fox on a slow line")
    status = await world.reply_to(update)
    await fake.wait_for_call("deleteMessage", lambda c: c.params["message_id"] == status.result["message_id"])
    assert await charged(world, update) == ("succeeded", 1, 0)
    await asyncio.sleep(1.2)  # past the stall: nothing else is sent
    assert len(fake.calls("sendPhoto")) == 1
    assert len([m for m in fake.chat_view(ALICE) if m.photo is not None]) == 1
    assert not [text for text in shown_texts(fake, ALICE) if "refunded" in text]
    assert await world.used(ALICE) == 1


async def test_telegram_refusing_the_photo_refunds_and_says_so(world: World, fake: FakeTelegram) -> None:
    fake.fail_next("sendPhoto", description="Bad Request: chat not found", error_code=400)
    update = world.says(ALICE, "/imagine a fox nobody sees")
    status = await world.reply_to(update)
    text = await world.text_of(ALICE, status.result["message_id"], "refunded")
    assert text == "Telegram did not accept the image; your 1 credit was refunded."
    assert await charged(world, update) == ("failed", 0, 1)
    assert [c.status for c in fake.calls("sendPhoto")] == [400]  # a refusal is not tried again
    assert await world.used(ALICE) == 0


async def test_a_flood_wait_longer_than_the_cap_is_refunded_not_slept_through(
    world: World, fake: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit, "MAX_FLOOD_WAIT", 1.0)
    fake.flood("sendPhoto", retry_after=30)
    started = time.monotonic()
    update = world.says(ALICE, "/imagine a fox in a traffic jam")
    status = await world.reply_to(update)
    await world.text_of(ALICE, status.result["message_id"], "refunded")
    assert time.monotonic() - started < 10
    assert await charged(world, update) == ("failed", 0, 1)
    assert [c.status for c in fake.calls("sendPhoto")] == [429]


async def test_a_send_that_never_reached_telegram_is_tried_again(
    fake: FakeTelegram, bot_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "SEND_RETRY_PAUSE", 0.8)

    class OutageAtTheEnd(FakeBackend):
        """Telegram goes away just as the image is ready: the first upload finds no server to connect to."""

        async def generate(
            self, job_id: str, request: ImageRequest, progress: ProgressCallback
        ) -> GenerationResult:
            result = await super().generate(job_id, request, progress)
            await fake.go_down(0.3)
            return result

    async for world in make_world(fake, bot_settings, OutageAtTheEnd()):
        await world.start_bot(stop_grace=1.0)
        update = world.says(ALICE, "/imagine a fox behind a flaky router")
        photo = await fake.wait_for_call("sendPhoto", timeout=10)
        assert photo.ok and len(fake.calls("sendPhoto")) == 1  # the refused try never reached Telegram
        assert await charged(world, update) == ("succeeded", 1, 0)


@pytest.mark.parametrize("status", [500, 400])
async def test_a_failing_set_my_commands_is_logged_and_the_bot_runs(
    fake: FakeTelegram, bot_settings: Settings, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    fake.fail_next("setMyCommands", error_code=status, description=f"injected failure ({status})")
    async for world in make_world(fake, bot_settings):
        with caplog.at_level(logging.WARNING, logger="imagine.telegram"):
            assert (await world.start_bot(stop_grace=1.0)).startswith("Telegram as @imaginebot")
        warnings = [
            r for r in caplog.records if r.name == "imagine.telegram" and r.levelno >= logging.WARNING
        ]
        assert len(warnings) == 1 and "command list" in warnings[0].getMessage()
        update = world.says(ALICE, "/imagine a fox without a menu")
        await fake.wait_for_call("sendPhoto", timeout=10)
        assert await charged(world, update) == ("succeeded", 1, 0)


@pytest.mark.slow
async def test_imagine_run_keeps_both_fronts_when_set_my_commands_fails(
    fake: FakeTelegram, bot_settings: Settings, tmp_path: Path
) -> None:
    """`imagine run` with both tokens: Telegram's failing command list takes down neither front."""
    discord_fake = FakeDiscord(token=DISCORD_TEST_TOKEN)
    await discord_fake.start()
    fake.fail_next("setMyCommands", error_code=500, description="Internal Server Error")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGINE_", "TELEGRAM_", "DISCORD_"))}
    env |= {
        "IMAGINE_DB": str(bot_settings.db_path),
        "IMAGINE_BACKEND": "fake",
        "IMAGINE_WEB_HOST": "127.0.0.1",
        "IMAGINE_WEB_PORT": "0",
        **fronts_env(discord_fake, fake),
    }
    try:
        async with imagine_running(env, tmp_path) as imagine:
            lines = imagine.lines
            assert {line.split()[1] for line in lines if " is on: " in line} == {"web", "discord", "telegram"}
            assert [c.status for c in fake.calls("setMyCommands")][:1] == [500]
            update = fake.send_message(ALICE, "/imagine a fox --steps 4")
            assert (await fake.wait_for_call("sendPhoto", timeout=20)).ok
            await discord_fake.wait_until_ready(timeout=30)
            rest = await imagine.stop()
    finally:
        await discord_fake.close()
    output = "".join(lines) + rest
    assert output.count("could not register the command list") == 1, output
    db = await Database.open(bot_settings.store)
    try:
        job = await db.get_job(f"telegram:{update['update_id']}")
        assert job is not None and (job.status, job.spent) == ("succeeded", 1)
        assert await db.check_ledger() == []
    finally:
        await db.close()


async def test_a_sentence_longer_than_telegram_allows_is_clipped(world: World, fake: FakeTelegram) -> None:
    # The gateway cuts a backend's reason at 300 characters; the bot's guard is the last line behind it.
    world.backend.fail_with = BackendError("the worker said: " + "out of memory " * 400)
    update = world.says(ALICE, "/imagine a fox that breaks the worker")
    status = await world.reply_to(update)
    text = await world.text_of(ALICE, status.result["message_id"], "The image generator failed")
    assert len(text) <= telegram_bot.TEXT_LIMIT and "…" in text and text.endswith("refunded.")
    assert await charged(world, update) == ("failed", 0, 1)
    assert world.front is not None and world.front.application is not None
    sent = await world.front.application.bot.send_message(ALICE, "a sentence " * 1000)
    assert sent.text is not None and telegram_bot.TEXT_LIMIT - 10 < len(sent.text) <= telegram_bot.TEXT_LIMIT
    assert sent.text.endswith("…")
    assert not [call for call in fake.calls() if "too long" in (call.description or "")]
