"""ImagineService: accept -> reserve credits -> queue -> backend -> settle, or refund with the reason.

Fronts hand it plain ids and an :class:`ImageRequest` and render the :class:`Job` it returns;
no front sees SQL, quotas or the backend. The work is done by the parts it wires together:
:mod:`gateway.accounts` (quota, grants, bans, stats), :mod:`gateway.queue` (the queue and the
backend), :mod:`gateway.delivery` (fenced settle and refund, the finished-job memory) and
:mod:`gateway.recovery` (this process's lease, recovery, store repairs).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Generic, TypeVar, cast

from gateway.accounts import MAX_GRANT, Accounts, parse_user
from gateway.backend import Backend
from gateway.delivery import Delivery, JobMemory
from gateway.errors import BackendUnavailable, Busy, ImagineError, JobFailed, NotAllowed, elided
from gateway.jobs import Job, JobStatus
from gateway.messages import utc_day
from gateway.metrics import Metrics
from gateway.queue import JobQueue
from gateway.recovery import HEARTBEAT_SECONDS, LEASE_SECONDS, Instance
from gateway.request import MAX_SEED, ImageRequest, parse_prompt
from gateway.settings import Settings
from gateway.turns import Turns
from storage import Database, JobRecord, NewJob, QuotaState, ReservationRefused, StoreUnavailable

# Kept importable from here, where fronts, tests and benches found them before the split.
__all__ = [
    "HEARTBEAT_SECONDS",
    "LEASE_SECONDS",
    "MAX_GRANT",
    "ImagineService",
    "parse_user",
    "replace_duplicate",
]

log = logging.getLogger("imagine.gateway")
T = TypeVar("T")

STORE_DOWN_SUBMIT = "Imagine cannot reach its database right now; nothing was charged. Try again in a minute."


class PartAttribute(Generic[T]):
    """An attribute of the facade that is one of its parts' (fronts and tests read and set it)."""

    def __init__(self, part: str, name: str) -> None:
        self.part, self.name = part, name

    def __get__(self, service: object, owner: type | None = None) -> T:
        return cast(T, getattr(getattr(service, self.part), self.name))

    def __set__(self, service: object, value: T) -> None:
        setattr(getattr(service, self.part), self.name, value)


