"""The job queue and its workers: each takes the next job, runs it on the backend and hands the
result to :class:`gateway.delivery.Delivery`, or refunds it with the reason.

No job's failure stops a worker.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.backend import Backend, GenerationResult
from gateway.budget import Budget
from gateway.delivery import Delivery
from gateway.errors import (
    BackendError,
    BackendFailed,
    Cancelled,
    ImagineError,
    SafetyBlocked,
    TimedOut,
    credits_word,
    elided,
)
from gateway.jobs import Job, JobResult
from gateway.messages import RESTARTING
from gateway.recovery import STORE_DOWN, Instance
from gateway.settings import Settings
from gateway.turns import Lanes, Turns
from storage import StoreUnavailable

log = logging.getLogger("imagine.gateway")


class JobQueue:
    """Accepted jobs taken in fair turns by user (:mod:`gateway.turns`), and as many workers as the
    backend runs at once."""

    def __init__(
        self, settings: Settings, backend: Backend, instance: Instance, delivery: Delivery, budget: Budget
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.instance = instance
        self.delivery = delivery
        self.budget = budget
        #: The order jobs are taken in; replaced only by benchmarks comparing orders (before ``start``).
        self.turns: Turns = Lanes()
        self._ready: asyncio.Queue[None] = asyncio.Queue()  # one token per queued job
        self._workers: list[asyncio.Task[None]] = []
        self._running: dict[str, asyncio.Task[GenerationResult]] = {}
        self._active: dict[str, Job] = {}  # taken from the queue, not finished

    def __len__(self) -> int:
        return len(self.turns) + len(self._active)

    def start(self) -> None:
        for _ in range(max(1, self.backend.capacity)):
            self._workers.append(asyncio.create_task(self._worker(), name="imagine-worker"))

    def put(self, job: Job) -> None:
        self.turns.put(job)
        self._tell_positions()
        self.instance.metrics.accepted(len(self.turns))
        self._ready.put_nowait(None)

    async def cancel(self, job: Job, reason: str) -> bool:
        """Take a queued job out, or stop a running one; either way it is refunded with ``reason``."""
        if job in self.turns:
            self.turns.remove(job)
            self._tell_positions()
            await self.delivery.fail(job, Cancelled(self.delivery.refund_sentence(job, reason)))
            return True
        task = self._running.get(job.id)
        if task is not None:
            job.request_cancel(reason)
            task.cancel()
            return True
        return False

    async def refund_waiting(self) -> None:
        """Imagine is stopping: every job still queued is refunded."""
        while self.turns:
            job = self.turns.pop()
            await self.delivery.fail(job, Cancelled(self.delivery.refund_sentence(job, RESTARTING)))

    async def drain(self) -> None:
        """Until every job taken from the queue has finished (succeeded, failed or refunded)."""

        async def finished(job: Job) -> None:
            async for _ in job.updates():
                pass

        if self._active:
            await asyncio.gather(*(finished(job) for job in list(self._active.values())))

    def stop(self) -> list[asyncio.Task[None]]:
        """Cancel what still runs (refunded by its worker) and the workers; returns them to await."""
        for running in self._running.values():
            running.cancel()
        workers = list(self._workers)
        for task in workers:
            task.cancel()
        self._workers.clear()
        return workers

    async def _worker(self) -> None:
        while True:
            await self._ready.get()
            if not self.turns:
                continue  # its job was cancelled while queued
            job = self.turns.pop()
            self._active[job.id] = job
            self._tell_positions()
            try:
                await self._run(job)
            except asyncio.CancelledError:
                # The service is closing: whatever this job was doing, it is refunded.
                if not job.status.finished:
                    error = Cancelled(self.delivery.refund_sentence(job, RESTARTING))
                    await asyncio.shield(self.delivery.fail(job, error))
                raise
            except Exception:
                # One job's failure never stops the loop: refund it (now or by repair) and go on.
                log.exception("job %s failed inside Imagine", job.id)
                if not job.status.finished:
                    sentence = self.delivery.refund_sentence(job, "Something went wrong inside Imagine")
                    await self.delivery.fail(job, BackendFailed(sentence))
            finally:
                self._active.pop(job.id, None)

    def _tell_positions(self) -> None:
        """Tell each waiting job how many run before it: those running, then those the turns take
        first. A newcomer's turn can come before a backlog's, so a position may grow; only the
        jobs whose position changed are told. O(jobs) per change."""
        for ahead, waiting in enumerate(self.turns.order(), start=len(self._active)):
            if waiting.position != ahead:
                waiting.move_to(ahead)

    async def _run(self, job: Job) -> None:
        started = time.monotonic()
        try:
            running = await self.instance.db.mark_running(job.id, self.instance.clock())
        except StoreUnavailable as exc:
            self.instance.health.failed(exc, job.id)
            await self.delivery.fail(job, BackendFailed(self.delivery.refund_sentence(job, STORE_DOWN)))
            return
        if not running:  # another process recovered (refunded) it meanwhile
            await self.delivery.fenced(job)
            return
        job.start(started)
        result, error = await self._generate(job)
        seconds = time.monotonic() - started
        if error is not None:
            await self.delivery.fail(job, error, gpu_seconds=seconds)
            return
        assert result is not None
        gpu_seconds = result.timings.get("predict_time", seconds)
        self.budget.observe(job.request, gpu_seconds)
        if not result.images:
            sentence = self.delivery.refund_sentence(job, "The safety filter blocked the image")
            await self.delivery.fail(
                job, SafetyBlocked(sentence + " Try a different prompt."), gpu_seconds=gpu_seconds
            )
            return
        job.hold(self._job_result(job, result, gpu_seconds), gpu_seconds)
        await self.delivery.complete(job)

    async def _generate(self, job: Job) -> tuple[GenerationResult | None, ImagineError | None]:
        """The backend's answer within the timeout, or the error (its sentence says the refund)."""
        task = asyncio.create_task(self.backend.generate(job.id, job.request, job.advance))
        self._running[job.id] = task
        sentence = self.delivery.refund_sentence
        try:
            return await asyncio.wait_for(task, self.settings.backend_timeout), None
        except TimeoutError:
            return None, TimedOut(
                sentence(job, f"The image took longer than {self.settings.backend_timeout:g} s")
            )
        except asyncio.CancelledError:
            if not job.cancel_requested:
                raise
            return None, Cancelled(sentence(job, job.cancel_reason))
        except BackendError as exc:
            self.instance.metrics.backend_error(type(exc).__name__)
            failure = f"The image generator failed: {elided(exc.reason, 300).rstrip('.')}"
            return None, BackendFailed(sentence(job, failure))
        except Exception:
            log.exception("backend crashed on job %s", job.id)
            self.instance.metrics.backend_error("crash")
            return None, BackendFailed(sentence(job, "The image generator failed unexpectedly"))
        finally:
            self._running.pop(job.id, None)

    @staticmethod
    def _job_result(job: Job, result: GenerationResult, gpu_seconds: float) -> JobResult:
        notes = []
        if result.prompt_truncated:
            notes.append("The prompt was longer than the model reads (77 tokens); the end was cut.")
        if result.blocked:
            notes.append(
                f"The safety filter blocked {result.blocked} of the images; "
                f"{credits_word(result.blocked)} refunded."
            )
        return JobResult(
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
        )
