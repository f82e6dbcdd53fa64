"""The GPU worker: the Stable Diffusion pipeline behind HTTP, compatible with the Cog prediction protocol.

It loads once and serves many (Cog's ``setup()``/``predict()`` split): the server answers
``GET /health-check`` at once with ``STARTING`` while a thread imports torch, loads the
weights, moves them to the device, compiles if asked and makes one warm-up image; then
``READY``. ``POST /predictions`` and the idempotent ``PUT /predictions/{id}`` take
``{"input": {...}}`` with the field names of Replicate's Stable Diffusion models; with
``Prefer: respond-async`` they answer 202 at once and a later PUT of the same id gives the state
or the result. ``GET /`` is Cog's discovery document. Finished predictions are kept for retries
within a byte budget and a few minutes (:mod:`backend.finished`).

Concurrent predictions that share size, steps, guidance and scheduler are batched into one
pipeline call (up to ``IMAGINE_MAX_BATCH`` images, waiting at most ``IMAGINE_BATCH_WAIT_MS``
for company); each keeps its own seed, so an image is the same batched or alone. When as
many predictions are waiting as the worker takes (:attr:`Worker.capacity`), the health check
says ``BUSY`` and new ones get 409 with ``Retry-After``.

``create_app(settings, runner=...)`` builds the app around any batch runner (tests, benchmarks);
:func:`serve` runs it on uvicorn with the real pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import json
import logging
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from backend.finished import DEFAULT_KEEP_BYTES, DEFAULT_KEEP_SECONDS, Finished, FinishedPredictions
from backend.worker.auth import BearerAuth, bind_host, is_loopback  # noqa: F401 (imported from here)
from backend.worker.loader import (  # noqa: F401 (imported from here)
    WARMUP_REQUEST,
    BatchRunner,
    Loaded,
    Loader,
    given_runner,
    pipeline_loader,
    process_started_at,
)
from backend.worker.schema import (
    BODY_FIELDS,
    MAX_BODY_BYTES,
    TERMINAL,
    ErrorResponse,
    PredictionResponse,
    encode_json,
    iso,
    quote,
    request_schema,
)
from gateway.backend import GenerationResult
from gateway.cog import INPUT_FIELDS, is_prediction_id, png_data_uri, request_from_input, safe_reason
from gateway.errors import InvalidRequest
from gateway.request import (
    MAX_SEED,
    ImageRequest,
)
from gateway.settings import Settings

log = logging.getLogger("imagine.worker")


class Health(enum.StrEnum):
    STARTING = "STARTING"
    READY = "READY"
    BUSY = "BUSY"
    SETUP_FAILED = "SETUP_FAILED"


# --- predictions and batching ---------------------------------------------------------------


@dataclass(eq=False)
class Prediction:
    id: str
    request: ImageRequest
    input: dict[str, Any]
    created_at: float = field(default_factory=time.time)
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    completed_at: float | None = None
    #: The final response as the JSON bytes it is served as: encoded once, counted by the byte budget.
    body: bytes | None = None
    status: str = "starting"
    done: asyncio.Event = field(default_factory=asyncio.Event)
    canceled: bool = False

    @property
    def batch_key(self) -> tuple[int, int, int, float, str]:
        r = self.request
        return (r.width, r.height, r.steps, r.guidance, r.scheduler)

    def finish(self, response: dict[str, Any]) -> bool:
        """Record the final response; False if it already had one (the first answer stands)."""
        if self.body is not None:
            return False
        self.completed_at = time.time()
        self.status = response["status"]
        self.body = encode_json(response)
        self.done.set()
        return True


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
        self.max_batch = max(1, settings.max_batch)
        self.batch_wait = max(0.0, settings.batch_wait_ms / 1000.0)
        # Room for the batch running and a few forming: a queue a few batches deep, no more.
        self.capacity = capacity if capacity is not None else max(8, 4 * self.max_batch)
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
        self.pending: list[Prediction] = []
        self.running: list[Prediction] = []
        #: Queued or running, by id (at most ``capacity``); finished ones move to ``finished``.
        self.active: dict[str, Prediction] = {}
        self.finished = FinishedPredictions(keep_bytes, keep_seconds)
        self.batches = 0
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._recent_batch_seconds: float = 5.0
        # One thread does all the model work: CUDA graphs and compiled kernels are per thread.
        self._gpu_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imagine-gpu")

    async def _on_gpu_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            self._gpu_thread, functools.partial(fn, *args, **kwargs)
        )

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._setup(), name="imagine-worker-setup"))
        self._tasks.append(asyncio.create_task(self._batch_loop(), name="imagine-worker-batches"))
        self._tasks.append(asyncio.create_task(self._forget_loop(), name="imagine-worker-forget"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for prediction in [*self.pending, *self.running]:
            self._finish(
                prediction, self._failed(prediction, "the worker shut down before the image was made")
            )
        self.pending.clear()
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
            for prediction in self.pending:
                self._finish(
                    prediction, self._failed(prediction, f"the worker could not start ({self.setup_error})")
                )
            self.pending.clear()
            return
        self.timings["setup_total"] = time.perf_counter() - started
        self.timings["process_start_to_ready"] = time.time() - process_started_at()
        self.setup_completed_at = time.time()
        self.phase = "ready"
        self.health = Health.READY
        breakdown = ", ".join(f"{k} {v:.2f} s" for k, v in self.timings.items())
        log.info("ready on %s: %s", self.device, breakdown)
        self._wakeup.set()

    # --- health ----------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self.pending) + len(self.running)

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
            "running": len(self.running),
            "capacity": self.capacity,
            "max_batch": self.max_batch,
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

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the batches ahead at the recent pace."""
        batches_ahead = max(1, math.ceil(self.in_flight / self.max_batch))
        return max(1, math.ceil(batches_ahead * self._recent_batch_seconds))

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
            raise WorkerFull(self.retry_after())
        if request.seed is None:
            request = request.with_seed(random.randrange(0, MAX_SEED - request.num_images + 1))
        prediction = Prediction(id=prediction_id or uuid.uuid4().hex, request=request, input=raw_input)
        self.active[prediction.id] = prediction
        self.pending.append(prediction)
        self._wakeup.set()
        return prediction

    def cancel(self, prediction_id: str) -> Prediction | Finished | None:
        """Cancel a queued or running prediction; a finished one (or None) is given back unchanged."""
        prediction = self.active.get(prediction_id)
        if prediction is None:
            return self.finished.get(prediction_id)
        prediction.canceled = True
        if prediction in self.pending:
            self.pending.remove(prediction)
            self._finish(prediction, self._response(prediction, status="canceled"))
        # else in a running batch: it finishes as canceled and its images are dropped
        return prediction

    def snapshot(self, prediction: Prediction) -> dict[str, Any]:
        """A prediction in flight as Cog shows it: ``starting`` while queued, then ``processing``."""
        status = "processing" if prediction.started_at is not None else "starting"
        return self._response(prediction, status=status)

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
            while self.runner is None or self.health is not Health.READY or not self.pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = await self._gather_batch()
            await self._run_batch(batch)

    async def _gather_batch(self) -> list[Prediction]:
        """The oldest prediction and compatible ones after it, waiting up to the batch window."""
        head = self.pending[0]
        deadline = head.queued_at + self.batch_wait
        while True:
            batch = self._compatible(head)
            images = sum(p.request.num_images for p in batch)
            left = deadline - time.monotonic()
            if images >= self.max_batch or left <= 0:
                break
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), left)
            if head not in self.pending:  # cancelled while waiting
                if not self.pending:
                    return []
                head = self.pending[0]
                deadline = head.queued_at + self.batch_wait
        for prediction in batch:
            self.pending.remove(prediction)
        return batch

    def _compatible(self, head: Prediction) -> list[Prediction]:
        batch = [head]
        images = head.request.num_images
        for other in self.pending:
            if other is head or other.batch_key != head.batch_key:
                continue
            if images + other.request.num_images > self.max_batch:
                continue
            batch.append(other)
            images += other.request.num_images
        return batch

    async def _run_batch(self, batch: list[Prediction]) -> None:
        if not batch:
            return
        assert self.runner is not None
        self.running = batch
        started = time.time()
        for prediction in batch:
            prediction.started_at = started
        t = time.perf_counter()

        def all_cancelled() -> bool:
            return all(p.canceled for p in batch)

        try:
            results: list[GenerationResult | BaseException] = list(
                await self._on_gpu_thread(self.runner, [p.request for p in batch], cancel=all_cancelled)
            )
            if len(results) != len(batch):
                raise RuntimeError(f"the runner returned {len(results)} results for {len(batch)} requests")
        except Exception as exc:
            if all_cancelled():
                results = [exc] * len(batch)
            elif len(batch) == 1:
                log.exception("prediction %s failed", batch[0].id)
                results = [exc]
            else:
                # One bad request (or a batch too big for memory) should not fail the others.
                log.warning("a batch of %d failed (%s); running each alone", len(batch), type(exc).__name__)
                results = []
                for prediction in batch:
                    try:
                        (one,) = await self._on_gpu_thread(self.runner, [prediction.request])
                        results.append(one)
                    except Exception as single:
                        log.exception("prediction %s failed", prediction.id)
                        results.append(single)
        finally:
            self.running = []
        seconds = time.perf_counter() - t
        self._recent_batch_seconds = 0.7 * self._recent_batch_seconds + 0.3 * seconds
        self.batches += 1
        images = sum(p.request.num_images for p in batch)
        for prediction, result in zip(batch, results, strict=True):
            metrics = {
                "predict_time": seconds,
                "queue_time": max(0.0, started - prediction.created_at),
                "batch_size": float(len(batch)),
                "batch_images": float(images),
            }
            if prediction.canceled:
                self._finish(prediction, self._response(prediction, status="canceled", metrics=metrics))
            elif isinstance(result, BaseException):
                self._finish(prediction, self._failed(prediction, _failure_reason(result), metrics))
            else:
                self._finish(prediction, self._succeeded(prediction, result, metrics))

    # --- responses -------------------------------------------------------------------------

    def _response(
        self,
        prediction: Prediction,
        *,
        status: str,
        output: list[str] | None = None,
        error: str | None = None,
        metrics: dict[str, float] | None = None,
        result: GenerationResult | None = None,
    ) -> dict[str, Any]:
        seed = prediction.request.seed
        assert seed is not None
        seeds = (
            result.seeds if result is not None else [seed + i for i in range(prediction.request.num_images)]
        )
        metrics = dict(metrics or {})
        if result is not None:
            for key, value in result.timings.items():
                metrics.setdefault(key, value)
        return {
            "id": prediction.id,
            "status": status,
            "input": prediction.input,
            "output": output,
            "error": error,
            "logs": "",
            "metrics": metrics,
            "seed": seed,
            "seeds": seeds,
            "blocked": result.blocked if result is not None else 0,
            "prompt_truncated": result.prompt_truncated if result is not None else False,
            "model": (result.model if result is not None else "") or self.model,
            "created_at": iso(prediction.created_at),
            "started_at": iso(prediction.started_at),
            "completed_at": iso(time.time()) if status in TERMINAL else None,
        }

    def _succeeded(
        self, prediction: Prediction, result: GenerationResult, metrics: dict[str, float]
    ) -> dict[str, Any]:
        return self._response(
            prediction,
            status="succeeded",
            output=[png_data_uri(png) for png in result.images],
            metrics=metrics,
            result=result,
        )

    def _failed(
        self, prediction: Prediction, reason: str, metrics: dict[str, float] | None = None
    ) -> dict[str, Any]:
        return self._response(prediction, status="failed", error=reason, metrics=metrics)


