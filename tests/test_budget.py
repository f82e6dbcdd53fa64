"""The operator's GPU budget and the relax lane, through the real service on both engines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway import ImagineService, InvalidRequest, NotAllowed, OutOfCredits, Settings, create_backend
from gateway.backend import GenerationResult, ProgressCallback
from gateway.errors import BackendError, BackendFailed, BudgetSpent
from gateway.fake_backend import FakeBackend
from gateway.messages import result_caption
from gateway.request import ImageRequest
from storage import Database

DEC_31 = datetime(2026, 12, 31, 23, 0, tzinfo=UTC).timestamp()
SMALL = "a fox --steps 5"  # 0.2 standard images: holds 1 s of GPU time at the first guess of 5 s


class Clock:
    def __init__(self, now: float = DEC_31) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def settings(engine_settings: Settings) -> Settings:
    """Room for 10 small jobs a month: 0.01 at 0.001 a GPU second is 10 GPU seconds."""
    return engine_settings.with_overrides(
        gpu_cost_per_second=0.001,
        monthly_budget=0.01,
        daily_quota=1000,
        max_queued_per_user=1000,
        max_queue=1000,
        admins=frozenset({"cli:admin"}),
    )


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = await Database.open(settings.store)
    yield database
    assert await database.check_ledger() == []
    await database.close()


async def started(
    settings: Settings, db: Database, clock: Clock, *, delay: float = 0.0, backend: FakeBackend | None = None
) -> ImagineService:
    if backend is None:
        made = create_backend(settings)
        assert isinstance(made, FakeBackend)
        backend = made
    backend.delay = delay
    await backend.start()
    service = ImagineService(settings, db, backend, clock=clock)
    await service.start()
    return service


def fake(service: ImagineService) -> FakeBackend:
    assert isinstance(service.backend, FakeBackend)
    return service.backend


async def test_200_concurrent_jobs_against_a_budget_that_fits_10(settings: Settings, db: Database) -> None:
    clock = Clock()
    service = await started(settings, db, clock, delay=0.05)  # nothing finishes while they arrive
    try:
        outcomes = await asyncio.gather(
            *(service.submit(f"cli:u{i}", SMALL, job_id=f"cli:{i}") for i in range(200)),
            return_exceptions=True,
        )
        accepted = [o for o in outcomes if not isinstance(o, BaseException)]
        refused = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(accepted) == 10
        assert all(isinstance(o, BudgetSpent) for o in refused)
        assert str(refused[0]) == (
            "This bot's GPU budget for the month is used up; it resets on 1 January at 00:00 UTC. "
            "Nothing was charged."
        )
        await asyncio.gather(*(job.wait() for job in accepted))  # type: ignore[union-attr]
        state = await db.budget("2026-12", default_ceiling_ms=service.budget.ceiling_ms())
        assert state.ceiling_ms == 10_000 and state.held_ms == 0
        one_estimate = 1000
        assert 0 < state.spent_ms <= state.ceiling_ms + one_estimate
        for i in range(200):  # the refused ones were never charged a credit
            if isinstance(outcomes[i], BaseException):
                assert (await service.quota(f"cli:u{i}")).used == 0
    finally:
        await service.close()


async def test_a_refund_gives_the_budget_back(settings: Settings, db: Database) -> None:
    settings = settings.with_overrides(monthly_budget=0.001)  # one small job at a time
    service = await started(settings, db, Clock())
    try:
        fake(service).fail_with = BackendError("out of memory")
        failed = await service.submit("cli:ann", SMALL, job_id="cli:1")
        with pytest.raises(BackendFailed):
            await failed.wait()
        fake(service).fail_with = None
        state = await db.budget("2026-12", default_ceiling_ms=1000)
        assert (state.held_ms, state.spent_ms) == (0, 0)
        job = await service.submit("cli:ann", SMALL, job_id="cli:2")  # the hold came back
        await job.wait()
    finally:
        await service.close()


async def test_the_month_turns_over_at_midnight_utc_on_the_1st(settings: Settings, db: Database) -> None:
    settings = settings.with_overrides(monthly_budget=0.001)
    clock = Clock(DEC_31 + 3599)  # 23:59:59 on 31 December
    service = await started(settings, db, clock, delay=0.05)
    try:
        running = await service.submit("cli:ann", SMALL, job_id="cli:1")
        with pytest.raises(BudgetSpent, match="resets on 1 January at 00:00 UTC"):
            await service.submit("cli:bob", SMALL, job_id="cli:2")
        clock.now = DEC_31 + 3600  # 00:00:00 on 1 January: a new month, a new budget
        fresh = await service.submit("cli:bob", SMALL, job_id="cli:3")
        await asyncio.gather(running.wait(), fresh.wait())
        december = await db.budget("2026-12", default_ceiling_ms=1000)
        january = await db.budget("2027-01", default_ceiling_ms=1000)
        assert december.spent_ms > 0 and january.spent_ms > 0  # each job paid from its own month
    finally:
        await service.close()


async def test_admins_raise_the_budget_and_nobody_else_can(settings: Settings, db: Database) -> None:
    settings = settings.with_overrides(monthly_budget=0.001)
    service = await started(settings, db, Clock(), delay=0.05)
    try:
        first = await service.submit("cli:ann", SMALL, job_id="cli:1")
        with pytest.raises(BudgetSpent):
            await service.submit("cli:bob", SMALL, job_id="cli:2")
        with pytest.raises(NotAllowed):
            await service.accounts.set_budget("cli:bob", 100.0)
        with pytest.raises(InvalidRequest, match="The budget must be a number from 0"):
            await service.accounts.set_budget("cli:admin", -1.0)
        answer = await service.accounts.set_budget("cli:admin", 0.002)
        assert answer.startswith("GPU budget for 2026-12:") and "a ceiling of 0.00" in answer
        assert "(set by an admin)" in answer and "resets on 1 January at 00:00 UTC" in answer
        second = await service.submit("cli:bob", SMALL, job_id="cli:3")
        await asyncio.gather(first.wait(), second.wait())
        stats = await service.accounts.stats("cli:admin")
        assert stats["budget"]["ceiling"] == pytest.approx(0.002) and stats["budget"]["set_by_admin"]
        assert stats["budget"]["spent"] > 0 and stats["budget"]["held"] == 0
        assert "GPU budget for 2026-12:" in service.accounts.stats_text(stats)
        back = await service.accounts.set_budget("cli:admin", None)
        assert "(set by an admin)" not in back
    finally:
        await service.close()


async def test_the_relax_lane_is_free_capped_and_waits_behind_paid_jobs(
    settings: Settings, db: Database
) -> None:
    settings = settings.with_overrides(daily_quota=1, relax_daily=1, monthly_budget=None)
    gate = asyncio.Event()
    order: list[str] = []

    class OneAtATime(FakeBackend):
        """One job at a time, held until the test opens the gate: the order of service shows."""

        async def generate(
            self, job_id: str, request: ImageRequest, progress: ProgressCallback
        ) -> GenerationResult:
            order.append(job_id)
            await gate.wait()
            return await super().generate(job_id, request, progress)

    backend = OneAtATime(settings)
    backend.capacity_value = 1
    service = await started(settings, db, Clock(), backend=backend)
    try:
        with pytest.raises(InvalidRequest, match="You still have 1 credit today; --relax is for when"):
            await service.submit("cli:ann", "a fox --relax", job_id="cli:0")
        running = await service.submit("cli:zed", "a hen", job_id="cli:1")
        spent = await service.submit("cli:ann", "a fox", job_id="cli:2")  # ann's one credit
        with pytest.raises(OutOfCredits, match="Or add --relax for a free image"):
            await service.submit("cli:ann", "a fox", job_id="cli:3")
        relax = await service.submit("cli:ann", "a fox --relax", job_id="cli:4")
        paid = await service.submit("cli:bob", "a cat", job_id="cli:5")  # arrives later, runs first
        assert relax.position == 3  # ahead of it: the running job, ann's paid job and bob's
        with pytest.raises(OutOfCredits, match="You have used today's 1 relax image"):
            await service.submit("cli:ann", "a fox --relax", job_id="cli:6")
        gate.set()
        results = await asyncio.gather(running.wait(), spent.wait(), relax.wait(), paid.wait())
        assert order == ["cli:1", "cli:2", "cli:5", "cli:4"]
        assert "relax, no credits" in result_caption(results[2])
        quota = await service.quota("cli:ann")
        assert (quota.used, quota.remaining) == (1, 0)  # the relax image cost nothing
    finally:
        await service.close()


async def test_two_hosts_on_one_postgresql_share_the_budget(data_dir: Path, postgres_url: str) -> None:
    """Two services, each with its own connections to one PostgreSQL database (two hosts in one
    process): 200 requests spread over both still fit the month's 10 small jobs, never more."""
    shared = Settings.from_env(
        {"IMAGINE_DB": postgres_url, "IMAGINE_BACKEND": "fake", "IMAGINE_DATA_DIR": str(data_dir)},
        env_file=None,
    ).with_overrides(
        gpu_cost_per_second=0.001,
        monthly_budget=0.01,
        daily_quota=1000,
        max_queued_per_user=1000,
        max_queue=1000,
    )
    hosts = []
    for _ in range(2):
        db = await Database.open(shared.store)
        hosts.append((db, await started(shared, db, Clock(), delay=0.05)))
    try:
        outcomes = await asyncio.gather(
            *(hosts[i % 2][1].submit(f"cli:u{i}", SMALL, job_id=f"cli:{i}") for i in range(200)),
            return_exceptions=True,
        )
        accepted = [o for o in outcomes if not isinstance(o, BaseException)]
        assert len(accepted) == 10
        assert all(isinstance(o, BudgetSpent) for o in outcomes if isinstance(o, BaseException))
        await asyncio.gather(*(job.wait() for job in accepted))  # type: ignore[union-attr]
        state = await hosts[0][0].budget("2026-12", default_ceiling_ms=10_000)
        assert state.held_ms == 0 and 0 < state.spent_ms <= 10_000 + 1000
        assert await hosts[1][0].check_ledger() == []
    finally:
        for db, service in hosts:
            await service.close()
            await db.close()


async def test_without_a_budget_jobs_hold_nothing_and_admins_are_told_it_is_off(
    settings: Settings, db: Database
) -> None:
    service = await started(settings.with_overrides(monthly_budget=None), db, Clock())
    try:
        job = await service.submit("cli:ann", SMALL, job_id="cli:1")
        await job.wait()
        record = await db.get_job("cli:1")
        assert record is not None and (record.budget_hold_ms, record.budget_spent_ms) == (0, 0)
        assert (await service.accounts.show_budget("cli:admin")).startswith("The GPU budget is off")
        with pytest.raises(InvalidRequest, match=r"set IMAGINE_MONTHLY_BUDGET .* Nothing was changed"):
            await service.accounts.set_budget("cli:admin", 5.0)
    finally:
        await service.close()