class ImagineService:
    """The gateway core. Build it with its resources, ``await start()``, then ``submit()`` jobs."""

    #: The backend the workers run jobs on.
    backend: PartAttribute[Backend] = PartAttribute("_queue", "backend")
    #: Bytes of finished jobs' images kept in memory for late readers.
    kept_image_budget: PartAttribute[int] = PartAttribute("_jobs", "image_budget")
    #: How many finished jobs are remembered for duplicate events and status polls.
    _finished_keep: PartAttribute[int] = PartAttribute("_jobs", "keep")
    #: The order queued jobs are taken in (fair turns by user; a benchmark sets arrival order).
    turns: PartAttribute[Turns] = PartAttribute("_queue", "turns")

    def __init__(
        self,
        settings: Settings,
        db: Database,
        backend: Backend,
        *,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.idempotency_secret = b""
        self.accounts = Accounts(settings, db, clock=clock)
        self.budget = self.accounts.budget
        self._instance = Instance(db, self.metrics, clock=clock)
        self._health = self._instance.health
        self._jobs = JobMemory()
        self._delivery = Delivery(settings, self._instance, self._jobs, self.accounts)
        self._queue = JobQueue(settings, backend, self._instance, self._delivery, self.budget)
        self._background: list[asyncio.Task[None]] = []
        self._accepting = False

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> list[JobRecord]:
        """Register this process, refund what dead processes left open, start the workers."""
        await self._instance.register()
        self.idempotency_secret = (await self.db.secret("idempotency")).encode()
        recovered = await self.recover()
        self._queue.start()
        self._background.append(
            asyncio.create_task(self._instance.heartbeat_forever(), name="imagine-heartbeat")
        )
        self._background.append(asyncio.create_task(self._health.repair_forever(), name="imagine-repairs"))
        self._accepting = True
        return recovered

    def private_id(self, *parts: str) -> str:
        """An id derived from ``parts`` that nobody without this store's secret can work out."""
        digest = hmac.new(self.idempotency_secret, "\x00".join(parts).encode(), hashlib.sha256)
        return str(uuid.UUID(bytes=digest.digest()[:16], version=4))

    async def close(self, *, drain_timeout: float = 30.0) -> None:
        """Stop taking work; refund what is queued; let running jobs finish (or refund them)."""
        self._accepting = False
        await self._queue.refund_waiting()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.drain(), drain_timeout)
        tasks = [*self._queue.stop(), *self._background]
        for task in self._background:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._background.clear()
        # Jobs still waiting for a front to confirm delivery are refunded, not lost.
        for job in list(self._jobs.live.values()):
            if job.confirm_delivery and job.status is JobStatus.SUCCEEDED:
                await self.delivery_failed(job.id, "Imagine stopped before the image was sent")
        await self._health.repair_all(attempts=3)
        if self._health.pending:
            # What is still owed is done by the next start's recovery (this process stays open there).
            log.warning("%d store write(s) left to the next start's recovery", self._health.pending)
            return
        await self._instance.unregister()

    async def recover(self) -> list[JobRecord]:
        """Close every open job whose process is gone; see :meth:`gateway.recovery.Recovery.recover`."""
        return await self._instance.recover()

    async def take_recovered(self, prefix: str) -> list[JobRecord]:
        """Jobs of one platform's users (``discord:``) that recovery refunded, for its front to tell."""
        return await self._instance.take_recovered(prefix)

    # --- the parts' state, as the fronts and tests read (and set) it -----------------------

    @property
    def instance_id(self) -> str:
        """This process's id in the store: the owner of the jobs it runs (see :mod:`gateway.recovery`)."""
        return self._instance.id

    @property
    def store_ok(self) -> bool:
        """False while the store fails; ``/healthz`` then says ``degraded``."""
        return self._health.ok

    @property
    def repairs_pending(self) -> int:
        return self._health.pending

    # --- submitting --------------------------------------------------------------------

    def is_admin(self, user_id: str) -> bool:
        return self.accounts.is_admin(user_id)

    async def submit(
        self,
        user_id: str,
        request: ImageRequest | str,
        *,
        job_id: str,
        reply: dict[str, Any] | None = None,
        confirm_delivery: bool = False,
    ) -> Job:
        """Validate, reserve credits and queue; raises an :class:`ImagineError` (nothing charged).

        The same ``job_id`` again returns the first job (``duplicate=True``), charged once.
        With ``confirm_delivery``, the job's credits are settled only by :meth:`delivered`.
        """
        if isinstance(request, str):
            request = parse_prompt(request)
        if not self._accepting:
            raise Busy("Imagine is restarting; try again in a minute.", retry_after=60)
        if (live := self._jobs.get(job_id)) is not None:
            return replace_duplicate(live)
        if request.seed is None:
            request = request.with_seed(random.randrange(0, MAX_SEED - request.num_images))
        try:
            self.backend.check_available()
        except BackendUnavailable as exc:
            self.metrics.rejected("backend_unavailable")
            raise Busy(
                f"The image generator is unavailable right now ({elided(exc.reason, 300)}); "
                "nothing was charged. Try again in a minute.",
                retry_after=exc.retry_after,
            ) from None
        now = self.clock()
        unlimited = self.is_admin(user_id)
        try:
            reservation = await self.db.reserve(
                NewJob(
                    job_id=job_id,
                    user_id=user_id,
                    request=request.to_json(),
                    cost=request.num_images,
                    day=utc_day(now),
                    default_allowance=self.settings.daily_quota,
                    unlimited=unlimited,
                    max_user_open=self.settings.max_queued_per_user,
                    max_open=self.settings.max_queue,
                    instance_id=self.instance_id,
                    reply=reply,
                    now=now,
                    relax=request.relax,
                    relax_daily=self.settings.relax_daily,
                    budget_hold_ms=self.budget.hold_ms(request),
                    budget_ceiling_ms=self.budget.ceiling_ms(),
                )
            )
        except ReservationRefused as refused:
            self.metrics.rejected(refused.reason)
            raise self.accounts.refusal(refused, request, now) from None
        except StoreUnavailable as exc:
            self._health.failed(exc, job_id)
            self.metrics.rejected("store")
            raise Busy(STORE_DOWN_SUBMIT, retry_after=30) from None
        self._health.back()
        if not reservation.created:
            if (live := self._jobs.get(job_id)) is not None:
                return replace_duplicate(live)
            return _job_from_record(reservation.job)
        job = Job(
            id=job_id,
            user_id=user_id,
            request=request,
            reply=reply,
            confirm_delivery=confirm_delivery,
            accepted_at=time.monotonic(),
            total_steps=request.denoise_steps,
            credits_left=None if unlimited or reservation.quota is None else reservation.quota.remaining,
        )
        self._jobs.add(job)
        self._queue.put(job)
        return job

    async def cancel(self, job_id: str, *, by: str, reason: str = "The job was cancelled") -> bool:
        """Cancel a queued or running job of ``by`` (or any job, for an admin); refunds it.

        ``reason`` starts the sentence the user reads, e.g. "Imagine is restarting".
        """
        job = self._jobs.get(job_id)
        if job is None or job.status.finished:
            return False
        if job.user_id != by and not self.is_admin(by):
            raise NotAllowed("Only the person who asked for this image can cancel it.")
        return await self._queue.cancel(job, reason)

    # --- delivery (see gateway.delivery) ------------------------------------------------

    async def claim_delivery(self, job_id: str) -> None:
        """Call just before posting a ``confirm_delivery`` job's images; then :meth:`delivered` or
        :meth:`delivery_failed`. Raises :class:`DeliveryRefused` when the job was refunded meanwhile."""
        await self._delivery.claim_delivery(job_id)

    async def settle_delivery(self, job_id: str) -> None:
        """Charge a ``confirm_delivery`` job before its images are served (the web's first download)."""
        await self._delivery.settle_delivery(job_id)

    async def settle_download(self, job_id: str) -> None:
        """Charge a web job another process runs (or ran) on its first download here; see
        :meth:`gateway.delivery.Delivery.settle_download` for the rule."""
        await self._delivery.settle_download(job_id)

    async def delivered(self, job_id: str) -> None:
        """A front posted the images (or may have: an ambiguous send): charge the credits."""
        await self._delivery.delivered(job_id)

    async def delivery_failed(self, job_id: str, reason: str) -> ImagineError | None:
        """A front could not post the images: refund, and return the sentence to tell the user."""
        return await self._delivery.delivery_failed(job_id, reason)

    async def set_reply(self, job_id: str, reply: dict[str, Any]) -> None:
        """Keep what a front learnt by delivering (Telegram's file ids of the images) with the job,
        so a button pressed later, even after a restart, finds its images on the platform."""
        if (job := self._jobs.get(job_id)) is not None:
            job.reply = reply
        await self.db.set_reply(job_id, reply)

    def release_images(self, job: Job) -> None:
        """A front keeps the images elsewhere now (the web's disk store): free the memory."""
        self._jobs.release_images(job)

    # --- queries -----------------------------------------------------------------------

    def job(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    async def find_job(self, job_id: str) -> Job | None:
        """A live job, or a finished one rebuilt from the database (without its images)."""
        if (job := self._jobs.get(job_id)) is not None:
            return job
        record = await self.db.get_job(job_id)
        return None if record is None else _job_from_record(record)

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    async def waiting_jobs(self) -> int:
        """Jobs waiting for the GPU across every process sharing the store (this process's when it fails)."""
        try:
            return await self.db.count_waiting()
        except StoreUnavailable as exc:
            self._health.failed(exc, None)
            return self.queue_length

    # --- accounts (see gateway.accounts) ------------------------------------------------

    async def quota(self, user_id: str) -> QuotaState:
        return await self.accounts.quota(user_id)

    def quota_text(self, state: QuotaState) -> str:
        return self.accounts.quota_text(state)

    async def set_allowance(self, actor: str | None, user_id: str, allowance: int | None) -> str:
        return await self.accounts.set_allowance(actor, user_id, allowance)

    async def grant(self, actor: str | None, user_id: str, credits: int) -> str:
        return await self.accounts.grant(actor, user_id, credits)

    async def ban(self, actor: str | None, user_id: str, reason: str) -> str:
        return await self.accounts.ban(actor, user_id, reason)

    async def unban(self, actor: str | None, user_id: str) -> str:
        return await self.accounts.unban(actor, user_id)

    async def stats(self, actor: str | None) -> dict[str, Any]:
        return await self.accounts.stats(actor, queue_here=self.queue_length, backend=self.backend.name)

    def stats_text(self, stats: dict[str, Any]) -> str:
        return self.accounts.stats_text(stats)


def replace_duplicate(job: Job) -> Job:
    """A handle on the live job, flagged so its caller knows nothing was charged again.

    The first caller's handle keeps ``duplicate=False``; this one follows the same updates.
    """
    return replace(job, duplicate=True, origin=job, _changed=asyncio.Event())


def _job_from_record(record: JobRecord) -> Job:
    request = ImageRequest.from_json(record.request)
    status = JobStatus(record.status)
    return Job(
        id=record.id,
        user_id=record.user_id,
        request=request,
        reply=record.reply,
        duplicate=True,
        status=status,
        step=request.denoise_steps if status is JobStatus.SUCCEEDED else 0,
        total_steps=request.denoise_steps,
        error=(
            JobFailed(record.error or "The job failed; its credits were refunded.")
            if status is JobStatus.FAILED
            else None
        ),
        ready_count=record.ready_count if record.is_open and record.ready_at is not None else None,
    )
