"""Web images in the store (storage/web_images.py) and the settle of a ready job from any host, on
both engines."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.settings import Settings
from storage import Database, NewJob
from tests.helpers.jobs import new_job

MB = 1024 * 1024


@pytest.fixture
async def db(engine_settings: Settings) -> AsyncIterator[Database]:
    store = await Database.open(engine_settings.store)
    yield store
    assert await store.check_ledger() == []
    await store.close()


def png(size: int, mark: int = 0) -> bytes:
    return b"\x89PNG" + bytes([mark]) * (size - 4)


async def test_a_jobs_images_go_in_together_and_come_back_one_at_a_time(db: Database) -> None:
    images = [png(100, 1), png(200, 2), png(300, 3)]
    assert await db.put_web_images("web:a", images, now=10.0)
    assert not await db.put_web_images("web:a", [png(5)], now=11.0)  # stored already: kept as it was
    assert await db.count_web_images("web:a") == 3
    assert [await db.web_image("web:a", n) for n in range(3)] == images
    assert await db.web_image("web:a", 3) is None
    assert await db.web_image("web:b", 0) is None
    assert await db.count_web_images("web:b") == 0
    assert await db.web_images_bytes() == 600
    assert not await db.put_web_images("web:empty", [], now=10.0)


async def test_a_large_image_survives_the_round_trip(db: Database) -> None:
    big = png(8 * MB, 7)
    assert await db.put_web_images("web:big", [big], now=1.0)
    assert await db.web_image("web:big", 0) == big


async def test_delete_drops_one_jobs_images(db: Database) -> None:
    await db.put_web_images("web:a", [png(10), png(10)], now=1.0)
    await db.put_web_images("web:b", [png(10)], now=1.0)
    assert await db.delete_web_images("web:a") == 2
    assert await db.count_web_images("web:a") == 0
    assert await db.count_web_images("web:b") == 1


async def test_the_sweep_drops_expired_images(db: Database) -> None:
    await db.put_web_images("web:old", [png(10)], now=100.0)
    await db.put_web_images("web:new", [png(10)], now=3000.0)
    assert await db.sweep_web_images(now=3699.0, ttl_seconds=3600, budget_bytes=MB) == 0
    assert await db.sweep_web_images(now=3700.0, ttl_seconds=3600, budget_bytes=MB) == 1
    assert await db.count_web_images("web:old") == 0
    assert await db.count_web_images("web:new") == 1


async def test_past_the_budget_whole_jobs_go_oldest_first(db: Database) -> None:
    for n, job_id in enumerate(["web:1", "web:2", "web:3", "web:4"]):
        await db.put_web_images(job_id, [png(100), png(100)], now=10.0 + n)
    # 800 bytes stored; the budget keeps the newest jobs that fit in 500: web:4 and web:3
    assert await db.sweep_web_images(now=20.0, ttl_seconds=3600, budget_bytes=500) == 4
    assert [await db.count_web_images(f"web:{n}") for n in range(1, 5)] == [0, 0, 2, 2]
    assert await db.web_images_bytes() == 400
    assert await db.sweep_web_images(now=20.0, ttl_seconds=3600, budget_bytes=400) == 0


def web_job(job_id: str, *, cost: int = 2) -> NewJob:
    return new_job(
        job_id, user_id="web:1.2.3.4", cost=cost, default_allowance=10, max_open=10, instance_id="owner"
    )


async def ready_job(db: Database, job_id: str, *, cost: int = 2, made: int = 2) -> None:
    await db.register_instance("owner", host="a", pid=1, now=1.0)
    await db.reserve(web_job(job_id, cost=cost))
    assert await db.mark_running(job_id, 2.0)
    assert await db.mark_ready(job_id, made, instance_id="owner", now=3.0)


async def test_any_host_settles_a_ready_job_once_for_its_images(db: Database) -> None:
    await ready_job(db, "web:a", cost=2, made=2)
    settled = await db.settle_ready("web:a", now=4.0)
    assert settled is not None
    assert (settled.status, settled.spent, settled.refunded, settled.delivering_at) == (
        "succeeded",
        2,
        0,
        4.0,
    )
    assert await db.settle_ready("web:a", now=5.0) is None  # a second host's download: charged once
    assert await db.settle("web:a", delivered=2, seed=None, model=None, gpu_seconds=None, now=5.0,
                           instance_id="owner") is None  # fmt: skip
    assert await db.refund("web:a", error_kind="expired", error="late", now=6.0) is None
    assert [row["kind"] for row in await db.ledger()] == ["reserve", "settle"]


async def test_a_ready_job_that_made_fewer_images_is_charged_for_those(db: Database) -> None:
    await ready_job(db, "web:a", cost=3, made=1)
    settled = await db.settle_ready("web:a", now=4.0)
    assert settled is not None and (settled.spent, settled.refunded) == (1, 2)


async def test_a_refunded_or_unready_job_is_never_settled_by_a_download(db: Database) -> None:
    await db.register_instance("owner", host="a", pid=1, now=1.0)
    await db.reserve(web_job("web:running"))
    assert await db.mark_running("web:running", 2.0)
    assert await db.settle_ready("web:running", now=3.0) is None  # no images made yet
    await ready_job(db, "web:refunded")
    assert await db.refund("web:refunded", error_kind="interrupted", error="gone", now=4.0) is not None
    assert await db.settle_ready("web:refunded", now=5.0) is None
    job = await db.get_job("web:refunded")
    assert job is not None and (job.status, job.spent) == ("failed", 0)
    assert await db.settle_ready("web:none", now=5.0) is None