def _failure_reason(exc: BaseException) -> str:
    name = type(exc).__name__
    if "OutOfMemory" in name or "out of memory" in str(exc).lower():
        return "the GPU ran out of memory; try a smaller size or fewer images"
    return f"the pipeline failed ({name}: {safe_reason(exc, 200)})"


# --- HTTP ----------------------------------------------------------------------------------


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, refused past ``limit`` bytes (by its Content-Length, or while it streams in)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


def create_app(
    settings: Settings,
    runner: BatchRunner | None = None,
    *,
    loader: Loader | None = None,
    capacity: int | None = None,
    warmup: ImageRequest | None = WARMUP_REQUEST,
    keep_bytes: int = DEFAULT_KEEP_BYTES,
    keep_seconds: float = DEFAULT_KEEP_SECONDS,
) -> FastAPI:
    """The worker app. Give ``runner`` (tests) or ``loader``; by default the real pipeline is loaded."""
    if loader is None:
        loader = given_runner(runner, settings.model) if runner is not None else pipeline_loader(settings)
    worker = Worker(
        settings, loader, capacity=capacity, warmup=warmup, keep_bytes=keep_bytes, keep_seconds=keep_seconds
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await worker.start()
        try:
            yield
        finally:
            await worker.stop()

    app = FastAPI(
        title="Imagine worker",
        description="Stable Diffusion behind the Cog prediction protocol.",
        version="1",
        lifespan=lifespan,
    )
    app.state.worker = worker
    key = settings.backend_api_key.get() if settings.backend_api_key else None
    app.add_middleware(BearerAuth, key=key)

    error_responses: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorResponse, "description": "missing or wrong bearer key"},
        409: {"model": ErrorResponse, "description": "full; retry after Retry-After seconds"},
        413: {"model": ErrorResponse, "description": "body too large"},
        422: {"model": ErrorResponse, "description": "invalid input, with the reason"},
        503: {"model": ErrorResponse, "description": "starting or setup failed; retry after Retry-After"},
    }

    @app.get("/", summary="Cog's discovery document: where each route is")
    async def discovery() -> dict[str, str]:
        # Cog's keys, less shutdown_url (no /shutdown here: SIGTERM stops the worker) and
        # cog_version (this is not Cog).
        return {
            "docs_url": "/docs",
            "openapi_url": "/openapi.json",
            "healthcheck_url": "/health-check",
            "predictions_url": "/predictions",
            "predictions_idempotent_url": "/predictions/{prediction_id}",
            "predictions_cancel_url": "/predictions/{prediction_id}/cancel",
        }

    @app.get("/health-check", summary="STARTING, READY, BUSY or SETUP_FAILED (always 200)")
    async def health_check() -> dict[str, Any]:
        return worker.health_json()

    @app.post(
        "/predictions",
        summary="Make images",
        response_model=PredictionResponse,
        responses=error_responses,
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": request_schema()}}}
        },
    )
    async def create_prediction(request: Request) -> Response:
        return await _predict(worker, request, None)

    @app.put(
        "/predictions/{prediction_id}",
        summary="Make images, idempotently: the same id again returns the same prediction",
        response_model=PredictionResponse,
        responses=error_responses,
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": request_schema()}}}
        },
    )
    async def put_prediction(prediction_id: str, request: Request) -> Response:
        return await _predict(worker, request, prediction_id)

    @app.post(
        "/predictions/{prediction_id}/cancel",
        summary="Cancel a queued or running prediction (404, as in Cog, when it is finished or unknown)",
        responses={404: {"model": ErrorResponse}},
    )
    async def cancel_prediction(prediction_id: str) -> JSONResponse:
        prediction = worker.cancel(prediction_id)
        shown = quote(prediction_id)
        if prediction is None:
            return _error(404, f"No prediction {shown} is queued, running or recently finished here.")
        if isinstance(prediction, Finished):
            return _error(404, f"Prediction {shown} already {prediction.status}; there is nothing to cancel.")
        return JSONResponse({"id": prediction.id, "status": "canceled"})

    return app


