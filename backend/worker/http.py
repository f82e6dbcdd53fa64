"""The worker's HTTP routes, thin: read and check the body, ask the :class:`Worker`, answer.

Like Cog's ``server/http.py``: the state machine is in :mod:`backend.worker.runner`. ``GET
/health-check`` answers at once, ``STARTING`` while setup runs; ``POST /predictions`` and the
idempotent ``PUT /predictions/{id}`` take ``{"input": {...}}`` and, with ``Prefer: respond-async``,
answer 202 at once (a later PUT of the same id gives the state or the result); ``GET /`` is Cog's
discovery document. :func:`serve` runs the app on uvicorn with the real pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from backend.finished import DEFAULT_KEEP_BYTES, DEFAULT_KEEP_SECONDS, Finished
from backend.worker.auth import BearerAuth, bind_host
from backend.worker.loader import WARMUP_REQUEST, BatchRunner, Loader, given_runner, pipeline_loader
from backend.worker.runner import Health, Worker, WorkerFull
from backend.worker.schema import (
    BODY_FIELDS,
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    ErrorResponse,
    PredictionResponse,
    quote,
    request_schema,
)
from gateway.cog import INPUT_FIELDS, is_prediction_id, request_from_input
from gateway.errors import InvalidRequest
from gateway.request import ImageRequest
from gateway.settings import Settings

log = logging.getLogger("imagine.worker")

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "missing or wrong bearer key"},
    409: {"model": ErrorResponse, "description": "full; retry after Retry-After seconds"},
    413: {"model": ErrorResponse, "description": "body too large"},
    422: {"model": ErrorResponse, "description": "invalid input, with the reason"},
    503: {"model": ErrorResponse, "description": "starting or setup failed; retry after Retry-After"},
}


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
    prediction_route: dict[str, Any] = {
        "response_model": PredictionResponse,
        "responses": ERROR_RESPONSES,
        "openapi_extra": {
            "requestBody": {"required": True, "content": {"application/json": {"schema": request_schema()}}}
        },
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

    @app.post("/predictions", summary="Make images", **prediction_route)
    async def create_prediction(request: Request) -> Response:
        return await _predict(worker, request, None)

    @app.put(
        "/predictions/{prediction_id}",
        summary="Make images, idempotently: the same id again returns the same prediction",
        **prediction_route,
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
        return _error(
            413, f"The body is larger than {MAX_BODY_BYTES / 2**20:.1f} MiB (a 10 MB picture and the rest)."
        )
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
        if "image" in body["input"]:  # decoding a picture takes a while: not on the event loop
            image_request = await asyncio.to_thread(request_from_input, body["input"])
        else:
            image_request = request_from_input(body["input"])
    except InvalidRequest as exc:
        return _error(422, str(exc))
    # 3. Queue it (or find the one with this id), unless the worker cannot take it now.
    if worker.health is Health.STARTING:
        return _error(503, f"The worker is starting ({worker.phase}); try again shortly.", retry_after=10)
    if worker.health is Health.SETUP_FAILED:
        return _error(503, f"The worker could not start: {worker.setup_error}", retry_after=300)
    raw_input = echoed_input(body["input"])
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


def echoed_input(data: dict[str, Any]) -> dict[str, Any]:
    """The input as a prediction echoes and keeps it: a picture by its digest, not its megabytes.

    Two PUTs of one id compare these, so the same picture is the same input.
    """
    echoed = {k: data[k] for k in INPUT_FIELDS if k in data}
    if isinstance(echoed.get("image"), str):
        digest = hashlib.sha256(echoed["image"].encode()).hexdigest()
        echoed["image"] = f"sha256:{digest}"
    return echoed


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
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
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
