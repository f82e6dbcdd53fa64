"""Hardening of the gateway core: store failures, fencing between processes, bounds, memory.

Real SQLite files throughout; a second OS process holds the write lock where a test needs a store
that does not answer. A second process's lease running out is shown by giving the second service
a clock that is past the lease (waiting 30 real seconds would only make the test slow).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway import Busy, ImagineService, Settings
from gateway.errors import BackendFailed, DeliveryRefused
from gateway.fake_backend import FakeBackend
from gateway.service import LEASE_SECONDS
from storage import Database, NewJob
from tests.helpers.jobs import new_job
from tests.helpers.sqlite_lock import write_lock


def make_settings(data_dir: Path, **env: str) -> Settings:
    return Settings.from_env(
        {
            "IMAGINE_DB": str(data_dir / "imagine.sqlite3"),
            "IMAGINE_BACKEND": "fake",
            "IMAGINE_DAILY_QUOTA": "25",
            **env,
        },
        env_file=None,
    )


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def past_the_lease(settings: Settings, db: Database) -> ImagineService:
    """A second process whose clock is past every other process's lease."""
    return ImagineService(settings, db, FakeBackend(settings), clock=lambda: time.time() + LEASE_SECONDS + 1)


async def started(settings: Settings, db: Database, **kw: object) -> tuple[ImagineService, FakeBackend]:
    backend = FakeBackend(settings)
    for name, value in kw.items():
        setattr(backend, name, value)
    service = ImagineService(settings, db, backend)
    await service.start()
    return service, backend


