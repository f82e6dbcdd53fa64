"""ImagineService: accept -> reserve credits -> queue -> backend -> settle, or refund with the reason.

Fronts hand it plain ids and an :class:`ImageRequest` and render the :class:`Job` it returns;
no front sees SQL, quotas or the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import random
import socket
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway.backend import Backend, GenerationResult
from gateway.errors import (
    BackendError,
    BackendFailed,
    BackendUnavailable,
    Banned,
    Busy,
    Cancelled,
    DeliveryRefused,
    ImagineError,
    InvalidRequest,
    JobFailed,
    NotAllowed,
    OutOfCredits,
    SafetyBlocked,
    TimedOut,
    credits_word,
    elided,
    quoted,
    shown,
)
from gateway.jobs import Job, JobResult, JobStatus
from gateway.messages import RESTARTING, next_reset, until_reset, utc_day
from gateway.metrics import Metrics
from gateway.request import MAX_SEED, ImageRequest, parse_prompt
from gateway.settings import Settings
from storage import (
    Database,
    InstanceRecord,
    JobRecord,
    NewJob,
    QuotaState,
    RefusedReason,
    ReservationRefused,
    StoreError,
    StoreUnavailable,
)

log = logging.getLogger("imagine.gateway")

HEARTBEAT_SECONDS = 10.0
#: A process whose heartbeat is older than this has lost its jobs: any live process refunds them.
LEASE_SECONDS = 30.0
INSTANCE_DEAD_AFTER = LEASE_SECONDS
#: How soon a store operation that failed (a lock past the busy timeout, a full disk) is tried again.
REPAIR_SECONDS = (0.2, 5.0)
#: Images of finished jobs kept in memory for late readers (duplicate events, status polls); past
#: this, the oldest jobs keep their record but not their pixels.
KEPT_IMAGE_BYTES = 64 * 1024 * 1024
MAX_GRANT = 1_000_000
STORE_DOWN = "Imagine could not reach its database"
STORE_DOWN_SUBMIT = "Imagine cannot reach its database right now; nothing was charged. Try again in a minute."
#: Longer than any platform's ids (a Discord snowflake is 20 digits, an IPv6 address 45 characters), and
#: short enough that every admin reply naming the user fits a chat message.
MAX_USER_ID_CHARS = 64


class ImagineService:
    """The gateway core. Build it with its resources, ``await start()``, then ``submit()`` jobs."""

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
        self.backend = backend
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.instance_id = uuid.uuid4().hex
        self._live: dict[str, Job] = {}
        self._pending: deque[Job] = deque()
        self._ready: asyncio.Queue[None] = asyncio.Queue()  # one token per queued job
        self._workers: list[asyncio.Task[None]] = []
        self._running: dict[str, asyncio.Task[GenerationResult]] = {}
        self._active: dict[str, Job] = {}  # taken from the queue, not finished
        self._background: list[asyncio.Task[None]] = []
        self._accepting = False
        self._finished: OrderedDict[str, int] = OrderedDict()  # finished job ids -> image bytes, oldest first
        self._finished_keep = 2000
        self._kept_image_bytes = 0
        self.kept_image_budget = KEPT_IMAGE_BYTES
        #: Store writes that failed and must still happen (a refund, a settle), by job id.
        self._repairs: dict[str, Callable[[], Awaitable[object]]] = {}
        self._repair_wake = asyncio.Event()
        #: False while the store fails; ``/healthz`` then says ``degraded``.
        self.store_ok = True
        self.idempotency_secret = b""

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> list[JobRecord]:
        """Register this process, refund what dead processes left open, start the workers."""
        await self.db.register_instance(
            self.instance_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            now=self.clock(),
            ident=process_ident(os.getpid()),
        )
        self.idempotency_secret = (await self.db.secret("idempotency")).encode()
        recovered = await self.recover()
        for _ in range(max(1, self.backend.capacity)):
            self._workers.append(asyncio.create_task(self._worker(), name="imagine-worker"))
        self._background.append(asyncio.create_task(self._heartbeat(), name="imagine-heartbeat"))
        self._background.append(asyncio.create_task(self._repair_forever(), name="imagine-repairs"))
        self._accepting = True
        return recovered

    def private_id(self, *parts: str) -> str:
        """An id derived from ``parts`` that nobody without this store's secret can work out."""
        digest = hmac.new(self.idempotency_secret, "\x00".join(parts).encode(), hashlib.sha256)
        return str(uuid.UUID(bytes=digest.digest()[:16], version=4))

    async def close(self, *, drain_timeout: float = 30.0) -> None:
        """Stop taking work; refund what is queued; let running jobs finish (or refund them)."""
        self._accepting = False
        while self._pending:
            job = self._pending.popleft()
            await self._fail(job, Cancelled(self._refund_sentence(job, RESTARTING)))
        if self._active:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drain_running(), drain_timeout)
        for running in self._running.values():
            running.cancel()
        for task in [*self._workers, *self._background]:
            task.cancel()
        await asyncio.gather(*self._workers, *self._background, return_exceptions=True)
        self._workers.clear()
        self._background.clear()
        # Jobs still waiting for a front to confirm delivery are refunded, not lost.
        for job in list(self._live.values()):
            if job.confirm_delivery and job.status is JobStatus.SUCCEEDED:
                await self.delivery_failed(job.id, "Imagine stopped before the image was sent")
        await self._repair_all(attempts=3)
        if self._repairs:
            # What is still owed is done by the next start's recovery (this process stays open there).
            log.warning("%d store write(s) left to the next start's recovery", len(self._repairs))
            return
        with contextlib.suppress(Exception):
            await self.db.stop_instance(self.instance_id, self.clock())

    async def _drain_running(self) -> None:
        async def finished(job: Job) -> None:
            async for _ in job.updates():
                pass

        await asyncio.gather(*(finished(job) for job in list(self._active.values())))

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self.db.heartbeat(self.instance_id, self.clock())
                self._store_back()
                await self.recover()
            except StoreUnavailable as exc:
                self._store_failed(exc, None)
            except Exception:
                log.exception("heartbeat failed")

    async def recover(self) -> list[JobRecord]:
        """Close every open job whose process is gone (killed, crashed, stalled past its lease).

        Jobs whose delivery had begun are charged (the images may be out: never given away free);
        the others are refunded, and a front of any process tells their users (:meth:`take_recovered`).
        """
        now = self.clock()
        dead = {
            inst.id for inst in await self.db.instances() if inst.id != self.instance_id and _gone(inst, now)
        }
        orphans = [
            job for job in await self.db.open_jobs() if job.instance_id is None or job.instance_id in dead
        ]
        refunded = []
        for record in orphans:
            if record.delivering_at is not None:
                done = await self.db.settle(
                    record.id,
                    delivered=record.ready_count if record.ready_count is not None else record.cost,
                    seed=None,
                    model=None,
                    gpu_seconds=record.gpu_seconds,
                    now=now,
                    note="delivery cut off",
                    instance_id=record.instance_id,
                )
                if done is not None:
                    self.metrics.job_finished("succeeded", spent=done.spent, refunded=done.refunded)
                continue
            message = (
                f"Imagine restarted while making your image; your {credits_word(record.cost)} "
                f"{'was' if record.cost == 1 else 'were'} refunded. Please try again."
            )
            done = await self.db.refund(record.id, error_kind="interrupted", error=message, now=now)
            if done is not None:
                refunded.append(done)
                self.metrics.job_finished("interrupted", refunded=done.refunded)
        if refunded:
            log.info("refunded %d job(s) left open by a stopped process", len(refunded))
        return refunded

    async def take_recovered(self, prefix: str) -> list[JobRecord]:
        """Jobs of one platform's users (``discord:``) that recovery refunded, for its front to tell.

        Kept in the store, not in memory: whichever process refunded a job, the front that can
        reach its user takes the notice, once.
        """
        try:
            return await self.db.take_notices(prefix, self.clock())
        except StoreUnavailable as exc:
            self._store_failed(exc, None)
            return []

    # --- store failures ------------------------------------------------------------------

    def _store_failed(self, exc: BaseException, job_id: str | None) -> None:
        if self.store_ok:
            log.error("the store failed%s: %s", f" on job {job_id}" if job_id else "", exc)
        elif job_id is not None:
            log.warning("the store failed on job %s: %s", job_id, exc)
        self.store_ok = False

    def _store_back(self) -> None:
        if not self.store_ok:
            log.warning("the store answers again")
        self.store_ok = True

    def _repair_later(self, job_id: str, write: Callable[[], Awaitable[object]]) -> None:
        """Keep trying a store write that must happen (a refund, a settle) until it does."""
        self._repairs[job_id] = write
        self._repair_wake.set()

    async def _repair_all(self, attempts: int = 1) -> None:
        for _ in range(attempts):
            for job_id, write in list(self._repairs.items()):
                try:
                    await write()
                except StoreUnavailable as exc:
                    self._store_failed(exc, job_id)
                    break
                except Exception:
                    log.exception("store repair of job %s failed", job_id)
                    self._repairs.pop(job_id, None)
                else:
                    self._repairs.pop(job_id, None)
                    self._store_back()
            if not self._repairs:
                return

    async def _repair_forever(self) -> None:
        delay = REPAIR_SECONDS[0]
        while True:
            if not self._repairs:
                self._repair_wake.clear()
                await self._repair_wake.wait()
                delay = REPAIR_SECONDS[0]
            await asyncio.sleep(delay)
            await self._repair_all()
            delay = min(delay * 2, REPAIR_SECONDS[1])

    @property
    def repairs_pending(self) -> int:
        return len(self._repairs)

    # --- submitting --------------------------------------------------------------------

    def is_admin(self, user_id: str) -> bool:
        return user_id in self.settings.admins

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
        if (live := self._live.get(job_id)) is not None:
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
                )
            )
        except ReservationRefused as refused:
            self.metrics.rejected(refused.reason)
            raise self._refusal(refused, request, now) from None
        except StoreUnavailable as exc:
            self._store_failed(exc, job_id)
            self.metrics.rejected("store")
            raise Busy(STORE_DOWN_SUBMIT, retry_after=30) from None
        self._store_back()
        if not reservation.created:
            if (live := self._live.get(job_id)) is not None:
                return replace_duplicate(live)
            return _job_from_record(reservation.job)
        job = Job(
            id=job_id,
            user_id=user_id,
            request=request,
            reply=reply,
            confirm_delivery=confirm_delivery,
            accepted_at=time.monotonic(),
            total_steps=request.steps,
            credits_left=None if unlimited or reservation.quota is None else reservation.quota.remaining,
        )
        self._live[job_id] = job
        self._pending.append(job)
        job.move_to(len(self._pending) - 1 + len(self._active))
        self.metrics.accepted(len(self._pending))
        self._ready.put_nowait(None)
        return job

    def _refusal(self, refused: ReservationRefused, request: ImageRequest, now: float) -> ImagineError:
        if refused.reason == RefusedReason.BANNED:
            return Banned(f"You are banned from Imagine: {refused.ban_reason}", reason=refused.ban_reason)
        if refused.reason == RefusedReason.USER_QUEUE:
            return Busy(
                f"You already have {refused.open_jobs} images in progress (the limit is "
                f"{self.settings.max_queued_per_user}); wait for one to finish. Nothing was charged.",
                retry_after=15,
            )
        if refused.reason == RefusedReason.QUEUE:
            return Busy(
                f"The queue is full ({refused.open_jobs} jobs); try again in a minute. Nothing was charged.",
                retry_after=60,
            )
        quota = refused.quota
        assert quota is not None
        need = credits_word(request.num_images)
        if quota.remaining == 0:
            text = (
                f"You have used all {credits_word(quota.allowance)} of today's allowance"
                f"{' and your bonus' if quota.bonus == 0 and quota.override else ''}; "
                f"they reset at {until_reset(now)}."
            )
        else:
            text = (
                f"This needs {need} and you have {quota.remaining} left; "
                f"ask for fewer images (--n) or wait for the reset at {until_reset(now)}."
            )
        return OutOfCredits(text, resets_at=next_reset(now))

    # --- running -----------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            await self._ready.get()
            if not self._pending:
                continue  # its job was cancelled while queued
            job = self._pending.popleft()
            for i, waiting in enumerate(self._pending):
                waiting.move_to(i + len(self._active) + 1)
            self._active[job.id] = job
            try:
                await self._run(job)
            except asyncio.CancelledError:
                # The service is closing: whatever this job was doing, it is refunded.
                if not job.status.finished:
                    error = Cancelled(self._refund_sentence(job, RESTARTING))
                    await asyncio.shield(self._fail(job, error))
                raise
            except Exception:
                # One job's failure never stops the loop: refund it (now or by repair) and go on.
                log.exception("job %s failed inside Imagine", job.id)
                if not job.status.finished:
                    sentence = self._refund_sentence(job, "Something went wrong inside Imagine")
                    await self._fail(job, BackendFailed(sentence))
            finally:
                self._active.pop(job.id, None)

    async def _run(self, job: Job) -> None:
        started = time.monotonic()
        try:
            running = await self.db.mark_running(job.id, self.clock())
        except StoreUnavailable as exc:
            self._store_failed(exc, job.id)
            await self._fail(job, BackendFailed(self._refund_sentence(job, STORE_DOWN)))
            return
        if not running:  # another process recovered (refunded) it meanwhile
            await self._fenced(job)
            return
        job.start(started)
        task = asyncio.create_task(self.backend.generate(job.id, job.request, job.advance))
        self._running[job.id] = task
        error: ImagineError | None = None
        result: GenerationResult | None = None
        try:
            result = await asyncio.wait_for(task, self.settings.backend_timeout)
        except TimeoutError:
            error = TimedOut(
                self._refund_sentence(job, f"The image took longer than {self.settings.backend_timeout:g} s")
            )
        except asyncio.CancelledError:
            if not job.cancel_requested:
                raise
            error = Cancelled(self._refund_sentence(job, job.cancel_reason))
        except BackendError as exc:
            self.metrics.backend_error(type(exc).__name__)
            error = BackendFailed(
                self._refund_sentence(
                    job, f"The image generator failed: {elided(exc.reason, 300).rstrip('.')}"
                )
            )
        except Exception:
            log.exception("backend crashed on job %s", job.id)
            self.metrics.backend_error("crash")
            error = BackendFailed(self._refund_sentence(job, "The image generator failed unexpectedly"))
        finally:
            self._running.pop(job.id, None)
        seconds = time.monotonic() - started
        if error is not None:
            await self._fail(job, error, gpu_seconds=seconds)
            return
        assert result is not None
        gpu_seconds = result.timings.get("predict_time", seconds)
        if not result.images:
            await self._fail(
                job,
                SafetyBlocked(
                    self._refund_sentence(job, "The safety filter blocked the image")
                    + " Try a different prompt."
                ),
                gpu_seconds=gpu_seconds,
            )
            return
        notes = []
        if result.prompt_truncated:
            notes.append("The prompt was longer than the model reads (77 tokens); the end was cut.")
        if result.blocked:
            notes.append(
                f"The safety filter blocked {result.blocked} of the images; "
                f"{credits_word(result.blocked)} refunded."
            )
        job.hold(
            JobResult(
                job_id=job.id,
                request=job.request,
                images=result.images,
                seeds=result.seeds,
                model=result.model,
                elapsed=time.monotonic() - job.accepted_at,
                generation_seconds=gpu_seconds,
                credits_left=job.credits_left,
                notes=tuple(notes),
                blocked=result.blocked,
            ),
            gpu_seconds,
        )
        if job.confirm_delivery:
            # The images wait for their front: they leave the global queue bound, and recovery
            # knows how many a cut-off delivery charges.
            try:
                await self.db.mark_ready(
                    job.id, len(result.images), instance_id=self.instance_id, now=self.clock()
                )
            except StoreUnavailable as exc:
                self._store_failed(exc, job.id)  # only the queue count lags; the delivery fences itself
        else:
            # Returned only once charged, in the same step (the fence for fronts that read the result).
            try:
                record = await self._settle(job, gpu_seconds)
            except StoreUnavailable as exc:
                self._store_failed(exc, job.id)
                await self._fail(job, BackendFailed(self._refund_sentence(job, STORE_DOWN)))
                return
            if record is None:
                await self._fenced(job)
                return
        job.succeed()
        self._forget_later(job)

    async def _settle(self, job: Job, gpu_seconds: float) -> JobRecord | None:
        """Charge the delivered images, fenced: ``None`` when this process no longer owns the job."""
        assert job.result is not None
        delivered = job.result.image_count
        record = await self.db.settle(
            job.id,
            delivered=delivered,
            seed=job.result.seeds[0] if job.result.seeds else None,
            model=job.result.model,
            gpu_seconds=gpu_seconds,
            now=self.clock(),
            note="safety filter" if job.result.blocked else "",
            instance_id=self.instance_id,
        )
        self._store_back()
        if record is not None:
            if record.refunded:
                job.credit_back(record.refunded)
            self.metrics.job_finished(
                "succeeded",
                spent=record.spent,
                refunded=record.refunded,
                seconds=gpu_seconds,
                cost_per_second=self.settings.gpu_cost_per_second,
            )
        return record

    async def _fenced(self, job: Job) -> None:
        """Another process closed this job (its lease lapsed): deliver nothing, say what happened."""
        sentence = "Imagine took too long to make this image and refunded it; please try again."
        with contextlib.suppress(StoreUnavailable):
            record = await self.db.get_job(job.id)
            if record is not None and record.status == "failed" and record.error:
                sentence = record.error
        job.stop_delivery()
        job.release_images()
        job.fail(DeliveryRefused(sentence))
        self._forget_later(job)

    async def claim_delivery(self, job_id: str) -> None:
        """Call just before posting a ``confirm_delivery`` job's images.

        Raises :class:`DeliveryRefused` (its sentence says the credits came back) when the job may
        no longer be delivered: refunded meanwhile, by this process or another. After a claim, end
        with :meth:`delivered`, also after an ambiguous send (a timeout after the platform may have
        taken the image: it is charged, never given away), or with :meth:`delivery_failed` when the
        platform certainly did not take it.
        """
        job = self._live.get(job_id)
        if job is None or job.result is None:
            raise DeliveryRefused("This image was already refunded and is no longer sent.")
        async with job.delivery_lock:
            if not job.confirm_delivery:
                raise DeliveryRefused(
                    str(job.error) if job.error else "This image was already refunded and is no longer sent."
                )
            try:
                claimed = await self.db.claim_delivery(job_id, instance_id=self.instance_id, now=self.clock())
            except StoreUnavailable as exc:
                self._store_failed(exc, job_id)
                error = await self._end_delivery(job, STORE_DOWN)
                raise DeliveryRefused(str(error)) from None
            if not claimed:
                await self._fenced(job)
                assert job.error is not None
                raise DeliveryRefused(str(job.error))
            self._store_back()
            job.claim_delivery()

    async def settle_delivery(self, job_id: str) -> None:
        """Charge a ``confirm_delivery`` job before its images are served (the web's first download).

        Idempotent; raises :class:`DeliveryRefused` when the job was refunded (never serve it then),
        and :class:`StoreUnavailable` when the store did not answer (the job stays open: try again).
        """
        job = self._live.get(job_id)
        if job is None or job.result is None:
            raise DeliveryRefused("This image was refunded and is no longer served.")
        async with job.delivery_lock:
            if job.delivered:
                return
            if not job.confirm_delivery:
                raise DeliveryRefused(
                    str(job.error) if job.error else "This image was refunded and is no longer served."
                )
            try:
                record = await self._settle(job, job.gpu_seconds)
            except StoreUnavailable as exc:
                self._store_failed(exc, job_id)
                raise
            if record is None:
                await self._fenced(job)
                assert job.error is not None
                raise DeliveryRefused(str(job.error))
            job.mark_delivered()
            self._forget_later(job)

    async def delivered(self, job_id: str) -> None:
        """A front posted the images (or may have: an ambiguous send): charge the credits.

        If the store does not answer, the charge is retried until it is written; the job was
        claimed, so even a crash meanwhile ends in the charge, not a refund.
        """
        job = self._live.get(job_id)
        if job is None or job.result is None:
            return
        async with job.delivery_lock:
            if not job.confirm_delivery:
                return
            job.mark_delivered()
            try:
                await self._settle(job, job.gpu_seconds)
            except StoreUnavailable as exc:
                self._store_failed(exc, job_id)
                self._repair_later(job.id, lambda: self._settle(job, job.gpu_seconds))
            job.release_images()
            self._forget_later(job)

    async def delivery_failed(self, job_id: str, reason: str) -> ImagineError | None:
        """A front could not post the images: refund, and return the sentence to tell the user."""
        job = self._live.get(job_id)
        if job is None:
            return None
        async with job.delivery_lock:
            if not job.confirm_delivery:
                return None
            return await self._end_delivery(job, reason)

    async def _end_delivery(self, job: Job, reason: str) -> ImagineError:
        job.stop_delivery()
        error = BackendFailed(self._refund_sentence(job, reason))
        await self._refund(job, error, gpu_seconds=None)
        job.release_images()
        self._forget_later(job)
        return error

    async def cancel(self, job_id: str, *, by: str, reason: str = "The job was cancelled") -> bool:
        """Cancel a queued or running job of ``by`` (or any job, for an admin); refunds it.

        ``reason`` starts the sentence the user reads, e.g. "Imagine is restarting".
        """
        job = self._live.get(job_id)
        if job is None or job.status.finished:
            return False
        if job.user_id != by and not self.is_admin(by):
            raise NotAllowed("Only the person who asked for this image can cancel it.")
        if job in self._pending:
            self._pending.remove(job)
            await self._fail(job, Cancelled(self._refund_sentence(job, reason)))
            return True
        task = self._running.get(job_id)
        if task is not None:
            job.request_cancel(reason)
            task.cancel()
            return True
        return False

    def _refund_sentence(self, job: Job, what: str) -> str:
        n = job.request.num_images
        if self.is_admin(job.user_id):
            return f"{what.rstrip('.')}."
        return f"{what.rstrip('.')}; your {credits_word(n)} {'was' if n == 1 else 'were'} refunded."

    async def _fail(self, job: Job, error: ImagineError, *, gpu_seconds: float | None = None) -> None:
        job.stop_delivery()  # nothing to deliver
        await self._refund(job, error, gpu_seconds=gpu_seconds)
        job.fail(error)
        self._forget_later(job)

    async def _refund(self, job: Job, error: ImagineError, *, gpu_seconds: float | None) -> None:
        """Refund now, or (when the store fails) as soon as it answers again: never skipped."""

        async def write() -> None:
            record = await self.db.refund(
                job.id, error_kind=error.kind, error=error.message, now=self.clock(), gpu_seconds=gpu_seconds
            )
            if record is not None:
                self.metrics.job_finished(error.kind, refunded=record.refunded, seconds=gpu_seconds or 0.0)

        try:
            await write()
        except StoreUnavailable as exc:
            self._store_failed(exc, job.id)
            self._repair_later(job.id, write)
        else:
            self._store_back()

    def _forget_later(self, job: Job) -> None:
        """Keep the last finished jobs for duplicate events and status polls; drop the oldest.

        A job still waiting for its front to confirm delivery stays: ``delivered()`` needs it.
        Their pixels are kept within ``kept_image_budget`` bytes; past it the oldest jobs keep
        their record only. One drop per finish keeps the cost flat (no sweep that stalls the loop).
        """
        if job.confirm_delivery or job.id in self._finished:
            return  # delivered() or delivery_failed() forgets it later
        size = job.result.image_bytes if job.result is not None else 0
        self._finished[job.id] = size
        self._kept_image_bytes += size
        while len(self._finished) > self._finished_keep:
            old_id, old_size = self._finished.popitem(last=False)
            self._kept_image_bytes -= old_size
            self._live.pop(old_id, None)
        if self._kept_image_bytes > self.kept_image_budget:
            for old_id, old_size in self._finished.items():
                if self._kept_image_bytes <= self.kept_image_budget:
                    break
                if old_size and (old := self._live.get(old_id)) is not None:
                    old.release_images()
                self._finished[old_id] = 0
                self._kept_image_bytes -= old_size

    def release_images(self, job: Job) -> None:
        """A front keeps the images elsewhere now (the web's disk store): free the memory."""
        job.release_images()
        if (size := self._finished.get(job.id)) is not None:
            self._finished[job.id] = 0
            self._kept_image_bytes -= size

    # --- queries -----------------------------------------------------------------------

    def job(self, job_id: str) -> Job | None:
        return self._live.get(job_id)

    async def find_job(self, job_id: str) -> Job | None:
        """A live job, or a finished one rebuilt from the database (without its images)."""
        if (job := self._live.get(job_id)) is not None:
            return job
        record = await self.db.get_job(job_id)
        return None if record is None else _job_from_record(record)

    @property
    def queue_length(self) -> int:
        return len(self._pending) + len(self._active)

    async def waiting_jobs(self) -> int:
        """Jobs waiting for the GPU across every process sharing the store (this process's when it fails)."""
        try:
            return await self.db.count_waiting()
        except StoreUnavailable as exc:
            self._store_failed(exc, None)
            return self.queue_length

    async def quota(self, user_id: str) -> QuotaState:
        state = await self.db.quota(
            user_id, day=utc_day(self.clock()), default_allowance=self.settings.daily_quota
        )
        return replace(state, unlimited=self.is_admin(user_id))

    def quota_text(self, state: QuotaState) -> str:
        now = self.clock()
        if state.unlimited:
            return "You are an admin: your images are not limited."
        parts = [
            f"Used today: {state.used} of {state.allowance}"
            + (" (set by an admin)" if state.override else ""),
            f"Bonus credits: {state.bonus}",
            f"Reserved by images in progress: {state.reserved}",
            f"Left: {credits_word(state.remaining)}",
            f"Daily credits reset at {until_reset(now)}.",
        ]
        return "\n".join(parts)

    # --- admin -------------------------------------------------------------------------

    def _check_admin(self, actor: str | None) -> None:
        if actor is not None and not self.is_admin(actor):
            raise NotAllowed("Only Imagine admins can do that; nothing was changed.")

    async def set_allowance(self, actor: str | None, user_id: str, allowance: int | None) -> str:
        self._check_admin(actor)
        if allowance is not None and not 0 <= allowance <= MAX_GRANT:
            raise InvalidRequest(
                f"The daily allowance must be from 0 to {MAX_GRANT}; got {shown(allowance)}."
            )
        await self.db.set_allowance(user_id, allowance, now=self.clock())
        if allowance is None:
            return f"{user_id} is back on the default allowance of {self.settings.daily_quota} a day."
        return f"{user_id} may now make {allowance} images a day."

    async def grant(self, actor: str | None, user_id: str, credits: int) -> str:
        self._check_admin(actor)
        if credits == 0 or not -MAX_GRANT <= credits <= MAX_GRANT:
            raise InvalidRequest(
                f"Grant a whole number of credits from 1 to {MAX_GRANT} (negative takes back); "
                f"got {shown(credits)}."
            )
        try:
            bonus = await self.db.grant(user_id, credits, by=actor or "operator", now=self.clock())
        except StoreError as exc:
            raise InvalidRequest(str(exc)) from None
        verb = "Granted" if credits > 0 else "Took back"
        direction = "to" if credits > 0 else "from"
        return f"{verb} {credits_word(abs(credits))} {direction} {user_id}; bonus now {bonus}."

    async def ban(self, actor: str | None, user_id: str, reason: str) -> str:
        self._check_admin(actor)
        reason = reason.strip() or "no reason given"
        if len(reason) > 500:
            raise InvalidRequest(f"The ban reason is {len(reason)} characters long; the limit is 500.")
        if self.is_admin(user_id):
            raise InvalidRequest(f"{user_id} is an admin (IMAGINE_ADMINS) and cannot be banned.")
        await self.db.ban(user_id, reason, by=actor or "operator", now=self.clock())
        return f"{user_id} is banned: {reason}"

    async def unban(self, actor: str | None, user_id: str) -> str:
        self._check_admin(actor)
        if await self.db.unban(user_id):
            return f"{user_id} is no longer banned."
        return f"{user_id} was not banned."

    async def stats(self, actor: str | None) -> dict[str, Any]:
        self._check_admin(actor)
        now = self.clock()
        stats = await self.db.stats(day=utc_day(now), since=now - 86400)
        stats["queue_here"] = self.queue_length
        stats["backend"] = self.backend.name
        return stats

    def stats_text(self, stats: dict[str, Any]) -> str:
        jobs = stats["jobs"]
        by_status = ", ".join(f"{k} {v}" for k, v in sorted(jobs.items())) or "none"
        return "\n".join(
            [
                "Last 24 hours:",
                f"Jobs: {sum(jobs.values())} ({by_status})",
                f"Images delivered: {stats['images']}; credits refunded: {stats['credits_refunded']}",
                f"GPU seconds: {stats['gpu_seconds']:.1f}",
                f"Active users today: {stats['active_users_today']} of {stats['users']}",
                f"Banned: {stats['banned']}",
                f"Open jobs: {stats['open_jobs']}; backend: {stats['backend']}",
            ]
        )


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
        step=request.steps if status is JobStatus.SUCCEEDED else 0,
        total_steps=request.steps,
        error=(
            JobFailed(record.error or "The job failed; its credits were refunded.")
            if status is JobStatus.FAILED
            else None
        ),
    )


