"""The web front: the page at ``/`` and the JSON API of DESIGN.md, on uvicorn inside the `imagine` process.

``POST /api/jobs`` only reads and checks the body and hands it to the gateway, which validates,
reserves the credits and queues the job; every other route reads what the gateway keeps. A web job
is charged when its image is first downloaded (the gateway's ``confirm_delivery``): an image that
nobody fetched, because the tab was closed or the server stopped, is refunded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import logging
import math
import re
import time
import uuid
from base64 import b64encode
from collections import OrderedDict
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import (
    MAX_NUMBER_DIGITS,
    Banned,
    Busy,
    DeliveryRefused,
    ImagineError,
    InvalidRequest,
    NotAllowed,
    OutOfCredits,
    elided,
    quoted,
)
from gateway.images import ImageStore
from gateway.jobs import Job, JobStatus, JobUpdate
from gateway.messages import duration, next_reset, queue_text, result_caption
from gateway.request import (
    MAX_GUIDANCE,
    MAX_IMAGES,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    MIN_GUIDANCE,
    MIN_IMAGES,
    MIN_SIDE,
    MIN_STEPS,
    SCHEDULERS,
    SIDE_STEP,
    TOO_LONG_NUMBER,
    ImageRequest,
    parse_prompt,
)
from gateway.service import ImagineService
from gateway.settings import Settings
from gateway.web.guard import Client, ClientResolver, RateLimiter
from gateway.web.server import ConnectionLimits, EmbeddedServer, listen, server_config
from storage import StoreUnavailable

log = logging.getLogger("imagine.web")

PAGE = Path(__file__).with_name("static") / "index.html"
CLIENT_KEY = "imagine.client"
JOB_PREFIX = "web:"
_IMAGE_NAME = re.compile(r"(\d{1,2})\.png")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_JSON_TYPE = re.compile(r"application/(?:[\w.+-]+\+)?json\s*(?:;.*)?", re.IGNORECASE)
BODY_HELP = 'The request body must be a JSON object like {"prompt": "a lighthouse at dusk --ar 16:9"}.'


@dataclass(frozen=True)
class WebOptions:
    """Limits of the web front; the defaults are what `imagine web` runs with."""

    max_body_bytes: int = 16 * 1024
    #: A finished image waits this long for its first download; then it is refunded.
    pickup_seconds: float = 300.0
    #: Images stay downloadable this long after the job ends (while the disk budget allows).
    image_ttl_seconds: float = 3600.0
    #: PNG bytes kept on disk (under the data folder) for download; the oldest go first past it.
    image_cache_bytes: int = 1024 * 1024 * 1024
    max_kept_jobs: int = 20_000
    #: ``POST /api/jobs`` per client: a burst, then this many a second (None: no limit).
    post_rate: float | None = 0.5
    post_burst: int = 10
    max_wait_seconds: float = 30.0
    #: A long poll answers news no sooner than this (unless the job finished): polls per client are bounded.
    poll_pace_seconds: float = 0.5
    queued_poll_pace_seconds: float = 2.0
    sweep_seconds: float = 5.0
    graceful_shutdown_seconds: int = 5
    #: A request head, then its body, must arrive within these (else 408 and the connection closes).
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 10.0
    #: Open connections at most (fewer if the open-file limit is low); see gateway/web/server.py.
    max_connections: int = 1000


# --- OpenAPI models (documentation; the handlers check bodies themselves for one clear sentence) ----


class JobRequest(BaseModel):
    """``prompt`` carries the inline flags of DESIGN.md; the other fields are optional typed
    defaults (like the Discord options), and flags in the prompt win over them."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(examples=["a lighthouse at dusk, oil painting --ar 16:9 --seed 42"])
    negative_prompt: str | None = Field(None, description="What to leave out (`--no`).")
    width: int | None = Field(None, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=SIDE_STEP)
    height: int | None = Field(None, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=SIDE_STEP)
    steps: int | None = Field(None, ge=MIN_STEPS, le=MAX_STEPS)
    guidance: float | None = Field(None, ge=MIN_GUIDANCE, le=MAX_GUIDANCE)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    num_images: int | None = Field(None, ge=MIN_IMAGES, le=MAX_IMAGES)
    scheduler: Literal[SCHEDULERS] | None = None  # type: ignore[valid-type]


