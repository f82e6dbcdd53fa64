"""The fake Discord (tests/fakes/discord_server.py) driven through the real discord.py client.

These tests pin down that the fake speaks enough of Discord's protocol for discord.py to log in, connect,
sync commands and answer interactions, so that the bot's own tests can trust it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands

from tests.fakes.discord_server import (
    CallbackType,
    FakeDiscord,
    FakeInteraction,
    RecordedRequest,
    UploadedFile,
    discord_py_pointed_at,
)
from tests.helpers.png import png_bytes

TOKEN = "MTA1NzY0NjQ4OTQ0NTYzNzI0OA.GfakeX.bot-token-for-tests"
FOLLOWUP = "/webhooks/{application_id}/{token}"
ORIGINAL = "/webhooks/{application_id}/{token}/messages/@original"
CALLBACK = "/interactions/{interaction_id}/{token}/callback"
RETRY_AFTER = 0.2

Behaviour = Callable[[discord.Interaction, dict[str, Any]], Awaitable[None]]


PNG = png_bytes()


async def defer_only(interaction: discord.Interaction, args: dict[str, Any]) -> None:
    await interaction.response.defer()


class RerollView(discord.ui.View):
    """A persistent view like the bot's: no timeout, fixed custom_ids."""

    def __init__(self, presses: asyncio.Queue[discord.Interaction]) -> None:
        super().__init__(timeout=None)
        self.presses = presses

    @discord.ui.button(label="Re-roll", style=discord.ButtonStyle.primary, custom_id="imagine:reroll")
    async def reroll(self, interaction: discord.Interaction, button: discord.ui.Button[RerollView]) -> None:
        self.presses.put_nowait(interaction)
        await interaction.response.edit_message(content="Re-rolling…")


