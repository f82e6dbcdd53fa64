"""Odd input through the real Discord bot: every refusal is one sentence that fits a Discord message.

Reuses the end-to-end world of tests/test_discord_bot.py (the real discord.py client against the fake
Discord, which refuses content past 2,000 characters as Discord does).
"""

from __future__ import annotations

from tests.fakes.discord_server import MAX_CONTENT_LENGTH
from tests.test_discord_bot import World, world  # noqa: F401  (the fixture)

HUGE = "9" * 980  # far past 20 digits, within the prompt option's 1,000 characters
LONG_USER = "9" * 100  # the most the /admin user option lets through


async def test_a_980_digit_seed_is_answered_with_the_range_sentence(world: World) -> None:  # noqa: F811
    bad = await world.imagine(f"a cat --seed {HUGE}")
    answer = await world.said(bad, "--seed must be a whole number from 0 to 4294967295")
    assert answer.content.endswith("got a number with more than 20 digits.") and answer.ephemeral


async def test_a_long_unknown_flag_is_quoted_short(world: World) -> None:  # noqa: F811
    bad = await world.imagine("a cat --" + "z" * 990)
    answer = await world.said(bad, "Unknown flag --")
    assert "z" * 41 not in answer.content and len(answer.content) <= MAX_CONTENT_LENGTH


async def test_admin_commands_refuse_a_100_digit_user_in_one_sentence(world: World) -> None:  # noqa: F811
    before = await world.db.ledger()
    granted = await world.admin_command("grant", {"user": LONG_USER, "credits": 5}, user_id=world.admin)
    answer = await world.said(granted, "A user id is at most 64 characters long; got '")
    assert answer.content.endswith("9…'.") and answer.ephemeral
    banned = await world.admin_command(
        "ban", {"user": "discord:" + "z" * 92, "reason": "r" * 500}, user_id=world.admin
    )
    assert "z" * 41 not in (await world.said(banned, "A user id is at most 64")).content
    assert await world.db.ledger() == before
