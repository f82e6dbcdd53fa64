"""The web front on several hosts sharing one PostgreSQL store: a job made on one host is polled and
downloaded on another, charged once by the first download anywhere, never after a refund."""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import Settings
from gateway.web.app import WebOptions
from storage import Database
from tests.helpers.imagine_process import Imagine, base_env  # noqa: F401 (fixture)
from tests.test_web import LiveServer

PNG = b"\x89PNG\r\n\x1a\n"


def ready_on(client: httpx.Client, job_id: str, within: float = 30) -> dict[str, Any]:
    """Poll (without long-polling: the host may not run the job) until the job is done."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        view: dict[str, Any] = client.get(f"/api/jobs/{job_id}").json()
        if view["status"] in ("succeeded", "failed"):
            return view
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} was not done within {within} s")


async def in_store(url: str, job_id: str) -> tuple[list[str], list[str], int]:
    """The job's ledger rows, the store's ledger problems, and how many of its images are stored."""
    db = await Database.open(url)
    try:
        kinds = [row["kind"] for row in await db.ledger() if row["job_id"] == job_id]
        return kinds, await db.check_ledger(), await db.count_web_images(job_id)
    finally:
        await db.close()


async def sweep_as_if_later(url: str, seconds: float) -> int:
    db = await Database.open(url)
    try:
        return await db.sweep_web_images(
            now=time.time() + seconds, ttl_seconds=WebOptions().image_ttl_seconds, budget_bytes=1 << 30
        )
    finally:
        await db.close()


@pytest.mark.slow
def test_a_job_made_on_one_host_is_polled_and_downloaded_on_another(
    base_env: dict[str, str],  # noqa: F811 (the fixture)
    postgres_url: str,
    tmp_path: Path,
) -> None:
    """Two `imagine web` processes, each with its own data folder, on one PostgreSQL database."""
    hosts: list[Imagine] = []
    try:
        urls = []
        for name in ("a", "b"):
            folder = tmp_path / name
            folder.mkdir()
            env = {**base_env, "IMAGINE_DB": postgres_url, "IMAGINE_DATA_DIR": str(folder)}
            hosts.append(Imagine(["web"], env, folder))
            urls.append(hosts[-1].read_until("web is on: ").split("web is on: ", 1)[1].strip())
        with httpx.Client(base_url=urls[0], timeout=30) as a, httpx.Client(base_url=urls[1], timeout=30) as b:
            before = b.get("/api/quota").json()
            job_id = a.post("/api/jobs", json={"prompt": "a lighthouse --n 2"}).json()["id"]
            view = ready_on(b, job_id)
            assert view["status"] == "succeeded" and len(view["images"]) == 2, view
            assert asyncio.run(in_store(postgres_url, job_id))[0] == ["reserve"], "polling charges nothing"

            first = b.get(view["images"][0])
            assert first.status_code == 200 and first.content.startswith(PNG)
            assert b.get(view["images"][1]).content.startswith(PNG)
            kinds, problems, stored = asyncio.run(in_store(postgres_url, job_id))
            assert kinds == ["reserve", "settle"] and problems == [] and stored == 2
            after = b.get("/api/quota").json()
            assert after["used"] == before["used"] + 2 and after["reserved"] == 0

            again = a.get(view["images"][0])  # the owner serves the same bytes, charged once
            assert again.status_code == 200 and again.content == first.content
            assert a.get(f"/api/jobs/{job_id}").json()["status"] == "succeeded"
            assert asyncio.run(in_store(postgres_url, job_id))[0] == ["reserve", "settle"]
            assert a.get("/api/quota").json()["used"] == after["used"]

            assert asyncio.run(sweep_as_if_later(postgres_url, WebOptions().image_ttl_seconds)) == 2
            for host in (a, b):
                gone = host.get(view["images"][0])
                assert gone.status_code == 410 and "no longer kept" in gone.json()["error"], gone.text
            assert b.get(f"/api/jobs/{job_id}").json()["expired"] is True
            kinds, problems, stored = asyncio.run(in_store(postgres_url, job_id))
            assert kinds == ["reserve", "settle"] and problems == [] and stored == 0
    finally:
        for host in hosts:
            host.proc.send_signal(signal.SIGTERM)
        assert [host.finish() for host in hosts] == [0] * len(hosts), [host.lines for host in hosts]


@pytest.fixture
def two_hosts(postgres_url: str, data_dir: Path) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Host A times out unfetched images after a second; host B keeps the defaults."""
    servers = []
    for name, options in (
        ("a", WebOptions(post_rate=None, pickup_seconds=1.0, sweep_seconds=0.1)),
        ("b", WebOptions(post_rate=None)),
    ):
        folder = data_dir / name
        folder.mkdir()
        settings = Settings.from_env(
            {
                "IMAGINE_DB": postgres_url,
                "IMAGINE_BACKEND": "fake",
                "IMAGINE_MODEL": "tiny",
                "IMAGINE_WEB_PORT": "0",
                "IMAGINE_DATA_DIR": str(folder),
            },
            env_file=None,
        )
        servers.append(LiveServer(settings, options).start())
    yield servers[0], servers[1]
    for server in servers:
        server.check()
        server.stop()


