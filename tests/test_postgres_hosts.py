"""Several `imagine web` processes on one PostgreSQL database, proven from outside: HTTP to the
processes, signals to them, and the store read afterwards.

What tests/test_processes.py and tests/test_web_hardening.py prove on one SQLite file, across
processes that share only the PostgreSQL server (each has a data folder of its own, as two hosts
would): credits never overspent, one job per idempotent request, the jobs of a killed or stalled
process refunded by the other, and nothing refunded ever served. The web front names a user by
the client's address, so every request of these tests (from 127.0.0.1) is the one user
``web:127.0.0.1`` on both processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from gateway.service import HEARTBEAT_SECONDS, LEASE_SECONDS
from storage import Database, JobRecord
from storage.sql import Conn
from tests.helpers.imagine_process import Imagine, base_env, processes  # noqa: F401 (fixtures)
from tests.helpers.postgres import free_port

USER = "web:127.0.0.1"
LEDGER_OF_A_REFUND = ("reserve", "refund")
#: How long past the lease and one heartbeat a recovery may take (a loaded two-core machine).
SLACK_SECONDS = 8.0

Env = Callable[..., dict[str, str]]


@pytest.fixture
def web_env(base_env: dict[str, str], postgres_url: str, data_dir: Path) -> Env:  # noqa: F811
    """The environment of one `imagine web` on the test's PostgreSQL database, with a data folder
    of its own."""

    def env(name: str, **extra: str) -> dict[str, str]:
        folder = data_dir / name
        folder.mkdir(exist_ok=True)
        return {**base_env, "IMAGINE_DB": postgres_url, "IMAGINE_DATA_DIR": str(folder), **extra}

    return env


def start_webs(
    processes: list[Imagine],  # noqa: F811
    cwd: Path,
    *envs: dict[str, str],
) -> list[tuple[Imagine, str]]:
    """Start one `imagine web` per environment, all at once; each with the address it serves on."""
    webs = [Imagine(["web"], env, cwd) for env in envs]
    processes.extend(webs)
    started = []
    for web in webs:
        url = web.read_until("web is on: ").split("web is on: ", 1)[1].strip().rstrip("/")
        web.keep_reading()
        started.append((web, url))
    return started


def stop(web: Imagine) -> None:
    web.proc.send_signal(signal.SIGTERM)
    assert web.finish() == 0, "\n".join(web.lines)


def finished(client: httpx.Client, job_id: str, within: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        view: dict[str, Any] = client.get(f"/api/jobs/{job_id}", params={"wait": 5}).json()
        if view["status"] in ("succeeded", "failed"):
            return view
    raise AssertionError(f"job {job_id} did not finish in {within:g} s")


def running(client: httpx.Client, job_id: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        view = client.get(f"/api/jobs/{job_id}", params={"wait": 2}).json()
        if view["status"] == "running" and view.get("step", 0) >= 1:
            return
        assert view["status"] in ("queued", "running"), view
    raise AssertionError(f"job {job_id} never ran")


def on_store(url: str, check: Callable[[Database], Any]) -> Any:
    """``check(db)`` on a connection of the test's own to the shared database."""

    async def run() -> Any:
        db = await Database.open(url)
        try:
            return await check(db)
        finally:
            await db.close()

    return asyncio.run(run())


def scalar(sql: str) -> Callable[[Conn], Any]:
    return lambda conn: next(iter(conn.execute(sql).fetchone().values()))  # type: ignore[union-attr]


def migration_versions(conn: Conn) -> list[int]:
    return [row["version"] for row in conn.execute("SELECT version FROM schema_migrations")]


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def wait_for_refund(url: str, job_ids: list[str], within: float) -> tuple[float, list[JobRecord]]:
    """Seconds until every job is closed on the store (looked at every 0.1 s), and their records."""

    async def watch() -> tuple[float, list[JobRecord]]:
        db = await Database.open(url)
        began = time.monotonic()
        try:
            while True:
                records = [await db.get_job(job_id) for job_id in job_ids]
                if all(record is not None and not record.is_open for record in records):
                    return time.monotonic() - began, [r for r in records if r is not None]
                assert time.monotonic() - began < within, f"not recovered in {within:g} s: {records}"
                await asyncio.sleep(0.1)
        finally:
            await db.close()

    return asyncio.run(watch())


