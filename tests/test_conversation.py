"""The conversation helper every front uses, with no chat platform at all: a real SQLite file and the
fake backend."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import pytest

from gateway import ImagineService, JobStatus, Settings
from gateway.conversation import Conversation
from gateway.errors import AmbiguousDelivery, BackendFailed, DeliveryRefused
from gateway.fake_backend import FakeBackend
from gateway.request import MAX_IMAGES, parse_prompt
from gateway.service import LEASE_SECONDS
from storage import Database


@pytest.fixture
async def world(settings: Settings) -> AsyncIterator[tuple[ImagineService, Conversation, FakeBackend]]:
    db = await Database.open(settings.store)
    backend = FakeBackend(settings)
    service = ImagineService(settings, db, backend)
    await service.start()
    chat = Conversation(service, "telegram")
    yield service, chat, backend
    await chat.close()
    await service.close()
    assert await db.check_ledger() == []
    await db.close()


def ledger_kinds(rows: list[dict[str, object]], job_id: str) -> list[object]:
    return [row["kind"] for row in rows if row["job_id"] == job_id]


async def test_first_time_answers_each_event_once_within_a_bounded_memory(settings: Settings) -> None:
    chat = Conversation(ImagineService.__new__(ImagineService), "discord", remember=3)
    assert [chat.first_time(e) for e in ("a", "a", "b", "c", "d")] == [True, False, True, True, True]
    assert chat.first_time("a")  # forgotten: the oldest of more than three
    assert chat.user(42) == "discord:42"


async def test_follow_throttles_progress_and_never_holds_back_the_end(
    world: tuple[ImagineService, Conversation, FakeBackend],
) -> None:
    service, chat, backend = world
    backend.delay = 0.02
    job = await service.submit("telegram:1", "a fox --steps 20", job_id="telegram:f1", confirm_delivery=True)
    seen, began = [], time.monotonic()
    async for update in chat.follow(job, every=0.15):
        seen.append((time.monotonic() - began, update))
    assert seen[-1][1].status is JobStatus.SUCCEEDED
    assert len(seen) < 10  # 20 steps of 20 ms, at most one update per 150 ms
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(seen[:-1])]
    assert all(gap >= 0.12 for gap in gaps)
    assert seen[-1][0] - seen[-2][0] < 0.15 or len(seen) == 2  # the end came without waiting


async def test_a_delivery_charges_on_success_and_refunds_with_a_sentence_on_failure(
    world: tuple[ImagineService, Conversation, FakeBackend],
) -> None:
    service, chat, _ = world
    done = await service.submit("telegram:1", "a fox", job_id="telegram:ok", confirm_delivery=True)
    await done.wait()
    async with chat.delivery(done, failed="Telegram did not accept the image") as result:
        assert result.images  # the front posts these
    refused = await service.submit("telegram:1", "a hen", job_id="telegram:no", confirm_delivery=True)
    await refused.wait()
    with pytest.raises(
        BackendFailed, match=r"^Telegram did not accept the image; your 1 credit was refunded"
    ):
        async with chat.delivery(refused, failed="Telegram did not accept the image"):
            raise OSError("400 Bad Request")
    maybe = await service.submit("telegram:1", "a cat", job_id="telegram:maybe", confirm_delivery=True)
    await maybe.wait()
    async with chat.delivery(maybe, failed="Telegram did not accept the image"):
        raise AmbiguousDelivery("timed out after the upload")
    rows = await service.db.ledger("telegram:1")
    assert ledger_kinds(rows, "telegram:ok") == ["reserve", "settle"]
    assert ledger_kinds(rows, "telegram:no") == ["reserve", "refund"]
    assert ledger_kinds(rows, "telegram:maybe") == ["reserve", "settle"]


async def test_a_delivery_of_a_job_another_process_refunded_posts_nothing(
    world: tuple[ImagineService, Conversation, FakeBackend], settings: Settings
) -> None:
    service, chat, _ = world
    job = await service.submit("telegram:1", "a fox", job_id="telegram:late", confirm_delivery=True)
    await job.wait()
    rescuer = ImagineService(
        settings, service.db, FakeBackend(settings), clock=lambda: time.time() + LEASE_SECONDS + 1
    )
    assert [r.id for r in await rescuer.recover()] == ["telegram:late"]
    posted = False
    with pytest.raises(DeliveryRefused, match="refunded"):
        async with chat.delivery(job, failed="Telegram did not accept the image"):
            posted = True
    assert not posted


async def test_recovered_jobs_are_pushed_to_the_platforms_front(
    world: tuple[ImagineService, Conversation, FakeBackend],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway import conversation

    monkeypatch.setattr(conversation, "NOTICE_SECONDS", 0.05)
    service, chat, backend = world
    backend.delay = 0.3
    await service.submit("telegram:7", "a fox --steps 1", job_id="telegram:cut")
    await service.submit("discord:7", "a hen --steps 1", job_id="discord:cut")
    rescuer = ImagineService(
        settings, service.db, FakeBackend(settings), clock=lambda: time.time() + LEASE_SECONDS + 1
    )
    await rescuer.recover()
    told: list[str] = []
    chat.on_recovered(lambda record: _append(told, record.id))
    for _ in range(250):
        if told:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    assert told == ["telegram:cut"]  # once, and only this platform's


async def _append(told: list[str], job_id: str) -> None:
    told.append(job_id)


def test_reroll_and_variations_are_requests_with_new_seeds() -> None:
    request = parse_prompt("a lighthouse --seed 42 --n 2 --steps 30")
    assert request.reroll() == request.with_seed(None)
    varied = request.variations()
    assert (varied.seed, varied.num_images, varied.steps, varied.prompt) == (
        None,
        MAX_IMAGES,
        30,
        "a lighthouse",
    )
