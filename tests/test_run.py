"""`imagine run` as a subprocess: the fronts it starts, and SIGTERM/SIGINT in the middle of jobs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from storage import Database
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.telegram_server import FakeTelegram

ROOT = Path(__file__).resolve().parents[1]
DISCORD_TEST_TOKEN = "MTA1NzY0NjQ4OTQ0NTYzNzI0OA.GfakeX.bot-token-for-tests"


def imagine_command() -> list[str]:
    """The installed `imagine` script next to this Python, else the module."""
    script = Path(sys.executable).with_name("imagine")
    return [str(script)] if script.exists() else [sys.executable, "-m", "imagine"]


class Imagine:
    """One `imagine` process and the lines it printed."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [*imagine_command(), *args],
            cwd=cwd,
            env={**env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []

    def read_until(self, marker: str) -> str:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if marker in line:
                return line
        raise AssertionError(f"imagine never printed {marker!r}:\n" + "\n".join(self.lines))

    def finish(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout=timeout)
        assert self.proc.stdout is not None
        self.lines += self.proc.stdout.read().splitlines()
        self.proc.stdout.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.finish()


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


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_mid_job_refunds_everything_in_flight_and_exits_0(
    base_env: dict[str, str], data_dir: Path, processes: list[Imagine], stop_signal: signal.Signals
) -> None:
    env = {**base_env, "IMAGINE_FAKE_DELAY": "0.1", "IMAGINE_MAX_QUEUED_PER_USER": "10"}
    imagine = Imagine(["run"], env, data_dir)
    processes.append(imagine)
    url = imagine.read_until("imagine: web is on: ").split("imagine: web is on: ", 1)[1].strip()
    imagine.read_until("imagine: backend fake")
    assert "imagine: off: discord, telegram (set its token to turn it on)" in imagine.lines

    with httpx.Client(base_url=url, timeout=10) as http:
        # The fake backend runs four at once: four jobs run, two wait in the queue.
        ids = [http.post("/api/jobs", json={"prompt": f"fox {i} --steps 30"}).json()["id"] for i in range(6)]
        deadline = time.monotonic() + 10
        while http.get(f"/api/jobs/{ids[0]}").json()["step"] < 3:
            assert time.monotonic() < deadline, "the first job never got going"
            time.sleep(0.05)
        assert http.get(f"/api/jobs/{ids[-1]}").json()["status"] == "queued"
        assert http.get("/api/quota").json()["remaining"] == 19

    imagine.proc.send_signal(stop_signal)
    assert imagine.finish() == 0, "\n".join(imagine.lines)
    assert "imagine: stopping: no new work; finishing or refunding what is in flight" in imagine.lines
    assert imagine.lines[-1] == "imagine: stopped"

    assert asyncio.run(ledger_problems(Path(env["IMAGINE_DB"]))) == []
    jobs = read_jobs(Path(env["IMAGINE_DB"]))
    assert {job[0] for job in jobs} == set(ids)
    for _job_id, status, cost, spent, refunded, error in jobs:
        assert (status, cost, spent, refunded) == ("failed", 1, 0, 1)
        assert error is not None and error.endswith("your 1 credit was refunded.")


@pytest.mark.slow
async def test_run_answers_on_all_three_fronts_with_both_tokens(
    base_env: dict[str, str], data_dir: Path
) -> None:
    """`imagine run` with both tokens pointing at the local fakes: one process, one gateway, three fronts."""
    discord_fake = FakeDiscord(token=DISCORD_TEST_TOKEN)
    telegram_fake = FakeTelegram()
    await discord_fake.start()
    await telegram_fake.start()
    env = {
        **base_env,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "DISCORD_TOKEN": DISCORD_TEST_TOKEN,
        "DISCORD_API_BASE_URL": discord_fake.api_base_url,
        "DISCORD_GATEWAY_URL": discord_fake.gateway_url,
        "TELEGRAM_TOKEN": telegram_fake.token,
        "TELEGRAM_API_BASE_URL": telegram_fake.base_url,
        "IMAGINE_FAKE_DELAY": "0.02",
    }
    proc = await asyncio.create_subprocess_exec(
        *imagine_command(), "run", cwd=data_dir, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not any(line.startswith("imagine: backend fake") for line in lines):
                line = (await proc.stdout.readline()).decode()
                assert line, "imagine run exited before it was on:\n" + "".join(lines)
                lines.append(line)
        on = {line.split()[1] for line in lines if " is on: " in line}
        assert on == {"web", "discord", "telegram"}, lines
        assert not any(line.startswith("imagine: off:") for line in lines)
        url = next(line for line in lines if "web is on: " in line).split("web is on: ", 1)[1].strip()

        await discord_fake.wait_until_ready(timeout=30)
        interaction = await discord_fake.dispatch_slash_command(
            "imagine", {"prompt": "a fox --steps 4 --seed 1"}
        )
        update = telegram_fake.send_message(4242, "/imagine a fox --steps 4 --seed 2")
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            created = (await http.post("/api/jobs", json={"prompt": "a fox --steps 4 --seed 3"})).json()
            view = (
                await http.get(f"/api/jobs/{created['id']}", params={"wait": 20, "after": created["tag"]})
            ).json()
            assert view["status"] == "succeeded", view
            image = await http.get(view["images"][0])
            assert image.status_code == 200 and image.content.startswith(b"\x89PNG")

        photo = await telegram_fake.wait_for_call("sendPhoto", timeout=20)
        assert photo.ok
        delivered = await discord_fake.wait_for(
            lambda: next((m for m in interaction.messages if m.attachments), None), 20
        )
        assert delivered.attachments[0].data.startswith(b"\x89PNG")

        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            rest = (await proc.stdout.read()).decode()
            assert await proc.wait() == 0, rest
        assert rest.rstrip().endswith("imagine: stopped")
        assert DISCORD_TEST_TOKEN not in "".join(lines) + rest
        assert telegram_fake.token not in "".join(lines) + rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await discord_fake.close()
        await telegram_fake.close()

    assert await ledger_problems(Path(env["IMAGINE_DB"])) == []
    jobs = {job[0]: job for job in read_jobs(Path(env["IMAGINE_DB"]))}
    for job_id in (f"discord:{interaction.id}", f"telegram:{update['update_id']}", created["id"]):
        assert jobs[job_id][1:4] == ("succeeded", 1, 1), jobs[job_id]


def test_a_busy_port_is_one_clear_line_and_a_failed_exit(base_env: dict[str, str], data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        imagine = Imagine(["web"], {**base_env, "IMAGINE_WEB_PORT": str(port)}, data_dir)
        assert imagine.finish() == 2
    assert imagine.lines[-1] == (
        f"imagine: The web front cannot listen on 127.0.0.1:{port} (Address already in use); "
        "set IMAGINE_WEB_HOST / IMAGINE_WEB_PORT to a free address."
    )