class ProbeBot(discord.Client):
    """A minimal discord.py bot with the command shapes the real bot uses."""

    def __init__(self, **options: Any) -> None:
        # guild_ready_timeout: discord.py waits this long after the last GUILD_CREATE before on_ready.
        super().__init__(intents=discord.Intents.default(), guild_ready_timeout=0.05, **options)
        self.tree = app_commands.CommandTree(self)
        self.invocations: asyncio.Queue[tuple[discord.Interaction, dict[str, Any]]] = asyncio.Queue()
        self.presses: asyncio.Queue[discord.Interaction] = asyncio.Queue()
        self.behaviour: Behaviour = defer_only
        add_probe_commands(self.tree, self)

    async def setup_hook(self) -> None:
        self.add_view(RerollView(self.presses))

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py sleeps 5 s before every IDENTIFY but the first (Discord's identify rate limit)."""


class ShardedProbeBot(discord.AutoShardedClient):
    def __init__(self, **options: Any) -> None:
        super().__init__(intents=discord.Intents.default(), guild_ready_timeout=0.05, **options)
        self.tree = app_commands.CommandTree(self)
        self.invocations: asyncio.Queue[tuple[discord.Interaction, dict[str, Any]]] = asyncio.Queue()
        self.behaviour: Behaviour = defer_only
        add_probe_commands(self.tree, self)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """No 5 s pause between the shards' IDENTIFYs."""


def add_probe_commands(tree: app_commands.CommandTree[Any], bot: ProbeBot | ShardedProbeBot) -> None:
    @tree.command(name="imagine", description="Turn a prompt into an image")
    @app_commands.describe(prompt="What to draw", steps="Denoising steps", guidance="Guidance scale")
    async def imagine(
        interaction: discord.Interaction,
        prompt: str,
        steps: int | None = None,
        guidance: float | None = None,
        style: str | None = None,
    ) -> None:
        args = {"prompt": prompt, "steps": steps, "guidance": guidance, "style": style}
        bot.invocations.put_nowait((interaction, args))
        await bot.behaviour(interaction, args)

    @imagine.autocomplete("style")
    async def style_choices(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        styles = ["oil painting", "watercolour", "pixel art"]
        return [app_commands.Choice(name=s, value=s) for s in styles if current.lower() in s]

    admin = app_commands.Group(name="admin", description="Administer quotas")

    @admin.command(name="grant", description="Give bonus credits")
    async def grant(interaction: discord.Interaction, user: discord.User, credits: int) -> None:
        args = {"user": user, "credits": credits}
        bot.invocations.put_nowait((interaction, args))
        await interaction.response.send_message(f"Granted {credits} to {user.name}", ephemeral=True)

    tree.add_command(admin)


@contextlib.asynccontextmanager
async def running(
    client: discord.Client, fake: FakeDiscord, shard_count: int | None = None
) -> AsyncIterator[None]:
    """Start ``client`` against ``fake``, wait until both sides are ready, close it afterwards."""

    async def both_ready() -> None:
        await fake.wait_until_ready(shard_count)
        await asyncio.wait_for(client.wait_until_ready(), 5)

    task = asyncio.create_task(client.start(TOKEN))
    try:
        ready = asyncio.create_task(both_ready())
        done, _ = await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ready
            if task in done:
                task.result()
            raise TimeoutError("the client did not get ready")
        ready.result()
        yield
    finally:
        await client.close()
        await asyncio.wait_for(task, 5)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(token=TOKEN) as server:
        with discord_py_pointed_at(server):
            yield server


@pytest.fixture
async def bot(fake: FakeDiscord) -> AsyncIterator[ProbeBot]:
    client = ProbeBot()
    async with running(client, fake):
        yield client


async def next_invocation(bot: ProbeBot | ShardedProbeBot) -> tuple[discord.Interaction, dict[str, Any]]:
    return await asyncio.wait_for(bot.invocations.get(), 5)


def statuses(requests: list[RecordedRequest]) -> list[int]:
    return [request.status for request in requests]


# ---- connecting ------------------------------------------------------------------------------------------


async def test_client_logs_in_connects_and_caches_the_test_guild(fake: FakeDiscord, bot: ProbeBot) -> None:
    assert bot.user is not None
    assert (bot.user.id, bot.user.bot) == (fake.bot_user.id, True)
    assert bot.application_id == fake.application_id
    guild = bot.get_guild(fake.guild_id)
    assert guild is not None and guild.me is not None
    channel = guild.get_channel(fake.channel_id)
    assert isinstance(channel, discord.TextChannel) and channel.name == "general"

    identify = fake.identifies[0]
    assert identify["intents"] == bot.intents.value
    assert identify["token"] == "<redacted>"
    session = next(iter(fake.sessions.values()))
    assert session.connection is not None and session.connection.compress == "zlib-stream"
    await fake.wait_for(lambda: session.connection is not None and session.connection.heartbeats >= 1)

    login = fake.requests_matching("GET", "/users/@me")[0]
    assert login.headers["Authorization"] == f"Bot {TOKEN}"
    assert fake.requests_matching("GET", "/oauth2/applications/@me")
    assert fake.unknown_requests == []


async def test_wrong_token_is_refused_like_discord(fake: FakeDiscord) -> None:
    client = ProbeBot()
    with pytest.raises(discord.LoginFailure):
        await client.login("not-the-token")
    await client.close()


async def test_plain_text_gateway_without_compression(fake: FakeDiscord) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{fake.gateway_url}?v=10&encoding=json") as ws,
    ):
        hello = json.loads(await ws.receive_str(timeout=5))
        assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] > 0
        await ws.send_json({"op": 2, "d": {"token": TOKEN, "intents": 513, "properties": {}}})
        ready = json.loads(await ws.receive_str(timeout=5))
        assert (ready["t"], ready["s"]) == ("READY", 1)
        guild_create = json.loads(await ws.receive_str(timeout=5))
        assert guild_create["t"] == "GUILD_CREATE" and guild_create["d"]["id"] == str(fake.guild_id)
        await ws.send_json({"op": 1, "d": 2})
        assert json.loads(await ws.receive_str(timeout=5))["op"] == 11