async def _predict(worker: Worker, request: Request, path_id: str | None) -> Response:
    # 1. Read the body, bounded, before any parsing.
    try:
        raw = await read_body(request)
    except BodyTooLarge:
        return _error(413, f"The body is larger than {MAX_BODY_BYTES // 1024} KiB.")
    # 2. Check its shape and the input, with the gateway's sentences.
    try:
        body = json.loads(raw)
    except ValueError:
        return _error(422, 'The body is not valid JSON; send {"input": {"prompt": "a red fox"}}.')
    if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
        return _error(
            422,
            'The body must be a JSON object with an "input" object, e.g. {"input": {"prompt": "a red fox"}}.',
        )
    unknown = sorted(k for k in body if k not in BODY_FIELDS)
    if unknown:
        return _error(
            422,
            f"Unknown field {unknown[0]!r}; the body takes {', '.join(BODY_FIELDS)} "
            "(webhooks are not supported: the answer is the response).",
        )
    prediction_id = path_id if path_id is not None else body.get("id")
    if prediction_id is not None and (
        not isinstance(prediction_id, str) or not is_prediction_id(prediction_id)
    ):
        return _error(422, "The prediction id must be 1 to 128 letters, digits, '.', '_' or '-'.")
    if path_id is not None and body.get("id") not in (None, path_id):
        return _error(422, "The id in the body differs from the id in the path.")
    try:
        image_request = request_from_input(body["input"])
    except InvalidRequest as exc:
        return _error(422, str(exc))
    # 3. Queue it (or find the one with this id), unless the worker cannot take it now.
    if worker.health is Health.STARTING:
        return _error(503, f"The worker is starting ({worker.phase}); try again shortly.", retry_after=10)
    if worker.health is Health.SETUP_FAILED:
        return _error(503, f"The worker could not start: {worker.setup_error}", retry_after=300)
    raw_input = {k: body["input"][k] for k in INPUT_FIELDS if k in body["input"]}
    try:
        prediction = worker.submit(prediction_id, image_request, raw_input)
    except WorkerFull as full:
        return _error(
            409,
            f"The worker is full ({worker.in_flight} predictions in progress); "
            f"retry after {full.retry_after} s.",
            retry_after=full.retry_after,
        )
    except InvalidRequest as exc:
        return _error(422, str(exc))
    # 4. Answer at once (Prefer: respond-async, as Cog does: 202 with its state), or wait for its
    #    batch. A client that goes away leaves the result for a retry of the same id.
    respond_async = _prefers_async(request.headers.get("prefer", ""))
    if isinstance(prediction, Finished):
        return _json_body(prediction.body, 202 if respond_async else 200)
    if respond_async:
        return JSONResponse(worker.snapshot(prediction), status_code=202)
    await prediction.done.wait()
    assert prediction.body is not None
    return _json_body(prediction.body, 200)