class JobCreated(BaseModel):
    id: str = Field(examples=["web:4f0c8b0e-3c1d-4b53-9b8e-0d6f1f0a2b3c"])
    status: Literal["queued", "running", "succeeded", "failed"]
    position: int = Field(description="Jobs ahead of this one.")
    tag: str = Field(description="Pass it as `after` to GET /api/jobs/{id} to wait for news at once.")


class JobView(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    position: int = Field(description="Jobs ahead of this one while queued; 0 otherwise.")
    progress: float = Field(ge=0, le=1)
    step: int
    total_steps: int
    message: str = Field(description="The job's state in words, as the chat bots say it.")
    images: list[str] = Field(description="URLs of the PNGs, downloadable for a limited time.")
    expired: bool = Field(description="The job succeeded but its images are no longer kept.")
    error: str | None = Field(description="Why the job failed, in one sentence.")
    refunded: bool = Field(description="The job's credits were given back.")
    prompt: str
    request: str = Field(description="The request as prompt and flags, to make it again.")
    width: int
    height: int
    seeds: list[int]
    caption: str | None
    credits_left: int | None
    notes: list[str]
    tag: str = Field(description="Changes whenever the job does; pass it as `after` to wait for news.")


class Quota(BaseModel):
    user: str
    allowance: int
    used: int
    bonus: int
    reserved: int
    remaining: int
    unlimited: bool
    override: bool
    resets_at: str
    text: str


class Health(BaseModel):
    status: Literal["ok", "degraded", "stopping"] = Field(
        description="`degraded` (503) while the database does not answer."
    )
    backend: str
    available: bool
    queue: int


class ErrorBody(BaseModel):
    error: str = Field(description="One sentence that names the problem; show it as it is.")
    kind: str = Field(description="invalid, out_of_credits, busy, rate_limited, banned, blocked, ...")


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "The input cannot be used (nothing was charged).",
        403: "The address is blocked or the user is banned.",
        404: "No such web job.",
        409: "The Idempotency-Key was used for a different request.",
        410: "The image is no longer kept.",
        413: "The body is too large.",
        415: "The body is not JSON.",
        429: "Out of credits, too many jobs in progress, too many requests, or busy; see Retry-After.",
        503: "Imagine is stopping, or its database does not answer; see Retry-After.",
    }
    return {status: {"model": ErrorBody, "description": described[status]} for status in statuses}


JOB_ID_PARAMETER: dict[str, Any] = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "description": "The id POST /api/jobs answered, `web:<uuid>`.",
    "schema": {"type": "string"},
}
IMAGE_NAME_PARAMETER: dict[str, Any] = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "`0.png` for the first image, `1.png` for the second, ...",
    "schema": {"type": "string", "pattern": "^[0-9]{1,2}[.]png$"},
}
POLL_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "wait",
        "in": "query",
        "required": False,
        "description": "Seconds to wait for news (long polling); 0 answers at once.",
        "schema": {"type": "number", "minimum": 0, "maximum": 30, "default": 0},
    },
    {
        "name": "after",
        "in": "query",
        "required": False,
        "description": "The `tag` last seen: wait until the job moves on from it. News comes at most "
        "every half second while the job runs, and at once when it finishes.",
        "schema": {"type": "string", "maxLength": 100},
    },
]


def _seconds(raw: str | None, limit: float) -> float:
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 <= value <= limit:
        raise InvalidRequest(f"wait takes a number of seconds from 0 to {limit:g}; got {quoted(raw)}.")
    return value


# --- responses -----------------------------------------------------------------------------------