@pytest.mark.parametrize("from_gateway_bot", [False, True], ids=["shard_count=2", "GET /gateway/bot"])
async def test_two_shards_connect_and_interactions_reach_the_right_shard(from_gateway_bot: bool) -> None:
    async with FakeDiscord(token=TOKEN, recommended_shards=2) as fake:
        with discord_py_pointed_at(fake):
            client = ShardedProbeBot(shard_count=None if from_gateway_bot else 2)
            async with running(client, fake, shard_count=2):
                assert sorted(identify["shard"] for identify in fake.identifies) == [[0, 2], [1, 2]]
                guild = client.get_guild(fake.guild_id)
                assert guild is not None and guild.shard_id == (fake.guild_id >> 22) % 2

                await fake.dispatch_slash_command("imagine", {"prompt": "in the guild"})
                interaction, args = await next_invocation(client)
                assert args["prompt"] == "in the guild" and interaction.guild_id == fake.guild_id

                dm = await fake.dispatch_slash_command("imagine", {"prompt": "in a DM"}, guild_id=None)
                interaction, args = await next_invocation(client)
                assert interaction.guild_id is None and isinstance(interaction.channel, discord.DMChannel)
                assert (await fake.wait_for_response(dm)) == CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
            assert bool(fake.requests_matching("GET", "/gateway/bot")) is from_gateway_bot


# ---- application commands ----------------------------------------------------------------------------


async def test_tree_sync_lands_in_the_fake(fake: FakeDiscord, bot: ProbeBot) -> None:
    synced = await bot.tree.sync()
    commands = fake.commands()
    assert set(commands) == {"imagine", "admin"}
    assert {command.name: command.id for command in synced} == {n: int(c["id"]) for n, c in commands.items()}
    options = {option["name"]: option for option in commands["imagine"]["options"]}
    assert {name: option["type"] for name, option in options.items()} == {
        "prompt": 3,
        "steps": 4,
        "guidance": 10,
        "style": 3,
    }
    assert options["prompt"]["required"] is True and options["style"]["autocomplete"] is True
    assert commands["admin"]["options"][0]["type"] == 1  # the grant subcommand

    again = await bot.tree.sync()
    assert {command.id for command in again} == {command.id for command in synced}

    guild = discord.Object(fake.guild_id)
    bot.tree.copy_global_to(guild=guild)
    await bot.tree.sync(guild=guild)
    assert fake.commands(fake.guild_id)["imagine"]["guild_id"] == str(fake.guild_id)


async def test_slash_command_is_deferred_edited_and_followed_up_with_a_file(
    fake: FakeDiscord, bot: ProbeBot
) -> None:
    sent: list[discord.WebhookMessage] = []

    async def imagine(interaction: discord.Interaction, args: dict[str, Any]) -> None:
        await interaction.response.defer()
        await interaction.edit_original_response(content="Queued: position 1")
        message = await interaction.followup.send(
            "a lighthouse", file=discord.File(io.BytesIO(PNG), "x.png"), wait=True
        )
        sent.append(message)

    bot.behaviour = imagine
    await bot.tree.sync()
    ix = await fake.dispatch_slash_command(
        "imagine", {"prompt": "a lighthouse at dusk", "steps": 30, "guidance": 8}
    )

    interaction, args = await next_invocation(bot)
    assert args == {"prompt": "a lighthouse at dusk", "steps": 30, "guidance": 8.0, "style": None}
    assert isinstance(args["guidance"], float)
    assert interaction.id == ix.id and interaction.user.id == fake.default_user_id
    assert interaction.guild_id == fake.guild_id and interaction.channel_id == fake.channel_id
    assert interaction.filesize_limit == 10 * 1024 * 1024
    assert interaction.app_permissions.attach_files

    await fake.wait_for(lambda: ix.followups)
    assert [callback["type"] for callback in ix.callbacks] == [
        CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
    ]
    assert ix.original is not None
    assert ix.original.content == "Queued: position 1" and not ix.original.loading
    followup = ix.followups[0]
    assert followup is not ix.original and followup.content == "a lighthouse"
    attachment = followup.attachments[0]
    assert (attachment.filename, attachment.data, attachment.content_type) == ("x.png", PNG, "image/png")
    assert attachment.dimensions == (3, 2)

    requests = fake.requests_for(ix)
    assert [(r.method, r.route) for r in requests] == [
        ("POST", CALLBACK),
        ("PATCH", ORIGINAL),
        ("POST", FOLLOWUP),
    ]
    upload = requests[2]
    assert [(f.filename, f.data) for f in upload.files] == [("x.png", PNG)]
    assert upload.json["attachments"] == [{"id": 0, "filename": "x.png"}]

    assert [message.id for message in fake.channel_messages()] == [ix.original.id, followup.id]
    assert sent[0].id == followup.id and sent[0].attachments[0].size == len(PNG)


