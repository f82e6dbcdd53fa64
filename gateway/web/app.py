"""The web front: the page at ``/`` and the JSON API of DESIGN.md, on uvicorn inside the `imagine` process.

The routes here are thin: a body is validated by the models in ``schemas.py`` (its sentence written
by their one handler), read within the limits of ``limits.py``, and handed to the gateway. A web job
is charged when its image is first downloaded and refunded when nobody fetches it in time: that rule
is the gateway's (:mod:`gateway.pickup`). Answers take their shapes from ``views.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from dataclasses import replace

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from gateway.bodies import BodyEndedEarly, BodyTooLarge
from gateway.errors import ImagineError, elided, quoted
from gateway.images import ImageStore, open_image_store
from gateway.jobs import Job
from gateway.pickup import ImageGone, Pickups, Waiting
from gateway.picture import action_request
from gateway.request import ImageRequest, parse_prompt, validate
from gateway.service import ImagineService
from gateway.settings import Settings
from gateway.web import admin
from gateway.web.admin import ADMIN_PAGE
from gateway.web.guard import Client, ClientResolver, RateLimiter
from gateway.web.limits import ActionPostRoute, JobPostRoute
from gateway.web.longpoll import wait_for_change, wait_in_store, wait_seconds
from gateway.web.middleware import ClientMiddleware
from gateway.web.page import Page
from gateway.web.schemas import (
    IDEMPOTENCY_KEY_PARAMETER,
    IMAGE_INDEX_PARAMETER,
    IMAGE_NAME_PARAMETER,
    JOB_ID_PARAMETER,
    POLL_PARAMETERS,
    Health,
    JobCreated,
    JobRequest,
    JobView,
    Quota,
    UpscaleRequest,
    VaryRequest,
    errors,
    invalid_request,
)
from gateway.web.server import ConnectionLimits, EmbeddedServer, listen, server_config
from gateway.web.state import WebOptions, WebState, client_of, web_of
from gateway.web.views import JSON, NO_STORE, error_response, job_created, job_view, quota_view, refusal, tag
from storage import StoreUnavailable

__all__ = ["WebFront", "WebOptions", "WebState", "create_app"]

log = logging.getLogger("imagine.web")

JOB_PREFIX = "web:"
_IMAGE_NAME = re.compile(r"(\d{1,2})\.png")
_IMAGE_INDEX = re.compile(r"\d{1,2}")
STORE_DOWN = "Imagine cannot reach its database right now; nothing was charged. Try again shortly."

# --- answers to what goes wrong ------------------------------------------------------------------


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        return error_response(404, f"There is nothing at {elided(request.url.path)}.", "not_found")
    if exc.status_code == 405:
        allowed = headers.get("Allow", headers.get("allow", ""))
        message = f"{request.method} is not allowed on {elided(request.url.path)}; use {allowed}."
        return error_response(405, message, "method_not_allowed", headers=headers)
    return error_response(exc.status_code, str(exc.detail), "http", headers=headers)


async def too_large(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BodyTooLarge)
    return error_response(413, str(exc.detail), "too_large")


async def client_gone(request: Request, exc: Exception) -> Response:
    """A client that leaves mid-body is no fault of ours: one quiet line, and nothing is charged."""
    log.debug("web client left before its request body ended: %s %s", request.method, request.url.path)
    return error_response(400, "The request body ended early.", "invalid")  # nobody reads it


async def refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ImagineError)
    return refusal(exc, time.time())


async def crashed(request: Request, exc: Exception) -> Response:
    log.error("web request %s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, "Something went wrong inside Imagine; please try again.", "internal")


# --- routes --------------------------------------------------------------------------------------

router = APIRouter()
#: ``POST /api/jobs``: its head is checked before its body is read (see limits.py).
submitting = APIRouter(route_class=JobPostRoute)
#: The image actions: the same head checks, a small optional body.
acting = APIRouter(route_class=ActionPostRoute)


def _same_request(first: ImageRequest, again: ImageRequest) -> bool:
    """Whether a repeated Idempotency-Key asks for the job it made (its random seed aside)."""
    if again.seed is None:
        again = again.with_seed(first.seed)
    return first.to_json() == again.to_json()


def job_id_for(service: ImagineService, client: Client, idempotency_key: str | None) -> str:
    """A random id, or with an Idempotency-Key one keyed by the store's secret: knowing a client's
    address and guessing its key is not enough to read its job."""
    if idempotency_key is None:
        return f"{JOB_PREFIX}{uuid.uuid4()}"
    return f"{JOB_PREFIX}{service.private_id('web-idempotency', client.user_id, idempotency_key)}"


@router.get("/", include_in_schema=False)
async def page(request: Request) -> Response:
    page = web_of(request).page
    if request.headers.get("if-none-match") == page.etag:
        return Response(status_code=304, headers=page.headers)
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers = {**page.headers, "Content-Encoding": "gzip"}
        return Response(page.gzipped, media_type="text/html; charset=utf-8", headers=headers)
    return Response(page.html, media_type="text/html; charset=utf-8", headers=page.headers)


@submitting.post(
    "/api/jobs",
    status_code=202,
    response_model=JobCreated,
    responses=errors(400, 403, 409, 413, 415, 429, 503, "4XX"),
    summary="Ask for an image",
    openapi_extra={"parameters": [IDEMPOTENCY_KEY_PARAMETER]},
)
async def create_job(request: Request, body: JobRequest) -> Response:
    """Validate, reserve the credits and queue; 202 with the job id, or one sentence why not."""
    if body.image is None:
        image_request = parse_prompt(body.prompt, **body.defaults())
    else:  # Pillow decodes the picture: off the event loop
        defaults = body.defaults()
        image_request = await asyncio.to_thread(parse_prompt, body.prompt, image=body.image, **defaults)
    return await _submit(request, image_request)


async def _submit(request: Request, image_request: ImageRequest) -> Response:
    """Queue a checked request as a web job (idempotent on the Idempotency-Key); 202 or 409."""
    web = web_of(request)
    client = client_of(request)
    idempotency_key = request.headers.get("idempotency-key")  # checked with the head (limits.py)
    job = await web.pickups.submit(
        client.user_id,
        image_request,
        job_id=job_id_for(web.service, client, idempotency_key),
        reply={"front": "web"},
    )
    headers = {"Location": f"/api/jobs/{job.id}", **NO_STORE}
    if job.duplicate:
        if not _same_request(job.request, image_request):
            return error_response(
                409,
                "This Idempotency-Key was already used for a different request; "
                "use a new key for a new image.",
                "conflict",
            )
        headers["Idempotent-Replayed"] = "true"
    return JSON(job_created(job), status_code=202, headers=headers)


async def _find(web: WebState, job_id: str) -> tuple[Job, Waiting | None] | None:
    if not job_id.startswith(JOB_PREFIX):
        return None  # other fronts' jobs are not the web's to show
    return await web.pickups.find(job_id)


@router.get(
    "/api/jobs/{job_id}",
    response_model=JobView,
    responses=errors(400, 404),
    summary="A job's status, progress and images",
    openapi_extra={"parameters": [JOB_ID_PARAMETER, *POLL_PARAMETERS]},
)
async def get_job(request: Request) -> Response:
    """Parameters are read by hand: this route is polled, and FastAPI's parameter machinery
    costs more than the rest of the request."""
    web = web_of(request)
    job_id: str = request.path_params["job_id"]
    query = request.query_params
    wait = wait_seconds(query.get("wait"), web.options.max_wait_seconds)
    after = query.get("after")
    if after is not None and len(after) > 100:
        return error_response(400, "after takes a tag of at most 100 characters.", "invalid")
    found = await _find(web, job_id)
    if found is None:
        return error_response(404, f"There is no web job {quoted(job_id)}.", "not_found")
    job, waiting = found
    if wait > 0 and after != "" and not job.status.finished and web.service.job(job_id) is None:

        async def reread() -> Job | None:
            again = await _find(web, job_id)
            return None if again is None else again[0]

        seconds = min(wait, web.options.max_wait_seconds)
        job = await wait_in_store(job, after or tag(job), seconds, web.stopping, reread)
    elif wait > 0 and after != "" and not job.status.finished:
        await wait_for_change(
            job,
            after or tag(job),
            min(wait, web.options.max_wait_seconds),
            web.stopping,
            pace=web.options.poll_pace_seconds,
            queued_pace=web.options.queued_poll_pace_seconds,
        )
    stored = await web.pickups.seen(job, waiting)
    return JSON(job_view(job, waiting, stored), headers=NO_STORE)


@router.get(
    "/api/jobs/{job_id}/images/{name}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **errors(404, 410)},
    summary="One image of a job, as PNG; the first download charges the job's credits",
    openapi_extra={"parameters": [JOB_ID_PARAMETER, IMAGE_NAME_PARAMETER]},
)
async def get_image(request: Request) -> Response:
    web = web_of(request)
    job_id: str = request.path_params["job_id"]
    name: str = request.path_params["name"]
    match = _IMAGE_NAME.fullmatch(name)
    found = await _find(web, job_id) if match else None
    no_image = f"There is no image {quoted(name)} of web job {quoted(job_id)}."
    if found is None or match is None:
        return error_response(404, no_image, "not_found")
    job, waiting = found
    index = int(match[1])
    try:
        png = await web.pickups.download(job, waiting, index)
    except ImageGone as gone:
        return error_response(410, str(gone), "expired")
    except StoreUnavailable:
        return error_response(503, STORE_DOWN, "busy", retry_after=5)
    if png is None:
        return error_response(404, no_image, "not_found")
    result = job.result
    seed = result.seeds[index] if result is not None and index < len(result.seeds) else index
    headers = {
        "Cache-Control": f"private, max-age={int(web.options.image_ttl_seconds)}, immutable",
        "Content-Disposition": f'inline; filename="imagine-{seed}.png"',
        "X-Content-Type-Options": "nosniff",
    }
    return Response(png, media_type="image/png", headers=headers)


_ACTION_RESPONSES = errors(400, 403, 404, 409, 410, 413, 415, 429, 503, "4XX")


@acting.post(
    "/api/jobs/{job_id}/images/{n}/upscale",
    status_code=202,
    response_model=JobCreated,
    responses=_ACTION_RESPONSES,
    summary="Upscale one image of a job: twice each side (up to 2048), refined with its prompt and seed",
    openapi_extra={"parameters": [JOB_ID_PARAMETER, IMAGE_INDEX_PARAMETER, IDEMPOTENCY_KEY_PARAMETER]},
)
async def upscale_image(request: Request, body: UpscaleRequest | None = None) -> Response:
    """202 with the new job; the source image comes from this front's own store, never a URL."""
    return await _act(request, "upscale", None)