# --- credits and idempotency ---------------------------------------------------------------------


@pytest.mark.slow
def test_200_requests_over_two_processes_spend_exactly_the_5_credits(
    web_env: Env,
    processes: list[Imagine],  # noqa: F811
    data_dir: Path,
    postgres_url: str,
) -> None:
    """200 concurrent requests of one user with 5 credits, 100 to each process: exactly 5 accepted.

    Each process's rate limit lets a burst of 10 of the user's requests through (it lives in the
    process's memory), so at least 20 reach the store at once and the store alone decides which 5 of
    them are paid for; the rest are refused for the rate, none for the queue bound."""
    env = {"IMAGINE_DAILY_QUOTA": "5", "IMAGINE_MAX_QUEUED_PER_USER": "500", "IMAGINE_FAKE_DELAY": "0.05"}
    (_, url_a), (_, url_b) = start_webs(processes, data_dir, web_env("a", **env), web_env("b", **env))

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with (
            httpx.AsyncClient(base_url=url_a, timeout=60, limits=limits) as a,
            httpx.AsyncClient(base_url=url_b, timeout=60, limits=limits) as b,
        ):
            posts = [
                (a if i % 2 else b).post("/api/jobs", json={"prompt": f"a fox {i} --steps 2"})
                for i in range(200)
            ]
            return await asyncio.gather(*posts)

    answers = asyncio.run(burst())
    kinds = ["accepted" if answer.status_code == 202 else answer.json()["kind"] for answer in answers]
    counts = {kind: kinds.count(kind) for kind in set(kinds)}
    assert counts.get("accepted") == 5, counts
    assert set(counts) <= {"accepted", "out_of_credits", "rate_limited"}, counts
    # Both bursts reached the store (and what the limiter refilled meanwhile, 0.5 a second each).
    assert counts["accepted"] + counts["out_of_credits"] >= 20, counts

    async def check(db: Database) -> None:
        quota = await db.quota(USER, day=today(), default_allowance=5)
        assert quota.used == 5 and quota.remaining == 0
        assert await db.run(scalar("SELECT COUNT(*) FROM jobs")) == 5
        assert await db.run(scalar("SELECT COUNT(*) FROM ledger WHERE kind = 'reserve'")) == 5
        assert await db.check_ledger() == []

    on_store(postgres_url, check)


@pytest.mark.slow
def test_the_same_idempotency_key_sent_to_both_processes_at_once_makes_one_job(
    web_env: Env,
    processes: list[Imagine],  # noqa: F811
    data_dir: Path,
    postgres_url: str,
) -> None:
    """A platform's event delivered to two processes (a webhook retried through a load balancer):
    its id names the job, so one process makes and charges it and the other answers the same job.
    Eight keys, each sent to both processes at the same moment."""
    env = {"IMAGINE_DAILY_QUOTA": "25", "IMAGINE_MAX_QUEUED_PER_USER": "50"}
    (_, url_a), (_, url_b) = start_webs(processes, data_dir, web_env("a", **env), web_env("b", **env))
    keys = [f"event-{i}" for i in range(8)]

    async def race() -> list[tuple[httpx.Response, httpx.Response]]:
        async with (
            httpx.AsyncClient(base_url=url_a, timeout=60) as a,
            httpx.AsyncClient(base_url=url_b, timeout=60) as b,
        ):

            async def both(key: str) -> tuple[httpx.Response, httpx.Response]:
                body, headers = {"prompt": f"a lighthouse, {key}"}, {"Idempotency-Key": key}
                first, second = await asyncio.gather(
                    a.post("/api/jobs", json=body, headers=headers),
                    b.post("/api/jobs", json=body, headers=headers),
                )
                return first, second

            return await asyncio.gather(*(both(key) for key in keys))

    made: dict[str, str] = {}  # job id -> the address of the process that made it
    for first, second in asyncio.run(race()):
        assert (first.status_code, second.status_code) == (202, 202), (first.text, second.text)
        assert first.json()["id"] == second.json()["id"]
        replayed = [answer.headers.get("Idempotent-Replayed") == "true" for answer in (first, second)]
        assert sorted(replayed) == [False, True]  # one made it, the other found it
        maker = first if not replayed[0] else second
        made[maker.json()["id"]] = str(maker.url).split("/api/", 1)[0]
    assert len(made) == len(keys)
    for job_id, url in made.items():
        with httpx.Client(base_url=url, timeout=30) as client:
            view = finished(client, job_id)
            assert view["status"] == "succeeded"
            assert client.get(view["images"][0]).status_code == 200

    async def check(db: Database) -> None:
        assert await db.run(scalar("SELECT COUNT(*) FROM jobs")) == len(keys)
        kinds = [(row["job_id"], row["kind"]) for row in await db.ledger(USER)]
        assert sorted(kinds) == sorted((job_id, kind) for job_id in made for kind in ("reserve", "settle"))
        quota = await db.quota(USER, day=today(), default_allowance=25)
        assert (quota.used, quota.reserved) == (len(keys), 0)
        assert await db.check_ledger() == []

    on_store(postgres_url, check)


