"""Settings: environment plus .env, secrets hidden, and a sentence naming the variable for bad values."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from gateway.settings import Secret, Settings, SettingsError


def test_defaults_match_the_design() -> None:
    s = Settings.from_env({}, env_file=None)
    assert (s.db_path, s.backend, s.model) == (
        Path("data/imagine.sqlite3"),
        "local",
        "CompVis/stable-diffusion-v1-4",
    )
    assert (s.daily_quota, s.max_queued_per_user, s.max_queue, s.backend_timeout) == (25, 2, 100, 300.0)
    assert (s.web_host, s.web_port, s.max_batch, s.batch_wait_ms, s.compile) == (
        "127.0.0.1",
        8000,
        4,
        20.0,
        False,
    )
    assert s.discord_api_base_url == "https://discord.com/api/v10"
    assert s.discord_gateway_url == "wss://gateway.discord.gg"
    assert s.telegram_api_base_url == "https://api.telegram.org/bot"


def test_every_variable_is_read() -> None:
    s = Settings.from_env(
        {
            "IMAGINE_DB": "/tmp/x.sqlite3",
            "IMAGINE_BACKEND": "HTTP",
            "IMAGINE_BACKEND_URL": "http://a:1/, https://b",
            "IMAGINE_BACKEND_API_KEY": "k",
            "IMAGINE_ADMINS": "discord:1, telegram:2",
            "IMAGINE_BLOCKED_IPS": "203.0.113.0/24,2001:db8::1",
            "IMAGINE_TRUSTED_PROXIES": "10.0.0.1",
            "IMAGINE_COMPILE": "1",
            "IMAGINE_WEB_PORT": "9000",
            "TELEGRAM_WEBHOOK_URL": "https://example.org/hook",
        },
        env_file=None,
    )
    assert s.backend == "http" and s.backend_urls == ("http://a:1", "https://b")
    assert s.admins == frozenset({"discord:1", "telegram:2"})
    assert ipaddress.ip_address("203.0.113.9") in s.blocked_ips[0]
    assert s.compile and s.web_port == 9000 and s.db_path == Path("/tmp/x.sqlite3")
    assert s.telegram_webhook_url == "https://example.org/hook"


def test_secrets_never_show(tmp_path: Path) -> None:
    s = Settings.from_env(
        {"DISCORD_TOKEN": "abc.def.ghi", "IMAGINE_BACKEND_API_KEY": "s3cret"}, env_file=None
    )
    assert s.discord_token is not None and s.discord_token.get() == "abc.def.ghi"
    for text in (repr(s), str(s.discord_token), repr(s.backend_api_key), str(s.describe())):
        assert "abc.def.ghi" not in text and "s3cret" not in text
    assert repr(Secret("x")) == "Secret('**********')"


def test_env_file_fills_what_the_environment_leaves(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(
        "# comment\nexport IMAGINE_DAILY_QUOTA=7\nTELEGRAM_TOKEN='123:abc'\nIMAGINE_MODEL=\"tiny\"\n"
    )
    s = Settings.from_env({"IMAGINE_MODEL": "other"}, env_file=env)
    assert s.daily_quota == 7 and s.model == "other"
    assert s.telegram_token is not None and s.telegram_token.get() == "123:abc"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IMAGINE_DAILY_QUOTA": "lots"}, "IMAGINE_DAILY_QUOTA must be a whole number; got 'lots'."),
        ({"IMAGINE_DAILY_QUOTA": "-1"}, "IMAGINE_DAILY_QUOTA must be at least 0; got -1."),
        ({"IMAGINE_MAX_QUEUE": "0"}, "IMAGINE_MAX_QUEUE must be at least 1; got 0."),
        ({"IMAGINE_WEB_PORT": "70000"}, "IMAGINE_WEB_PORT must be a port number up to 65535; got '70000'."),
        ({"IMAGINE_BACKEND_TIMEOUT": "soon"}, "IMAGINE_BACKEND_TIMEOUT must be a number; got 'soon'."),
        ({"IMAGINE_BACKEND_TIMEOUT": "0"}, "IMAGINE_BACKEND_TIMEOUT must be more than 0 seconds."),
        ({"IMAGINE_COMPILE": "yes"}, "IMAGINE_COMPILE must be 0 or 1; got 'yes'."),
        (
            {"IMAGINE_ADMINS": "alice"},
            "IMAGINE_ADMINS takes users as platform:id, e.g. discord:123; got 'alice'.",
        ),
        (
            {"IMAGINE_BLOCKED_IPS": "not-an-ip"},
            "IMAGINE_BLOCKED_IPS takes IP addresses or networks like 203.0.113.0/24; got 'not-an-ip'.",
        ),
        (
            {"IMAGINE_BACKEND_URL": "ftp://x"},
            "IMAGINE_BACKEND_URL must be http:// or https:// URLs; got 'ftp://x'.",
        ),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env, env_file=None)
    assert str(caught.value) == message


def test_a_postgresql_store_is_named_without_its_password_and_a_bad_url_is_one_sentence() -> None:
    url = "postgresql://imagine:s3cr%40t@db.example.com:5433/imagine"
    settings = Settings.from_env({"IMAGINE_DB": url}, env_file=None)
    assert settings.store == url and settings.db_url is not None
    assert settings.store_name == "postgresql://db.example.com:5433/imagine"
    assert "s3cr" not in repr(settings) and "s3cr" not in str(settings.describe())
    assert settings.data_dir == Path("data")  # not the URL's "folder"
    with pytest.raises(SettingsError, match="IMAGINE_DB must name the database"):
        Settings.from_env({"IMAGINE_DB": "postgresql://db.example.com:5432"}, env_file=None)
    with pytest.raises(SettingsError, match="mysql:// is neither"):
        Settings.from_env({"IMAGINE_DB": "mysql://db/imagine"}, env_file=None)
    with pytest.raises(SettingsError, match="IMAGINE_MONTHLY_BUDGET needs IMAGINE_GPU_COST_PER_SECOND"):
        Settings.from_env({"IMAGINE_MONTHLY_BUDGET": "50"}, env_file=None)
