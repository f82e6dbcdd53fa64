"""Admin commands: ``/setquota``, ``/grant``, ``/ban``, ``/unban``, ``/budget``, ``/stats``.

A caller who is not an admin gets the gateway's refusal from the service call itself; only the
Telegram wording (usage lines) lives here.
"""

from __future__ import annotations

from telegram import Message, Update

from bots.telegram_ext.context import PLATFORM, Context, user_of
from gateway import InvalidRequest, parse_user
from gateway.admin import run_admin, run_budget

USAGE = {
    "setquota": "Usage: /setquota <user id> <images a day, or default>; "
    "or reply to the user's message with /setquota <n>.",
    "grant": "Usage: /grant <user id> <credits> (negative takes back); "
    "or reply to the user's message with /grant <credits>.",
    "ban": "Usage: /ban <user id> [reason]; or reply to the user's message with /ban [reason].",
    "unban": "Usage: /unban <user id>; or reply to the user's message with /unban.",
    "budget": "Usage: /budget to see this month's GPU budget; /budget <amount> to set this month's "
    "ceiling, /budget default to go back to the setting.",
}


async def setquota_command(update: Update, context: Context) -> None:
    await _admin(update, context, "setquota")


async def grant_command(update: Update, context: Context) -> None:
    await _admin(update, context, "grant")


async def ban_command(update: Update, context: Context) -> None:
    await _admin(update, context, "ban")


async def unban_command(update: Update, context: Context) -> None:
    await _admin(update, context, "unban")


async def _admin(update: Update, context: Context, command: str) -> None:
    """The gateway's admin words (parsed once for Telegram and the CLI) with Telegram's usage line."""
    actor, target, args, message = _admin_call(update, context, command)
    accounts = context.bot_data.service.accounts
    await message.reply_text(await run_admin(accounts, actor, command, target, args, usage=USAGE[command]))


async def budget_command(update: Update, context: Context) -> None:
    message, user = update.effective_message, update.effective_user
    assert message is not None and user is not None
    accounts = context.bot_data.service.accounts
    answer = await run_budget(accounts, user_of(user.id), list(context.args or []), usage=USAGE["budget"])
    await message.reply_text(answer)


async def stats_command(update: Update, context: Context) -> None:
    assert update.effective_message is not None and update.effective_user is not None
    service = context.bot_data.service
    stats = await service.stats(user_of(update.effective_user.id))
    await update.effective_message.reply_text(service.stats_text(stats))


def _admin_call(update: Update, context: Context, command: str) -> tuple[str, str, list[str], Message]:
    """The caller, the user the command is about (an id, or the author of the replied-to message), the rest.

    A caller who is not an admin gets the gateway's refusal from the service call itself.
    """
    message, user = update.effective_message, update.effective_user
    assert message is not None and user is not None
    args = list(context.args or [])
    replied = message.reply_to_message
    is_topic_root = (  # in a forum topic every message "replies" to the topic's first message
        message.is_topic_message and replied is not None and replied.message_id == message.message_thread_id
    )
    if replied is not None and not is_topic_root and replied.from_user and not replied.from_user.is_bot:
        return user_of(user.id), user_of(replied.from_user.id), args, message
    if not args:
        raise InvalidRequest(USAGE[command])
    return user_of(user.id), parse_user(args[0], PLATFORM), args[1:], message
