"""``/imagine`` and the buttons under a result: defer, submit, show progress, deliver, settle.

The job id is the interaction id (``discord:<id>``), so an event Discord delivers twice is charged and
answered once. Credits are settled only once Discord has taken the image (``confirm_delivery``).
A U/V button works on the image attached to the very message the button sits on, fetched back from
Discord's CDN; ``/imagine``'s ``image`` option is fetched the same way. A picture that cannot be used
is one sentence before anything is submitted, so it costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import discord
from discord import app_commands
from discord.ext import commands

from bots.discord_ext.delivery import (
    MESSAGE_LIMIT,
    NO_PINGS,
    SEND_ERRORS,
    Reply,
    fit_images,
    fit_message,
    image_name,
)
from bots.discord_ext.pictures import PictureFetcher, attachment_at
from gateway import (
    ImageRequest,
    ImagineError,
    ImagineService,
    Job,
    JobRecord,
    JobResult,
    JobStatus,
    OutOfCredits,
    parse_prompt,
)
from gateway.conversation import RELAX_GONE, Conversation
from gateway.messages import RESTARTING, result_caption, status_text
from gateway.picture import action_request
from gateway.request import MAX_IMAGES, MAX_NEGATIVE_CHARS, MAX_PROMPT_CHARS, MAX_SEED, size_for_aspect_ratio

if TYPE_CHECKING:
    from bots.discord_bot import ImagineBot

log = logging.getLogger("imagine.discord")

# Room for "<@user id> " when a result goes to the channel instead of the interaction.
CAPTION_LIMIT = MESSAGE_LIMIT - 32

# Front words: refusals only a Discord button meets, and the reasons the gateway words a refund with.
NOT_YOURS = "Only the person who asked for this image (or an Imagine admin) can delete it."
UNKNOWN_IMAGE = "That image is not known to Imagine any more; use /imagine to make a new one."
READING_PICTURE = "Reading your picture…"
IMAGE_GONE = "That image is no longer on its message; use /imagine to make a new one."
DELIVERY_FAILED = "Discord would not take the image"
SENDING_FAILED = "Something went wrong while sending the image"

SIZES = {
    f"{w}:{h} ({size[0]}x{size[1]})": size
    for w, h in ((1, 1), (4, 3), (3, 2), (16, 9), (2, 1), (3, 4), (2, 3), (9, 16), (1, 2))
    for size in [size_for_aspect_ratio(w, h)]
} | {"768x768": (768, 768), "1024x1024": (1024, 1024)}
SIZE_CHOICES = [app_commands.Choice(name=name, value=f"{w}x{h}") for name, (w, h) in SIZES.items()]


@dataclass
class Flight:
    """A job this process is following, for a graceful stop."""

    task: asyncio.Task[Any]
    user_id: str


class ImageCommands(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self.service: ImagineService = bot.service
        self.conversation = Conversation(bot.service, "discord")
        self.in_flight: dict[str, Flight] = {}
        self.pictures = PictureFetcher(api_base_url=bot.settings.discord_api_base_url)

    async def cog_load(self) -> None:
        self.conversation.on_recovered(self._tell_recovered)

    async def cog_unload(self) -> None:
        await self.conversation.close()
        await self.pictures.close()

    # --- /imagine ---------------------------------------------------------------------------

    @app_commands.command(name="imagine", description="Make an image from a prompt")
    @app_commands.describe(
        prompt="What to draw; inline flags work too: --ar 16:9 --seed 42 --no text",
        negative="What to leave out (negative prompt)",
        size="Aspect ratio and size",
        steps="Denoising steps (more: slower, finer)",
        guidance="How closely to follow the prompt",
        seed="The same seed gives the same image",
        count="How many images (one credit each)",
        image="A picture (PNG, JPEG or WebP, up to 10 MB) to start from; --strength 0.05-1 says how far",
    )
    @app_commands.choices(size=SIZE_CHOICES)
    async def imagine(
        self,
        interaction: discord.Interaction[Any],
        prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS],
        negative: app_commands.Range[str, 1, MAX_NEGATIVE_CHARS] | None = None,
        size: app_commands.Choice[str] | None = None,
        steps: app_commands.Range[int, 1, 50] | None = None,
        guidance: app_commands.Range[float, 1.0, 20.0] | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        count: app_commands.Range[int, 1, MAX_IMAGES] | None = None,
        image: discord.Attachment | None = None,
    ) -> None:
        if not self.conversation.first_time(str(interaction.id)):
            return
        options: dict[str, Any] = {}
        if negative is not None:
            options["negative_prompt"] = negative
        if size is not None:
            width, _, height = size.value.partition("x")
            options["width"], options["height"] = int(width), int(height)
        for name, value in (("steps", steps), ("guidance", guidance), ("seed", seed), ("num_images", count)):
            if value is not None:
                options[name] = value
        try:
            if image is None:
                request = parse_prompt(prompt, **options)
            else:
                self.pictures.check(image)  # what Discord says of it (type, size); the text comes with it
        except ImagineError as exc:
            # Answered at once and privately: nothing else was awaited, nothing was charged.
            await interaction.response.send_message(fit_message(str(exc)), ephemeral=True)
            return
        if not await _defer(interaction, thinking=True):
            return
        if image is not None:
            # Also ends the "thinking…" state: a follow-up after it is a message of its own, so a
            # refusal can be private (the first follow-up after a defer would replace it, publicly).
            with contextlib.suppress(*SEND_ERRORS):
                await interaction.edit_original_response(content=READING_PICTURE, allowed_mentions=NO_PINGS)
            try:
                data = await self.pictures.fetch(image)
                request = await asyncio.to_thread(parse_prompt, prompt, image=data, **options)
            except ImagineError as exc:
                await _refuse_privately(interaction, str(exc))
                return
        await self.run_job(interaction, request, job_id=f"discord:{interaction.id}")

    # --- buttons ------------------------------------------------------------------------------

    async def on_button(self, interaction: discord.Interaction[Any], action: str, source_id: str) -> None:
        if not self.conversation.first_time(str(interaction.id)):
            return
        if action == "delete":
            await self._delete(interaction, source_id)
            return
        if not await _defer(interaction, thinking=True):
            return
        source = await self.service.find_job(source_id)
        if source is None:
            await Reply.from_interaction(self.bot, interaction).tell(UNKNOWN_IMAGE)
            return
        request = source.request.variations() if action == "vary" else source.request.reroll()
        await self.run_job(interaction, request, job_id=f"discord:{interaction.id}")

    async def on_image_action(
        self, interaction: discord.Interaction[Any], action: str, index: int, source_id: str
    ) -> None:
        """U/V under a result: image ``index`` (0-based) of the message the button sits on."""
        if not self.conversation.first_time(str(interaction.id)):
            return
        if not await _defer(interaction, thinking=True):
            return
        reply = Reply.from_interaction(self.bot, interaction)
        source = await self.service.find_job(source_id)
        if source is None:
            await reply.tell(UNKNOWN_IMAGE)
            return
        attachment = attachment_at(interaction.message, index)
        if attachment is None:
            await reply.tell(IMAGE_GONE)
            return
        try:
            png = await self.pictures.fetch(attachment)
            request = await asyncio.to_thread(action_request, source.request, png, action, index)
        except ImagineError as exc:
            await reply.tell(str(exc))
            return
        await self.run_job(interaction, request, job_id=f"discord:{interaction.id}")

    async def on_relax(self, interaction: discord.Interaction[Any], key: str) -> None:
        """The Relax button under an out-of-credits sentence: the same request in the relax lane."""
        if not self.conversation.first_time(str(interaction.id)):
            return
        if not await _defer(interaction, thinking=True):
            return
        request = self.conversation.relax_offers.take(f"discord:{interaction.user.id}", key)
        if request is None:
            await Reply.from_interaction(self.bot, interaction).tell(RELAX_GONE)
            return
        await self.run_job(interaction, request.as_relax(), job_id=f"discord:{interaction.id}")

    async def _delete(self, interaction: discord.Interaction[Any], source_id: str) -> None:
        if not await _defer(interaction, thinking=False):
            return
        source = await self.service.find_job(source_id)
        user = f"discord:{interaction.user.id}"
        if not self.service.is_admin(user) and (source is None or source.user_id != user):
            await interaction.followup.send(NOT_YOURS, ephemeral=True)
            return
        try:
            await interaction.delete_original_response()
        except discord.HTTPException:
            if interaction.message is None:
                raise
            await interaction.message.delete()

    # --- a job, from submit to settled ---------------------------------------------------------

    async def run_job(
        self, interaction: discord.Interaction[Any], request: ImageRequest, *, job_id: str
    ) -> None:
        """After the defer: submit, follow the job, deliver; every outcome ends in one sentence."""
        reply = Reply.from_interaction(self.bot, interaction)
        user = f"discord:{interaction.user.id}"
        try:
            job = await self.service.submit(
                user, request, job_id=job_id, reply=reply.to_json(), confirm_delivery=True
            )
        except OutOfCredits as exc:
            if not exc.relax_offer:
                await reply.tell(str(exc))
                return
            with contextlib.suppress(*SEND_ERRORS):  # the sentence, with a button that asks again in relax
                await reply.send(
                    str(exc), view=relax_view(self.conversation.relax_offers.keep(user, request))
                )
            return
        except ImagineError as exc:
            await reply.tell(str(exc))
            return
        if job.duplicate:
            return  # the first delivery of this event answers it
        task = asyncio.current_task()
        assert task is not None
        self.in_flight[job.id] = Flight(task, user)
        try:
            await self._follow(job, reply)
        except Exception:
            log.exception("discord delivery of %s failed", job.id)
            error = await self.service.delivery_failed(job.id, SENDING_FAILED)
            if error is not None:
                await reply.tell(str(error))
        finally:
            self.in_flight.pop(job.id, None)

    async def _follow(self, job: Job, reply: Reply) -> None:
        await self._show_progress(job, reply)
        if job.status is JobStatus.FAILED:
            assert job.error is not None
            await reply.tell(str(job.error))  # the sentence already says the credits came back
            return
        assert job.result is not None
        await self._deliver(job, job.result, reply)

    async def _show_progress(self, job: Job, reply: Reply) -> None:
        """Queue position, then progress: at most one edit per interval, the end at once."""
        shown = ""
        async for update in self.conversation.follow(job, every=self.bot.progress_interval):
            if not update.status.finished and (text := status_text(update)) != shown:
                shown = text
                await reply.edit(text)

    async def _deliver(self, job: Job, result: JobResult, reply: Reply) -> None:
        images = fit_images(result.images, reply.upload_limit)
        names = [image_name(data, seed) for data, seed in zip(images, result.seeds, strict=False)]

        def files() -> list[discord.File]:
            return [discord.File(io.BytesIO(d), filename=n) for d, n in zip(images, names, strict=True)]

        try:
            async with self.conversation.delivery(job, failed=DELIVERY_FAILED):
                await reply.send(
                    result_caption(result, limit=CAPTION_LIMIT),
                    files=files,
                    view=result_view(job.id, len(images)),
                )
        except ImagineError as error:  # refunded meanwhile, or Discord certainly did not take it
            await reply.tell(str(error))

    # --- restart and stop ----------------------------------------------------------------------

    async def _tell_recovered(self, record: JobRecord) -> None:
        """Tell a user whose job a stopped process left open that their credits came back."""
        await self.bot.wait_until_ready()
        if not record.reply or not record.error:
            return
        try:
            await Reply.from_json(self.bot, record.reply).tell(record.error)
        except (KeyError, TypeError, ValueError):
            log.warning("job %s has no usable discord reply data", record.id)

    async def drain(self, grace: float) -> None:
        """Let jobs in flight finish for ``grace`` s; cancel the rest, which tells their users."""
        tasks = {flight.task for flight in self.in_flight.values()}
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for job_id, flight in list(self.in_flight.items()):
            with contextlib.suppress(ImagineError):
                await self.service.cancel(job_id, by=flight.user_id, reason=RESTARTING)
        tasks = {flight.task for flight in self.in_flight.values()}
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)


def _cog(interaction: discord.Interaction[Any]) -> ImageCommands | None:
    """The cog a button hands its press to (None while the bot is stopping)."""
    return cast("ImageCommands | None", interaction.client.get_cog("ImageCommands"))  # type: ignore[attr-defined]


class ResultButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"imagine:(?P<action>reroll|vary|delete):(?P<job>discord:[0-9]+)",
):
    """A button under a result; the job id in its custom id keeps it working after a restart."""

    LOOKS: dict[str, tuple[str, str, discord.ButtonStyle]] = {
        "reroll": ("Re-roll", "🎲", discord.ButtonStyle.primary),
        "vary": ("Variations", "🎨", discord.ButtonStyle.secondary),
        "delete": ("Delete", "🗑️", discord.ButtonStyle.danger),
    }

    def __init__(self, action: str, job_id: str) -> None:
        label, emoji, style = self.LOOKS[action]
        super().__init__(
            discord.ui.Button(label=label, emoji=emoji, style=style, custom_id=f"imagine:{action}:{job_id}"),
            row=3,  # under the rows of U, V and V strong
        )
        self.action = action
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> ResultButton:
        return cls(match["action"], match["job"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        cog = _cog(interaction)
        if cog is not None:
            await cog.on_button(interaction, self.action, self.job_id)


class ImageButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"imagine:(?P<kind>U|V|VS)(?P<number>[1-9]):(?P<job>discord:[0-9]+)",
):
    """``U2``, ``V1``, ``V1 strong``: an action on one image of a result (numbered from 1, as shown)."""

    ACTIONS = {"U": "upscale", "V": "vary", "VS": "vary_strong"}

    def __init__(self, kind: str, number: int, job_id: str) -> None:
        label = f"V{number} strong" if kind == "VS" else f"{kind}{number}"
        style = discord.ButtonStyle.primary if kind == "U" else discord.ButtonStyle.secondary
        super().__init__(
            discord.ui.Button(label=label, style=style, custom_id=f"imagine:{kind}{number}:{job_id}"),
            row=list(self.ACTIONS).index(kind),
        )
        self.action = self.ACTIONS[kind]
        self.index = number - 1
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> ImageButton:
        return cls(match["kind"], int(match["number"]), match["job"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        cog = _cog(interaction)
        if cog is not None:
            await cog.on_image_action(interaction, self.action, self.index, self.job_id)


class RelaxButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"imagine:relax:(?P<key>[0-9a-f]{1,32})"
):
    """Under an out-of-credits sentence: ask again in the relax lane (the request is kept in memory
    for a while; after a restart the button says to type it again with --relax)."""

    def __init__(self, key: str) -> None:
        super().__init__(
            discord.ui.Button(
                label="Relax",
                emoji="🐢",
                style=discord.ButtonStyle.secondary,
                custom_id=f"imagine:relax:{key}",
            )
        )
        self.key = key

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> RelaxButton:
        return cls(match["key"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        cog = _cog(interaction)
        if cog is not None:
            await cog.on_relax(interaction, self.key)


def relax_view(key: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(RelaxButton(key))
    return view


def result_view(job_id: str, images: int) -> discord.ui.View:
    """The buttons under a result: a row each of U, V and V strong (one per image, at most 4, so
    within Discord's 5 per row), then re-roll, variations and delete. All are dynamic items, so
    discord.py keeps nothing per message and they work after a restart."""
    view = discord.ui.View(timeout=None)
    for kind in ImageButton.ACTIONS:
        for number in range(1, min(images, MAX_IMAGES) + 1):
            view.add_item(ImageButton(kind, number, job_id))
    for action in ResultButton.LOOKS:
        view.add_item(ResultButton(action, job_id))
    return view


async def _defer(interaction: discord.Interaction[Any], *, thinking: bool) -> bool:
    """Acknowledge within Discord's 3 s; False if Discord says it is too late or already answered."""
    try:
        await interaction.response.defer(thinking=thinking)
    except discord.HTTPException as exc:
        log.warning("could not defer interaction %s (%s %s)", interaction.id, exc.status, exc.code)
        return False
    return True


async def _refuse_privately(interaction: discord.Interaction[Any], sentence: str) -> None:
    """After a public defer and an edit: the sentence only its user sees, and the public message gone."""
    try:
        await interaction.followup.send(fit_message(sentence), ephemeral=True, allowed_mentions=NO_PINGS)
        await interaction.delete_original_response()
    except SEND_ERRORS as exc:
        log.warning("could not refuse interaction %s privately: %r", interaction.id, exc)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(ImageCommands(cast("ImagineBot", bot)))
    bot.add_dynamic_items(ResultButton, ImageButton, RelaxButton)