async def test_first_followup_after_a_defer_resolves_the_loading_message(
    fake: FakeDiscord, bot: ProbeBot
) -> None:
    async def imagine(interaction: discord.Interaction, args: dict[str, Any]) -> None:
        await interaction.response.defer(ephemeral=True)
        await interaction.followup.send("done", ephemeral=False)
        await interaction.followup.send("second")

    bot.behaviour = imagine
    ix = await fake.dispatch_slash_command("imagine", {"prompt": "x"})
    await fake.wait_for(lambda: len(ix.followups) == 2)
    assert ix.followups[0] is ix.original
    assert ix.original is not None and ix.original.content == "done"
    assert ix.original.ephemeral and not ix.original.loading  # the defer decided; Discord ignores the flag
    assert [m.content for m in ix.messages] == ["done", "second"]


async def test_subcommand_with_a_user_option_and_an_ephemeral_reply(fake: FakeDiscord, bot: ProbeBot) -> None:
    await bot.tree.sync()
    bob = fake.add_user("bob")
    ix = await fake.dispatch_slash_command("admin", {"user": bob.id, "credits": 5}, subcommand="grant")
    interaction, args = await next_invocation(bot)
    assert args["user"].id == bob.id and args["user"].name == "bob" and args["credits"] == 5
    assert interaction.command is not None and interaction.command.qualified_name == "admin grant"

    assert await fake.wait_for_response(ix) == CallbackType.CHANNEL_MESSAGE_WITH_SOURCE
    assert ix.original is not None and ix.original.ephemeral
    assert ix.original.content == "Granted 5 to bob"
    assert fake.channel_messages() == []


async def test_reply_with_a_file_is_a_multipart_callback(fake: FakeDiscord, bot: ProbeBot) -> None:
    async def imagine(interaction: discord.Interaction, args: dict[str, Any]) -> None:
        embed = discord.Embed(title="a lighthouse", description="seed 42")
        await interaction.response.send_message(embed=embed, file=discord.File(io.BytesIO(PNG), "x.png"))

    bot.behaviour = imagine
    ix = await fake.dispatch_slash_command("imagine", {"prompt": "x"})
    assert await fake.wait_for_response(ix) == CallbackType.CHANNEL_MESSAGE_WITH_SOURCE
    assert ix.original is not None and ix.original.attachments[0].data == PNG
    assert ix.original.embeds[0]["title"] == "a lighthouse"
    (callback,) = fake.requests_for(ix)
    assert callback.json["type"] == 4 and [f.filename for f in callback.files] == ["x.png"]


async def test_original_response_and_followups_can_be_read_edited_and_deleted(
    fake: FakeDiscord, bot: ProbeBot
) -> None:
    done = asyncio.Event()

    async def imagine(interaction: discord.Interaction, args: dict[str, Any]) -> None:
        await interaction.response.send_message("first")
        original = await interaction.original_response()
        assert original.content == "first"
        followup = await interaction.followup.send("progress 50%", wait=True)
        await interaction.followup.edit_message(followup.id, content="progress 100%")
        kept = await interaction.followup.send("kept", wait=True)
        await interaction.followup.delete_message(followup.id)
        await interaction.delete_original_response()
        with pytest.raises(discord.NotFound):  # original_response() would answer from discord.py's cache
            await interaction.edit_original_response(content="gone")
        assert kept.content == "kept"
        done.set()

    bot.behaviour = imagine
    ix = await fake.dispatch_slash_command("imagine", {"prompt": "x"})
    await asyncio.wait_for(done.wait(), 5)
    assert [m.content for m in ix.messages] == ["kept"]
    deleted = [m for m in fake.messages.values() if m.deleted]
    assert sorted(m.content for m in deleted) == ["first", "progress 100%"]


# ---- components --------------------------------------------------------------------------------------


async def test_persistent_button_press_reaches_its_callback(fake: FakeDiscord, bot: ProbeBot) -> None:
    # A message from before a restart: only the persistent view registered with add_view can answer it.
    row = {
        "type": 1,
        "components": [{"type": 2, "style": 1, "label": "Re-roll", "custom_id": "imagine:reroll"}],
    }
    message = fake.add_bot_message("a lighthouse (seed 42)", components=[row])

    ix = await fake.dispatch_component("imagine:reroll", message.id)
    pressed = await asyncio.wait_for(bot.presses.get(), 5)
    assert pressed.data is not None and pressed.data.get("custom_id") == "imagine:reroll"
    assert pressed.message is not None and pressed.message.id == message.id
    assert pressed.user.id == fake.default_user_id

    assert await fake.wait_for_response(ix) == CallbackType.UPDATE_MESSAGE
    assert message.content == "Re-rolling…" and ix.original is message
    assert message.custom_ids() == ["imagine:reroll"]