@acting.post(
    "/api/jobs/{job_id}/images/{n}/vary",
    status_code=202,
    response_model=JobCreated,
    responses=_ACTION_RESPONSES,
    summary="Vary one image of a job: its composition kept (subtle) or loosened (strong), a new seed",
    openapi_extra={"parameters": [JOB_ID_PARAMETER, IMAGE_INDEX_PARAMETER, IDEMPOTENCY_KEY_PARAMETER]},
)
async def vary_image(request: Request, body: VaryRequest | None = None) -> Response:
    strength = (body or VaryRequest()).strength
    if strength == "strong":
        return await _act(request, "vary_strong", None)
    return await _act(request, "vary", None if strength == "subtle" else float(strength))


async def _act(request: Request, action: str, strength: float | None) -> Response:
    """An image action on image ``n`` of a web job whose image this front still keeps."""
    web = web_of(request)
    job_id: str = request.path_params["job_id"]
    n: str = request.path_params["n"]
    found = await _find(web, job_id) if _IMAGE_INDEX.fullmatch(n) else None
    no_image = f"There is no image {quoted(n)} of web job {quoted(job_id)}."
    if found is None:
        return error_response(404, no_image, "not_found")
    job, waiting = found
    index = int(n)
    try:  # acting on an image is using it: its job is charged like a download
        png = await web.pickups.download(job, waiting, index)
    except ImageGone as gone:
        return error_response(410, f"{gone} Make a new image to act on.", "expired")
    except StoreUnavailable:
        return error_response(503, STORE_DOWN, "busy", retry_after=5)
    if png is None:
        return error_response(404, no_image, "not_found")
    source = job.request
    if job.result is not None and job.result.seeds:
        source = source.with_seed(job.result.seeds[0])
    action_request_ = await asyncio.to_thread(action_request, source, png, action, index)
    if strength is not None:
        action_request_ = replace(action_request_, strength=strength)
    return await _submit(request, validate(action_request_))


