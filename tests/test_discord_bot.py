"""The Discord bot end to end: the real discord.py client against the fake Discord on loopback.

Every test runs the bot (``bots.discord_bot.DiscordFront``) with the gateway service on a real SQLite
file and the fake backend, and asserts what a Discord user would see, as recorded by the fake
(tests/fakes/discord_server.py). Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord
import pytest

from bots.discord_bot import DiscordFront
from bots.discord_ext import images as images_ext
from bots.discord_ext.delivery import Reply, fit_images
from bots.discord_ext.pictures import PictureFetcher
from gateway import (
    BackendError,
    ImageRequest,
    ImagineService,
    InvalidRequest,
    Secret,
    Settings,
    SettingsError,
    parse_prompt,
)
from gateway.backend import GenerationResult, ProgressCallback
from gateway.fake_backend import FakeBackend
from gateway.messages import utc_day
from storage import Database
from tests.fakes.discord_server import (
    MANAGE_GUILD,
    MEMBER_PERMISSIONS,
    CallbackType,
    FakeDiscord,
    FakeInteraction,
    FakeMessage,
    OptionType,
    RecordedRequest,
    UploadedFile,
)
from tests.helpers.png import PNG_SIGNATURE, png_bytes, png_size

TOKEN = "MTA1NzY0NjQ4OTQ0NTYzNzI0OA.GfakeX.bot-token-for-tests"
ORIGINAL = "/webhooks/{application_id}/{token}/messages/@original"
CALLBACK = "/interactions/{interaction_id}/{token}/callback"
ROOT = Path(__file__).resolve().parent.parent


class World:
    """The fake Discord, the gateway over a temp SQLite file, and the bot between them."""

    def __init__(self, fake: FakeDiscord, settings: Settings, db: Database) -> None:
        self.fake = fake
        self.settings = settings
        self.db = db
        self.backend = FakeBackend()
        self.service = ImagineService(settings, db, self.backend)
        self.front: DiscordFront | None = None
        self.alice = fake.default_user_id
        self.bob = fake.add_user("bob").id
        self.admin = next(user.id for user in fake.users.values() if user.username == "admin")

    async def start_bot(self, *, progress_interval: float = 1.5) -> str:
        self.front = DiscordFront(self.settings, self.service)
        self.front.progress_interval = progress_interval
        self.front.stop_grace = 0.0
        self.front.identify_interval = 0.0  # Discord's 5 s between shard IDENTIFYs; the fake has no limit
        return await self.front.start()

    async def stop_bot(self) -> None:
        if self.front is not None:
            await self.front.stop()
            self.front = None

    async def imagine(self, prompt: str, **options: Any) -> FakeInteraction:
        return await self.fake.dispatch_slash_command("imagine", {"prompt": prompt, **options})

    async def admin_command(
        self, subcommand: str, options: dict[str, Any], *, user_id: int
    ) -> FakeInteraction:
        """``/admin`` by a member who sees it (Manage Server); the gateway decides who is an Imagine admin."""
        return await self.fake.dispatch_slash_command(
            "admin",
            options,
            subcommand=subcommand,
            user_id=user_id,
            permissions=MEMBER_PERMISSIONS | MANAGE_GUILD,
        )

    async def result_of(self, interaction: FakeInteraction, within: float = 10.0) -> FakeMessage:
        """The message carrying the image(s) for ``interaction``."""

        def delivered() -> FakeMessage | None:
            for message in interaction.messages:
                if message.attachments:
                    return message
            return None

        return await self.fake.wait_for(delivered, within)

    async def settled(self, interaction: FakeInteraction) -> str:
        """The job's final status, once the bot has settled (or refunded) it after the delivery."""
        async with asyncio.timeout(5):
            while True:
                job = await self.db.get_job(f"discord:{interaction.id}")
                if job is not None and job.status in ("succeeded", "failed"):
                    return job.status
                await asyncio.sleep(0.02)

    async def said(self, interaction: FakeInteraction, text: str, within: float = 5.0) -> FakeMessage:
        """The message of ``interaction`` whose content contains ``text``."""
        return await self.fake.wait_for(
            lambda: next((m for m in interaction.messages if text in m.content), None), within
        )


