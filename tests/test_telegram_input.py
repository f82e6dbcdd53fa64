"""Odd input through the real Telegram bot: every refusal is one sentence that fits a Telegram message.

Reuses the end-to-end world of tests/test_telegram_bot.py (python-telegram-bot against the fake Bot
API, which refuses text past 4,096 characters as Telegram does).
"""

from __future__ import annotations

from tests.fakes.telegram_server import MAX_TEXT_LENGTH
from tests.test_telegram_bot import ADMIN, ALICE, World, bot_settings, fake, world  # noqa: F401

HUGE = "9" * 4000  # as long as a Telegram message allows


async def test_a_huge_seed_is_answered_with_the_range_sentence(world: World) -> None:  # noqa: F811
    update = world.says(ALICE, f"/imagine a cat --seed {HUGE}")
    assert (await world.reply_to(update)).params["text"] == (
        "--seed must be a whole number from 0 to 4294967295; got a number with more than 20 digits."
    )


async def test_a_long_unknown_flag_is_quoted_short(world: World) -> None:  # noqa: F811
    update = world.says(ALICE, "/imagine a cat --" + "z" * 4070)
    text = (await world.reply_to(update)).params["text"]
    assert text.startswith("Unknown flag --z") and "z" * 41 not in text and len(text) <= MAX_TEXT_LENGTH


async def test_admin_commands_refuse_a_huge_user_in_one_sentence(world: World) -> None:  # noqa: F811
    before = await world.db.ledger()
    for command in (f"/grant {HUGE} 5", f"/ban telegram:{'z' * 3500} {'r' * 500}", f"/grant {ALICE} {HUGE}"):
        text = (await world.reply_to(world.says(ADMIN, command))).params["text"]
        assert len(text) < 300 and "z" * 41 not in text and "9" * 41 not in text, text
    assert await world.db.ledger() == before
