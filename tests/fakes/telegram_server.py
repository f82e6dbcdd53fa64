"""The fake Telegram Bot API (now the package tests/fakes/telegram/): the names tests and bench/ import."""

from __future__ import annotations

from tests.fakes.telegram import *  # noqa: F403
from tests.fakes.telegram import __all__ as __all__
