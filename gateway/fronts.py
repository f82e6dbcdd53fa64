"""The fronts `imagine` can run, and what each declares: its name, the setting that turns it on and
the settings that hold its secrets.

Like the backend registry, a front is built by import path, so this module imports no front (the
gateway never does): ``imagine run``, the off-list it prints, the log filter that hides secrets and
the Procfile all follow from :data:`FRONTS`. A new front is one module with a class taking
``(settings, service)`` and one :func:`register_front` line.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from gateway.service import ImagineService
    from gateway.settings import Secret, Settings


class Front(Protocol):
    """A front the main job runs: the web page, the Discord bot, the Telegram bot."""

    name: str

    async def start(self) -> str:
        """Start serving; return where (a URL, a bot name) for the start-up line."""
        ...

    async def stop(self) -> None:
        """Stop taking work (the service then finishes or refunds what is in flight)."""
        ...


@dataclass(frozen=True)
class FrontSpec:
    name: str  # the command (`imagine discord`) and the Procfile process type
    import_path: str  # "module:Class"; the class takes (settings, service)
    title: str  # for sentences: "the Discord bot"
    token: str | None = None  # the variable that turns it on; None: always on
    secrets: tuple[str, ...] = ()  # Settings attributes holding its secrets (hidden in every log line)
    procfile: str = ""  # the Procfile command, when it is not just `imagine NAME`

    def token_value(self, settings: Settings) -> Secret | None:
        if self.token is None:
            return None
        secret: Secret | None = getattr(settings, self.token.lower())
        return secret

    def enabled(self, settings: Settings) -> bool:
        return self.token is None or bool(self.token_value(settings))

    def missing(self) -> str:
        return (
            f"{self.title[0].upper()}{self.title[1:]} needs {self.token}; set it in the environment or .env."
        )

    def build(self, settings: Settings, service: ImagineService) -> Front:
        module_name, _, class_name = self.import_path.partition(":")
        front: Front = getattr(importlib.import_module(module_name), class_name)(settings, service)
        return front

    @property
    def procfile_line(self) -> str:
        return f"{self.name}: {self.procfile or f'imagine {self.name}'}"


FRONTS: dict[str, FrontSpec] = {}


def register_front(spec: FrontSpec) -> None:
    FRONTS[spec.name] = spec


register_front(
    FrontSpec(
        "web",
        "gateway.web.app:WebFront",
        "the web front",
        procfile="IMAGINE_WEB_HOST=0.0.0.0 IMAGINE_WEB_PORT=${PORT:-8000} imagine web",
    )
)
register_front(
    FrontSpec(
        "discord", "bots.discord_bot:DiscordFront", "the Discord bot", "DISCORD_TOKEN", ("discord_token",)
    )
)
register_front(
    FrontSpec(
        "telegram",
        "bots.telegram_bot:TelegramFront",
        "the Telegram bot",
        "TELEGRAM_TOKEN",
        ("telegram_token", "telegram_webhook_secret"),
    )
)

#: Secrets of the gateway itself, beside the fronts' own.
GATEWAY_SECRETS = ("backend_api_key", "replicate_api_token", "db_url", "admin_token")


def secret_values(settings: Settings) -> list[str]:
    """Every configured secret, for the log filter."""
    names = [*GATEWAY_SECRETS, *(name for spec in FRONTS.values() for name in spec.secrets)]
    values = (getattr(settings, name) for name in names)
    found = [secret.get() for secret in values if secret]
    if settings.db_url is not None:  # the password alone, wherever a driver might quote it
        password = urlsplit(settings.db_url.get()).password
        if password:
            found.append(unquote(password))
            found.append(password)
    return found
