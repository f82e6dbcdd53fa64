"""Shared fixtures: every test gets its own data folder and SQLite file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.settings import Settings
from tests.helpers.imagine_process import base_env, processes  # noqa: F401 (for the tests that start imagine)
from tests.helpers.postgres import PostgresServer, start_or_skip

#: The engines the storage and service contract suites run on.
ENGINES = ["sqlite", "postgresql"]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    """Settings for a test: a fresh database, the fake backend, no .env read."""
    return Settings.from_env(
        {
            "IMAGINE_DB": str(data_dir / "imagine.sqlite3"),
            "IMAGINE_BACKEND": "fake",
            "IMAGINE_MODEL": "tiny",
        },
        env_file=None,
    )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole run (started on first use)."""
    server = start_or_skip()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh database on the test server."""
    return postgres_server.new_database()


@pytest.fixture(params=ENGINES)
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """What ``Database.open`` takes, on each engine in turn: a SQLite file, a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite3")
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(params=ENGINES)
def engine_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """``settings`` on each engine in turn: a contract suite takes it as its ``settings``."""
    if request.param == "sqlite":
        return settings
    url = request.getfixturevalue("postgres_url")
    return Settings.from_env(
        {
            "IMAGINE_DB": url,
            "IMAGINE_BACKEND": "fake",
            "IMAGINE_MODEL": "tiny",
            "IMAGINE_DATA_DIR": str(settings.data_dir),
        },
        env_file=None,
    )


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the whole run: every test that needs the tiny model finds it built once."""
    return tmp_path_factory.getbasetemp() / "imagine-models"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder and environment for `imagine` commands run in this process: no settings of
    the machine's, a fresh database, the fake backend."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(("IMAGINE_", "DISCORD_", "TELEGRAM_", "REPLICATE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("IMAGINE_DB", str(tmp_path / "db.sqlite3"))
    monkeypatch.setenv("IMAGINE_BACKEND", "fake")
    return tmp_path
