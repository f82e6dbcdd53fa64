"""Images that wait to be picked up: charged on their first download, refunded when nobody comes.

A front that hands out images by URL (the web page and its API) cannot know that a person saw an
image when it was made: the tab may be closed. So its jobs are submitted with
``confirm_delivery=True``; the finished images move to the :class:`~gateway.images.ImageStore` (a
folder on SQLite, the database on PostgreSQL; never kept in process memory), the first download
settles the job before a byte is served, and an image nobody fetched within the pickup time is
refunded. On PostgreSQL a job made on one host is polled and downloaded on any other: the first
download anywhere charges it, fenced by the ledger (:meth:`ImagineService.settle_download`). Only
:class:`~gateway.service.ImagineService`'s public methods are used.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from gateway.errors import DeliveryRefused
from gateway.images import ImageStore
from gateway.jobs import Job, JobStatus
from gateway.messages import duration
from gateway.request import ImageRequest
from gateway.service import ImagineService
from storage import StoreUnavailable

log = logging.getLogger("imagine.pickup")


@dataclass(frozen=True)
class PickupLimits:
    #: A finished image waits this long for its first download; then it is refunded.
    pickup_seconds: float = 300.0
    #: Images stay downloadable this long after they are made (while the byte budget allows).
    image_ttl_seconds: float = 3600.0
    #: PNG bytes kept for download (on every host together on PostgreSQL); the oldest go first past it.
    image_cache_bytes: int = 1024 * 1024 * 1024
    max_kept_jobs: int = 20_000


@dataclass(eq=False)
class Waiting:
    """A job submitted through :class:`Pickups`, kept while its images may be downloaded."""

    job: Job
    submitted_at: float
    finished_at: float | None = None
    delivered_at: float | None = None
    refund_error: str | None = None  # the image was not fetched in time (or was fenced) and was refunded
    stored: bool = False  # the images are in the image store; the job keeps no pixels in memory

    @property
    def image_bytes(self) -> int:
        result = self.job.result
        return result.image_bytes if result is not None else 0

    @property
    def settled(self) -> bool:
        """Finished, and nothing more to charge or refund: safe to forget."""
        if not self.job.status.finished:
            return False
        return (
            self.job.status is JobStatus.FAILED
            or self.delivered_at is not None
            or self.refund_error is not None
        )


class ImageGone(Exception):
    """The image was made but cannot be served any more (expired, or its job was refunded)."""


class Pickups:
    """The jobs of one front whose images wait for their download, and the rule that charges them."""

    def __init__(self, service: ImagineService, images: ImageStore, limits: PickupLimits) -> None:
        self.service = service
        self.images = images
        self.limits = limits
        self.jobs: OrderedDict[str, Waiting] = OrderedDict()
        self._keeping: set[asyncio.Task[None]] = set()

    async def submit(self, user_id: str, request: ImageRequest, *, job_id: str, reply: dict[str, Any]) -> Job:
        """Queue a job charged on first download; its images are stored as soon as they are made."""
        job = await self.service.submit(user_id, request, job_id=job_id, reply=reply, confirm_delivery=True)
        if not job.duplicate:
            waiting = Waiting(job, time.time())
            self.jobs[job.id] = waiting
            keeping = asyncio.create_task(self._keep_stored(waiting), name=f"keep {job.id}")
            self._keeping.add(keeping)
            keeping.add_done_callback(self._keeping.discard)
        return job

    async def _keep_stored(self, waiting: Waiting) -> None:
        job = waiting.job
        async for update in job.updates():
            if update.status.finished:
                break
        result = job.result
        if job.status is not JobStatus.SUCCEEDED or result is None or not result.images:
            return
        try:
            await self.images.put(job.id, list(result.images))
        except (OSError, StoreUnavailable) as exc:  # the images stay in memory until it is forgotten
            log.error("could not store the images of %s: %s", job.id, exc)
            return
        waiting.stored = True
        self.service.release_images(job)

    async def find(self, job_id: str) -> tuple[Job, Waiting | None] | None:
        """The job, and its pickup record while this process keeps one (not after a restart, nor
        on another host). A job read from the store that is still open but whose images are made
        and stored shows as done: its images wait for their first download, from any host."""
        waiting = self.jobs.get(job_id)
        if waiting is not None:
            return waiting.job, waiting
        job = await self.service.find_job(job_id)
        if job is None:
            return None
        if job.ready_count is not None and not job.status.finished:
            stored = await self.images.count(job.id)
            if stored and stored >= job.ready_count:
                job.succeed()
        return job, None

    async def seen(self, job: Job, waiting: Waiting | None) -> int:
        """Note a finished job's end; the count of its stored images when no record follows it."""
        if waiting is not None:
            if waiting.finished_at is None and job.status.finished:
                waiting.finished_at = time.time()
            return 0
        return await self.images.count(job.id) if job.status is JobStatus.SUCCEEDED else 0

    async def download(self, job: Job, waiting: Waiting | None, index: int) -> bytes | None:
        """Image ``index`` as PNG, its job charged before a byte is served; None if there is no such image.

        Raises :class:`ImageGone` for an image that expired or whose job was refunded, and lets
        :class:`storage.StoreUnavailable` through (nothing was charged).
        """
        if waiting is not None and waiting.refund_error is not None:
            raise ImageGone(waiting.refund_error)
        if waiting is None and job.status is JobStatus.FAILED and job.error is not None:
            raise ImageGone(str(job.error))  # read back refunded (on another host, or before a restart)
        if job.status is not JobStatus.SUCCEEDED:
            return None
        # 1. The bytes first (memory, or the image store): nothing is charged for an image that is gone.
        result = job.result
        count = result.image_count if result is not None else await self.images.count(job.id)
        png = None
        if result is not None and index < len(result.images):
            png = result.images[index]
        elif index < count:
            png = await self.images.get(job.id, index)
        if png is None:
            if index < count or result is None:
                kept = duration(self.limits.image_ttl_seconds)
                raise ImageGone(f"This image is no longer kept; images stay for {kept}.")
            return None
        # 2. Charged: by its owner (fenced: this process still runs the job; or another host's first
        # download charged it already), or, for a job read back from the store that is still open,
        # by the first download on any host (fenced by the ledger). A job read back succeeded was
        # charged already.
        if job.ready_count is not None:
            try:
                await self.service.settle_download(job.id)
            except DeliveryRefused as refused:
                raise ImageGone(str(refused)) from None
        elif self.service.job(job.id) is not None:
            try:
                await self.service.settle_delivery(job.id)
            except DeliveryRefused as refused:
                if waiting is not None:
                    waiting.refund_error = str(refused)
                raise ImageGone(str(refused)) from None
            if waiting is not None and waiting.delivered_at is None:
                waiting.delivered_at = time.time()
        return png

    async def sweep(self) -> None:
        """Refund images nobody fetched in time; forget jobs past the image lifetime."""
        now = time.time()
        for late in self._awaiting_pickup(now):
            reason = f"The image was not downloaded within {duration(self.limits.pickup_seconds)}"
            error = await self.service.delivery_failed(late.job.id, reason)
            if error is not None:
                late.refund_error = str(error)
                await self.images.delete(late.job.id)
            elif late.job.delivered:
                late.delivered_at = now  # another host's download charged it first: nothing to refund
        self._forget_old(now)
        await self.images.sweep()

    def _awaiting_pickup(self, now: float) -> list[Waiting]:
        """Jobs whose images were made but not fetched within the pickup time."""
        late = []
        for waiting in self.jobs.values():
            if waiting.finished_at is None and waiting.job.status.finished:
                waiting.finished_at = now
            if (
                waiting.job.status is JobStatus.SUCCEEDED
                and waiting.delivered_at is None
                and waiting.refund_error is None
                and waiting.finished_at is not None
                and now - waiting.finished_at >= self.limits.pickup_seconds
            ):
                late.append(waiting)
        return late

    def _forget_old(self, now: float) -> None:
        """Drop jobs past the image lifetime, then the oldest settled ones while over the limits."""
        limits = self.limits
        total = 0
        for job_id, waiting in list(self.jobs.items()):
            ended = waiting.finished_at
            if waiting.settled and ended is not None and now - ended >= limits.image_ttl_seconds:
                del self.jobs[job_id]
            else:
                total += waiting.image_bytes
        for job_id, waiting in list(self.jobs.items()):
            if total <= limits.image_cache_bytes and len(self.jobs) <= limits.max_kept_jobs:
                break
            if waiting.settled:
                total -= waiting.image_bytes
                del self.jobs[job_id]

    @property
    def image_bytes(self) -> int:
        """PNG bytes still held in memory by the jobs kept here."""
        return sum(waiting.image_bytes for waiting in self.jobs.values())
