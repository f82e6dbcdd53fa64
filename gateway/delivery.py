"""Settle or refund, fenced: images go out only for a job this process still owns and has charged.

Also the memory of finished jobs, kept for late readers (duplicate events, status polls) within a
byte budget for their pixels.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass

from gateway.accounts import Accounts
from gateway.errors import BackendFailed, DeliveryRefused, ImagineError, credits_word
from gateway.jobs import Job
from gateway.recovery import STORE_DOWN, Instance
from gateway.settings import Settings
from storage import JobRecord, StoreUnavailable

#: Images of finished jobs kept in memory for late readers (duplicate events, status polls); past
#: this, the oldest jobs keep their record but not their pixels.
KEPT_IMAGE_BYTES = 64 * 1024 * 1024
REFUNDED_NOT_SERVED = "This image was refunded and is no longer served."
REFUNDED_NOT_SENT = "This image was already refunded and is no longer sent."


class JobMemory:
    """This process's jobs by id: the live ones, and the last finished ones for late readers."""

    def __init__(self) -> None:
        self.live: dict[str, Job] = {}
        self._finished: OrderedDict[str, int] = OrderedDict()  # finished job ids -> image bytes, oldest first
        self.keep = 2000
        self._kept_image_bytes = 0
        self.image_budget = KEPT_IMAGE_BYTES

    def get(self, job_id: str) -> Job | None:
        return self.live.get(job_id)

    def add(self, job: Job) -> None:
        self.live[job.id] = job

    def forget_later(self, job: Job) -> None:
        """Keep the last finished jobs for duplicate events and status polls; drop the oldest.

        A job still waiting for its front to confirm delivery stays: ``delivered()`` needs it.
        Their pixels are kept within ``image_budget`` bytes; past it the oldest jobs keep
        their record only. One drop per finish keeps the cost flat (no sweep that stalls the loop).
        """
        if job.confirm_delivery or job.id in self._finished:
            return  # delivered() or delivery_failed() forgets it later
        size = job.result.image_bytes if job.result is not None else 0
        self._finished[job.id] = size
        self._kept_image_bytes += size
        while len(self._finished) > self.keep:
            old_id, old_size = self._finished.popitem(last=False)
            self._kept_image_bytes -= old_size
            self.live.pop(old_id, None)
        if self._kept_image_bytes > self.image_budget:
            for old_id, old_size in self._finished.items():
                if self._kept_image_bytes <= self.image_budget:
                    break
                if old_size and (old := self.live.get(old_id)) is not None:
                    old.release_images()
                self._finished[old_id] = 0
                self._kept_image_bytes -= old_size

    def release_images(self, job: Job) -> None:
        """A front keeps the images elsewhere now (the web's disk store): free the memory."""
        job.release_images()
        if (size := self._finished.get(job.id)) is not None:
            self._finished[job.id] = 0
            self._kept_image_bytes -= size