@pytest.fixture
async def world(settings: Settings, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    """The world; a test may change settings with ``parametrize("world", [{...}], indirect=True)``."""
    fake = FakeDiscord(token=TOKEN, recommended_shards=2)
    await fake.start()
    admin = fake.add_user("admin")
    settings = settings.with_overrides(
        discord_token=Secret(TOKEN),
        discord_api_base_url=fake.api_base_url,
        discord_gateway_url=fake.gateway_url,
        admins=frozenset({f"discord:{admin.id}"}),
        **getattr(request, "param", {}),
    )
    db = await Database.open(settings.store)
    world = World(fake, settings, db)
    await world.service.start()
    try:
        await world.start_bot()
        yield world
    finally:
        await world.stop_bot()
        await world.service.close(drain_timeout=1.0)
        assert await db.check_ledger() == []
        await db.close()
        await fake.close()


async def test_start_logs_in_syncs_commands_and_connects_every_shard(world: World) -> None:
    fake = world.fake
    sessions = await fake.wait_until_ready(shard_count=2)
    assert sorted(s.shard for s in sessions) == [(0, 2), (1, 2)]
    assert set(fake.commands()) == {"imagine", "quota", "help", "admin"}
    options = {o["name"]: o for o in fake.commands()["imagine"]["options"]}
    assert list(options) == ["prompt", "negative", "size", "steps", "guidance", "seed", "count", "image"]
    assert options["image"]["type"] == OptionType.ATTACHMENT
    assert options["count"]["max_value"] == 4
    admin = {o["name"] for o in fake.commands()["admin"]["options"]}
    assert admin == {"quota", "grant", "ban", "unban", "budget", "stats"}
    assert all(identify["intents"] == 0 for identify in fake.identifies)  # no privileged intents
    await world.stop_bot()
    assert await world.start_bot() == "Discord as Imagine#0001 (2 shards)"


def requests_of(world: World, interaction: FakeInteraction, method: str, path: str) -> list[RecordedRequest]:
    return [r for r in world.fake.requests_for(interaction) if r.matches(method, path)]


async def test_a_wrong_or_missing_token_fails_start_with_a_clear_error_that_hides_the_token(
    world: World,
) -> None:
    wrong = world.settings.with_overrides(discord_token=Secret("not-the-token"))
    with pytest.raises(discord.LoginFailure) as failure:
        await DiscordFront(wrong, world.service).start()
    assert "not-the-token" not in str(failure.value)
    with pytest.raises(SettingsError, match="DISCORD_TOKEN"):
        await DiscordFront(world.settings.with_overrides(discord_token=None), world.service).start()


async def test_defer_reaches_discord_within_a_second_while_the_backend_takes_10_s(world: World) -> None:
    world.backend.delay = 0.4  # 25 steps: 10 s
    sent = time.monotonic()
    interaction = await world.imagine("a lighthouse at dusk")
    callback = await world.fake.wait_for_request(
        lambda r: r.interaction_id == interaction.id and r.matches("POST", CALLBACK), 1.0
    )
    assert callback.time - sent < 1.0
    assert interaction.response_type == CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
    await world.said(interaction, "Working…")
    # Stopping the bot now cancels the job (no 10 s wait): refunded, and the user is told so.
    await world.stop_bot()
    await world.said(
        interaction, "Imagine is restarting and could not finish your image; your 1 credit was refunded."
    )
    assert (await world.service.quota(f"discord:{world.alice}")).used == 0


async def test_progress_edits_arrive_in_order_then_the_png_of_the_requested_size(world: World) -> None:
    await world.stop_bot()
    await world.start_bot(progress_interval=0.25)
    world.backend.delay = 0.1
    interaction = await world.imagine("a red fox in the snow --ar 16:9 --steps 10 --seed 7")
    result = await world.result_of(interaction)

    edits = requests_of(world, interaction, "PATCH", ORIGINAL)
    progress, final = edits[:-1], edits[-1]
    texts = [edit.json["content"] for edit in progress]
    assert texts[0] in ("Starting…", "In the queue: 1 ahead of you.")
    steps = [int(match[1]) for text in texts if (match := re.search(r"(\d+)/10 steps", text))]
    assert len(steps) >= 2 and steps == sorted(steps), texts
    gaps = [later.time - earlier.time for earlier, later in itertools.pairwise(progress)]
    assert min(gaps) >= 0.2, gaps  # throttled: at most one edit per interval

    assert final.files and result is interaction.original
    wanted = parse_prompt("x --ar 16:9")
    assert png_size(result.attachments[0].data) == (wanted.width, wanted.height)
    assert result.content.startswith("a red fox in the snow\nseed 7 · ")
    assert "24 credits left" in result.content
    job_id = f"discord:{interaction.id}"
    assert result.custom_ids()[-3:] == [f"imagine:{a}:{job_id}" for a in ("reroll", "vary", "delete")]
    assert world.front is not None and not world.front.bot.persistent_views  # type: ignore[union-attr]
    assert await world.settled(interaction) == "succeeded"  # settled once Discord took the image
    quota = await world.service.quota(f"discord:{world.alice}")
    assert (quota.used, quota.reserved) == (1, 0)


async def test_typed_options_become_the_request(world: World) -> None:
    options = {"negative": "text", "size": "768x768", "steps": 4, "guidance": 9.5, "seed": 11, "count": 2}
    interaction = await world.imagine("a bowl of fruit", **options)
    result = await world.result_of(interaction)
    _, request = world.backend.calls[-1]
    assert (request.negative_prompt, request.width, request.height) == ("text", 768, 768)
    assert (request.steps, request.guidance, request.seed, request.num_images) == (4, 9.5, 11, 2)
    assert [png_size(a.data) for a in result.attachments] == [(768, 768), (768, 768)]
    assert "seeds 11, 12" in result.content


async def test_buttons_reroll_after_a_restart_cost_credits_and_only_the_requester_deletes(
    world: World,
) -> None:
    first = await world.imagine("a castle on a hill --seed 42")
    result = await world.result_of(first)
    reroll, vary, delete = result.custom_ids()[-3:]
    user = f"discord:{world.alice}"

    await world.stop_bot()  # the buttons keep working after the bot restarts
    await world.start_bot()

    pressed = await world.fake.dispatch_component(reroll, result.id)
    rerolled = await world.result_of(pressed)
    assert pressed.response_type == CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
    assert rerolled.id != result.id and rerolled.content.startswith("a castle on a hill\nseed ")
    assert "seed 42 " not in rerolled.content
    assert rerolled.attachments[0].data != result.attachments[0].data
    assert (await world.service.quota(user)).used == 2

    varied = await world.result_of(await world.fake.dispatch_component(vary, result.id))
    assert len(varied.attachments) == 4
    assert (await world.service.quota(user)).used == 6

    refused = await world.fake.dispatch_component(delete, result.id, user_id=world.bob)
    answer = await world.said(refused, images_ext.NOT_YOURS)
    assert answer.ephemeral and not result.deleted

    await world.fake.dispatch_component(delete, result.id)
    await world.fake.wait_for(lambda: result.deleted)
    assert (await world.service.quota(user)).used == 6  # deleting refunds nothing and costs nothing


@pytest.mark.parametrize("world", [{"daily_quota": 1, "relax_daily": 1}], indirect=True)
async def test_out_of_credits_offers_a_relax_button_that_asks_again_for_free(world: World) -> None:
    user = f"discord:{world.alice}"
    await world.result_of(await world.imagine("a lighthouse --seed 1"))  # the one credit of the day
    refused = await world.imagine("a lighthouse at dusk --seed 2")
    sentence = await world.said(refused, "Or add --relax for a free image")
    [relax] = sentence.custom_ids()
    assert relax.startswith("imagine:relax:")

    stranger = await world.fake.dispatch_component(relax, sentence.id, user_id=world.bob)
    await world.said(stranger, images_ext.RELAX_GONE)  # only the one refused may use it

    pressed = await world.fake.dispatch_component(relax, sentence.id)
    result = await world.result_of(pressed)
    assert (
        result.content.startswith("a lighthouse at dusk\nseed 2 ") and "relax, no credits" in result.content
    )
    quota = await world.service.quota(user)
    assert (quota.used, quota.remaining) == (1, 0)  # the relax image cost nothing
    again = await world.fake.dispatch_component(relax, sentence.id)
    await world.said(again, images_ext.RELAX_GONE)  # a button asks once


@pytest.mark.parametrize("world", [{"gpu_cost_per_second": 0.001, "monthly_budget": 5.0}], indirect=True)
async def test_admin_budget_shows_and_sets_this_months_ceiling(world: World) -> None:
    refused = await world.admin_command("budget", {"amount": 1.0}, user_id=world.bob)
    await world.said(refused, "Only Imagine admins can do that; nothing was changed.")
    shown = await world.admin_command("budget", {}, user_id=world.admin)
    answer = await world.said(shown, "GPU budget for ")
    assert answer.ephemeral and "a ceiling of 5.00" in answer.content
    raised = await world.admin_command("budget", {"amount": 7.5}, user_id=world.admin)
    await world.said(raised, "a ceiling of 7.50 (set by an admin)")


async def test_admin_grant_is_refused_for_a_non_admin_and_works_for_an_admin(world: World) -> None:
    bob = f"discord:{world.bob}"
    before = await world.db.ledger()
    refused = await world.admin_command("grant", {"user": f"<@{world.bob}>", "credits": 5}, user_id=world.bob)
    answer = await world.said(refused, "Only Imagine admins can do that; nothing was changed.")
    assert answer.ephemeral
    assert await world.db.ledger() == before
    assert (await world.service.quota(bob)).bonus == 0

    granted = await world.admin_command(
        "grant", {"user": f"<@{world.bob}>", "credits": 5}, user_id=world.admin
    )
    answer = await world.said(granted, f"Granted 5 credits to {bob}; bonus now 5.")
    assert answer.ephemeral
    assert (await world.service.quota(bob)).bonus == 5

    stats = await world.admin_command("stats", {}, user_id=world.admin)
    await world.said(stats, "Last 24 hours:")


async def test_the_same_interaction_delivered_twice_is_generated_charged_and_answered_once(
    world: World,
) -> None:
    world.backend.delay = 0.02
    interaction = await world.imagine("a pair of twins")
    await world.fake.wait_for_response(interaction)
    await world.fake.redispatch(interaction)
    await world.result_of(interaction)
    await asyncio.sleep(0.3)  # room for a second answer to show up, if the bot made one
    assert interaction.deliveries == 2
    assert len(world.backend.calls) == 1
    assert len(requests_of(world, interaction, "POST", CALLBACK)) == 1
    assert interaction.followups == [] and len(interaction.attachments) == 1
    assert await world.settled(interaction) == "succeeded"
    reserves = [row for row in await world.db.ledger() if row["kind"] == "reserve"]
    assert len(reserves) == 1
    assert (await world.service.quota(f"discord:{world.alice}")).used == 1


async def test_a_429_on_the_delivery_is_retried_and_the_image_still_arrives(world: World) -> None:
    await world.stop_bot()
    await world.start_bot(progress_interval=60.0)  # one progress edit, then the delivery
    world.backend.delay = 0.04
    interaction = await world.imagine("a crowded harbour")
    await world.fake.wait_for_request(
        lambda r: r.interaction_id == interaction.id and r.matches("PATCH", ORIGINAL)
    )
    # Discord's 429 (discord.py waits and retries), then one without Via (discord.py gives up, the bot not).
    polite = world.fake.inject_rate_limit("PATCH", ORIGINAL, retry_after=0.2)
    blunt = world.fake.inject_rate_limit("PATCH", ORIGINAL, retry_after=0.2, cloudflare=True)
    result = await world.result_of(interaction, 15.0)
    assert [len(polite.hits), len(blunt.hits)] == [1, 1]
    assert polite.hits[0].files and blunt.hits[0].files  # both were the delivery itself
    assert png_size(result.attachments[0].data) == (512, 512)
    assert await world.settled(interaction) == "succeeded"


@pytest.mark.parametrize("channel_refuses", [False, True], ids=["channel", "dm"])
async def test_a_job_that_outlives_its_token_is_delivered_in_the_channel_or_by_dm(
    world: World, channel_refuses: bool
) -> None:
    world.backend.delay = 0.03
    if channel_refuses:
        world.fake.inject_error(
            "POST", "/channels/{channel_id}/messages", status=403, code=50013, message="Missing Permissions"
        )
    interaction = await world.imagine("a very slow painting")
    await world.fake.wait_for_response(interaction)
    world.fake.expire_interaction(interaction)  # as if 15 minutes had passed

    def delivered() -> FakeMessage | None:
        if channel_refuses:
            messages = world.fake.dm_messages(world.alice)
        else:
            messages = world.fake.channel_messages()
        return next((m for m in messages if m.attachments and m.webhook_id is None), None)

    message = await world.fake.wait_for(delivered, 10.0)
    if not channel_refuses:
        assert message.content.startswith(f"<@{world.alice}> a very slow painting\nseed ")
    assert png_size(message.attachments[0].data) == (512, 512)
    assert f"imagine:reroll:discord:{interaction.id}" in message.custom_ids()
    assert await world.settled(interaction) == "succeeded"
    quota = await world.service.quota(f"discord:{world.alice}")
    assert (quota.used, quota.reserved) == (1, 0)


class NoisyBackend(FakeBackend):
    """Images of random pixels: PNG cannot compress them, like real photos at large sizes."""

    async def generate(
        self, job_id: str, request: ImageRequest, progress: ProgressCallback
    ) -> GenerationResult:
        from PIL import Image

        result = await super().generate(job_id, request, progress)
        noisy = []
        for _ in result.images:
            out = io.BytesIO()
            pixels = os.urandom(request.width * request.height * 3)
            Image.frombytes("RGB", (request.width, request.height), pixels).save(out, format="PNG")
            noisy.append(out.getvalue())
        return GenerationResult(noisy, result.seeds, result.model, timings=result.timings)


async def test_an_image_over_the_interactions_upload_limit_is_reencoded_to_fit(world: World) -> None:
    noisy = NoisyBackend()
    world.service.backend = noisy
    limit = 300_000
    interaction = await world.fake.dispatch_slash_command(
        "imagine", {"prompt": "static on an old television"}, attachment_size_limit=limit
    )
    result = await world.result_of(interaction)
    attachment = result.attachments[0]
    assert attachment.size <= limit and attachment.filename.endswith(".jpg")
    assert attachment.data[:3] == b"\xff\xd8\xff"  # JPEG
    assert not any(r.status == 413 for r in world.fake.requests)
    assert await world.settled(interaction) == "succeeded"


def test_fit_images_keeps_small_pngs_and_shrinks_big_ones() -> None:
    from PIL import Image

    small = FakeBackend  # noqa: F841 - the fake backend's PNGs are tiny
    out = io.BytesIO()
    Image.frombytes("RGB", (1024, 1024), os.urandom(1024 * 1024 * 3)).save(out, format="PNG")
    big = out.getvalue()
    tiny = PNG_SIGNATURE + b"0" * 1000
    assert fit_images([tiny], 8 * 1024 * 1024) == [tiny]
    fitted = fit_images([big, big], 1_000_000)
    assert all(len(image) <= (1_000_000 - 64 * 1024) // 2 for image in fitted)
    with Image.open(io.BytesIO(fitted[0])) as image:
        assert image.format == "JPEG"


async def test_refusals_and_failures_are_one_sentence_each_and_cost_nothing(world: World) -> None:
    fake, alice = world.fake, f"discord:{world.alice}"

    bad = await world.imagine("a cat --steps 99")
    answer = await world.said(bad, "--steps must be a whole number from 1 to 50; got 99.")
    assert bad.response_type == CallbackType.CHANNEL_MESSAGE_WITH_SOURCE and answer.ephemeral

    world.backend.fail_with = BackendError("the GPU fell over")
    failed = await world.imagine("a dog")
    await world.said(failed, "The image generator failed: the GPU fell over; your 1 credit was refunded.")
    world.backend.fail_with = None

    world.backend.block = True
    blocked = await world.imagine("something")
    await world.said(blocked, "The safety filter blocked the image; your 1 credit was refunded.")
    world.backend.block = False

    ban = await world.admin_command(
        "ban", {"user": str(world.bob), "reason": "spamming"}, user_id=world.admin
    )
    await world.said(ban, f"discord:{world.bob} is banned: spamming")
    banned = await fake.dispatch_slash_command("imagine", {"prompt": "a horse"}, user_id=world.bob)
    await world.said(banned, "You are banned from Imagine: spamming")

    zero = await world.admin_command("quota", {"user": alice, "allowance": 0}, user_id=world.admin)
    await world.said(zero, f"{alice} may now make 0 images a day.")
    broke = await world.imagine("a bird")
    await world.said(broke, "they reset at 00:00 UTC")

    quota = await fake.dispatch_slash_command("quota")
    assert (await world.said(quota, "Used today: 0 of 0 (set by an admin)")).ephemeral
    help_ = await fake.dispatch_slash_command("help")
    assert (await world.said(help_, "--ar W:H")).ephemeral
    assert (await world.service.quota(alice)).used == 0
    assert len(world.backend.calls) == 2


# --- the bot as a process: `imagine discord`, killed with SIGKILL mid-job and started again ------------


async def start_bot_process(env: dict[str, str], cwd: Path, log: Path) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "imagine.py"),
        "discord",
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=log.open("ab"),
    )
    assert process.stdout is not None
    async with asyncio.timeout(30):
        while not (line := (await process.stdout.readline()).decode()).startswith("imagine: discord is on:"):
            assert line, f"the bot exited before it was on; see {log}"
    return process


