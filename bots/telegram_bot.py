"""The Telegram bot: ``/imagine`` with a live status message, inline re-roll, ``/quota`` and admin commands.

``imagine`` builds the settings and the started :class:`gateway.ImagineService` and hands them to
:class:`TelegramFront`. The parts live in :mod:`bots.telegram_ext` (handlers, delivery, rate limits,
the front's wiring); this module is the entry point and names what the rest of the project uses.
It imports python-telegram-bot and the gateway, never torch.

Every sentence a user reads comes from the gateway (errors, ``gateway.messages``); only the
Telegram-specific wording (command usage, button labels) lives in the bot.
"""

from __future__ import annotations

from bots.telegram_ext.admin import USAGE
from bots.telegram_ext.delivery import fits_photo_rules, png_size
from bots.telegram_ext.front import TelegramFront, build_application
from bots.telegram_ext.ratelimit import (
    RATE_LIMIT_RETRIES,
    TEXT_LIMIT,
    AnswersFirstRateLimiter,
    TelegramLimits,
)

__all__ = [
    "RATE_LIMIT_RETRIES",
    "TEXT_LIMIT",
    "USAGE",
    "AnswersFirstRateLimiter",
    "TelegramFront",
    "TelegramLimits",
    "build_application",
    "fits_photo_rules",
    "png_size",
]