# --- a process that dies or stalls ---------------------------------------------------------------


@pytest.mark.slow
def test_a_killed_process_s_jobs_are_refunded_by_the_other_within_the_lease(
    web_env: Env,
    processes: list[Imagine],  # noqa: F811
    data_dir: Path,
    postgres_url: str,
) -> None:
    """SIGKILL mid-job: the other process refunds the job (``interrupted``) and answers for it.

    Reaped at once, as a supervisor does: on one host the other process sees at its next heartbeat
    that the PID is gone, well within the lease. (Not reaped, the zombie's PID still looks alive and
    the lease decides, as across hosts: the stalled-process test below measures that path.)"""
    (victim, victim_url), (_, rescuer_url) = start_webs(
        processes,
        data_dir,
        web_env("victim", IMAGINE_FAKE_DELAY="1"),
        web_env("rescuer"),
    )
    with httpx.Client(base_url=victim_url, timeout=30) as client:
        job_id = client.post("/api/jobs", json={"prompt": "a slow fox --steps 50"}).json()["id"]
        running(client, job_id)
    victim.proc.send_signal(signal.SIGKILL)
    victim.finish()
    seconds, (record,) = wait_for_refund(postgres_url, [job_id], LEASE_SECONDS + HEARTBEAT_SECONDS + 30)
    print(f"SIGKILL -> refunded by the other process: {seconds:.1f} s")
    assert seconds <= HEARTBEAT_SECONDS + SLACK_SECONDS < LEASE_SECONDS
    assert (record.status, record.error_kind, record.refunded) == ("failed", "interrupted", 1)
    with httpx.Client(base_url=rescuer_url, timeout=30) as client:
        view = client.get(f"/api/jobs/{job_id}").json()
        assert view["status"] == "failed" and view["images"] == []

    async def check(db: Database) -> None:
        assert tuple(row["kind"] for row in await db.ledger(USER)) == LEDGER_OF_A_REFUND
        quota = await db.quota(USER, day=today(), default_allowance=25)
        assert (quota.used, quota.reserved) == (0, 0)
        assert await db.check_ledger() == []

    on_store(postgres_url, check)


