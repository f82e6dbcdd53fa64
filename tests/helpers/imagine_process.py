"""Driving `imagine` as a separate process: the command line, its output, and what it left in the database.

Shared by the tests that start the real program (tests/test_run.py, the Telegram bot's `imagine run` test,
the web hardening tests); import the fixtures by name where they are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from storage import Database

if TYPE_CHECKING:
    from tests.fakes.discord_server import FakeDiscord
    from tests.fakes.telegram_server import FakeTelegram

ROOT = Path(__file__).resolve().parents[2]
DISCORD_TEST_TOKEN = "MTA1NzY0NjQ4OTQ0NTYzNzI0OA.GfakeX.bot-token-for-tests"
# What a child needs to import this checkout and to print each line as it happens.
CHILD_ENV = {"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def imagine_command() -> list[str]:
    """The installed `imagine` script next to this Python, else the module."""
    script = Path(sys.executable).with_name("imagine")
    return [str(script)] if script.exists() else [sys.executable, "-m", "imagine"]


def fronts_env(discord: FakeDiscord | None = None, telegram: FakeTelegram | None = None) -> dict[str, str]:
    """The tokens and API addresses that point `imagine run`'s chat fronts at the local fakes."""
    env: dict[str, str] = {}
    if discord is not None:
        env |= {
            "DISCORD_TOKEN": DISCORD_TEST_TOKEN,
            "DISCORD_API_BASE_URL": discord.api_base_url,
            "DISCORD_GATEWAY_URL": discord.gateway_url,
        }
    if telegram is not None:
        env |= {"TELEGRAM_TOKEN": telegram.token, "TELEGRAM_API_BASE_URL": telegram.base_url}
    return env


class Imagine:
    """One `imagine` process and the lines it printed."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [*imagine_command(), *args],
            cwd=cwd,
            env={**env, **CHILD_ENV},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    def read_until(self, marker: str) -> str:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if marker in line:
                return line
        raise AssertionError(f"imagine never printed {marker!r}:\n" + "\n".join(self.lines))

    def keep_reading(self) -> None:
        """Read the rest of the output on a thread, so that a process that logs a lot while the
        test does something else never blocks on a full pipe."""
        assert self.proc.stdout is not None and self._reader is None
        stdout = self.proc.stdout

        def read() -> None:
            for line in stdout:
                self.lines.append(line.rstrip("\n"))

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def finish(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout=timeout)
        assert self.proc.stdout is not None
        if self._reader is not None:
            self._reader.join(timeout)
        else:
            self.lines += self.proc.stdout.read().splitlines()
        self.proc.stdout.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.finish()


class RunningImagine:
    """`imagine run` under asyncio (for tests that drive the fakes in the same loop)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []  # as printed, newlines kept

    async def stop(self) -> str:
        """SIGTERM, then the rest of the output once it exited 0."""
        assert self.proc.stdout is not None
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            rest = (await self.proc.stdout.read()).decode()
            assert await self.proc.wait() == 0, rest
        return rest


@contextlib.asynccontextmanager
async def imagine_running(env: dict[str, str], cwd: Path) -> AsyncIterator[RunningImagine]:
    """Start `imagine run`, read until it says which backend it uses, kill it on the way out if still up."""
    proc = await asyncio.create_subprocess_exec(
        *imagine_command(), "run", cwd=cwd, env={**env, **CHILD_ENV},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    running = RunningImagine(proc)
    try:
        async with asyncio.timeout(60):
            while not any(line.startswith("imagine: backend fake") for line in running.lines):
                line = (await proc.stdout.readline()).decode()
                assert line, "imagine run exited before it was on:\n" + "".join(running.lines)
                running.lines.append(line)
        yield running
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.fixture
def base_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGINE_", "DISCORD_", "TELEGRAM_"))}
    env.update(
        {
            "IMAGINE_DB": str(data_dir / "run.sqlite3"),
            "IMAGINE_BACKEND": "fake",
            "IMAGINE_MODEL": "tiny",
            "IMAGINE_WEB_HOST": "127.0.0.1",
            "IMAGINE_WEB_PORT": "0",
        }
    )
    return env


@pytest.fixture
def processes() -> Iterator[list[Imagine]]:
    started: list[Imagine] = []
    yield started
    for process in started:
        process.kill()


def read_jobs(db_path: Path) -> list[tuple[str, str, int, int, int, str | None]]:
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        return list(
            db.execute("SELECT id, status, cost, spent, refunded, error FROM jobs ORDER BY created_at")
        )


async def ledger_problems(db_path: Path) -> list[str]:
    db = await Database.open(db_path)
    try:
        assert await db.integrity_check() == "ok"
        return await db.check_ledger()
    finally:
        await db.close()
