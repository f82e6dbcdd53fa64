"""``/quota`` and ``/help``: private answers in the gateway's words."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import discord
from discord import app_commands
from discord.ext import commands

from bots.discord_ext.delivery import fit_message, with_retries
from gateway.messages import HELP

if TYPE_CHECKING:
    from bots.discord_bot import ImagineBot


class Account(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.service = bot.service

    @app_commands.command(name="quota", description="Your credits: used today, allowance, bonus, reset time")
    async def quota(self, interaction: discord.Interaction[Any]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        state = await self.service.quota(f"discord:{interaction.user.id}")
        text = fit_message(self.service.quota_text(state))
        await with_retries(lambda: interaction.followup.send(text, ephemeral=True))

    @app_commands.command(name="help", description="How to use /imagine: flags, sizes, credits")
    async def help(self, interaction: discord.Interaction[Any]) -> None:
        await interaction.response.send_message(HELP, ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Account(cast("ImagineBot", bot)))