@pytest.mark.slow
async def test_bot_killed_mid_job_and_restarted_refunds_the_credit_and_tells_the_user(
    tmp_path: Path, data_dir: Path
) -> None:
    fake = FakeDiscord(token=TOKEN)
    await fake.start()
    db_path = data_dir / "imagine.sqlite3"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGINE_", "DISCORD_", "TELEGRAM_"))}
    env |= {
        "DISCORD_TOKEN": TOKEN,
        "DISCORD_API_BASE_URL": fake.api_base_url,
        "DISCORD_GATEWAY_URL": fake.gateway_url,
        "IMAGINE_DB": str(db_path),
        "IMAGINE_BACKEND": "fake",
        "IMAGINE_MODEL": "tiny",
        "IMAGINE_FAKE_DELAY": "1",  # 25 s for an image: it is mid-job when it dies
    }
    log = tmp_path / "bot.log"
    processes: list[asyncio.subprocess.Process] = []
    try:
        processes.append(first := await start_bot_process(env, tmp_path, log))
        interaction = await fake.dispatch_slash_command("imagine", {"prompt": "a lighthouse at dusk"})
        await world_said(fake, interaction, "Working…")
        maps = await asyncio.to_thread(Path(f"/proc/{first.pid}/maps").read_text)
        assert "torch" not in maps  # the bot process never loads torch

        first.send_signal(signal.SIGKILL)
        await first.wait()
        processes.append(second := await start_bot_process(env, tmp_path, log))
        told = await world_said(fake, interaction, "refunded", within=15.0)
        assert told.content.startswith(
            "Imagine restarted while making your image; your 1 credit was refunded."
        )
        second.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(second.wait(), 30) == 0
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
        await fake.close()

    db = await Database.open(db_path)
    try:
        assert await db.check_ledger() == []
        assert await db.integrity_check() == "ok"
        job = await db.get_job(f"discord:{interaction.id}")
        assert job is not None and (job.status, job.refunded, job.spent) == ("failed", 1, 0)
        quota = await db.quota(
            f"discord:{fake.default_user_id}", day=utc_day(time.time()), default_allowance=25
        )
        assert (quota.used, quota.reserved) == (0, 0)
    finally:
        await db.close()


