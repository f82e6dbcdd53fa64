"""The gateway core with the fake backend, on each engine (a real SQLite file, a real PostgreSQL
database): reserve, settle, refund, bounds."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway import (
    BackendError,
    Banned,
    Busy,
    ImagineError,
    ImagineService,
    InvalidRequest,
    JobStatus,
    NotAllowed,
    OutOfCredits,
    Settings,
    create_backend,
    parse_user,
)
from gateway.errors import BackendFailed, Cancelled, SafetyBlocked, TimedOut
from gateway.fake_backend import FakeBackend
from storage import Database
from tests.helpers.jobs import new_job
from tests.helpers.png import png_size

NOON = datetime(2026, 11, 26, 12, 0, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def settings(engine_settings: Settings) -> Settings:
    """The contract suite: every test here runs on both engines."""
    return engine_settings


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = await Database.open(settings.store)
    yield database
    assert await database.check_ledger() == []
    assert await database.integrity_check() == "ok"
    await database.close()


async def make_service(settings: Settings, db: Database, clock: Clock) -> ImagineService:
    backend = create_backend(settings)
    assert isinstance(backend, FakeBackend)
    await backend.start()
    service = ImagineService(settings, db, backend, clock=clock)
    await service.start()
    return service


@pytest.fixture
async def service(settings: Settings, db: Database, clock: Clock) -> AsyncIterator[ImagineService]:
    svc = await make_service(settings, db, clock)
    yield svc
    await svc.close()


def fake(service: ImagineService) -> FakeBackend:
    assert isinstance(service.backend, FakeBackend)
    return service.backend


async def test_a_job_is_reserved_generated_and_settled(service: ImagineService) -> None:
    job = await service.submit("cli:alice", "a red fox --seed 7 --size 320x256", job_id="cli:1")
    statuses = [update.status async for update in job.updates()]
    assert statuses[0] is JobStatus.QUEUED and statuses[-1] is JobStatus.SUCCEEDED
    result = await job.wait()
    assert result.seeds == [7] and png_size(result.images[0]) == (320, 256)
    assert result.credits_left == 24
    quota = await service.quota("cli:alice")
    assert (quota.used, quota.reserved, quota.remaining) == (1, 0, 24)
    kinds = [row["kind"] for row in await service.db.ledger("cli:alice")]
    assert kinds == ["reserve", "settle"]


async def test_random_seed_is_chosen_by_the_gateway_and_reported(service: ImagineService) -> None:
    job = await service.submit("cli:alice", "a fox --n 3", job_id="cli:seeds")
    result = await job.wait()
    first = result.seeds[0]
    assert result.seeds == [first, first + 1, first + 2]
    assert len(result.images) == 3


async def test_same_request_and_seed_gives_identical_pixels(service: ImagineService) -> None:
    a = await (await service.submit("cli:alice", "a fox --seed 3", job_id="a")).wait()
    b = await (await service.submit("cli:alice", "a fox --seed 3", job_id="b")).wait()
    c = await (await service.submit("cli:alice", "a fox --seed 4", job_id="c")).wait()
    assert a.images == b.images and a.images != c.images


async def test_bad_input_costs_nothing(service: ImagineService) -> None:
    for text in ["", "a fox --steps 99", "a fox --bogus", "x\x00"]:
        with pytest.raises(InvalidRequest):
            await service.submit("cli:alice", text, job_id=f"bad:{text!r}")
    assert await service.db.ledger("cli:alice") == []
    assert (await service.quota("cli:alice")).remaining == 25


async def test_200_concurrent_requests_with_5_credits_accept_exactly_5(
    settings: Settings, db: Database, clock: Clock
) -> None:
    settings = settings.with_overrides(daily_quota=5, max_queued_per_user=1000, max_queue=1000)
    service = await make_service(settings, db, clock)
    fake(service).delay = 0.001
    try:
        outcomes = await asyncio.gather(
            *(service.submit("cli:bob", "a fox", job_id=f"cli:{i}") for i in range(200)),
            return_exceptions=True,
        )
        accepted = [o for o in outcomes if not isinstance(o, BaseException)]
        refused = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(accepted) == 5
        assert all(isinstance(o, OutOfCredits) for o in refused)
        assert str(refused[0]).startswith("You have used all 5 credits of today's allowance; they reset at")
        await asyncio.gather(*(job.wait() for job in accepted))  # type: ignore[union-attr]
        quota = await service.quota("cli:bob")
        assert (quota.used, quota.remaining, quota.reserved) == (5, 0, 0)
        rows = await db.ledger("cli:bob")
        assert sum(r["daily"] for r in rows) == 5
        assert [r["kind"] for r in rows].count("reserve") == 5
    finally:
        await service.close()


async def test_same_job_id_twice_charges_and_generates_once(service: ImagineService) -> None:
    first = await service.submit("cli:alice", "a fox", job_id="discord:42")
    second = await service.submit("cli:alice", "a fox", job_id="discord:42")
    assert second.duplicate and not first.duplicate and second.id == first.id
    assert (await second.wait()).images == (await first.wait()).images
    third = await service.submit("cli:alice", "a fox", job_id="discord:42")
    assert third.duplicate
    assert len(fake(service).calls) == 1
    assert [r["kind"] for r in await service.db.ledger("cli:alice")] == ["reserve", "settle"]


async def test_duplicate_after_restart_is_not_charged(settings: Settings, db: Database, clock: Clock) -> None:
    first = await make_service(settings, db, clock)
    await (await first.submit("cli:alice", "a fox", job_id="telegram:7")).wait()
    await first.close()
    second = await make_service(settings, db, clock)
    try:
        again = await second.submit("cli:alice", "a fox", job_id="telegram:7")
        assert again.duplicate and again.status is JobStatus.SUCCEEDED
        assert fake(second).calls == []
        assert (await second.quota("cli:alice")).used == 1
    finally:
        await second.close()


@pytest.mark.parametrize(
    ("setup", "error_type", "sentence"),
    [
        (
            lambda b: setattr(b, "fail_with", BackendError("the worker ran out of GPU memory")),
            BackendFailed,
            "The image generator failed: the worker ran out of GPU memory; your 1 credit was refunded.",
        ),
        (
            lambda b: setattr(b, "block", True),
            SafetyBlocked,
            "The safety filter blocked the image; your 1 credit was refunded. Try a different prompt.",
        ),
    ],
)
async def test_failures_are_refunded_with_the_reason(
    service: ImagineService, setup: object, error_type: type[ImagineError], sentence: str
) -> None:
    setup(fake(service))  # type: ignore[operator]
    job = await service.submit("cli:alice", "a fox", job_id="cli:fail")
    with pytest.raises(error_type) as caught:
        await job.wait()
    assert str(caught.value) == sentence and caught.value.refunded
    assert (await service.quota("cli:alice")).remaining == 25
    assert [r["kind"] for r in await service.db.ledger("cli:alice")] == ["reserve", "refund"]


async def test_a_crashing_backend_is_refunded(service: ImagineService) -> None:
    async def boom(*args: object) -> None:
        raise RuntimeError("CUDA error: secret internals")

    fake(service).generate = boom  # type: ignore[method-assign,assignment]
    job = await service.submit("cli:alice", "a fox", job_id="cli:crash")
    with pytest.raises(BackendFailed, match="failed unexpectedly; your 1 credit was refunded") as caught:
        await job.wait()
    assert "secret" not in str(caught.value)
    assert (await service.quota("cli:alice")).remaining == 25


async def test_timeout_refunds(settings: Settings, db: Database, clock: Clock) -> None:
    service = await make_service(settings.with_overrides(backend_timeout=0.2), db, clock)
    fake(service).delay = 0.05
    try:
        job = await service.submit("cli:alice", "a fox --steps 50", job_id="cli:slow")
        with pytest.raises(
            TimedOut, match=r"^The image took longer than 0.2 s; your 1 credit was refunded\.$"
        ):
            await job.wait()
        assert (await service.quota("cli:alice")).remaining == 25
    finally:
        await service.close()


async def test_cancel_queued_and_running_jobs(service: ImagineService) -> None:
    fake(service).delay = 0.05
    fake(service).capacity_value = 1
    job = await service.submit("cli:alice", "a fox --steps 50", job_id="cli:c1")
    async for update in job.updates():
        if update.status is JobStatus.RUNNING:
            break
    with pytest.raises(NotAllowed):
        await service.cancel("cli:c1", by="cli:mallory")
    assert await service.cancel("cli:c1", by="cli:alice")
    with pytest.raises(Cancelled, match="your 1 credit was refunded"):
        await job.wait()
    assert (await service.quota("cli:alice")).remaining == 25


async def test_per_user_and_global_queue_bounds(settings: Settings, db: Database, clock: Clock) -> None:
    settings = settings.with_overrides(max_queued_per_user=2, max_queue=3)
    service = await make_service(settings, db, clock)
    fake(service).delay = 0.02
    try:
        jobs = [await service.submit("cli:a", "x --steps 20", job_id=f"a{i}") for i in range(2)]
        with pytest.raises(Busy, match=r"^You already have 2 images in progress \(the limit is 2\)"):
            await service.submit("cli:a", "x", job_id="a3")
        jobs.append(await service.submit("cli:b", "x --steps 20", job_id="b1"))
        with pytest.raises(Busy, match=r"^The queue is full \(3 jobs\); try again in a minute"):
            await service.submit("cli:c", "x", job_id="c1")
        assert (await service.quota("cli:c")).remaining == 25
        await asyncio.gather(*(j.wait() for j in jobs))
        await (await service.submit("cli:c", "x", job_id="c2")).wait()
    finally:
        await service.close()


async def test_queue_positions_are_reported(settings: Settings, db: Database, clock: Clock) -> None:
    service = await make_service(settings.with_overrides(max_queued_per_user=10), db, clock)
    fake(service).capacity_value = 1
    fake(service).delay = 0.01
    try:
        # one worker is already running: restart workers with capacity 1
        await service.close()
        service = await make_service(settings.with_overrides(max_queued_per_user=10), db, clock)
        fake(service).capacity_value = 1
        fake(service).delay = 0.01
        jobs = [await service.submit("cli:a", "x --steps 5", job_id=f"p{i}") for i in range(3)]
        positions = [u.position async for u in jobs[2].updates() if u.status is JobStatus.QUEUED]
        assert positions[0] >= 1 and positions == sorted(positions, reverse=True)
        await asyncio.gather(*(j.wait() for j in jobs))
    finally:
        await service.close()


async def test_banned_users_are_refused_with_the_reason(service: ImagineService) -> None:
    await service.ban(None, "discord:9", "spamming the channel")
    with pytest.raises(Banned, match=r"^You are banned from Imagine: spamming the channel$"):
        await service.submit("discord:9", "a fox", job_id="x")
    assert await service.unban(None, "discord:9") == "discord:9 is no longer banned."
    await (await service.submit("discord:9", "a fox", job_id="y")).wait()


async def test_admins_are_not_limited_and_others_cannot_administer(
    settings: Settings, db: Database, clock: Clock
) -> None:
    settings = settings.with_overrides(daily_quota=1, admins=frozenset({"discord:1"}))
    service = await make_service(settings, db, clock)
    try:
        for i in range(3):
            result = await (await service.submit("discord:1", "a fox", job_id=f"adm{i}")).wait()
            assert result.credits_left is None
        with pytest.raises(NotAllowed, match=r"^Only Imagine admins can do that; nothing was changed\.$"):
            await service.grant("discord:2", "discord:2", 100)
        assert await db.ledger("discord:2") == []
        assert (
            await service.grant("discord:1", "discord:2", 3) == "Granted 3 credits to discord:2; bonus now 3."
        )
        with pytest.raises(InvalidRequest, match="cannot be banned"):
            await service.ban("discord:1", "discord:1", "oops")
    finally:
        await service.close()


async def test_bonus_credits_are_spent_after_the_allowance_and_refunded_first(
    settings: Settings, db: Database, clock: Clock
) -> None:
    service = await make_service(settings.with_overrides(daily_quota=1), db, clock)
    try:
        await service.grant(None, "cli:a", 2)
        fake(service).fail_with = BackendError("down")
        with pytest.raises(BackendFailed, match="your 3 credits were refunded"):
            await (await service.submit("cli:a", "x --n 3", job_id="j1")).wait()
        quota = await service.quota("cli:a")
        assert (quota.used, quota.bonus) == (0, 2)
        fake(service).fail_with = None
        await (await service.submit("cli:a", "x --n 2", job_id="j2")).wait()
        quota = await service.quota("cli:a")
        assert (quota.used, quota.bonus, quota.remaining) == (1, 1, 1)
        with pytest.raises(OutOfCredits, match=r"^This needs 2 credits and you have 1 left"):
            await service.submit("cli:a", "x --n 2", job_id="j3")
        with pytest.raises(InvalidRequest, match="has 1 bonus credits; 5 cannot be taken back"):
            await service.grant(None, "cli:a", -5)
    finally:
        await service.close()


async def test_daily_allowance_resets_at_midnight_utc(service: ImagineService, clock: Clock) -> None:
    assert await service.set_allowance(None, "cli:a", 1) == "cli:a may now make 1 images a day."
    await (await service.submit("cli:a", "x", job_id="d1")).wait()
    with pytest.raises(OutOfCredits) as caught:
        await service.submit("cli:a", "x", job_id="d2")
    assert "reset at 00:00 UTC (in 12 h 0 min)" in str(caught.value)
    assert caught.value.resets_at == datetime(2026, 11, 27, tzinfo=UTC)  # type: ignore[attr-defined]
    clock.now += 12 * 3600 + 1
    await (await service.submit("cli:a", "x", job_id="d3")).wait()


async def test_confirm_delivery_settles_only_when_delivered(service: ImagineService) -> None:
    job = await service.submit("cli:a", "x", job_id="cd1", confirm_delivery=True)
    await job.wait()
    record = await service.db.get_job("cd1")
    assert record is not None and record.status == "running"
    await service.delivered("cd1")
    record = await service.db.get_job("cd1")
    assert record is not None and (record.status, record.spent) == ("succeeded", 1)
    job = await service.submit("cli:a", "x", job_id="cd2", confirm_delivery=True)
    await job.wait()
    error = await service.delivery_failed("cd2", "Discord refused the upload")
    assert str(error) == "Discord refused the upload; your 1 credit was refunded."
    assert (await service.quota("cli:a")).remaining == 24


async def test_close_refunds_queued_jobs(settings: Settings, db: Database, clock: Clock) -> None:
    service = await make_service(settings.with_overrides(max_queued_per_user=10), db, clock)
    fake(service).delay = 0.01
    jobs = [await service.submit("cli:a", "x --steps 5", job_id=f"q{i}") for i in range(8)]
    await service.close(drain_timeout=5)
    outcomes = await asyncio.gather(*(j.wait() for j in jobs), return_exceptions=True)
    assert any(isinstance(o, Cancelled) for o in outcomes)
    assert await db.open_jobs() == []
    quota = await service.quota("cli:a")
    assert quota.used == sum(1 for o in outcomes if not isinstance(o, BaseException))


async def test_backend_unavailable_refuses_without_charging(service: ImagineService) -> None:
    fake(service).unavailable = "the circuit breaker is open"
    with pytest.raises(
        Busy, match=r"unavailable right now \(the circuit breaker is open\); nothing was charged"
    ):
        await service.submit("cli:a", "x", job_id="u1")
    assert await service.db.ledger("cli:a") == []


async def test_stats_and_quota_text(service: ImagineService) -> None:
    await (await service.submit("cli:a", "x --n 2", job_id="s1")).wait()
    stats = await service.stats(None)
    assert stats["images"] == 2 and stats["jobs"] == {"succeeded": 1}
    text = service.quota_text(await service.quota("cli:a"))
    assert "Used today: 2 of 25" in text and "Left: 23 credits" in text


async def test_spend_is_priced_projected_and_worded(settings: Settings, db: Database, clock: Clock) -> None:
    """Nov 26 12:00 is 25.5 of 30 days gone: the month's spend is projected at that pace."""
    from dataclasses import replace

    from gateway.accounts import Accounts

    priced = replace(settings, gpu_cost_per_second=0.01)
    accounts = Accounts(priced, db, clock=clock)
    job = new_job("p1", user_id="discord:7", cost=2, now=NOON - 7200, max_user_open=2, max_open=10)
    await db.reserve(job)
    await db.settle("p1", delivered=2, seed=1, model="m", gpu_seconds=30.0, now=NOON - 3600)
    await db.reserve(replace(job, job_id="p2", cost=1))
    await db.refund("p2", error_kind="timeout", error="slow", now=NOON - 60, gpu_seconds=10.0)
    stats = await accounts.stats(None)
    assert stats["gpu_cost_per_second"] == 0.01
    assert stats["today"] == {"jobs": 2, "images": 2, "gpu_seconds": 40.0, "cost": 0.4}
    month = stats["month"]
    assert (month["month"], month["cost"], month["elapsed_fraction"]) == ("2026-11", 0.4, 0.85)
    assert month["projected_cost"] == pytest.approx(0.4 / 0.85, rel=1e-5)
    assert stats["gpu_seconds_per_image"] == {"p50": 15.0, "p95": 15.0, "jobs": 1}
    assert stats["top_users"] == [
        {"user": "discord:7", "jobs": 2, "images": 2, "gpu_seconds": 40.0, "cost": 0.4}
    ]
    assert stats["refunds"] == [{"reason": "timeout", "jobs": 1, "credits": 1}]
    # 11:00 and 11:59 fall in the hour before this one, which has none yet
    assert stats["hourly"][-1] == {"start": NOON, "jobs": 0, "images": 0, "gpu_seconds": 0.0, "cost": 0.0}
    assert stats["hourly"][-2] == {
        "start": NOON - 3600,
        "jobs": 2,
        "images": 2,
        "gpu_seconds": 40.0,
        "cost": 0.4,
    }
    text = accounts.stats_text(stats)
    assert text.startswith("Last 24 hours:\n")
    assert "Spend (UTC; GPU seconds x 0.01 a second, in your currency):" in text
    assert "Today: 0.40 (40.0 GPU s, 2 images)" in text
    assert "Projected to month end: 0.47 (this month's spend over the 85% of it gone)" in text
    assert "GPU seconds per image: p50 15.00, p95 15.00 (1 jobs this month)" in text
    assert "Top users this month: discord:7 2 images, 40.0 GPU s" in text
    assert "Refunds this month: timeout 1 jobs, 1 credit" in text
    assert len(text) < 2000, "fits a Discord message"
    unpriced = Accounts(settings, db, clock=clock)
    assert "set IMAGINE_GPU_COST_PER_SECOND" in unpriced.stats_text(await unpriced.stats(None))


