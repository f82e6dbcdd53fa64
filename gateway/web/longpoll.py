"""Long polling: ``GET /api/jobs/{id}?wait=S&after=TAG`` answers when the job moves on from ``TAG``."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import cast

from gateway.errors import InvalidRequest, quoted
from gateway.jobs import Job, JobStatus, JobUpdate
from gateway.web.views import tag

#: How often a long poll of a queued job looks at it (instead of waking at each move of the queue).
QUEUED_LOOK_SECONDS = 0.05
#: How often a long poll reads a job another host runs from the store (nothing here tells of its news).
STORE_LOOK_SECONDS = 1.0


def wait_seconds(raw: str | None, limit: float) -> float:
    """The ``wait`` parameter, or :class:`InvalidRequest` with the sentence."""
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 <= value <= limit:
        raise InvalidRequest(f"wait takes a number of seconds from 0 to {limit:g}; got {quoted(raw)}.")
    return value


async def wait_for_change(
    job: Job,
    after: str,
    seconds: float,
    stopping: asyncio.Event,
    *,
    pace: float = 0.0,
    queued_pace: float = 0.0,
) -> None:
    """Return when the job's tag differs from ``after``, after ``seconds``, or when stopping.

    News is answered no sooner than ``pace`` seconds after the request came (``queued_pace`` while
    the job waits in the queue), unless the job finished: each waiting client costs at most one
    request per pace however fast its steps and queue position move. A queued job is looked at
    every ``QUEUED_LOOK_SECONDS`` rather than followed: a long queue moves every waiting job at
    each start, and following them all would cost a wake-up per waiting client per job started.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + seconds
    while job.status is JobStatus.QUEUED:
        now = loop.time()
        if stopping.is_set() or now >= deadline:
            return
        if tag(job) != after and now - started >= queued_pace:
            return
        await asyncio.sleep(min(QUEUED_LOOK_SECONDS, deadline - now))
    if job.status.finished:
        return

    async def changed() -> None:
        async with contextlib.aclosing(cast(AsyncGenerator[JobUpdate, None], job.updates())) as updates:
            async for update in updates:
                if update.status.finished:
                    return
                if tag(job) != after:
                    break
            else:
                return
            early = pace - (loop.time() - started)
            if early > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(early):
                        async for later in updates:
                            if later.status.finished:
                                return

    waiters = [asyncio.ensure_future(changed()), asyncio.ensure_future(stopping.wait())]
    try:
        await asyncio.wait(waiters, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


async def wait_in_store(
    job: Job,
    after: str,
    seconds: float,
    stopping: asyncio.Event,
    reread: Callable[[], Awaitable[Job | None]],
    *,
    look: float = STORE_LOOK_SECONDS,
) -> Job:
    """As :func:`wait_for_change` for a job this process does not run (another host does): read it
    again every ``look`` seconds; the job as last read."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not stopping.is_set():
        left = deadline - loop.time()
        if job.status.finished or tag(job) != after or left <= 0:
            break
        await asyncio.sleep(min(look, left))
        job = await reread() or job
    return job