async def world_said(
    fake: FakeDiscord, interaction: FakeInteraction, text: str, within: float = 10.0
) -> FakeMessage:
    return await fake.wait_for(
        lambda: next((m for m in interaction.messages if text in m.content), None), within
    )


# --- safety: nothing a user typed pings anyone, every sentence fits -----------------------------------------


async def test_nothing_a_user_typed_pings_anyone_in_any_message_the_bot_sends_or_edits(world: World) -> None:
    fake, alice = world.fake, world.alice
    hostile = f"@everyone @here <@{world.bob}> <@&{fake.snowflake()}>"
    await world.stop_bot()
    await world.start_bot(progress_interval=0.05)
    world.backend.delay = 0.02

    # The result after its progress edits; a refusal repeating the bad value; a failure repeating the backend.
    assert hostile in (await world.result_of(await world.imagine(f"{hostile} a cat"))).content
    await world.said(await world.imagine(f"a cat --seed {hostile}"), "--seed")
    world.backend.fail_with = BackendError(f"{hostile} fell over")
    await world.said(await world.imagine("a dog"), "fell over")
    world.backend.fail_with = None

    # Past the token: in the channel (naming the requester on purpose), then by DM when the channel refuses.
    for channel_refuses in (False, True):
        if channel_refuses:
            fake.inject_error("POST", "/channels/{channel_id}/messages", status=403, code=50013)
        late = await world.imagine(f"{hostile} a slow cat")
        await fake.wait_for_response(late)
        fake.expire_interaction(late)
        await world.settled(late)

    # An admin's answer repeating a ban reason, then the banned user's refusal repeating it again.
    ban = await world.admin_command("ban", {"user": str(world.bob), "reason": hostile}, user_id=world.admin)
    await world.said(ban, "is banned")
    refused = await fake.dispatch_slash_command("imagine", {"prompt": "x"}, user_id=world.bob)
    await world.said(refused, "banned")

    # A notice after a restart goes out on the stored token, through a webhook discord.py builds afresh.
    assert world.front is not None and world.front.bot is not None
    told = await world.imagine("a quiet cat")
    await world.result_of(told)
    job = await world.db.get_job(f"discord:{told.id}")
    assert job is not None and job.reply is not None
    assert await Reply.from_json(world.front.bot, job.reply).tell(f"restarted: {hostile}")

    writes = [write for write in fake.message_writes() if write.status < 300]
    channel_posts = [w for w in writes if w.matches("POST", "/channels/{channel_id}/messages")]
    assert len(writes) >= 12 and len(channel_posts) == 2  # the channel's and the DM's
    for write in writes:
        mentions = write.allowed_mentions
        assert mentions is not None and mentions["parse"] == [], write
        assert not mentions.get("roles") and not mentions.get("replied_user"), write
        named = [str(user) for user in mentions.get("users") or []]
        assert named in ([], [str(alice)]), write
    pinged = set().union(*(message.pings for message in fake.messages.values()))
    assert pinged == {f"user:{alice}"}  # the channel fallback's "<@requester>", and nothing else


