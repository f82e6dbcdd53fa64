"""``/admin quota|grant|ban|unban|budget|stats``: the gateway checks IMAGINE_ADMINS; others are told no."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import discord
from discord import app_commands
from discord.ext import commands

from bots.discord_ext.delivery import fit_message, with_retries
from gateway import ImagineError, parse_user
from gateway.accounts import MAX_BUDGET
from gateway.service import MAX_GRANT

if TYPE_CHECKING:
    from bots.discord_bot import ImagineBot

USER_HELP = "A user: @mention, Discord id, or platform:id such as telegram:456"
USER_CHARS = 100  # "<@" + a 20-digit id + ">", or a platform:id, with room to spare
MAX_REASON_CHARS = 500  # the gateway's limit on a ban reason
UserOption = app_commands.Range[str, 1, USER_CHARS]
_MENTION = re.compile(r"<@!?([0-9]+)>")


# Hidden from members without Manage Server, so the command list stays clean; IMAGINE_ADMINS still decides.
@app_commands.default_permissions(manage_guild=True)
class Admin(commands.GroupCog, group_name="admin", group_description="Imagine admin commands"):
    def __init__(self, bot: ImagineBot) -> None:
        self.service = bot.service
        super().__init__()

    @app_commands.command(name="quota", description="Set a user's daily allowance")
    @app_commands.describe(user=USER_HELP, allowance="Images a day; leave out to go back to the default")
    async def quota(
        self,
        interaction: discord.Interaction[Any],
        user: UserOption,
        allowance: app_commands.Range[int, 0, MAX_GRANT] | None = None,
    ) -> None:
        await _answer(interaction, lambda actor: self.service.set_allowance(actor, _user(user), allowance))

    @app_commands.command(name="grant", description="Give bonus credits that do not expire")
    @app_commands.describe(user=USER_HELP, credits="Credits to give; negative takes back")
    async def grant(
        self,
        interaction: discord.Interaction[Any],
        user: UserOption,
        credits: app_commands.Range[int, -MAX_GRANT, MAX_GRANT],
    ) -> None:
        await _answer(interaction, lambda actor: self.service.grant(actor, _user(user), credits))

    @app_commands.command(name="ban", description="Refuse a user's requests, with a reason they are shown")
    @app_commands.describe(user=USER_HELP, reason="Shown to the user when they are refused")
    async def ban(
        self,
        interaction: discord.Interaction[Any],
        user: UserOption,
        reason: app_commands.Range[str, 0, MAX_REASON_CHARS] = "",
    ) -> None:
        await _answer(interaction, lambda actor: self.service.ban(actor, _user(user), reason))

    @app_commands.command(name="unban", description="Lift a ban")
    @app_commands.describe(user=USER_HELP)
    async def unban(self, interaction: discord.Interaction[Any], user: UserOption) -> None:
        await _answer(interaction, lambda actor: self.service.unban(actor, _user(user)))

    @app_commands.command(name="budget", description="This month's GPU budget; with amount, set its ceiling")
    @app_commands.describe(
        amount="This month's ceiling, in the currency of IMAGINE_GPU_COST_PER_SECOND; leave out to see it",
        default="Go back to IMAGINE_MONTHLY_BUDGET for this month",
    )
    async def budget(
        self,
        interaction: discord.Interaction[Any],
        amount: app_commands.Range[float, 0.0, MAX_BUDGET] | None = None,
        default: bool = False,
    ) -> None:
        accounts = self.service.accounts

        async def text(actor: str) -> str:
            if default:
                return await accounts.set_budget(actor, None)
            if amount is None:
                return await accounts.show_budget(actor)
            return await accounts.set_budget(actor, amount)

        await _answer(interaction, text)

    @app_commands.command(name="stats", description="Jobs, images, credits and users of the last 24 hours")
    async def stats(self, interaction: discord.Interaction[Any]) -> None:
        async def text(actor: str) -> str:
            return self.service.stats_text(await self.service.stats(actor))

        await _answer(interaction, text)


def _user(text: str) -> str:
    """``<@123>`` (a mention typed into the option) or ``123`` or ``telegram:456`` -> a user id."""
    mention = _MENTION.fullmatch(text.strip())
    return parse_user(mention[1] if mention else text, "discord")


async def _answer(interaction: discord.Interaction[Any], action: Callable[[str], Awaitable[str]]) -> None:
    """Defer privately, run ``action`` as the caller, show its sentence or the error's."""
    await interaction.response.defer(ephemeral=True, thinking=True)
    try:
        text = await action(f"discord:{interaction.user.id}")
    except ImagineError as exc:
        text = str(exc)
    await with_retries(lambda: interaction.followup.send(fit_message(text), ephemeral=True))


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Admin(cast("ImagineBot", bot)))