@router.get("/api/quota", response_model=Quota, summary="Your credits: used, left, and when they reset")
async def get_quota(request: Request) -> Response:
    service = web_of(request).service
    user_id = client_of(request).user_id
    state = await service.quota(user_id)
    return JSON(quota_view(user_id, state, service.quota_text(state), time.time()), headers=NO_STORE)


@router.get("/healthz", response_model=Health, responses=errors(503), summary="Liveness and backend state")
async def healthz(request: Request) -> Response:
    web = web_of(request)
    service = web.service
    try:
        service.backend.check_available()
        available = True
    except Exception:
        available = False
    status = "stopping" if web.stopping.is_set() else "ok" if service.store_ok else "degraded"
    body = {
        "status": status,
        "backend": service.backend.name,
        "available": available,
        "queue": service.queue_length,
    }
    return JSON(body, status_code=200 if status == "ok" else 503, headers=NO_STORE)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
    summary="Prometheus metrics",
)
async def metrics(request: Request) -> Response:
    web = web_of(request)
    service = web.service
    text = service.metrics.render(queue_length=await service.waiting_jobs())
    text += (
        "# HELP imagine_web_images_kept_bytes PNG bytes the web front keeps for download.\n"
        "# TYPE imagine_web_images_kept_bytes gauge\n"
        f"imagine_web_images_kept_bytes {web.pickups.image_bytes}\n"
        "# HELP imagine_web_jobs_kept Web jobs kept for status and download.\n"
        "# TYPE imagine_web_jobs_kept gauge\n"
        f"imagine_web_jobs_kept {len(web.pickups.jobs)}\n"
        "# HELP imagine_web_images_stored_bytes PNG bytes stored for download (folder or database).\n"
        "# TYPE imagine_web_images_stored_bytes gauge\n"
        f"imagine_web_images_stored_bytes {web.pickups.images.stored_bytes}\n"
        "# HELP imagine_store_up 1 while the database answers, 0 while it fails.\n"
        "# TYPE imagine_store_up gauge\n"
        f"imagine_store_up {int(service.store_ok)}\n"
    )
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


