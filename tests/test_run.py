"""`imagine run` as a subprocess: the fronts it starts, and SIGTERM/SIGINT in the middle of jobs."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.fakes.discord_server import FakeDiscord
from tests.fakes.telegram_server import FakeTelegram
from tests.helpers.imagine_process import (
    DISCORD_TEST_TOKEN,
    Imagine,
    fronts_env,
    imagine_running,
    ledger_problems,
    read_jobs,
)


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
    env = {**base_env, **fronts_env(discord_fake, telegram_fake), "IMAGINE_FAKE_DELAY": "0.02"}
    try:
        async with imagine_running(env, data_dir) as imagine:
            lines = imagine.lines
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

            rest = await imagine.stop()
            assert rest.rstrip().endswith("imagine: stopped")
            assert DISCORD_TEST_TOKEN not in "".join(lines) + rest
            assert telegram_fake.token not in "".join(lines) + rest
    finally:
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