def kinds(server: LiveServer, job_id: str) -> list[str]:
    return [row["kind"] for row in server.ledger() if row["job_id"] == job_id]


def test_the_owners_pickup_timer_does_not_refund_what_another_host_charged(
    two_hosts: tuple[LiveServer, LiveServer],
) -> None:
    host_a, host_b = two_hosts
    with (
        httpx.Client(base_url=host_a.url, timeout=30) as a,
        httpx.Client(base_url=host_b.url, timeout=30) as b,
    ):
        created = a.post("/api/jobs", json={"prompt": "a heron"}).json()
        started = time.monotonic()
        polled = b.get(f"/api/jobs/{created['id']}", params={"wait": 25, "after": created["tag"]})
        assert time.monotonic() - started < 10, "a long poll on B reads the job from the store again"
        job_id = created["id"]
        image = ready_on(b, job_id)["images"][0]
        assert polled.status_code == 200
        served = b.get(image)
        assert served.status_code == 200 and served.content.startswith(PNG)
        time.sleep(1.5)  # past A's pickup time: its timer finds the job charged, not unfetched
        view = a.get(f"/api/jobs/{job_id}").json()
        assert view["status"] == "succeeded" and not view["refunded"], view
        assert a.get(image).content == served.content
        assert kinds(host_a, job_id) == ["reserve", "settle"]


def test_an_image_the_owner_refunded_is_served_by_no_host(two_hosts: tuple[LiveServer, LiveServer]) -> None:
    host_a, host_b = two_hosts
    with (
        httpx.Client(base_url=host_a.url, timeout=30) as a,
        httpx.Client(base_url=host_b.url, timeout=30) as b,
    ):
        job_id = a.post("/api/jobs", json={"prompt": "a heron"}).json()["id"]
        image = ready_on(a, job_id)["images"][0]
        deadline = time.monotonic() + 10
        while a.get(f"/api/jobs/{job_id}").json()["status"] != "failed":  # A's pickup timer refunds it
            assert time.monotonic() < deadline, "never refunded"
            time.sleep(0.1)
        answer = b.get(image)
        assert answer.status_code == 410 and "refunded" in answer.json()["error"], answer.text
        assert b.get(f"/api/jobs/{job_id}").json()["status"] == "failed"
        assert kinds(host_b, job_id) == ["reserve", "refund"]


def test_two_hosts_downloading_at_once_charge_once(two_hosts: tuple[LiveServer, LiveServer]) -> None:
    host_a, host_b = two_hosts
    with (
        httpx.Client(base_url=host_a.url, timeout=30) as a,
        httpx.Client(base_url=host_b.url, timeout=30) as b,
    ):
        for n in range(5):
            job_id = a.post("/api/jobs", json={"prompt": f"a heron {n}"}).json()["id"]
            image = ready_on(b, job_id)["images"][0]
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda client, url=image: client.get(url), [a, b, a, b]))
            assert [answer.status_code for answer in answers] == [200] * 4
            assert len({answer.content for answer in answers}) == 1
            assert kinds(host_b, job_id) == ["reserve", "settle"]