# --- the app -------------------------------------------------------------------------------------


def create_app(
    settings: Settings,
    service: ImagineService,
    options: WebOptions | None = None,
    images: ImageStore | None = None,
) -> tuple[FastAPI, WebState]:
    """The ASGI app and its state; :class:`WebFront` serves it, tests may too."""
    options = options or WebOptions()
    if images is None:
        images = open_image_store(
            service.db,
            settings.data_dir / "web-images",
            budget_bytes=options.image_cache_bytes,
            ttl_seconds=options.image_ttl_seconds,
        )
    web = WebState(
        settings=settings,
        service=service,
        options=options,
        resolver=ClientResolver(trusted_proxies=settings.trusted_proxies, blocked=settings.blocked_ips),
        limiter=RateLimiter(options.post_rate, options.post_burst) if options.post_rate else None,
        page=Page.load(),
        admin_page=Page.load(ADMIN_PAGE),
        pickups=Pickups(service, images, options.pickup),
    )
    app = FastAPI(
        title="Imagine",
        version="1",
        summary="Stable Diffusion images through the Imagine gateway: quotas, queue, refunds.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        exception_handlers={
            StarletteHTTPException: http_error,
            BodyTooLarge: too_large,
            BodyEndedEarly: client_gone,
            ClientDisconnect: client_gone,
            RequestValidationError: invalid_request,
            ImagineError: refused,
            Exception: crashed,
        },
    )
    app.state.web = web
    app.add_middleware(ClientMiddleware, web=web)
    app.include_router(router)
    app.include_router(submitting)
    app.include_router(acting)
    app.include_router(admin.page_router)
    app.include_router(admin.router)
    return app, web


# --- serving -------------------------------------------------------------------------------------


class WebFront:
    """The page and the API, served by uvicorn on ``IMAGINE_WEB_HOST:IMAGINE_WEB_PORT``."""

    name = "web"

    def __init__(
        self, settings: Settings, service: ImagineService, options: WebOptions | None = None
    ) -> None:
        self.settings = settings
        self.service = service
        self.app, self.state = create_app(settings, service, options)
        self.url: str | None = None
        self._server: EmbeddedServer | None = None
        self._serving: asyncio.Task[None] | None = None
        self._sweeping: asyncio.Task[None] | None = None

    async def start(self) -> str:
        host, port = self.settings.web_host, self.settings.web_port
        sock = listen(host, port)
        bound_port = sock.getsockname()[1]
        options = self.state.options
        limits = ConnectionLimits(
            options.header_timeout_seconds, options.body_timeout_seconds, options.max_connections
        )
        self._server = EmbeddedServer(server_config(self.app, limits, options.graceful_shutdown_seconds))
        self._serving = asyncio.create_task(self._server.serve(sockets=[sock]), name="imagine-web")
        while not self._server.started:
            if self._serving.done():
                sock.close()
                self._serving.result()
                raise RuntimeError(f"The web front did not start on {host}:{bound_port}.")
            await asyncio.sleep(0.01)
        self._sweeping = asyncio.create_task(self._sweep_forever(), name="imagine-web-sweep")
        shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, host)
        if ":" in shown and not shown.startswith("["):
            shown = f"[{shown}]"
        self.url = f"http://{shown}:{bound_port}/"
        return self.url

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.state.options.sweep_seconds)
            try:
                await self.state.pickups.sweep()
            except Exception:
                log.exception("web sweep failed")

    async def stop(self) -> None:
        self.state.stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._serving is not None:
            with contextlib.suppress(Exception):
                await self._serving
        if self._sweeping is not None:
            self._sweeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeping
