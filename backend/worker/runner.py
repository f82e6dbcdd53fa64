"""Loading once and serving many: setup, health, and the state machine of predictions.

Like Cog's ``server/runner.py`` behind its thin ``server/http.py``. Setup runs once on the GPU
thread (``STARTING``, then ``READY`` or ``SETUP_FAILED``); a prediction is queued (``starting``),
runs in a batch (``processing``) and ends ``succeeded``, ``failed`` or ``canceled``. An id in
flight or kept is never made twice: the same id again gives that prediction back, and finished
ones are kept for retries within a byte budget and a few minutes (:mod:`backend.finished`).
When as many predictions are waiting as the worker takes (:attr:`Worker.capacity`), the health
check says ``BUSY`` and :meth:`Worker.submit` raises :class:`WorkerFull`.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from backend.finished import DEFAULT_KEEP_BYTES, DEFAULT_KEEP_SECONDS, Finished, FinishedPredictions
from backend.worker.batcher import Batcher
from backend.worker.loader import WARMUP_REQUEST, BatchRunner, Loader, process_started_at
from backend.worker.prediction import Prediction
from backend.worker.schema import iso, quote
from gateway.backend import GenerationResult
from gateway.cog import safe_reason
from gateway.errors import InvalidRequest
from gateway.request import MAX_SEED, ImageRequest
from gateway.settings import Settings

log = logging.getLogger("imagine.worker")


class Health(enum.StrEnum):
    STARTING = "STARTING"
    READY = "READY"
    BUSY = "BUSY"
    SETUP_FAILED = "SETUP_FAILED"


class WorkerFull(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__("full")
        self.retry_after = retry_after


class Worker:
    """The state behind the routes: setup, the queue, the batch loop, finished predictions."""

    def __init__(
        self,
        settings: Settings,
        loader: Loader,
        *,
        capacity: int | None = None,
        warmup: ImageRequest | None = WARMUP_REQUEST,
        keep_bytes: int = DEFAULT_KEEP_BYTES,
        keep_seconds: float = DEFAULT_KEEP_SECONDS,
    ) -> None:
        self.settings = settings
        self.loader = loader
        self.batcher = Batcher(settings.max_batch, settings.batch_wait_ms / 1000.0)
        # Room for the batch running and a few forming: a queue a few batches deep, no more.
        self.capacity = capacity if capacity is not None else max(8, 4 * self.batcher.max_batch)
        self.warmup = warmup
        self.health = Health.STARTING
        self.phase = "starting"
        self.setup_error: str | None = None
        self.setup_started_at = time.time()
        self.setup_completed_at: float | None = None
        self.timings: dict[str, float] = {}
        self.device = "unknown"
        self.model = settings.model
        self.runner: BatchRunner | None = None
        #: Queued or running, by id (at most ``capacity``); finished ones move to ``finished``.
        self.active: dict[str, Prediction] = {}
        self.finished = FinishedPredictions(keep_bytes, keep_seconds)
        self._tasks: list[asyncio.Task[None]] = []
        # One thread does all the model work: CUDA graphs and compiled kernels are per thread.
        self._gpu_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imagine-gpu")

    async def _on_gpu_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            self._gpu_thread, functools.partial(fn, *args, **kwargs)
        )

    async def _generate(
        self, requests: Sequence[ImageRequest], *, cancel: Callable[[], bool] | None = None
    ) -> list[GenerationResult]:
        assert self.runner is not None
        results: list[GenerationResult] = await self._on_gpu_thread(self.runner, requests, cancel=cancel)
        return results

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._setup(), name="imagine-worker-setup"))
        self._tasks.append(asyncio.create_task(self._batch_loop(), name="imagine-worker-batches"))
        self._tasks.append(asyncio.create_task(self._forget_loop(), name="imagine-worker-forget"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for prediction in [*self.batcher.pending, *self.batcher.running]:
            self._finish(
                prediction, prediction.as_failed(self.model, "the worker shut down before the image was made")
            )
        self.batcher.drain()
        self._gpu_thread.shutdown(wait=False, cancel_futures=True)

    async def _setup(self) -> None:
        started = time.perf_counter()

        def phase(text: str) -> None:
            self.phase = text
            log.info("setup: %s", text)

        try:
            loaded = await self._on_gpu_thread(self.loader, phase)
            self.runner = loaded.runner
            self.timings.update(loaded.timings)
            self.device = loaded.device
            self.model = loaded.model or self.model
            if self.warmup is not None:
                phase("warming up")
                t = time.perf_counter()
                await self._on_gpu_thread(self.runner, [self.warmup])
                self.timings["warmup"] = time.perf_counter() - t
        except Exception as exc:
            log.exception("setup failed")
            self.setup_error = f"{type(exc).__name__}: {safe_reason(exc, 500)}"
            self.health = Health.SETUP_FAILED
            self.phase = "setup failed"
            self.setup_completed_at = time.time()
            reason = f"the worker could not start ({self.setup_error})"
            for prediction in self.batcher.drain():
                self._finish(prediction, prediction.as_failed(self.model, reason))
            return
        self.timings["setup_total"] = time.perf_counter() - started
        self.timings["process_start_to_ready"] = time.time() - process_started_at()
        self.setup_completed_at = time.time()
        self.phase = "ready"
        self.health = Health.READY
        breakdown = ", ".join(f"{k} {v:.2f} s" for k, v in self.timings.items())
        log.info("ready on %s: %s", self.device, breakdown)
        self.batcher.wake()

    # --- health ----------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self.batcher.in_flight

    @property
    def status(self) -> Health:
        if self.health is not Health.READY:
            return self.health
        return Health.BUSY if self.in_flight >= self.capacity else Health.READY

    def health_json(self) -> dict[str, Any]:
        self.finished.prune()
        setup_status = {
            Health.STARTING: "starting",
            Health.SETUP_FAILED: "failed",
        }.get(self.health, "succeeded")
        return {
            "status": self.status.value,
            "setup": {
                "status": setup_status,
                "phase": self.phase,
                "started_at": iso(self.setup_started_at),
                "completed_at": iso(self.setup_completed_at),
                "error": self.setup_error,
            },
            "cold_start": {k: round(v, 3) for k, v in self.timings.items()},
            "queue": self.in_flight,
            "running": len(self.batcher.running),
            "capacity": self.capacity,
            "max_batch": self.batcher.max_batch,
            "batch_wait_ms": self.settings.batch_wait_ms,
            "device": self.device,
            "model": self.model,
            "kept": {
                "predictions": len(self.finished),
                "bytes": self.finished.bytes,
                "max_bytes": self.finished.max_bytes,
                "max_age_s": self.finished.max_age,
            },
        }

    # --- predictions -----------------------------------------------------------------------

    def find(self, prediction_id: str) -> Prediction | Finished | None:
        return self.active.get(prediction_id) or self.finished.get(prediction_id)

    def submit(
        self, prediction_id: str | None, request: ImageRequest, raw_input: dict[str, Any]
    ) -> Prediction | Finished:
        """Queue a prediction; an id in flight or kept gives that one back (nothing made twice).

        An id finished and forgotten (past the byte budget or the age) runs again, as Cog runs
        again every id it no longer has in flight.
        """
        if prediction_id is not None and (known := self.find(prediction_id)) is not None:
            if known.input != raw_input:
                raise InvalidRequest(
                    f"Prediction {quote(prediction_id)} already exists with a different input; use a new id."
                )
            return known
        if self.in_flight >= self.capacity:
            raise WorkerFull(self.batcher.retry_after())
        if request.seed is None:
            request = request.with_seed(random.randrange(0, MAX_SEED - request.num_images + 1))
        prediction = Prediction(id=prediction_id or uuid.uuid4().hex, request=request, input=raw_input)
        self.active[prediction.id] = prediction
        self.batcher.add(prediction)
        return prediction

    def cancel(self, prediction_id: str) -> Prediction | Finished | None:
        """Cancel a queued or running prediction; a finished one (or None) is given back unchanged."""
        prediction = self.active.get(prediction_id)
        if prediction is None:
            return self.finished.get(prediction_id)
        prediction.canceled = True
        if self.batcher.withdraw(prediction):
            self._finish(prediction, prediction.as_canceled(self.model))
        # else in a running batch: it finishes as canceled and its images are dropped
        return prediction

    def snapshot(self, prediction: Prediction) -> dict[str, Any]:
        """A prediction in flight as Cog shows it: ``starting`` while queued, then ``processing``."""
        return prediction.snapshot(self.model)

    def _finish(self, prediction: Prediction, response: dict[str, Any]) -> None:
        """Answer whoever waits, and move the prediction from in flight to the kept finished ones."""
        if not prediction.finish(response):
            return
        if self.active.get(prediction.id) is prediction:
            del self.active[prediction.id]
        assert prediction.body is not None
        self.finished.add(
            Finished(
                prediction.id, prediction.input, prediction.status, prediction.body, self.finished.clock()
            )
        )

    async def _forget_loop(self) -> None:
        """Drop expired results while idle too, so an idle worker gives their memory back."""
        while True:
            await asyncio.sleep(min(30.0, max(1.0, self.finished.max_age / 2)))
            self.finished.prune()

    async def _batch_loop(self) -> None:
        while True:
            batch = await self.batcher.next_batch(self._ready)
            await self._run_batch(batch)

    def _ready(self) -> bool:
        return self.runner is not None and self.health is Health.READY

    async def _run_batch(self, batch: list[Prediction]) -> None:
        if not batch:
            return
        started = time.time()
        for prediction in batch:
            prediction.started_at = started
        results, seconds = await self.batcher.run(batch, self._generate)
        images = sum(p.request.num_images for p in batch)
        for prediction, result in zip(batch, results, strict=True):
            metrics = {
                "predict_time": seconds,
                "queue_time": max(0.0, started - prediction.created_at),
                "batch_size": float(len(batch)),
                "batch_images": float(images),
            }
            if prediction.canceled:
                self._finish(prediction, prediction.as_canceled(self.model, metrics))
            elif isinstance(result, BaseException):
                self._finish(prediction, prediction.as_failed(self.model, failure_reason(result), metrics))
            else:
                self._finish(prediction, prediction.as_succeeded(self.model, result, metrics))


def failure_reason(exc: BaseException) -> str:
    """The sentence a failed prediction carries: what went wrong, never a traceback."""
    name = type(exc).__name__
    if "OutOfMemory" in name or "out of memory" in str(exc).lower():
        return "the GPU ran out of memory; try a smaller size or fewer images"
    return f"the pipeline failed ({name}: {safe_reason(exc, 200)})"
