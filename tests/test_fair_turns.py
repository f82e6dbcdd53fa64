"""Fair turns by user: the order of service, unit by unit and through the real service on SQLite."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from gateway import ImagineService, JobStatus, Settings
from gateway.backend import GenerationResult, ProgressCallback
from gateway.fake_backend import FakeBackend
from gateway.jobs import Job
from gateway.request import ImageRequest
from gateway.turns import FairTurns, estimated_cost
from storage import Database


def job(name: str, *, size: int = 512, n: int = 1, steps: int = 25) -> Job:
    """A job called ``user:k`` of user ``user``."""
    user = name.split(":")[0]
    request = ImageRequest("x", width=size, height=size, steps=steps, num_images=n, seed=1)
    return Job(id=name, user_id=user, request=request)


def ids(jobs: list[Job]) -> list[str]:
    return [j.id for j in jobs]


def pop_all(turns: FairTurns) -> list[str]:
    taken = []
    while turns:
        taken.append(turns.pop().id)
    return taken


def reference_drr(arrivals: list[Job], quantum: float) -> list[str]:
    """Deficit round robin as the paper writes it, one round at a time (no skipping)."""
    lanes: dict[str, deque[Job]] = {}
    for j in arrivals:
        lanes.setdefault(j.user_id, deque()).append(j)
    deficit = dict.fromkeys(lanes, 0.0)
    rotation = deque(lanes)
    served: list[str] = []
    while rotation:
        user = rotation.popleft()
        deficit[user] += quantum
        lane = lanes[user]
        while lane and estimated_cost(lane[0].request) <= deficit[user]:
            deficit[user] -= estimated_cost(lane[0].request)
            served.append(lane.popleft().id)
        if lane:
            rotation.append(user)
    return served


# --- the estimate ----------------------------------------------------------------------------


def test_the_estimate_counts_pixels_steps_and_images() -> None:
    assert estimated_cost(job("a:1").request) == 1.0
    assert estimated_cost(job("a:1", size=1024, n=4).request) == 16.0
    assert estimated_cost(job("a:1", steps=50).request) == 2.0
    img2img = ImageRequest("x", strength=0.5, init_image=b"png", seed=1)
    assert estimated_cost(img2img) == 0.48  # 12 of its 25 steps run


# --- the order of service ----------------------------------------------------------------------


def test_a_user_alone_runs_back_to_back_in_arrival_order() -> None:
    turns = FairTurns()
    for k in range(5):
        turns.put(job(f"a:{k}", n=1 + k % 4))
    assert pop_all(turns) == ["a:0", "a:1", "a:2", "a:3", "a:4"]


def test_a_backlog_takes_turns_with_newcomers() -> None:
    turns = FairTurns()
    for k in range(1, 5):
        turns.put(job(f"heavy:{k}"))
    for user in ("b", "c"):
        turns.put(job(f"{user}:1"))
    assert ids(turns.order()) == ["heavy:1", "b:1", "c:1", "heavy:2", "heavy:3", "heavy:4"]
    assert pop_all(turns) == ["heavy:1", "b:1", "c:1", "heavy:2", "heavy:3", "heavy:4"]


def test_big_jobs_get_the_same_gpu_time_per_round_as_small_ones() -> None:
    """Four-image jobs (cost 4) against single images (cost 1): one big job per four small ones."""
    turns = FairTurns()
    for k in range(1, 4):
        turns.put(job(f"big:{k}", n=4))
    for k in range(1, 13):
        turns.put(job(f"small:{k}"))
    order = pop_all(turns)
    assert order[:10] == [
        "small:1", "small:2", "small:3", "big:1",
        "small:4", "small:5", "small:6", "small:7", "big:2",
        "small:8",
    ]  # fmt: skip
    served = {"big": 0.0, "small": 0.0}
    for name in order[:-3]:  # while both wait, neither is ahead by more than one big job
        served[name.split(":")[0]] += 4.0 if name.startswith("big") else 1.0
        assert abs(served["big"] - served["small"]) <= 4.0


def test_the_order_matches_round_by_round_drr_for_any_mix() -> None:
    rng = random.Random(14)
    for quantum in (0.5, 1.0, 3.0):
        for _ in range(50):
            arrivals = [
                job(
                    f"u{rng.randrange(6)}:{k}",
                    size=rng.choice((256, 512, 768, 1024)),
                    n=rng.randint(1, 4),
                    steps=rng.choice((5, 25, 50)),
                )
                for k in range(rng.randint(1, 40))
            ]
            turns = FairTurns(quantum)
            for j in arrivals:
                turns.put(j)
            expected = reference_drr(arrivals, quantum)
            assert ids(turns.order()) == expected
            assert pop_all(turns) == expected


def test_the_predicted_order_is_what_pop_takes_while_jobs_come_and_go() -> None:
    rng = random.Random(2)
    turns = FairTurns()
    waiting: list[Job] = []
    for k in range(400):
        action = rng.random()
        if action < 0.5 or not waiting:
            new = job(f"u{rng.randrange(8)}:{k}", n=rng.randint(1, 4))
            turns.put(new)
            waiting.append(new)
        elif action < 0.6:
            gone = waiting.pop(rng.randrange(len(waiting)))
            assert gone in turns
            turns.remove(gone)
            assert gone not in turns
        else:
            predicted = turns.order()
            assert sorted(ids(predicted)) == sorted(ids(waiting))
            taken = turns.pop()
            assert taken is predicted[0]
            waiting.remove(taken)
        assert len(turns) == len(waiting)


def test_a_user_with_nothing_waiting_leaves_no_state() -> None:
    turns = FairTurns()
    a1, b1, b2 = job("a:1"), job("b:1"), job("b:2")
    for j in (a1, b1, b2):
        turns.put(j)
    turns.remove(b1)
    turns.remove(b2)
    assert list(turns._lanes) == ["a"] and list(turns._rotation) == ["a"]
    assert turns.pop() is a1
    assert not turns._lanes and not turns._rotation and len(turns) == 0
    with pytest.raises(IndexError):
        turns.pop()
    with pytest.raises(ValueError):
        turns.remove(a1)


# --- through the service --------------------------------------------------------------------------


@dataclass
class Start:
    job_id: str
    queued_positions: dict[str, int]  # every waiting job's position as it was told, at this start


class GatedBackend(FakeBackend):
    """One job at a time; nothing runs until ``gate`` opens (``entered`` says the first job waits
    there, taken from the queue); records what starts when."""

    def __init__(self, service_jobs: dict[str, Job]) -> None:
        super().__init__()
        self.capacity_value = 1
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.starts: list[Start] = []
        self.jobs = service_jobs

    async def generate(
        self, job_id: str, request: ImageRequest, progress: ProgressCallback
    ) -> GenerationResult:
        self.entered.set()
        await self.gate.wait()
        queued = {j.id: j.position for j in self.jobs.values() if j.status is JobStatus.QUEUED}
        self.starts.append(Start(job_id, queued))
        return await super().generate(job_id, request, progress)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = await Database.open(settings.db_path)
    yield database
    assert await database.check_ledger() == []
    await database.close()


async def test_light_users_run_within_the_first_turns_and_are_told_true_positions(
    settings: Settings, db: Database
) -> None:
    jobs: dict[str, Job] = {}
    backend = GatedBackend(jobs)
    await backend.start()
    service = ImagineService(settings.with_overrides(max_queued_per_user=10), db, backend)
    await service.start()
    try:
        for k in range(1, 7):
            jobs[f"heavy:{k}"] = await service.submit("cli:heavy", "x", job_id=f"heavy:{k}")
            if k == 1:
                await backend.entered.wait()  # taken at once: the heavy user was alone
        for user in ("l1", "l2", "l3"):
            jobs[f"{user}:1"] = await service.submit(f"cli:{user}", "x", job_id=f"{user}:1")
        told = {name: j.position for name, j in jobs.items() if j.status is JobStatus.QUEUED}
        backend.gate.set()
        await asyncio.gather(*(j.wait() for j in jobs.values()))
    finally:
        await service.close()

    order = [start.job_id for start in backend.starts]
    expected = ["heavy:1", "heavy:2", "l1:1", "l2:1", "l3:1", "heavy:3", "heavy:4", "heavy:5", "heavy:6"]
    assert order == expected
    # heavy:1 was running when the others were queued: each was told how many start before it.
    assert told == {name: order.index(name) for name in order[1:]}
    for started, start in enumerate(backend.starts):
        assert start.queued_positions == {name: order.index(name) - started for name in order[started + 1 :]}


async def test_a_cancelled_job_gives_its_place_and_positions_follow(settings: Settings, db: Database) -> None:
    jobs: dict[str, Job] = {}
    backend = GatedBackend(jobs)
    await backend.start()
    service = ImagineService(settings.with_overrides(max_queued_per_user=10), db, backend)
    await service.start()
    try:
        for name, user in (("a:1", "a"), ("a:2", "a"), ("a:3", "a"), ("b:1", "b"), ("c:1", "c")):
            jobs[name] = await service.submit(f"cli:{user}", "x", job_id=name)
            if name == "a:1":
                await backend.entered.wait()
        assert {name: j.position for name, j in jobs.items()} == {
            "a:1": 0, "a:2": 1, "a:3": 4, "b:1": 2, "c:1": 3,
        }  # fmt: skip
        assert await service.cancel("b:1", by="cli:b")
        assert [jobs[name].position for name in ("a:2", "c:1", "a:3")] == [1, 2, 3]
        assert (await service.quota("cli:b")).remaining == settings.daily_quota
        backend.gate.set()
        for name in ("a:1", "a:2", "a:3", "c:1"):
            await jobs[name].wait()
    finally:
        await service.close()
    assert [start.job_id for start in backend.starts] == ["a:1", "a:2", "c:1", "a:3"]