def _prefers_async(prefer: str) -> bool:
    """``Prefer: respond-async`` (RFC 7240: a list of preferences, each with optional parameters)."""
    return any(part.split(";")[0].strip().lower() == "respond-async" for part in prefer.split(","))


def _json_body(body: bytes, status: int) -> Response:
    return Response(body, status_code=status, media_type="application/json")


def _error(status: int, detail: str, *, retry_after: float | None = None) -> JSONResponse:
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def serve(settings: Settings, *, host: str | None = None, port: int = 8001) -> None:
    """Run the worker until SIGTERM/SIGINT (blocking); ``imagine worker`` calls this.

    :class:`SettingsError` (before anything loads) for a non-loopback ``host`` without a key.
    """
    host = bind_host(settings, host)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # imagine.setup_logging already configured logging (and the secret filter)
        access_log=False,
        timeout_graceful_shutdown=60,
        limit_concurrency=max(64, 8 * app.state.worker.capacity),
        h11_max_incomplete_event_size=MAX_BODY_BYTES,
    )
    log.info("worker on http://%s:%d (model %s)", host, port, settings.model)
    GracefulServer(config).run()


class GracefulServer(uvicorn.Server):
    """Exit 0 after a SIGTERM/SIGINT shutdown: a worker told to stop that stopped cleanly succeeded.

    (uvicorn re-raises the signal after its graceful shutdown, which makes the exit status -15.)
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()