def test_parse_user() -> None:
    assert parse_user("123", "discord") == "discord:123"
    assert parse_user("telegram:55", "discord") == "telegram:55"
    with pytest.raises(
        InvalidRequest, match=r"^Name the user by id or as platform:id, e\.g\. discord:123; got 'bob'\.$"
    ):
        parse_user("bob", "discord")


def test_fake_backend_pngs_are_valid(tmp_path: Path) -> None:
    from PIL import Image

    from gateway.fake_backend import solid_png

    image = Image.open(io.BytesIO(solid_png(320, 256, (1, 2, 3))))
    image.load()
    assert image.size == (320, 256)


async def test_old_finished_jobs_leave_memory_but_stay_idempotent(service: ImagineService) -> None:
    service._finished_keep = 3
    for i in range(5):
        await (await service.submit("cli:a", "x", job_id=f"m{i}")).wait()
    waiting = await service.submit("cli:a", "x", job_id="m-wait", confirm_delivery=True)
    await waiting.wait()
    for i in range(5, 9):
        await (await service.submit("cli:a", "x", job_id=f"m{i}")).wait()
    assert service.job("m0") is None and service.job("m8") is not None
    assert service.job("m-wait") is not None  # still waiting for its front to confirm delivery
    again = await service.submit("cli:a", "x", job_id="m0")
    assert again.duplicate and again.status is JobStatus.SUCCEEDED
    await service.delivered("m-wait")
    assert (await service.quota("cli:a")).used == 10