async def test_button_on_a_message_the_bot_sent_through_the_fake(fake: FakeDiscord, bot: ProbeBot) -> None:
    async def imagine(interaction: discord.Interaction, args: dict[str, Any]) -> None:
        await interaction.response.send_message("here it is", view=RerollView(bot.presses))

    bot.behaviour = imagine
    ix = await fake.dispatch_slash_command("imagine", {"prompt": "x"})
    await fake.wait_for(lambda: ix.original)
    assert ix.original is not None and ix.original.custom_ids() == ["imagine:reroll"]

    press = await fake.dispatch_component("imagine:reroll", ix.original.id, user_id=fake.add_user("carol").id)
    pressed = await asyncio.wait_for(bot.presses.get(), 5)
    assert pressed.user.name == "carol"
    await fake.wait_for_response(press)
    assert ix.original.content == "Re-rolling…"


async def test_delete_button_removes_the_message_it_sits_on(fake: FakeDiscord, bot: ProbeBot) -> None:
    requester = fake.default_user_id
    row = {
        "type": 1,
        "components": [{"type": 2, "style": 4, "label": "Delete", "custom_id": "imagine:delete"}],
    }
    message = fake.add_bot_message("an image", components=[row])

    class DeleteView(discord.ui.View):
        def __init__(self) -> None:
            super().__init__(timeout=None)

        @discord.ui.button(label="Delete", style=discord.ButtonStyle.danger, custom_id="imagine:delete")
        async def delete(
            self, interaction: discord.Interaction, button: discord.ui.Button[DeleteView]
        ) -> None:
            if interaction.user.id != requester:
                await interaction.response.send_message("Only the requester can delete this.", ephemeral=True)
                return
            await interaction.response.defer()
            await interaction.delete_original_response()

    bot.add_view(DeleteView())
    stranger = await fake.dispatch_component("imagine:delete", message.id, user_id=fake.add_user("eve").id)
    assert await fake.wait_for_response(stranger) == CallbackType.CHANNEL_MESSAGE_WITH_SOURCE
    assert stranger.original is not None and stranger.original.ephemeral and not message.deleted

    owner = await fake.dispatch_component("imagine:delete", message.id)
    await fake.wait_for(lambda: message.deleted)
    assert owner.response_type == CallbackType.DEFERRED_UPDATE_MESSAGE


# ---- failure modes -----------------------------------------------------------------------------------


async def test_rate_limited_followup_is_retried_with_the_file_intact(
    fake: FakeDiscord, bot: ProbeBot
) -> None:
    fault = fake.inject_rate_limit("POST", FOLLOWUP, retry_after=RETRY_AFTER)

    async def imagine(interaction: discord.Interaction, args: dict[str, Any]) -> None:
        await interaction.response.defer()
        await interaction.edit_original_response(content="working")
        await interaction.followup.send(file=discord.File(io.BytesIO(PNG), "x.png"))

    bot.behaviour = imagine
    ix = await fake.dispatch_slash_command("imagine", {"prompt": "x"})
    await fake.wait_for(lambda: ix.followups)

    posts = [r for r in fake.requests_for(ix) if r.matches("POST", FOLLOWUP)]
    assert statuses(posts) == [429, 200]
    assert fault.hits == [posts[0]] and fault.remaining == 0
    assert posts[1].time - posts[0].time >= RETRY_AFTER
    assert posts[1].files[0].data == PNG
    assert ix.followups[0].attachments[0].data == PNG


async def test_rate_limited_channel_send_is_retried_by_the_http_client(
    fake: FakeDiscord, bot: ProbeBot
) -> None:
    fake.inject_rate_limit("POST", "/channels/{channel_id}/messages", retry_after=RETRY_AFTER, count=2)
    channel = bot.get_channel(fake.channel_id)
    assert isinstance(channel, discord.TextChannel)
    message = await channel.send("after two 429s")
    assert statuses(fake.requests_matching("POST", "/channels/*/messages")) == [429, 429, 200]
    assert [m.id for m in fake.channel_messages()] == [message.id]