async def test_a_store_that_stops_answering_refunds_its_jobs_and_the_loop_goes_on(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 1: a settle and a mark-running that raise (lock held past the busy timeout) used to kill
    the job loop for good; now each job is refunded once the store answers and the next job runs."""
    settings = make_settings(data_dir)
    db = await Database.open(settings.store, busy_timeout_ms=200)
    service, backend = await started(settings, db, capacity_value=1, delay=0.15)
    try:
        first = await service.submit("cli:ann", "a fox --steps 4", job_id="j1")
        second = await service.submit("cli:ann", "a hen --steps 4", job_id="j2")
        await until(lambda: first.step >= 1)
        with write_lock(settings.db_path), caplog.at_level(logging.WARNING, "imagine.gateway"):
            with pytest.raises(
                BackendFailed, match="could not reach its database; your 1 credit was refunded"
            ):
                await first.wait()  # its settle failed: never delivered free
            with pytest.raises(BackendFailed, match="could not reach its database"):
                await second.wait()  # its mark-running failed
            assert not service.store_ok
            with pytest.raises(Busy, match="cannot reach its database right now; nothing was charged"):
                await service.submit("cli:bob", "a cat", job_id="j3")
        await until(lambda: service.repairs_pending == 0)
        third = await service.submit("cli:ann", "a cat --steps 2", job_id="j4")
        backend.delay = 0
        result = await asyncio.wait_for(third.wait(), 10)
        assert result.images and service.store_ok
        logged = " ".join(record.getMessage() for record in caplog.records)
        assert "j1" in logged and "j2" in logged
        kinds = [(row["job_id"], row["kind"]) for row in await db.ledger("cli:ann")]
        assert kinds == [
            ("j1", "reserve"),
            ("j2", "reserve"),
            ("j1", "refund"),
            ("j2", "refund"),
            ("j4", "reserve"),
            ("j4", "settle"),
        ]
        assert await db.ledger("cli:bob") == []
        assert await db.check_ledger() == []
    finally:
        await service.close()
        await db.close()


async def test_two_processes_that_are_both_pid_1_on_one_host_keep_their_jobs(data_dir: Path) -> None:
    """Item 3: host name + PID used to tell processes apart; two containers with host networking
    are both PID 1 there, and each refunded the other's live jobs at start."""
    settings = make_settings(data_dir)
    db = await Database.open(settings.store)
    now = time.time()
    twin = "the-other-container"
    await db.register_instance(
        twin,
        host=socket.gethostname(),
        pid=os.getpid(),
        now=now,
        ident=f"another-boot/pid:[4026532999]/{os.getpid()}/4242",
    )
    await db.reserve(_new_job("twin:1", "cli:zoe", twin, now))
    service, _ = await started(settings, db)
    later = past_the_lease(settings, db)
    try:
        assert await service.recover() == []
        record = await db.get_job("twin:1")
        assert record is not None and record.is_open
        # Once its lease lapses (no heartbeat for LEASE_SECONDS), any live process takes it over.
        recovered = await later.recover()
        assert [job.id for job in recovered] == ["twin:1"]
        assert await db.check_ledger() == []
    finally:
        await service.close()
        await db.close()


async def test_a_job_another_process_refunded_is_never_delivered(data_dir: Path) -> None:
    """Item 3: a process that stalls past its lease comes back and must deliver nothing that the
    other process refunded meanwhile: no claim, no settle, no charge (the settle changes no row)."""
    settings = make_settings(data_dir, IMAGINE_MAX_QUEUED_PER_USER="5")
    db = await Database.open(settings.store)
    stalled, backend = await started(settings, db)
    rescuer = past_the_lease(settings, db)
    try:
        chat = await stalled.submit("discord:1", "a fox", job_id="chat", confirm_delivery=True)
        web = await stalled.submit("web:1.2.3.4", "a hen", job_id="web", confirm_delivery=True)
        await chat.wait()
        await web.wait()
        backend.delay = 0.2
        cli = await stalled.submit("cli:ann", "a cat --steps 3", job_id="cli")
        await until(lambda: cli.step >= 1)
        refunded = await rescuer.recover()  # the stalled process's heartbeat is past the lease
        assert sorted(job.id for job in refunded) == ["chat", "cli", "web"]
        with pytest.raises(DeliveryRefused, match="Imagine restarted while making your image"):
            await stalled.claim_delivery("chat")
        with pytest.raises(DeliveryRefused):
            await stalled.settle_delivery("web")
        await stalled.delivered("chat")  # a front that skipped the claim still charges nothing
        with pytest.raises(DeliveryRefused):
            await cli.wait()  # generated after the refund: not returned, not charged
        for job_id in ("chat", "web", "cli"):
            assert [row["kind"] for row in await db.ledger() if row["job_id"] == job_id] == [
                "reserve",
                "refund",
            ]
        assert await db.check_ledger() == []
    finally:
        await stalled.close()
        await db.close()


async def test_images_made_after_another_process_refunded_the_job_fail_it(data_dir: Path) -> None:
    """A job whose front confirms delivery (web, chat) and that was still generating when another
    process refunded it used to finish as ``succeeded`` here (its mark-ready, fenced, changed no
    row): the web front showed a finished job whose images answered 410. Now it fails with the
    sentence of the refund."""
    settings = make_settings(data_dir)
    db = await Database.open(settings.store)
    stalled, _ = await started(settings, db, delay=0.2)
    rescuer = past_the_lease(settings, db)
    try:
        web = await stalled.submit("web:1.2.3.4", "a hen --steps 3", job_id="web", confirm_delivery=True)
        await until(lambda: web.step >= 1)
        assert [job.id for job in await rescuer.recover()] == ["web"]
        with pytest.raises(DeliveryRefused, match="Imagine restarted while making your image"):
            await web.wait()
        assert web.status.value == "failed"
        assert [row["kind"] for row in await db.ledger("web:1.2.3.4")] == ["reserve", "refund"]
        assert await db.check_ledger() == []
    finally:
        await stalled.close()
        await db.close()


async def test_a_claimed_delivery_is_charged_by_recovery_never_refunded(data_dir: Path) -> None:
    """After a claim the images may be out: a process that dies mid-send is charged for them once."""
    settings = make_settings(data_dir)
    db = await Database.open(settings.store)
    sender, _ = await started(settings, db)
    rescuer = past_the_lease(settings, db)
    try:
        job = await sender.submit("telegram:7", "a fox --n 2", job_id="tg", confirm_delivery=True)
        await job.wait()
        await sender.claim_delivery("tg")
        assert await rescuer.recover() == []  # charged, so nobody is told of a refund
        record = await db.get_job("tg")
        assert record is not None and (record.status, record.spent, record.refunded) == ("succeeded", 2, 0)
        await sender.delivered("tg")  # the send finished after all: not charged twice
        kinds = [row["kind"] for row in await db.ledger("telegram:7")]
        assert kinds == ["reserve", "settle"]
        assert await db.check_ledger() == []
    finally:
        await sender.close()
        await db.close()


async def test_finished_images_waiting_for_download_leave_the_global_queue_bound(data_dir: Path) -> None:
    """Item 4: never-downloaded web jobs filled the global queue, so honest users were refused."""
    settings = make_settings(data_dir, IMAGINE_MAX_QUEUE="2", IMAGINE_MAX_QUEUED_PER_USER="2")
    db = await Database.open(settings.store)
    service, _ = await started(settings, db)
    try:
        for i in range(2):
            job = await service.submit("web:6.6.6.6", "spam", job_id=f"spam{i}", confirm_delivery=True)
            await job.wait()  # made; never downloaded
        assert await service.waiting_jobs() == 0
        honest = await service.submit("web:1.1.1.1", "a lighthouse", job_id="honest", confirm_delivery=True)
        await honest.wait()
        with pytest.raises(Busy, match="You already have 2 images in progress"):
            await service.submit("web:6.6.6.6", "more spam", job_id="spam2", confirm_delivery=True)
    finally:
        await service.close()
        await db.close()


async def test_the_queue_length_counts_every_process_sharing_the_store(data_dir: Path) -> None:
    """Item 4: /metrics showed only this process's in-memory queue (0 while another process was full)."""
    settings = make_settings(data_dir)
    db = await Database.open(settings.store)
    busy, backend = await started(settings, db, delay=10)
    idle, _ = await started(settings, db)
    try:
        for i in range(3):
            await busy.submit(f"cli:u{i}", "a fox", job_id=f"q{i}")
        assert idle.queue_length == 0
        assert await idle.waiting_jobs() == 3
    finally:
        backend.delay = 0
        await busy.close(drain_timeout=0)
        await idle.close()
        await db.close()


async def test_finished_pixels_in_memory_stay_within_a_byte_budget(data_dir: Path) -> None:
    """Item 6: the service kept the images of its last 2,000 jobs (gigabytes with large images)."""
    settings = make_settings(data_dir, IMAGINE_FAKE_IMAGE_BYTES="100000", IMAGINE_MAX_QUEUED_PER_USER="50")
    db = await Database.open(settings.store)
    service, _ = await started(settings, db)
    service.kept_image_budget = 350_000
    try:
        jobs, results = [], []
        for i in range(12):  # each read as it finishes, as `imagine generate` reads it
            jobs.append(await service.submit("cli:ann", f"a fox {i}", job_id=f"m{i}"))
            results.append(await jobs[-1].wait())
        assert all(len(result.images[0]) >= 100_000 for result in results)
        kept = sum(len(image) for job in jobs if job.result for image in job.result.images)
        assert kept <= 350_000
        assert jobs[0].result is not None and jobs[0].result.images == []
        assert jobs[0].result.image_count == 1  # the record stays
        assert jobs[-1].result is not None and jobs[-1].result.images
        # A chat front's images go as soon as they are posted.
        chat = await service.submit("discord:9", "a hen", job_id="chat9", confirm_delivery=True)
        await chat.wait()
        await service.claim_delivery("chat9")
        await service.delivered("chat9")
        assert chat.result is not None and chat.result.images == [] and chat.result.image_count == 1
    finally:
        await service.close()
        await db.close()


async def test_recovery_notices_reach_the_front_of_any_process_once(data_dir: Path) -> None:
    """Item 11: notices lived in the memory of whichever process refunded a job (so a Discord user
    whose job the Telegram process recovered was never told), and web:/cli: ones piled up forever."""
    settings = make_settings(data_dir)
    db = await Database.open(settings.store)
    now = time.time()
    await db.register_instance("crashed", host="elsewhere", pid=1, now=now - 600, ident=None)
    for job_id, user in (("d1", "discord:1"), ("t1", "telegram:2"), ("w1", "web:3.3.3.3")):
        await db.reserve(_new_job(job_id, user, "crashed", now - 600))
    telegram_process, _ = await started(settings, db)  # its start refunds all three
    discord_process, _ = await started(settings, db)
    try:
        told = await discord_process.take_recovered("discord:")
        assert [job.id for job in told] == ["d1"]
        assert told[0].error and "refunded" in told[0].error
        assert await telegram_process.take_recovered("discord:") == []  # once
        assert [job.id for job in await telegram_process.take_recovered("telegram:")] == ["t1"]
        assert not hasattr(telegram_process, "_recovered")  # nothing piles up in memory
    finally:
        await telegram_process.close()
        await discord_process.close()
        await db.close()


def _new_job(job_id: str, user_id: str, instance_id: str, now: float) -> NewJob:
    from datetime import UTC, datetime

    day = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
    return new_job(job_id, user_id=user_id, day=day, now=now, prompt="a fox", instance_id=instance_id)