@dataclass
class Delivery:
    """Every charge and refund of a job this process runs, each written once and fenced by the store."""

    settings: Settings
    instance: Instance
    jobs: JobMemory
    accounts: Accounts

    def refund_sentence(self, job: Job, what: str) -> str:
        n = job.request.num_images
        if self.accounts.is_admin(job.user_id):
            return f"{what.rstrip('.')}."
        return f"{what.rstrip('.')}; your {credits_word(n)} {'was' if n == 1 else 'were'} refunded."

    async def complete(self, job: Job) -> None:
        """The backend's images are held on ``job``: keep them for their front, or charge them now."""
        assert job.result is not None
        if job.confirm_delivery:
            # The images wait for their front: they leave the global queue bound, and recovery
            # knows how many a cut-off delivery charges.
            try:
                ready = await self.instance.db.mark_ready(
                    job.id, len(job.result.images), instance_id=self.instance.id, now=self.instance.clock()
                )
            except StoreUnavailable as exc:
                self.instance.health.failed(
                    exc, job.id
                )  # only the queue count lags; the delivery fences itself
            else:
                if not ready and await self._closed(job.id):
                    await self.fenced(job)  # refunded by another process while this one made it
                    return
        else:
            # Returned only once charged, in the same step (the fence for fronts that read the result).
            try:
                record = await self.settle(job, job.gpu_seconds)
            except StoreUnavailable as exc:
                self.instance.health.failed(exc, job.id)
                await self.fail(job, BackendFailed(self.refund_sentence(job, STORE_DOWN)))
                return
            if record is None:
                await self.fenced(job)
                return
        job.succeed()
        self.jobs.forget_later(job)

    async def settle(self, job: Job, gpu_seconds: float) -> JobRecord | None:
        """Charge the delivered images, fenced: ``None`` when this process no longer owns the job."""
        assert job.result is not None
        delivered = job.result.image_count
        record = await self.instance.db.settle(
            job.id,
            delivered=delivered,
            seed=job.result.seeds[0] if job.result.seeds else None,
            model=job.result.model,
            gpu_seconds=gpu_seconds,
            now=self.instance.clock(),
            note="safety filter" if job.result.blocked else "",
            instance_id=self.instance.id,
        )
        self.instance.health.back()
        if record is not None:
            if record.refunded:
                job.credit_back(record.refunded)
            self.instance.metrics.job_finished(
                "succeeded",
                spent=record.spent,
                refunded=record.refunded,
                seconds=gpu_seconds,
                cost_per_second=self.settings.gpu_cost_per_second,
            )
        return record

    async def _closed(self, job_id: str) -> bool:
        """Whether the store has closed the job (unknown, when it does not answer: not closed)."""
        with contextlib.suppress(StoreUnavailable):
            record = await self.instance.db.get_job(job_id)
            return record is not None and not record.is_open
        return False

    async def fenced(self, job: Job) -> None:
        """Another process closed this job (its lease lapsed): deliver nothing, say what happened."""
        sentence = "Imagine took too long to make this image and refunded it; please try again."
        with contextlib.suppress(StoreUnavailable):
            record = await self.instance.db.get_job(job.id)
            if record is not None and record.status == "failed" and record.error:
                sentence = record.error
        job.stop_delivery()
        job.release_images()
        job.fail(DeliveryRefused(sentence))
        self.jobs.forget_later(job)

    async def fail(self, job: Job, error: ImagineError, *, gpu_seconds: float | None = None) -> None:
        job.stop_delivery()  # nothing to deliver
        await self.refund(job, error, gpu_seconds=gpu_seconds)
        job.fail(error)
        self.jobs.forget_later(job)

    async def refund(self, job: Job, error: ImagineError, *, gpu_seconds: float | None) -> bool:
        """Refund now, or (when the store fails) as soon as it answers again: never skipped.

        False when the store says the job was closed already (charged by another host's download,
        or refunded by recovery): nothing was given back here.
        """

        async def write() -> JobRecord | None:
            record = await self.instance.db.refund(
                job.id,
                error_kind=error.kind,
                error=error.message,
                now=self.instance.clock(),
                gpu_seconds=gpu_seconds,
            )
            if record is not None:
                self.instance.metrics.job_finished(
                    error.kind, refunded=record.refunded, seconds=gpu_seconds or 0.0
                )
            return record

        try:
            record = await write()
        except StoreUnavailable as exc:
            self.instance.health.failed(exc, job.id)
            self.instance.health.repair_later(job.id, write)
            return True
        self.instance.health.back()
        return record is not None

    async def charged_elsewhere(self, job_id: str) -> bool:
        """Whether the store shows the job charged (a settle this process did not write)."""
        with contextlib.suppress(StoreUnavailable):
            record = await self.instance.db.get_job(job_id)
            return record is not None and record.status == "succeeded"
        return False

    # --- the front's side of a ``confirm_delivery`` job ------------------------------------

    async def claim_delivery(self, job_id: str) -> None:
        """Call just before posting a ``confirm_delivery`` job's images.

        Raises :class:`DeliveryRefused` (its sentence says the credits came back) when the job may
        no longer be delivered: refunded meanwhile, by this process or another. After a claim, end
        with :meth:`delivered`, also after an ambiguous send (a timeout after the platform may have
        taken the image: it is charged, never given away), or with :meth:`delivery_failed` when the
        platform certainly did not take it.
        """
        job = self.jobs.get(job_id)
        if job is None or job.result is None:
            raise DeliveryRefused(REFUNDED_NOT_SENT)
        async with job.delivery_lock:
            if not job.confirm_delivery:
                raise DeliveryRefused(str(job.error) if job.error else REFUNDED_NOT_SENT)
            try:
                claimed = await self.instance.db.claim_delivery(
                    job_id, instance_id=self.instance.id, now=self.instance.clock()
                )
            except StoreUnavailable as exc:
                self.instance.health.failed(exc, job_id)
                error = await self._end_delivery(job, STORE_DOWN)
                raise DeliveryRefused(str(error) if error is not None else REFUNDED_NOT_SENT) from None
            if not claimed:
                await self.fenced(job)
                assert job.error is not None
                raise DeliveryRefused(str(job.error))
            self.instance.health.back()

    async def settle_delivery(self, job_id: str) -> None:
        """Charge a ``confirm_delivery`` job before its images are served (the web's first download).

        Idempotent; raises :class:`DeliveryRefused` when the job was refunded (never serve it then),
        and :class:`StoreUnavailable` when the store did not answer (the job stays open: try again).
        """
        job = self.jobs.get(job_id)
        if job is None or job.result is None:
            raise DeliveryRefused(REFUNDED_NOT_SERVED)
        async with job.delivery_lock:
            if job.delivered:
                return
            if not job.confirm_delivery:
                raise DeliveryRefused(str(job.error) if job.error else REFUNDED_NOT_SERVED)
            try:
                record = await self.settle(job, job.gpu_seconds)
            except StoreUnavailable as exc:
                self.instance.health.failed(exc, job_id)
                raise
            if record is None and not await self.charged_elsewhere(job_id):
                await self.fenced(job)
                assert job.error is not None
                raise DeliveryRefused(str(job.error))
            # Charged, here or by another host's first download (``settle_download``): serve it.
            job.mark_delivered()
            self.jobs.forget_later(job)

    async def settle_download(self, job_id: str) -> None:
        """Charge a web job whose images wait in the shared store, on a host that does not run it.

        The rule (``storage.ledger.settle_ready``): the first download on any host charges the job
        while it is open and ready, whichever process owns it; the ledger is the fence. A job
        refunded first (by recovery, whose owner died before any download claimed it, or by its
        owner's pickup timer) is never charged nor served; one charged first (by its owner's or
        another host's download) is served without a second charge. The owner copes with losing
        that race: its settle or refund finds the job closed and reads it back charged.

        Raises :class:`DeliveryRefused` when the job was refunded, and lets
        :class:`StoreUnavailable` through (nothing was charged: try again).
        """
        try:
            record = await self.instance.db.settle_ready(job_id, now=self.instance.clock())
        except StoreUnavailable as exc:
            self.instance.health.failed(exc, job_id)
            raise
        self.instance.health.back()
        if record is not None:
            self.instance.metrics.job_finished("succeeded", spent=record.spent, refunded=record.refunded)
            return
        current = await self.instance.db.get_job(job_id)
        if current is not None and current.status == "succeeded":
            return  # charged already, by the first download on some host
        refused = current.error if current is not None and current.status == "failed" else None
        raise DeliveryRefused(refused or REFUNDED_NOT_SERVED)

    async def delivered(self, job_id: str) -> None:
        """A front posted the images (or may have: an ambiguous send): charge the credits.

        If the store does not answer, the charge is retried until it is written; the job was
        claimed, so even a crash meanwhile ends in the charge, not a refund.
        """
        job = self.jobs.get(job_id)
        if job is None or job.result is None:
            return
        async with job.delivery_lock:
            if not job.confirm_delivery:
                return
            job.mark_delivered()
            try:
                await self.settle(job, job.gpu_seconds)
            except StoreUnavailable as exc:
                self.instance.health.failed(exc, job_id)
                self.instance.health.repair_later(job.id, lambda: self.settle(job, job.gpu_seconds))
            job.release_images()
            self.jobs.forget_later(job)

    async def delivery_failed(self, job_id: str, reason: str) -> ImagineError | None:
        """A front could not post the images: refund, and return the sentence to tell the user.

        None when there is nothing to refund: the job is no longer waiting for its delivery, or
        another host's download charged it first (then it is marked delivered here).
        """
        job = self.jobs.get(job_id)
        if job is None:
            return None
        async with job.delivery_lock:
            if not job.confirm_delivery:
                return None
            return await self._end_delivery(job, reason)

    async def _end_delivery(self, job: Job, reason: str) -> ImagineError | None:
        job.stop_delivery()
        error = BackendFailed(self.refund_sentence(job, reason))
        refunded = await self.refund(job, error, gpu_seconds=None)
        job.release_images()
        if not refunded and await self.charged_elsewhere(job.id):
            job.mark_delivered()  # another host's first download charged it: nothing to refund
            self.jobs.forget_later(job)
            return None
        self.jobs.forget_later(job)
        return error
