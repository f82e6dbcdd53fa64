"""What every front does with a job, written once: a front is an adapter, not a second core.

A front turns its platform's event into an :class:`ImageRequest`, then leans on a
:class:`Conversation` for the rest:

- ``first_time(event_id)``: a redelivered event (Telegram retries an update, Discord re-sends an
  interaction) is answered once; the gateway's idempotent ``submit`` still guards across processes;
- ``follow(job, every=...)``: the job's updates at most one per interval, always the newest state,
  and the final one at once (a front edits its status message with ``status_text``);
- ``async with delivery(job) as result``: the fence before posting, then the charge after; a send
  that certainly failed refunds and raises the sentence to show; :class:`AmbiguousDelivery` (the
  platform may have taken the images) is charged, never refunded;
- ``on_recovered(callback)``: jobs that recovery refunded for this platform's users are pushed to
  the front to tell them, whichever process refunded them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable

from gateway.errors import AmbiguousDelivery, DeliveryRefused
from gateway.jobs import Job, JobResult, JobUpdate
from gateway.request import ImageRequest
from gateway.service import ImagineService
from storage import JobRecord

log = logging.getLogger("imagine.conversation")

#: How often the store is asked for this platform's recovered jobs.
NOTICE_SECONDS = 5.0
SEEN_EVENTS = 10_000


#: Sentence of a Relax button whose request this process no longer keeps (a restart, or too old).
RELAX_GONE = "That request is no longer kept; type it again with --relax."


class RelaxOffers:
    """Requests refused for want of credits, kept a while under a short key, so that a "Relax" button
    (whose id holds 64 bytes at most on Telegram) can ask again in the relax lane. Bounded: the
    oldest go first, and only the user who was refused can take theirs."""

    def __init__(self, keep: int = 1000, seconds: float = 900.0) -> None:
        self._offers: OrderedDict[str, tuple[str, ImageRequest, float]] = OrderedDict()
        self._keep = keep
        self._seconds = seconds

    def keep(self, user_id: str, request: ImageRequest) -> str:
        key = secrets.token_hex(8)
        self._offers[key] = (user_id, request, time.monotonic())
        while len(self._offers) > self._keep:
            self._offers.popitem(last=False)
        return key

    def take(self, user_id: str, key: str) -> ImageRequest | None:
        offer = self._offers.get(key)
        if offer is None or offer[0] != user_id or time.monotonic() - offer[2] > self._seconds:
            return None
        del self._offers[key]
        return offer[1]


class Conversation:
    """One platform's side of the gateway (``platform`` is the user id prefix, e.g. ``telegram``)."""

    def __init__(self, service: ImagineService, platform: str, *, remember: int = SEEN_EVENTS) -> None:
        self.service = service
        self.platform = platform
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remember = remember
        self._notices: asyncio.Task[None] | None = None
        self.relax_offers = RelaxOffers()

    def user(self, platform_id: int | str) -> str:
        return f"{self.platform}:{platform_id}"

    def first_time(self, event_id: str) -> bool:
        """True the first time this process sees ``event_id``; bounded memory (the oldest go first)."""
        if event_id in self._seen:
            return False
        self._seen[event_id] = None
        if len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        return True

    async def follow(self, job: Job, every: float) -> AsyncIterator[JobUpdate]:
        """The job's updates, at most one per ``every`` seconds; the final one comes at once.

        A slow reader sees the newest state, never a backlog; the interval never holds back the end.
        """
        loop = asyncio.get_running_loop()
        last = -every
        finished = asyncio.ensure_future(until_finished(job))
        try:
            async for _ in job.updates():
                wait = last + every - loop.time()
                if wait > 0:
                    await asyncio.wait({finished}, timeout=wait)
                update = job.snapshot()  # after the wait, what is true now
                last = loop.time()
                yield update
                if update.status.finished:
                    return
        finally:
            finished.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await finished

    @contextlib.asynccontextmanager
    async def delivery(self, job: Job, *, failed: str) -> AsyncIterator[JobResult]:
        """Fence, post, charge: ``async with conversation.delivery(job, failed="...") as result:``.

        Entering claims the delivery (raises :class:`DeliveryRefused` with its sentence when the job
        was refunded meanwhile: post nothing). Leaving normally, or with :class:`AmbiguousDelivery`,
        charges the images. Any other error refunds them and raises the refund sentence as an
        :class:`ImagineError` (``failed`` starts it, e.g. "Telegram did not accept the image").
        """
        result = job.result
        if result is None:
            raise DeliveryRefused(str(job.error) if job.error else "This job has no images to send.")
        await self.service.claim_delivery(job.id)
        try:
            yield result
        except AmbiguousDelivery as exc:
            log.warning(
                "the platform may have taken the images of %s (%s): charged, not refunded", job.id, exc
            )
            await self.service.delivered(job.id)
        except Exception as exc:
            log.warning("the images of %s were not delivered: %r", job.id, exc)
            error = await self.service.delivery_failed(job.id, failed)
            raise error or DeliveryRefused(f"{failed}.") from exc
        else:
            await self.service.delivered(job.id)

    def on_recovered(self, notify: Callable[[JobRecord], Awaitable[object]]) -> None:
        """Push this platform's recovered (refunded) jobs to ``notify``, each once, until ``close()``."""
        self._notices = asyncio.create_task(
            self._push_notices(notify), name=f"imagine-{self.platform}-notices"
        )

    async def _push_notices(self, notify: Callable[[JobRecord], Awaitable[object]]) -> None:
        while True:
            try:
                records = await self.service.take_recovered(f"{self.platform}:")
            except Exception:  # the loop outlives any one failure; the next round tries again
                log.exception("could not read the %s recovery notices", self.platform)
                records = []
            for record in records:
                try:
                    await notify(record)
                except Exception:
                    log.exception("could not tell the user of job %s about its refund", record.id)
            await asyncio.sleep(NOTICE_SECONDS)

    async def close(self) -> None:
        if self._notices is not None:
            self._notices.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._notices
            self._notices = None


async def until_finished(job: Job) -> None:
    """Return once the job has finished (a future to race a slow call against)."""
    async for update in job.updates():
        if update.status.finished:
            return