class JSON(Response):
    """Compact ASCII JSON: cheap to make, and never fails on odd characters."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode()


NO_STORE = {"Cache-Control": "no-store"}


def error_response(
    status: int,
    message: str,
    kind: str,
    *,
    retry_after: float | None = None,
    headers: dict[str, str] | None = None,
) -> JSON:
    all_headers = dict(NO_STORE)
    if retry_after is not None:
        all_headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    if headers:
        all_headers.update(headers)
    return JSON({"error": message, "kind": kind}, status_code=status, headers=all_headers)


def refusal(error: ImagineError, now: float) -> JSON:
    """The HTTP answer for a gateway error raised before anything was charged."""
    if isinstance(error, InvalidRequest):
        return error_response(400, str(error), error.kind)
    if isinstance(error, Banned | NotAllowed):
        return error_response(403, str(error), error.kind)
    if isinstance(error, OutOfCredits):
        return error_response(429, str(error), error.kind, retry_after=error.resets_at.timestamp() - now)
    if isinstance(error, Busy):
        return error_response(429, str(error), error.kind, retry_after=error.retry_after)
    return error_response(400, str(error), error.kind)


# --- the job body --------------------------------------------------------------------------------

#: Each typed field's JSON types and the words for them; whether a number is whole and in range is
#: the gateway's check, with the sentence its flag gets.
_TYPED_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "negative_prompt": ((str,), "text"),
    "width": ((int, float), "a whole number"),
    "height": ((int, float), "a whole number"),
    "steps": ((int, float), "a whole number"),
    "guidance": ((int, float), "a number"),
    "seed": ((int, float), "a whole number"),
    "num_images": ((int, float), "a whole number"),
    "scheduler": ((str,), "text"),
}
_KNOWN_FIELDS = ("prompt", *_TYPED_FIELDS)


def _json_int(digits: str) -> int:
    """Past 20 digits a JSON number stands as TOO_LONG_NUMBER: int() of a huge string is slow or refused."""
    if len(digits.lstrip("-")) > MAX_NUMBER_DIGITS:
        return -TOO_LONG_NUMBER if digits.startswith("-") else TOO_LONG_NUMBER
    return int(digits)


def read_job_body(body: bytes) -> tuple[str, dict[str, Any]]:
    """``(prompt text, typed defaults)`` from a POST body, or :class:`InvalidRequest` with the sentence.

    A whole number written as a float (``21.0``, as some JSON encoders write it) counts as that number;
    :func:`parse_prompt` checks each typed field against its range before the prompt's flags override it.
    """
    try:
        data = json.loads(body, parse_int=_json_int)
    except (ValueError, RecursionError):
        raise InvalidRequest(BODY_HELP) from None
    if not isinstance(data, dict):
        raise InvalidRequest(BODY_HELP)
    for name in data:
        if name not in _KNOWN_FIELDS:
            raise InvalidRequest(
                f"Unknown field {elided(json.dumps(name))}; the known fields are {', '.join(_KNOWN_FIELDS)}."
            )
    prompt = data.get("prompt")
    if not isinstance(prompt, str):
        raise InvalidRequest(
            'The request needs "prompt": the text of the image you want, with any flags, '
            'e.g. {"prompt": "a lighthouse at dusk --ar 16:9"}.'
        )
    _check_text("prompt", prompt)
    defaults: dict[str, Any] = {}
    for name, (kinds, what) in _TYPED_FIELDS.items():
        value = data.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise InvalidRequest(f'"{name}" must be {what}; got {elided(json.dumps(value))}.')
        if isinstance(value, str):
            _check_text(name, value)
        elif what == "a whole number" and isinstance(value, float) and value.is_integer():
            value = int(value)
        defaults[name] = value
    return prompt, defaults


def _check_text(name: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(
            f'"{name}" contains a character that is not valid text (an unpaired surrogate); remove it.'
        ) from None


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


# --- web jobs and their images -------------------------------------------------------------------


@dataclass(eq=False)
class WebJob:
    """A job submitted here, kept while its images may be downloaded."""

    job: Job
    submitted_at: float
    finished_at: float | None = None
    delivered_at: float | None = None
    refund_error: str | None = None  # the image was not fetched in time and was refunded
    stored: bool = False  # the images are on disk; the job keeps no pixels in memory

    @property
    def image_bytes(self) -> int:
        result = self.job.result
        return result.image_bytes if result is not None else 0


@dataclass
class WebJobs:
    options: WebOptions
    jobs: OrderedDict[str, WebJob] = field(default_factory=OrderedDict)

    def add(self, job: Job, now: float) -> None:
        self.jobs[job.id] = WebJob(job, now)

    def get(self, job_id: str) -> WebJob | None:
        return self.jobs.get(job_id)

    def awaiting_pickup(self, now: float) -> list[WebJob]:
        """Jobs whose images were made but not fetched within the pickup time."""
        late = []
        for web in self.jobs.values():
            if web.finished_at is None and web.job.status.finished:
                web.finished_at = now
            if (
                web.job.status is JobStatus.SUCCEEDED
                and web.delivered_at is None
                and web.refund_error is None
                and web.finished_at is not None
                and now - web.finished_at >= self.options.pickup_seconds
            ):
                late.append(web)
        return late

    def forget_old(self, now: float) -> None:
        """Drop jobs past the image lifetime, then the oldest finished ones while over the limits."""
        ttl = self.options.image_ttl_seconds
        total = 0
        for job_id, web in list(self.jobs.items()):
            if self._settled(web) and web.finished_at is not None and now - web.finished_at >= ttl:
                del self.jobs[job_id]
            else:
                total += web.image_bytes
        if total <= self.options.image_cache_bytes and len(self.jobs) <= self.options.max_kept_jobs:
            return
        for job_id, web in list(self.jobs.items()):
            if total <= self.options.image_cache_bytes and len(self.jobs) <= self.options.max_kept_jobs:
                break
            if self._settled(web):
                total -= web.image_bytes
                del self.jobs[job_id]

    @staticmethod
    def _settled(web: WebJob) -> bool:
        """Finished, and nothing more to charge or refund: safe to forget."""
        job = web.job
        if not job.status.finished:
            return False
        return job.status is JobStatus.FAILED or web.delivered_at is not None or web.refund_error is not None

    @property
    def image_bytes(self) -> int:
        return sum(web.image_bytes for web in self.jobs.values())


def _tag(job: Job) -> str:
    return f"{job.status.value}.{job.position}.{job.step}"


def _message(job: Job, web: WebJob | None) -> str:
    if web is not None and web.refund_error is not None:
        return web.refund_error
    if job.status is JobStatus.QUEUED:
        return queue_text(job.position)
    if job.status is JobStatus.RUNNING:
        return f"Making your image… step {job.step} of {job.total_steps}."
    if job.status is JobStatus.SUCCEEDED:
        return "Done."
    return str(job.error) if job.error is not None else "The job failed; its credits were refunded."


def job_view(job: Job, web: WebJob | None, stored: int = 0) -> dict[str, Any]:
    """The job as JSON; ``stored``: images on disk of a job this process no longer follows."""
    request = job.request
    result = job.result
    status = job.status.value
    error = str(job.error) if job.error is not None else None
    refunded = bool(job.error is not None and job.error.refunded)
    images: list[str] = []
    expired = False
    if web is not None and web.refund_error is not None:
        status, error, refunded = "failed", web.refund_error, True
    elif job.status is JobStatus.SUCCEEDED:
        count = result.image_count if web is not None and result is not None else stored
        if count:
            images = [f"/api/jobs/{job.id}/images/{i}.png" for i in range(count)]
        else:
            expired = True
    if result is not None:
        seeds = list(result.seeds)
    elif request.seed is not None:
        seeds = [request.seed + i for i in range(request.num_images)]
    else:
        seeds = []
    return {
        "id": job.id,
        "status": status,
        "position": job.position if job.status is JobStatus.QUEUED else 0,
        "progress": round(job.progress, 4),
        "step": job.step,
        "total_steps": job.total_steps,
        "message": _message(job, web),
        "images": images,
        "expired": expired,
        "error": error,
        "refunded": refunded,
        "prompt": request.prompt,
        "request": request.describe(),
        "width": request.width,
        "height": request.height,
        "seeds": seeds,
        "caption": result_caption(result) if result is not None and images else None,
        "credits_left": result.credits_left if result is not None else job.credits_left,
        "notes": list(result.notes) if result is not None else [],
        "tag": _tag(job) if web is None or web.refund_error is None else "refunded",
    }


#: How often a long poll of a queued job looks at it (instead of waking at each move of the queue).
QUEUED_LOOK_SECONDS = 0.05


async def wait_for_change(
    job: Job,
    after: str,
    seconds: float,
    stopping: asyncio.Event,
    *,
    pace: float = 0.0,
    queued_pace: float = 0.0,
) -> None:
    """Return when the job's tag differs from ``after``, after ``seconds``, or when stopping.

    News is answered no sooner than ``pace`` seconds after the request came (``queued_pace`` while
    the job waits in the queue), unless the job finished: each waiting client costs at most one
    request per pace however fast its steps and queue position move. A queued job is looked at
    every ``QUEUED_LOOK_SECONDS`` rather than followed: a long queue moves every waiting job at
    each start, and following them all would cost a wake-up per waiting client per job started.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + seconds
    while job.status is JobStatus.QUEUED:
        now = loop.time()
        if stopping.is_set() or now >= deadline:
            return
        if _tag(job) != after and now - started >= queued_pace:
            return
        await asyncio.sleep(min(QUEUED_LOOK_SECONDS, deadline - now))
    if job.status.finished:
        return

    async def changed() -> None:
        async with contextlib.aclosing(cast(AsyncGenerator[JobUpdate, None], job.updates())) as updates:
            async for update in updates:
                if update.status.finished:
                    return
                if _tag(job) != after:
                    break
            else:
                return
            early = pace - (loop.time() - started)
            if early > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(early):
                        async for later in updates:
                            if later.status.finished:
                                return

    waiters = [asyncio.ensure_future(changed()), asyncio.ensure_future(stopping.wait())]
    try:
        await asyncio.wait(waiters, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


# --- the page ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    html: bytes
    gzipped: bytes
    etag: str
    headers: dict[str, str]

    @classmethod
    def load(cls, path: Path = PAGE) -> Page:
        html = path.read_bytes()
        text = html.decode("utf-8")
        scripts = re.findall(r"<script>(.*?)</script>", text, re.DOTALL)
        styles = re.findall(r"<style>(.*?)</style>", text, re.DOTALL)

        def sources(blocks: list[str]) -> str:
            hashes = (b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in blocks)
            return " ".join(f"'sha256-{h}'" for h in hashes) or "'none'"

        csp = (
            f"default-src 'none'; script-src {sources(scripts)}; style-src {sources(styles)}; "
            "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'"
        )
        etag = '"' + hashlib.sha256(html).hexdigest()[:20] + '"'
        headers = {
            "Content-Security-Policy": csp,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
            "ETag": etag,
            "Vary": "Accept-Encoding",
        }
        return cls(html, gzip.compress(html, 9, mtime=0), etag, headers)


# --- middleware: who is asking, blocked addresses, request counts --------------------------------

_ROUTES = frozenset({"/", "/api/jobs", "/api/quota", "/healthz", "/metrics", "/openapi.json"})


def route_label(path: str) -> str:
    if path.startswith("/api/jobs/"):
        return "/api/jobs/{id}/images/{n}" if "/images/" in path else "/api/jobs/{id}"
    return path if path in _ROUTES else "other"


class ClientMiddleware:
    """Resolve the client once per request, refuse blocked addresses, count responses by route."""

    def __init__(self, app: ASGIApp, web: WebState) -> None:
        self.app = app
        self.web = web

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        peer = scope.get("client")
        forwarded = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"]
        client = self.web.resolver.resolve(peer[0] if peer else None, forwarded)
        scope[CLIENT_KEY] = client
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if client.blocked:
                response = error_response(
                    403, "Requests from your address are blocked by this Imagine server.", "blocked"
                )
                await response(scope, receive, send_counted)
            else:
                await self.app(scope, receive, send_counted)
        finally:
            self.web.service.metrics.http_request(route_label(scope["path"]), status)


# --- the app -------------------------------------------------------------------------------------


@dataclass(eq=False)
class WebState:
    settings: Settings
    service: ImagineService
    options: WebOptions
    resolver: ClientResolver
    limiter: RateLimiter | None
    page: Page
    jobs: WebJobs
    images: ImageStore
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    keeping: set[asyncio.Task[None]] = field(default_factory=set)  # jobs whose images go to disk


async def keep_on_disk(web: WebState, known: WebJob) -> None:
    """Once a web job's images are made, move them to the disk store and out of memory."""
    job = known.job
    async for update in job.updates():
        if update.status.finished:
            break
    result = job.result
    if job.status is not JobStatus.SUCCEEDED or result is None or not result.images:
        return
    try:
        await asyncio.to_thread(web.images.put, job.id, list(result.images))
    except OSError as exc:  # a full disk: the images stay in memory until the job is forgotten
        log.error("could not keep the images of %s on disk: %s", job.id, exc)
        return
    known.stored = True
    web.service.release_images(job)


def _client(request: Request) -> Client:
    client: Client = request.scope[CLIENT_KEY]
    return client


async def read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is larger than ``limit`` bytes (read no further than that)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    settings: Settings,
    service: ImagineService,
    options: WebOptions | None = None,
    images: ImageStore | None = None,
) -> tuple[FastAPI, WebState]:
    """The ASGI app and its state; :class:`WebFront` serves it, tests may too."""
    options = options or WebOptions()
    if images is None:
        images = ImageStore(
            settings.data_dir / "web-images",
            budget_bytes=options.image_cache_bytes,
            ttl_seconds=options.image_ttl_seconds,
        ).open()
    web = WebState(
        settings=settings,
        service=service,
        options=options,
        resolver=ClientResolver(trusted_proxies=settings.trusted_proxies, blocked=settings.blocked_ips),
        limiter=RateLimiter(options.post_rate, options.post_burst) if options.post_rate else None,
        page=Page.load(),
        jobs=WebJobs(options),
        images=images,
    )

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

    async def invalid_parameters(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = []
        for problem in exc.errors()[:3]:
            where = ".".join(str(part) for part in problem.get("loc", ())[1:]) or "request"
            problems.append(f"{where}: {str(problem.get('msg', 'invalid')).rstrip('.')}")
        return error_response(400, "; ".join(problems) + ".", "invalid")

    async def crashed(request: Request, exc: Exception) -> Response:
        log.error("web request %s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, "Something went wrong inside Imagine; please try again.", "internal")

    async def client_gone(request: Request, exc: Exception) -> Response:
        """A client that leaves mid-body is no fault of ours: one quiet line, and nothing is charged."""
        log.debug("web client left before its request body ended: %s %s", request.method, request.url.path)
        return error_response(400, "The request body ended early.", "invalid")  # nobody reads it

    app = FastAPI(
        title="Imagine",
        version="1",
        summary="Stable Diffusion images through the Imagine gateway: quotas, queue, refunds.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        exception_handlers={
            StarletteHTTPException: http_error,
            RequestValidationError: invalid_parameters,
            ClientDisconnect: client_gone,
            Exception: crashed,
        },
    )
    app.add_middleware(ClientMiddleware, web=web)

    def openapi() -> dict[str, Any]:
        """FastAPI's schema without its 422 answers: this API answers bad input with 400 and a sentence."""
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/", include_in_schema=False)
    async def page(request: Request) -> Response:
        page = web.page
        if request.headers.get("if-none-match") == page.etag:
            return Response(status_code=304, headers=page.headers)
        if "gzip" in request.headers.get("accept-encoding", ""):
            headers = {**page.headers, "Content-Encoding": "gzip"}
            return Response(page.gzipped, media_type="text/html; charset=utf-8", headers=headers)
        return Response(page.html, media_type="text/html; charset=utf-8", headers=page.headers)

    @app.post(
        "/api/jobs",
        status_code=202,
        response_model=JobCreated,
        responses=_errors(400, 403, 409, 413, 415, 429, 503),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": JobRequest.model_json_schema()}},
            },
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "Send the same key again (e.g. after a network error) to get the same "
                    "job instead of a second one; 1 to 255 visible ASCII characters.",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
                }
            ],
        },
        summary="Ask for an image",
    )
    async def create_job(request: Request) -> Response:
        """Validate, reserve the credits and queue; 202 with the job id, or one sentence why not."""
        client = _client(request)
        service = web.service
        now = time.time()
        if web.stopping.is_set():
            return error_response(
                503, "Imagine is restarting; try again in a minute.", "busy", retry_after=60
            )
        if web.limiter is not None and not service.is_admin(client.user_id):
            wait = web.limiter.take(client.user_id)
            if wait:
                return error_response(
                    429,
                    f"Too many requests from your address; try again in {duration(math.ceil(wait))}.",
                    "rate_limited",
                    retry_after=wait,
                )
        content_type = request.headers.get("content-type", "")
        if not _JSON_TYPE.fullmatch(content_type):
            return error_response(
                415, f"Send the request as JSON (Content-Type: application/json). {BODY_HELP}", "unsupported"
            )
        key = request.headers.get("idempotency-key")
        if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
            return error_response(
                400,
                "The Idempotency-Key header must be 1 to 255 visible ASCII characters, e.g. a UUID.",
                "invalid",
            )
        body = await read_body(request, web.options.max_body_bytes)
        if body is None:
            return error_response(
                413, f"The request body is larger than {web.options.max_body_bytes} bytes.", "too_large"
            )
        try:
            text, defaults = read_job_body(body)
            image_request = parse_prompt(text, **defaults)
            job = await service.submit(
                client.user_id,
                image_request,
                job_id=job_id_for(service, client, key),
                reply={"front": "web"},
                confirm_delivery=True,
            )
        except ImagineError as error:
            return refusal(error, now)
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
        else:
            web.jobs.add(job, now)
            known = web.jobs.get(job.id)
            assert known is not None
            keeping = asyncio.create_task(keep_on_disk(web, known), name=f"keep {job.id}")
            web.keeping.add(keeping)
            keeping.add_done_callback(web.keeping.discard)
        body_out = {"id": job.id, "status": job.status.value, "position": job.position, "tag": _tag(job)}
        return JSON(body_out, status_code=202, headers=headers)

    async def find(job_id: str) -> tuple[Job, WebJob | None] | None:
        if not job_id.startswith(JOB_PREFIX):
            return None  # other fronts' jobs are not the web's to show
        known = web.jobs.get(job_id)
        if known is not None:
            return known.job, known
        job = await web.service.find_job(job_id)
        return None if job is None else (job, None)

    @app.get(
        "/api/jobs/{job_id}",
        response_model=JobView,
        responses=_errors(400, 404),
        summary="A job's status, progress and images",
        openapi_extra={"parameters": [JOB_ID_PARAMETER, *POLL_PARAMETERS]},
    )
    async def get_job(request: Request) -> Response:
        """Parameters are read by hand: this route is polled, and FastAPI's parameter machinery
        costs more than the rest of the request."""
        job_id: str = request.path_params["job_id"]
        query = request.query_params
        try:
            wait = _seconds(query.get("wait"), web.options.max_wait_seconds)
        except InvalidRequest as error:
            return refusal(error, 0.0)
        after = query.get("after")
        if after is not None and len(after) > 100:
            return error_response(400, "after takes a tag of at most 100 characters.", "invalid")
        found = await find(job_id)
        if found is None:
            return error_response(404, f"There is no web job {quoted(job_id)}.", "not_found")
        job, known = found
        if wait > 0 and after != "" and not job.status.finished:
            timeout = min(wait, web.options.max_wait_seconds)
            await wait_for_change(
                job,
                after or _tag(job),
                timeout,
                web.stopping,
                pace=web.options.poll_pace_seconds,
                queued_pace=web.options.queued_poll_pace_seconds,
            )
        if known is not None and known.finished_at is None and job.status.finished:
            known.finished_at = time.time()
        stored = web.images.count(job.id) if known is None and job.status is JobStatus.SUCCEEDED else 0
        return JSON(job_view(job, known, stored), headers=NO_STORE)

    @app.get(
        "/api/jobs/{job_id}/images/{name}",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, **_errors(404, 410)},
        summary="One image of a job, as PNG; the first download charges the job's credits",
        openapi_extra={"parameters": [JOB_ID_PARAMETER, IMAGE_NAME_PARAMETER]},
    )
    async def get_image(request: Request) -> Response:
        job_id: str = request.path_params["job_id"]
        name: str = request.path_params["name"]
        match = _IMAGE_NAME.fullmatch(name)
        found = await find(job_id) if match else None
        if found is None or match is None:
            return error_response(
                404, f"There is no image {quoted(name)} of web job {quoted(job_id)}.", "not_found"
            )
        job, known = found
        result = job.result
        index = int(match[1])
        if known is not None and known.refund_error is not None:
            return error_response(410, known.refund_error, "expired")
        if job.status is not JobStatus.SUCCEEDED:
            return error_response(
                404, f"There is no image {quoted(name)} of web job {quoted(job_id)}.", "not_found"
            )
        # 1. The bytes first (memory, or the disk store): nothing is charged for an image that is gone.
        png = None
        if result is not None and index < len(result.images):
            png = result.images[index]
        elif index < (result.image_count if result is not None else web.images.count(job.id)):
            png = await asyncio.to_thread(web.images.get, job.id, index)
        if png is None:
            count = result.image_count if result is not None else web.images.count(job.id)
            if index < count or (result is None and job.status is JobStatus.SUCCEEDED):
                kept = duration(web.options.image_ttl_seconds)
                return error_response(
                    410, f"This image is no longer kept; images stay for {kept}.", "expired"
                )
            return error_response(
                404, f"There is no image {quoted(name)} of web job {quoted(job_id)}.", "not_found"
            )
        # 2. Charged (fenced: this process still owns the job) before a byte is served; a job read
        # back from the store after a restart is succeeded only because it was settled.
        if web.service.job(job.id) is not None:
            try:
                await web.service.settle_delivery(job.id)
            except DeliveryRefused as refused:
                if known is not None:
                    known.refund_error = str(refused)
                return error_response(410, str(refused), "expired")
            except StoreUnavailable:
                return error_response(
                    503,
                    "Imagine cannot reach its database right now; nothing was charged. Try again shortly.",
                    "busy",
                    retry_after=5,
                )
            if known is not None and known.delivered_at is None:
                known.delivered_at = time.time()
        seed = result.seeds[index] if result is not None and index < len(result.seeds) else index
        headers = {
            "Cache-Control": f"private, max-age={int(web.options.image_ttl_seconds)}, immutable",
            "Content-Disposition": f'inline; filename="imagine-{seed}.png"',
            "X-Content-Type-Options": "nosniff",
        }
        return Response(png, media_type="image/png", headers=headers)

    @app.get("/api/quota", response_model=Quota, summary="Your credits: used, left, and when they reset")
    async def get_quota(request: Request) -> Response:
        client = _client(request)
        state = await web.service.quota(client.user_id)
        now = time.time()
        body = {
            "user": client.user_id,
            "allowance": state.allowance,
            "used": state.used,
            "bonus": state.bonus,
            "reserved": state.reserved,
            "remaining": state.remaining,
            "unlimited": state.unlimited,
            "override": state.override,
            "resets_at": next_reset(now).isoformat().replace("+00:00", "Z"),
            "text": web.service.quota_text(state),
        }
        return JSON(body, headers=NO_STORE)

    @app.get("/healthz", response_model=Health, responses=_errors(503), summary="Liveness and backend state")
    async def healthz() -> Response:
        service = web.service
        try:
            service.backend.check_available()
            available = True
        except ImagineError:
            available = False
        except Exception:
            available = False
        stopping = web.stopping.is_set()
        status = "stopping" if stopping else "ok" if service.store_ok else "degraded"
        body = {
            "status": status,
            "backend": service.backend.name,
            "available": available,
            "queue": service.queue_length,
        }
        return JSON(body, status_code=200 if status == "ok" else 503, headers=NO_STORE)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}},
        summary="Prometheus metrics",
    )
    async def metrics() -> Response:
        service = web.service
        text = service.metrics.render(queue_length=await service.waiting_jobs())
        text += (
            "# HELP imagine_web_images_kept_bytes PNG bytes the web front keeps for download.\n"
            "# TYPE imagine_web_images_kept_bytes gauge\n"
            f"imagine_web_images_kept_bytes {web.jobs.image_bytes}\n"
            "# HELP imagine_web_jobs_kept Web jobs kept for status and download.\n"
            "# TYPE imagine_web_jobs_kept gauge\n"
            f"imagine_web_jobs_kept {len(web.jobs.jobs)}\n"
            "# HELP imagine_web_images_stored_bytes PNG bytes waiting on disk for download.\n"
            "# TYPE imagine_web_images_stored_bytes gauge\n"
            f"imagine_web_images_stored_bytes {web.images.bytes}\n"
            "# HELP imagine_store_up 1 while the database answers, 0 while it fails.\n"
            "# TYPE imagine_store_up gauge\n"
            f"imagine_store_up {int(service.store_ok)}\n"
        )
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    return app, web


async def sweep(web: WebState) -> None:
    """Refund images nobody fetched in time; forget jobs past the image lifetime."""
    now = time.time()
    for late in web.jobs.awaiting_pickup(now):
        reason = f"The image was not downloaded within {duration(web.options.pickup_seconds)}"
        error = await web.service.delivery_failed(late.job.id, reason)
        if error is not None:
            late.refund_error = str(error)
            await asyncio.to_thread(web.images.delete, late.job.id)
    web.jobs.forget_old(now)
    await asyncio.to_thread(web.images.sweep)


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
                await sweep(self.state)
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
