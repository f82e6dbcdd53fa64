"""A job as the fronts see it: its status, queue position, progress, result or error."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.errors import ImagineError
from gateway.request import ImageRequest


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED)


@dataclass(frozen=True)
class JobResult:
    job_id: str
    request: ImageRequest
    images: list[bytes]
    seeds: list[int]
    model: str
    elapsed: float  # seconds from acceptance to result
    generation_seconds: float
    credits_left: int | None  # None: unlimited (admins)
    notes: tuple[str, ...] = ()  # e.g. "the prompt was cut at 77 tokens"
    blocked: int = 0
    released: int = 0  # images delivered and no longer held in memory

    @property
    def image_count(self) -> int:
        return len(self.images) or self.released

    @property
    def image_bytes(self) -> int:
        return sum(len(image) for image in self.images)


@dataclass(frozen=True)
class JobUpdate:
    """One snapshot of a job; fronts render it."""

    job_id: str
    status: JobStatus
    position: int  # jobs ahead in this process's queue while queued; 0 otherwise
    progress: float  # 0..1
    step: int
    total_steps: int
    result: JobResult | None = None
    error: ImagineError | None = None
    relax: bool = False  # a relax-lane job: it waits until no paid job does


@dataclass(eq=False)
class Job:
    """A live job. ``updates()`` yields snapshots until it finishes; ``wait()`` gives the result."""

    id: str
    user_id: str
    request: ImageRequest
    reply: dict[str, Any] | None = None
    duplicate: bool = False  # the id was seen before: nothing was charged or generated again
    confirm_delivery: bool = False
    status: JobStatus = JobStatus.QUEUED
    position: int = 0
    step: int = 0
    total_steps: int = 0
    result: JobResult | None = None
    error: ImagineError | None = None
    accepted_at: float = 0.0
    started_at: float | None = None
    credits_left: int | None = None  # after this job's reservation; None for admins
    gpu_seconds: float = 0.0
    cancel_requested: bool = False
    cancel_reason: str = "The job was cancelled"
    delivered: bool = False  # charged for its images
    #: Read back from the store: still open, its images made (this many) and waiting for their first
    #: download; None otherwise (and for a live job, whose own state says it).
    ready_count: int | None = None
    delivery_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    origin: Job | None = field(default=None, repr=False)  # a duplicate's handle follows its original
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _version: int = 0

    @property
    def progress(self) -> float:
        if self.status is JobStatus.SUCCEEDED:
            return 1.0
        return self.step / self.total_steps if self.total_steps else 0.0

    def snapshot(self) -> JobUpdate:
        return JobUpdate(
            self.id,
            self.status,
            self.position if self.status is JobStatus.QUEUED else 0,
            self.progress,
            self.step,
            self.total_steps,
            self.result,
            self.error,
            self.request.relax,
        )

    # --- state changes: each tells every reader of ``updates()`` -----------------------------

    def move_to(self, position: int) -> None:
        """The number of jobs that run before this one changed: one started or left (it moved up), or
        a newcomer's turn comes first (it moved back)."""
        self.position = position
        self._notify()

    def start(self, started_at: float) -> None:
        self.status = JobStatus.RUNNING
        self.started_at = started_at
        self.position = 0
        self._notify()

    def advance(self, step: int, total_steps: int) -> None:
        self.step, self.total_steps = step, total_steps
        self._notify()

    def hold(self, result: JobResult, gpu_seconds: float) -> None:
        """The backend's images, held unannounced until they are charged or held for their front."""
        self.result = result
        self.gpu_seconds = gpu_seconds

    def succeed(self) -> None:
        """The held images may be shown: charged, or waiting for their front's delivery."""
        self.status = JobStatus.SUCCEEDED
        self.step = self.total_steps
        self._notify()

    def fail(self, error: ImagineError) -> None:
        self.error = error
        self.status = JobStatus.FAILED
        self._notify()

    def request_cancel(self, reason: str) -> None:
        """Cancel while running: the reason starts the sentence the user reads."""
        self.cancel_requested = True
        self.cancel_reason = reason

    # --- delivery: whether the images may still be handed out, and whether they were charged ---

    def stop_delivery(self) -> None:
        """Nothing is handed out any more: the job is being refunded (or was charged already)."""
        self.confirm_delivery = False

    def mark_delivered(self) -> None:
        """Charged for its images: a later confirmation is a no-op."""
        self.confirm_delivery = False
        self.delivered = True

    def credit_back(self, credits: int) -> None:
        """The settle refunded ``credits`` (safety-blocked images): the result shows the balance after."""
        if self.result is not None and self.result.credits_left is not None:
            self.result = replace(self.result, credits_left=self.result.credits_left + credits)

    def release_images(self) -> None:
        """Drop the pixels (delivered, stored elsewhere, or refunded); the record stays."""
        if self.result is not None and self.result.images:
            self.result = replace(self.result, images=[], released=len(self.result.images))

    def _notify(self) -> None:
        self._version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def updates(self) -> AsyncIterator[JobUpdate]:
        """The current state, then every change (coalesced if the reader is slow), then the end."""
        if self.origin is not None:
            async for update in self.origin.updates():
                yield update
            return
        seen = -1
        while True:
            if self._version != seen:
                seen = self._version
                update = self.snapshot()
                yield update
                if update.status.finished:
                    return
            else:
                await self._changed.wait()

    async def wait(self) -> JobResult:
        async for update in self.updates():
            if update.status is JobStatus.FAILED:
                assert update.error is not None
                raise update.error
            if update.status is JobStatus.SUCCEEDED:
                assert update.result is not None
                return update.result
        raise AssertionError("unreachable")
