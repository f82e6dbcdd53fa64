"""The front registry: `imagine run`, the off-list, the secret filter and the Procfile follow from it."""

from __future__ import annotations

from pathlib import Path

from gateway.fronts import FRONTS, FrontSpec, register_front, secret_values
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_every_registered_front_is_a_procfile_process_and_a_command() -> None:
    lines = {line.split(":", 1)[0]: line for line in (ROOT / "Procfile").read_text().splitlines() if line}
    for name, spec in FRONTS.items():
        assert lines[name] == spec.procfile_line
    import imagine

    commands = imagine.build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(FRONTS) <= set(commands)


def test_a_front_is_on_when_its_token_is_set_and_its_secrets_are_filtered() -> None:
    settings = Settings.from_env(
        {
            "TELEGRAM_TOKEN": "123:tg-secret",
            "TELEGRAM_WEBHOOK_SECRET": "hook-secret",
            "IMAGINE_BACKEND_API_KEY": "k3y",
        },
        env_file=None,
    )
    assert [spec.name for spec in FRONTS.values() if spec.enabled(settings)] == ["web", "telegram"]
    assert (
        FRONTS["discord"].missing()
        == "The Discord bot needs DISCORD_TOKEN; set it in the environment or .env."
    )
    assert set(secret_values(settings)) == {"123:tg-secret", "hook-secret", "k3y"}


def test_a_new_front_is_one_registration(tmp_path: Path) -> None:
    spec = FrontSpec(
        "slack", "tests.test_fronts:_NoFront", "the Slack bot", "DISCORD_TOKEN", ("discord_token",)
    )
    register_front(spec)
    try:
        settings = Settings.from_env({"DISCORD_TOKEN": "x-secret"}, env_file=None)
        assert spec.enabled(settings) and "x-secret" in secret_values(settings)
        front = spec.build(settings, None)  # type: ignore[arg-type]
        assert front.name == "slack"
    finally:
        del FRONTS["slack"]


class _NoFront:
    name = "slack"

    def __init__(self, settings: Settings, service: object) -> None:
        self.settings = settings

    async def start(self) -> str:
        return "nowhere"

    async def stop(self) -> None:
        return None