async def test_admin_is_hidden_from_members_without_manage_server_and_text_options_are_bounded(
    world: World,
) -> None:
    fake = world.fake
    admin = fake.commands()["admin"]
    assert admin["default_member_permissions"] == str(MANAGE_GUILD)
    with pytest.raises(PermissionError):  # the Discord app does not even offer it to a plain member
        await fake.dispatch_slash_command("admin", {}, subcommand="stats", user_id=world.bob)

    imagine = {o["name"]: o for o in fake.commands()["imagine"]["options"]}
    assert (imagine["prompt"]["max_length"], imagine["negative"]["max_length"]) == (1000, 500)
    texts = [
        o for sub in admin["options"] for o in sub.get("options") or [] if o["type"] == OptionType.STRING
    ]
    assert texts and all(o.get("max_length") for o in texts), texts
    with pytest.raises(ValueError, match="prompt"):  # nor lets anyone send a longer prompt
        await world.imagine("x" * 1001)
    assert (await world.result_of(await world.imagine("x" * 1000))).attachments


@pytest.mark.parametrize("route", ["interaction", "channel"])
async def test_a_sentence_past_discords_2000_characters_is_clipped_and_still_reaches_the_user(
    world: World, route: str
) -> None:
    world.backend.delay = 0.03
    world.backend.fail_with = BackendError("the GPU said " + "no " * 1000)  # a sentence of 3,000+ characters
    failed = await world.imagine("a dog")
    if route == "channel":
        await world.fake.wait_for_response(failed)
        world.fake.expire_interaction(failed)
        told = await world.fake.wait_for(
            lambda: next((m for m in world.fake.channel_messages() if "GPU said" in m.content), None)
        )
        assert told.content.startswith(f"<@{world.alice}> The image generator failed: the GPU said no no")
    else:
        told = await world.said(failed, "The image generator failed: the GPU said no no")
    assert len(told.content) <= 2000
    assert not [
        write for write in world.fake.message_writes() if write.status == 400
    ]  # none refused as too long
    assert await world.settled(failed) == "failed"
    assert (await world.service.quota(f"discord:{world.alice}")).used == 0