async def test_cloudflare_429_is_not_retried(fake: FakeDiscord, bot: ProbeBot) -> None:
    fake.inject_rate_limit("POST", "/channels/{channel_id}/messages", cloudflare=True)
    channel = bot.get_channel(fake.channel_id)
    assert isinstance(channel, discord.TextChannel)
    with pytest.raises(discord.HTTPException) as caught:
        await channel.send("banned")
    assert caught.value.status == 429


async def test_server_error_on_edit_is_retried(fake: FakeDiscord, bot: ProbeBot) -> None:
    fake.inject_error("PATCH", ORIGINAL, status=502)

    async def imagine(interaction: discord.Interaction, args: dict[str, Any]) -> None:
        await interaction.response.defer()
        await interaction.edit_original_response(content="after a 502")

    bot.behaviour = imagine
    ix = await fake.dispatch_slash_command("imagine", {"prompt": "x"})
    await fake.wait_for(lambda: ix.original is not None and ix.original.content == "after a 502")
    assert statuses([r for r in fake.requests_for(ix) if r.matches("PATCH", ORIGINAL)]) == [502, 200]


@pytest.mark.parametrize("how", ["expire_interaction", "advance_time"])
async def test_expired_token_fails_and_the_bot_falls_back_to_the_channel(
    fake: FakeDiscord, bot: ProbeBot, how: str
) -> None:
    token_dead = asyncio.Event()
    errors: list[discord.HTTPException] = []

    async def imagine(interaction: discord.Interaction, args: dict[str, Any]) -> None:
        await interaction.response.defer()
        await token_dead.wait()
        try:
            await interaction.edit_original_response(content="done")
        except discord.HTTPException as exc:
            errors.append(exc)
            assert interaction.channel is not None and isinstance(interaction.channel, discord.TextChannel)
            await interaction.channel.send(f"{interaction.user.mention} your image is ready")

    bot.behaviour = imagine
    ix = await fake.dispatch_slash_command("imagine", {"prompt": "x"})
    await fake.wait_for_response(ix)
    if how == "expire_interaction":
        fake.expire_interaction(ix)
    else:
        fake.advance_time(15 * 60 + 1)
    token_dead.set()

    await fake.wait_for(lambda: len(fake.channel_messages()) == 2)
    (error,) = errors
    assert not isinstance(error, discord.NotFound)  # 401, not 404: discord.py raises plain HTTPException
    assert (error.status, error.code, error.text) == (401, 50027, "Invalid Webhook Token")
    assert fake.channel_messages()[-1].content == f"<@{fake.default_user_id}> your image is ready"


async def test_late_acknowledgement_is_an_unknown_interaction(fake: FakeDiscord, bot: ProbeBot) -> None:
    errors: list[discord.HTTPException] = []

    async def imagine(interaction: discord.Interaction, args: dict[str, Any]) -> None:
        fake.advance_time(3.5)  # past the 3 s Discord gives for the first response
        try:
            await interaction.response.defer()
        except discord.NotFound as exc:
            errors.append(exc)

    bot.behaviour = imagine
    ix = await fake.dispatch_slash_command("imagine", {"prompt": "x"})
    await fake.wait_for(lambda: errors)
    assert errors[0].code == 10062 and not ix.acknowledged


async def test_redelivered_interaction_reaches_the_bot_twice_but_acks_once(
    fake: FakeDiscord, bot: ProbeBot
) -> None:
    errors: list[discord.HTTPException] = []

    async def imagine(interaction: discord.Interaction, args: dict[str, Any]) -> None:
        try:
            await interaction.response.defer()
        except discord.HTTPException as exc:
            errors.append(exc)

    bot.behaviour = imagine
    ix = await fake.dispatch_slash_command("imagine", {"prompt": "once"})
    first, _ = await next_invocation(bot)
    await fake.wait_for_response(ix)
    again = await fake.redispatch(ix)
    second, _ = await next_invocation(bot)

    assert again is ix and ix.deliveries == 2
    assert first.id == second.id == ix.id and first.token == second.token
    await fake.wait_for(lambda: errors)
    assert (errors[0].status, errors[0].code) == (400, 40060)
    assert len(ix.callbacks) == 1 and statuses(fake.requests_for(ix)) == [200, 400]


