"""The fake Discord (now the package tests/fakes/discord/): the names tests and bench/ import."""

from __future__ import annotations

from tests.fakes.discord import *  # noqa: F403
from tests.fakes.discord import __all__ as __all__