async def test_a_delivery_discord_may_have_taken_is_charged_once_never_refunded(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every route answers 503 (Discord may have posted the message anyway): an ambiguous send is
    charged, never refunded with a sentence that gives the image away free."""
    from bots.discord_ext import delivery

    monkeypatch.setattr(delivery, "MAX_RETRY_WAIT", 0.0)  # the retries' back-off, not what is tested
    world.backend.delay = 0.03
    interaction = await world.imagine("a harbour at night")
    await world.fake.wait_for_response(interaction)
    world.fake.expire_interaction(interaction)  # the token route is gone: channel, then DM
    world.fake.inject_error("POST", "/channels/{channel_id}/messages", status=503, count=1000)
    assert await world.settled(interaction) == "succeeded"
    job_id = f"discord:{interaction.id}"
    kinds = [row["kind"] for row in await world.db.ledger() if row["job_id"] == job_id]
    assert kinds == ["reserve", "settle"]
    told = [m.content for m in world.fake.channel_messages() + interaction.messages if m.content]
    assert not any("refunded" in text for text in told)


# ---- image actions: U/V buttons and image prompts ----------------------------------------------------


def picture(width: int, height: int, rgb: tuple[int, int, int] = (30, 120, 200), fmt: str = "PNG") -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), rgb).save(out, format=fmt)
    return out.getvalue()


def colour(data: bytes) -> tuple[int, ...]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return tuple(image.convert("RGB").getpixel((0, 0)))  # type: ignore[arg-type]


async def charged(world: World) -> dict[str, int]:
    """Credits settled per job, from the ledger."""
    settled: dict[str, int] = {}
    for row in await world.db.ledger():
        if row["kind"] == "settle":
            settled[row["job_id"]] = settled.get(row["job_id"], 0) + abs(row["credits"])
    return settled


async def test_u2_and_v1_act_on_that_image_of_the_result_and_cost_a_credit_each(world: World) -> None:
    first = await world.imagine("a castle on a hill --seed 42 --n 2")
    result = await world.result_of(first)
    job = f"discord:{first.id}"
    rows = [[c["custom_id"] for c in row["components"]] for row in result.components]
    assert rows == [
        [f"imagine:U1:{job}", f"imagine:U2:{job}"],
        [f"imagine:V1:{job}", f"imagine:V2:{job}"],
        [f"imagine:VS1:{job}", f"imagine:VS2:{job}"],
        [f"imagine:reroll:{job}", f"imagine:vary:{job}", f"imagine:delete:{job}"],
    ]
    labels = [c["label"] for row in result.components for c in row["components"]]
    assert labels[:6] == ["U1", "U2", "V1", "V2", "V1 strong", "V2 strong"]
    assert [png_size(a.data) for a in result.attachments] == [(512, 512), (512, 512)]

    await world.stop_bot()  # the image buttons keep working after a restart too
    await world.start_bot()

    pressed = await world.fake.dispatch_component(f"imagine:U2:{job}", result.id)
    await world.fake.redispatch(pressed)  # a double click: one job
    upscaled = await world.result_of(pressed)
    _, request = world.backend.calls[-1]
    assert (request.kind, request.seed, request.strength, request.num_images) == ("upscale", 43, 0.3, 1)
    assert png_size(request.init_image or b"") == (1024, 1024)
    assert colour(request.init_image or b"") == colour(result.attachments[1].data)  # image 2, not 1
    assert [png_size(a.data) for a in upscaled.attachments] == [(1024, 1024)]
    assert upscaled.custom_ids()[0] == f"imagine:U1:discord:{pressed.id}"  # a result like any other
    assert world.fake.cdn_downloads == [result.attachments[1].id]

    vary = await world.fake.dispatch_component(f"imagine:V1:{job}", result.id)
    varied = await world.result_of(vary)
    _, request = world.backend.calls[-1]
    assert (request.kind, request.strength, request.num_images) == ("vary", 0.35, 1)
    assert request.seed not in (None, 42) and colour(request.init_image or b"") == colour(
        result.attachments[0].data
    )
    assert [png_size(a.data) for a in varied.attachments] == [(512, 512)]

    strong = await world.fake.dispatch_component(f"imagine:VS2:{job}", result.id)
    await world.result_of(strong)
    _, request = world.backend.calls[-1]
    assert (request.kind, request.strength) == ("vary", 0.7)

    assert len(world.backend.calls) == 4
    assert await world.settled(strong) == "succeeded"
    assert await charged(world) == {
        job: 2,
        f"discord:{pressed.id}": 1,
        f"discord:{vary.id}": 1,
        f"discord:{strong.id}": 1,
    }
    assert (await world.service.quota(f"discord:{world.alice}")).used == 5


async def test_an_image_button_whose_image_cannot_be_read_is_one_sentence_and_costs_nothing(
    world: World,
) -> None:
    first = await world.imagine("a castle on a hill --seed 42")
    result = await world.result_of(first)
    upscale = result.custom_ids()[0]
    assert await world.settled(first) == "succeeded"
    before = await world.db.ledger()
    # The same buttons on a message whose attachment is not a picture, and on one with none.
    components = result.components
    broken = world.fake.add_bot_message(
        "x", components=components, files=[UploadedFile("imagine-42.png", b"not a png", "image/png")]
    )
    empty = world.fake.add_bot_message("x", components=components)

    pressed = await world.fake.dispatch_component(upscale, broken.id)
    await world.said(pressed, "The picture must be a PNG, JPEG or WebP image.")
    pressed = await world.fake.dispatch_component(upscale, empty.id)
    await world.said(pressed, images_ext.IMAGE_GONE)
    assert len(world.backend.calls) == 1
    assert await world.db.ledger() == before


async def test_imagine_with_an_image_attachment_is_an_image_prompt_sized_like_its_picture(
    world: World,
) -> None:
    photo = picture(600, 900, fmt="JPEG")
    interaction = await world.imagine(
        "a watercolour of this --strength 0.5 --seed 3", image=UploadedFile("photo.jpg", photo, "image/jpeg")
    )
    result = await world.result_of(interaction)
    _, request = world.backend.calls[-1]
    assert (request.kind, request.strength, request.seed) == ("image", 0.5, 3)
    assert png_size(request.init_image or b"") == (704, 1024)  # 2:3 fitted to 1024, sides of 64
    assert [png_size(a.data) for a in result.attachments] == [(704, 1024)]
    assert interaction.response_type == CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
    assert await world.settled(interaction) == "succeeded"
    assert await charged(world) == {f"discord:{interaction.id}": 1}


async def test_a_bad_image_attachment_is_one_private_sentence_and_costs_nothing(world: World) -> None:
    before = await world.db.ledger()
    damaged = picture(640, 640)[:400]
    cases = [
        # What Discord says of the file refuses it at once (the interaction's own answer, private) ...
        (UploadedFile("notes.txt", b"hello", "text/plain"), "The picture must be a PNG, JPEG or WebP image."),
        (
            UploadedFile("huge.png", b"\x89PNG" + bytes(11 * 2**20), "image/png"),
            "The picture is 11.0 MB; the limit is 10 MB.",
        ),
        # ... and what its bytes say, once fetched.
        (
            UploadedFile("fake.png", b"GIF89a not a png", "image/png"),
            "The picture must be a PNG, JPEG or WebP image.",
        ),
        (UploadedFile("cut.png", damaged, "image/png"), "The picture is damaged or cut off; send it again."),
    ]
    for upload, sentence in cases:
        interaction = await world.imagine("a lighthouse", image=upload)
        answer = await world.said(interaction, sentence)
        assert answer.ephemeral and answer.content == sentence
        original = interaction.original
        assert original is not None
        if original is not answer:  # fetched after a public defer: the "thinking…" message goes
            await world.fake.wait_for(lambda m=original: m.deleted)  # type: ignore[misc]
    assert len(world.fake.cdn_downloads) == 2  # only the two whose metadata looked right
    assert world.backend.calls == []
    assert await world.db.ledger() == before


async def test_pictures_come_only_from_discords_cdn_and_are_cut_off_while_streaming(world: World) -> None:
    fetcher = PictureFetcher(api_base_url=world.fake.api_base_url, limit=2**20)
    try:
        small, big = world.fake.add_bot_message(
            files=[UploadedFile("a.png", png_bytes(), "image/png"), UploadedFile("b.png", bytes(3 * 2**20))]
        ).attachments
        assert await fetcher.download(small.url) == png_bytes()
        with pytest.raises(InvalidRequest, match=r"^The picture is 3\.0 MB; the limit is 1 MB\.$"):
            await fetcher.download(big.url)  # as the CDN's Content-Length says
        world.fake.cdn_content_length = False  # a CDN that does not say: cut off while streaming
        with pytest.raises(InvalidRequest, match=r"^The picture is more than 1 MB; the limit is 1 MB\.$"):
            await fetcher.download(big.url)
        for elsewhere in (
            "http://127.0.0.1:9/a.png",
            "https://example.com/a.png",
            "https://u:p@cdn.discordapp.com/a",
        ):
            with pytest.raises(InvalidRequest, match="only from Discord's CDN"):
                await fetcher.download(elsewhere)
        assert fetcher.from_discord("https://cdn.discordapp.com/attachments/1/2/a.png")
        assert fetcher.from_discord("https://media.discordapp.net/attachments/1/2/a.png")
        assert not fetcher.from_discord("http://cdn.discordapp.com/attachments/1/2/a.png")
    finally:
        await fetcher.close()