async def test_upload_over_the_interaction_size_limit_is_refused(fake: FakeDiscord, bot: ProbeBot) -> None:
    limits: list[int] = []
    errors: list[discord.HTTPException] = []

    async def imagine(interaction: discord.Interaction, args: dict[str, Any]) -> None:
        limits.append(interaction.filesize_limit)
        await interaction.response.defer()
        try:
            await interaction.followup.send(file=discord.File(io.BytesIO(b"x" * 2048), "big.png"))
        except discord.HTTPException as exc:
            errors.append(exc)

    bot.behaviour = imagine
    await fake.dispatch_slash_command("imagine", {"prompt": "x"}, attachment_size_limit=1024)
    await fake.wait_for(lambda: errors)
    assert limits == [1024]
    assert (errors[0].status, errors[0].code) == (413, 40005)


# ---- channels and DMs --------------------------------------------------------------------------------


async def test_dm_with_a_file_and_message_events_echoed_to_the_bot(fake: FakeDiscord, bot: ProbeBot) -> None:
    # As the bot does it: a DM opened by user id, no user lookup first.
    user_dm = await bot.create_dm(discord.Object(id=fake.default_user_id))
    dm = await user_dm.send("your image", file=discord.File(io.BytesIO(PNG), "x.png"))
    (stored,) = fake.dm_messages(fake.default_user_id)
    assert stored.id == dm.id and stored.attachments[0].data == PNG
    recipient = {"recipient_id": fake.default_user_id}
    assert fake.requests_matching("POST", "/users/@me/channels")[0].json == recipient

    channel = bot.get_channel(fake.channel_id)
    assert isinstance(channel, discord.TextChannel)
    waiter = asyncio.ensure_future(bot.wait_for("message", check=lambda m: m.content == "hello", timeout=5))
    sent = await channel.send("hello")
    echoed = await waiter
    assert echoed.id == sent.id and echoed.author.id == fake.bot_user.id

    edited = await sent.edit(content="hello again")
    assert fake.messages[sent.id].content == edited.content == "hello again"
    await sent.delete()
    assert fake.channel_messages() == []


async def test_requests_for_and_wait_for_request(fake: FakeDiscord, bot: ProbeBot) -> None:
    ix: FakeInteraction = await fake.dispatch_slash_command("imagine", {"prompt": "x"})
    callback = await fake.wait_for_request(
        lambda r: r.matches("POST", CALLBACK) and r.interaction_id == ix.id
    )
    assert callback.json == {"type": 5}
    assert callback.status == 200
    assert callback.response["interaction"]["response_message_loading"] is True
    assert fake.requests_for(ix) == [callback]
    assert not callback.authorized  # interaction webhooks carry the token in the URL, not a bot header


async def test_attachments_are_served_at_their_cdn_url_and_an_attachment_option_resolves(
    fake: FakeDiscord, bot: ProbeBot
) -> None:
    async def imagine(interaction: discord.Interaction, args: dict[str, Any]) -> None:
        await interaction.response.send_message("here", file=discord.File(io.BytesIO(PNG), "x.png"))

    bot.behaviour = imagine
    picture = png_bytes(5, 4)
    ix = await fake.dispatch_slash_command(
        "imagine", {"prompt": "x", "picture": UploadedFile("in.png", picture, "image/png")}
    )
    interaction, _ = await next_invocation(bot)
    option: discord.Attachment = interaction.namespace.picture
    assert (option.filename, option.size, option.content_type) == ("in.png", len(picture), "image/png")
    assert option.url.startswith(fake.cdn_base_url + "/attachments/")
    assert await option.read() == picture  # discord.py's own CDN read

    await fake.wait_for(lambda: ix.original and ix.original.attachments)
    assert ix.original is not None
    async with aiohttp.ClientSession() as session, session.get(ix.original.attachments[0].url) as response:
        assert (response.status, response.content_type) == (200, "image/png")
        assert response.content_length == len(PNG) and await response.read() == PNG
        missing = ix.original.attachments[0].url.replace(str(ix.original.attachments[0].id), "1")
        async with session.get(missing) as gone:
            assert gone.status == 404
    assert fake.cdn_downloads == [option.id, ix.original.attachments[0].id]
