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
    delivery_claimed: bool = False  # a front is posting the images
    delivered: bool = False  # charged for its images
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
        )

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