def process_ident(pid: int) -> str | None:
    """``boot id/pid namespace/pid/start time`` of a process, or None where /proc cannot tell.

    Host name and PID are not enough: two containers with host networking are both PID 1 on
    the same host name. The kernel's boot id and the PID namespace tell them apart, and the start
    time tells a reused PID from the process that registered.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink(f"/proc/{pid}/ns/pid")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    start = stat.rpartition(")")[2].split()[19]  # field 22, counted after the command name
    return f"{boot}/{namespace}/{pid}/{start}"


def _gone(inst: InstanceRecord, now: float) -> bool:
    """Whether a registered process has lost its jobs: stopped, past its lease, or provably dead."""
    if inst.stopped_at is not None or now - inst.heartbeat_at > LEASE_SECONDS:
        return True
    if inst.ident is None:
        return False
    mine = process_ident(os.getpid())
    if mine is None or mine.rsplit("/", 2)[0] != inst.ident.rsplit("/", 2)[0]:
        return False  # another kernel or PID namespace: only its heartbeat can tell
    return process_ident(inst.pid) != inst.ident  # same namespace: the PID is gone or reused


def parse_user(text: str, platform: str) -> str:
    """``123`` or ``discord:123`` -> ``discord:123``; anything else is one clear sentence."""
    text = text.strip()
    if len(text) > MAX_USER_ID_CHARS:
        raise InvalidRequest(f"A user id is at most {MAX_USER_ID_CHARS} characters long; got {quoted(text)}.")
    if ":" in text:
        plat, _, ident = text.partition(":")
        if plat and ident and plat.isalnum() and all(ch.isprintable() and not ch.isspace() for ch in ident):
            return f"{plat.lower()}:{ident}"
    elif text.isdigit():
        return f"{platform}:{text}"
    raise InvalidRequest(f"Name the user by id or as platform:id, e.g. {platform}:123; got {quoted(text)}.")