@pytest.mark.slow
def test_a_process_stopped_past_its_lease_serves_nothing_the_other_refunded(
    web_env: Env,
    processes: list[Imagine],  # noqa: F811
    data_dir: Path,
    postgres_url: str,
) -> None:
    """SIGSTOP with one image made and not yet downloaded and one mid-generation; the other process
    waits out the lease (the stopped process is alive, so only its heartbeat can tell), then refunds
    both. SIGCONT: the woken process answers 410 for the image and fails the other job; nothing
    is charged."""
    (stalled, stalled_url), _ = start_webs(
        processes,
        data_dir,
        web_env("stalled", IMAGINE_FAKE_DELAY="0.2"),
        web_env("rescuer"),
    )
    with httpx.Client(base_url=stalled_url, timeout=30) as client:
        made = client.post("/api/jobs", json={"prompt": "a lighthouse --steps 1"}).json()["id"]
        image = finished(client, made)["images"][0]
        making = client.post("/api/jobs", json={"prompt": "a slow fox --steps 30"}).json()["id"]
        running(client, making)
        os.kill(stalled.proc.pid, signal.SIGSTOP)
        try:
            seconds, records = wait_for_refund(
                postgres_url, [made, making], LEASE_SECONDS + HEARTBEAT_SECONDS + 30
            )
        finally:
            os.kill(stalled.proc.pid, signal.SIGCONT)
        print(f"SIGSTOP -> refunded by the other process: {seconds:.1f} s")
        # Its last heartbeat was at most one heartbeat before the stop; the other's next look at
        # most one heartbeat after the lease ran out.
        assert (
            LEASE_SECONDS - HEARTBEAT_SECONDS <= seconds <= LEASE_SECONDS + HEARTBEAT_SECONDS + SLACK_SECONDS
        )
        assert [(r.status, r.error_kind) for r in records] == [("failed", "interrupted")] * 2
        answer = client.get(image)
        assert answer.status_code == 410, answer.text
        assert "refunded" in answer.json()["error"]
        assert client.get(f"/api/jobs/{made}").json()["status"] == "failed"
        assert finished(client, making)["status"] == "failed"  # generated after the refund: dropped

    async def check(db: Database) -> None:
        kinds = [(row["job_id"], row["kind"]) for row in await db.ledger(USER)]
        assert sorted(kinds) == sorted((job, kind) for job in (made, making) for kind in LEDGER_OF_A_REFUND)
        quota = await db.quota(USER, day=today(), default_allowance=25)
        assert (quota.used, quota.reserved) == (0, 0)
        assert await db.check_ledger() == []

    on_store(postgres_url, check)
    stop(stalled)


# --- starting, and the password ------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_starting_at_once_on_an_empty_database_both_come_up(
    web_env: Env,
    processes: list[Imagine],  # noqa: F811
    data_dir: Path,
    postgres_url: str,
) -> None:
    """Both migrate under the migration lock: one applies the files, the other waits and finds them."""
    webs = start_webs(processes, data_dir, web_env("a"), web_env("b"))
    for _, url in webs:
        assert httpx.get(f"{url}/healthz", timeout=10).json()["status"] == "ok"

    async def check(db: Database) -> None:
        applied = await db.run(migration_versions)
        assert applied and len(applied) == len(set(applied))

    on_store(postgres_url, check)
    for web, _ in webs:
        stop(web)


async def test_four_opens_at_once_on_an_empty_database_migrate_it_once(postgres_url: str) -> None:
    opened = await asyncio.gather(*(Database.open(postgres_url) for _ in range(4)))
    try:
        applied = await opened[0].run(migration_versions)
        assert applied and len(applied) == len(set(applied))
        for db in opened:
            assert await db.check_ledger() == []
    finally:
        for db in opened:
            await db.close()


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{password}@{parts.hostname}:{parts.port}"))


@pytest.mark.slow
def test_the_database_password_never_reaches_the_log(
    web_env: Env,
    processes: list[Imagine],  # noqa: F811
    data_dir: Path,
    postgres_url: str,
) -> None:
    """The test server trusts every password, so the process connects and works with one in its URL."""
    secret_url = with_password(postgres_url, "SECRETPW")
    ((web, url),) = start_webs(processes, data_dir, {**web_env("a"), "IMAGINE_DB": secret_url})
    with httpx.Client(base_url=url, timeout=30) as client:
        job_id = client.post("/api/jobs", json={"prompt": "a lighthouse --steps 2"}).json()["id"]
        assert client.get(finished(client, job_id)["images"][0]).status_code == 200
        health = client.get("/healthz").text
        metrics = client.get("/metrics").text
    stop(web)
    output = "\n".join(web.lines)
    assert "SECRETPW" not in output + health + metrics


def test_an_unreachable_database_is_one_sentence_without_the_password(
    web_env: Env,
    processes: list[Imagine],  # noqa: F811
    data_dir: Path,
) -> None:
    port = free_port()  # nothing listens there
    env = {**web_env("a"), "IMAGINE_DB": f"postgresql://imagine:SECRETPW@127.0.0.1:{port}/imagine"}
    web = Imagine(["web"], env, data_dir)
    processes.append(web)
    code = web.finish(timeout=60)
    output = "\n".join(web.lines)
    assert code != 0, output
    assert "SECRETPW" not in output and "Traceback" not in output, output
    assert [line for line in web.lines if line.startswith("imagine: ")] == [
        line for line in web.lines if f"127.0.0.1:{port}/imagine" in line
    ], output
    assert len(web.lines) == 1, output
