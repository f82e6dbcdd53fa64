"""The ``http`` backend: one or more workers (``imagine worker`` or any Cog container) over HTTP.

Every prediction is an idempotent ``PUT /predictions/{id}`` whose id comes from the job id, so
a retry can never make the same job twice on a worker. Retries happen only where they are
safe: the connection could not be made, the worker said it is full (429/409/503, honouring
``Retry-After``, with full-jitter backoff), or the connection dropped before an answer (the
same worker is asked again with the same id). A worker that keeps failing is skipped by a
circuit breaker that probes it again after a cool-down; when every worker's breaker is open,
:meth:`HttpBackend.check_available` refuses new jobs before anything is charged.

Credentials inside a worker URL (``http://user:pass@worker:5000``) are taken out of it at start
and sent as HTTP Basic auth, as httpx would have; the URL without them is what httpx sees (its
request log, its errors) and ``***`` stands for them in the gateway's own log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from gateway.backend import GenerationResult, ProgressCallback
from gateway.cog import png_from_data_uri, prediction_id, request_to_input, safe_reason
from gateway.errors import BackendError, BackendUnavailable
from gateway.request import ImageRequest
from gateway.settings import SettingsError

if TYPE_CHECKING:
    from gateway.settings import Settings

log = logging.getLogger("imagine.backend.http")

#: Four 1024x1024 PNGs of noise as base64 are about 17 MB, one 2048x2048 upscale about 16 MB, and a
#: Cog container echoes a 10 MB input picture (about 14 MB as base64); far past that is not an answer.
MAX_RESPONSE_BYTES = 48 * 1024 * 1024
BUSY_STATUSES = frozenset({409, 429, 503})
HEALTHY = frozenset({"READY", "BUSY"})


class _Dropped(Exception):
    """The connection broke after the request was sent and before a whole answer came."""


class _Busy(Exception):
    def __init__(self, retry_after: float | None) -> None:
        super().__init__("busy")
        self.retry_after = retry_after


class _Unreachable(Exception):
    """Nothing reached the worker (connection refused, DNS, connect timeout): safe to retry."""


@dataclass
class CircuitBreaker:
    """Closed: requests flow. Open after ``threshold`` failures in a row: none for ``cooldown``
    seconds. Then half-open: one probe at a time; its success closes, its failure reopens."""

    threshold: int = 5
    cooldown: float = 30.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at >= self.cooldown:
            return "half-open"
        return "open"

    def allows(self) -> bool:
        state = self.state
        return state == "closed" or (state == "half-open" and not self.probing)

    def retry_in(self) -> float:
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.cooldown - (self.clock() - self.opened_at))

    def begin(self) -> None:
        if self.state == "half-open":
            self.probing = True

    def succeeded(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probing = False

    def failed(self) -> None:
        self.failures += 1
        if self.probing or self.failures >= self.threshold:
            self.opened_at = self.clock()
        self.probing = False


@dataclass
class Worker:
    """One worker URL as the gateway sees it: ``url`` without credentials, ``auth`` holds them."""

    url: str
    breaker: CircuitBreaker
    auth: httpx.Auth = field(default_factory=httpx.Auth)  # Basic auth when the URL had credentials
    shown: str = ""  # the configured URL for log lines, credentials as ***
    in_flight: int = 0
    health: str = "UNKNOWN"  # the last /health-check status, or UNREACHABLE
    reported_load: int = 0  # predictions queued or running there, as its health check said
    last_error: str = ""
    picked: int = field(default=0)

    @property
    def load(self) -> int:
        return self.in_flight + self.reported_load


class HttpBackend:
    """Predictions on the workers at ``IMAGINE_BACKEND_URL`` (comma-separated for several)."""

    name = "http"

    def __init__(
        self,
        settings: Settings,
        *,
        breaker_threshold: int = 5,
        breaker_cooldown: float = 30.0,
        health_interval: float = 10.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 10.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        if not settings.backend_urls:
            raise SettingsError(
                "IMAGINE_BACKEND=http needs IMAGINE_BACKEND_URL, the worker's base URL "
                "(comma-separated for several); set it in the environment or in .env."
            )
        self.settings = settings
        self.workers = []
        for configured in settings.backend_urls:
            url, auth = split_userinfo(configured)
            breaker = CircuitBreaker(breaker_threshold, breaker_cooldown)
            self.workers.append(Worker(url, breaker, auth=auth or httpx.Auth(), shown=shown_url(configured)))
        self.health_interval = health_interval
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_response_bytes = max_response_bytes
        self.connect_timeout = 5.0
        self._client: httpx.AsyncClient | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    @property
    def capacity(self) -> int:
        """Enough jobs at once for each worker to fill a batch."""
        return len(self.workers) * max(1, self.settings.max_batch)

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        headers = {"User-Agent": "imagine-gateway"}
        if self.settings.backend_api_key:
            headers["Authorization"] = f"Bearer {self.settings.backend_api_key.get()}"
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(
                self.settings.backend_timeout + 5.0, connect=self.connect_timeout, pool=None
            ),
            limits=httpx.Limits(max_connections=max(10, 2 * self.capacity), max_keepalive_connections=20),
            follow_redirects=False,
        )
        await self.check_health()
        if self.health_interval > 0:
            self._health_task = asyncio.create_task(self._poll_health(), name="imagine-http-health")

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
            self._health_task = None
        if self._background:
            await asyncio.wait(self._background, timeout=5.0)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("HttpBackend.start() was not called")
        return self._client

    # --- health and choice -------------------------------------------------------------

    async def _poll_health(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            await self.check_health()

    async def check_health(self) -> None:
        """Ask every worker's ``/health-check`` (short timeout); a worker that answers is a probe."""
        await asyncio.gather(*(self._check_one(worker) for worker in self.workers))

    async def _check_one(self, worker: Worker) -> None:
        try:
            response = await self.client.get(f"{worker.url}/health-check", timeout=5.0, auth=worker.auth)
            data = response.json() if response.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            worker.health = "UNREACHABLE"
            return
        status = data.get("status") if isinstance(data, dict) else None
        worker.health = status if isinstance(status, str) else "UNKNOWN"
        load = data.get("queue", 0) if isinstance(data, dict) else 0
        worker.reported_load = load if isinstance(load, int) and load >= 0 else 0
        if worker.health in HEALTHY and worker.breaker.state == "half-open":
            worker.breaker.succeeded()

    def _pick(self, tried: set[str]) -> Worker | None:
        """A worker whose breaker lets a request through: healthy before unknown, least busy first."""
        usable = [w for w in self.workers if w.breaker.allows()]
        if not usable:
            return None
        fresh = [w for w in usable if w.url not in tried] or usable

        def rank(w: Worker) -> tuple[int, int, int, float]:
            health = 0 if w.health in HEALTHY else 1 if w.health in ("UNKNOWN", "STARTING") else 2
            return (health, w.load, w.picked, random.random())

        return min(fresh, key=rank)

    def check_available(self) -> None:
        if any(w.breaker.allows() for w in self.workers):
            return
        retry = min(w.breaker.retry_in() for w in self.workers)
        reason = self.workers[0].last_error or "it failed several times in a row"
        many = len(self.workers) > 1
        raise BackendUnavailable(
            f"{'every worker' if many else 'the worker'} failed several times in a row ({reason})",
            retry_after=max(1.0, retry),
        )

    # --- generating --------------------------------------------------------------------

    async def generate(
        self, job_id: str, request: ImageRequest, progress: ProgressCallback
    ) -> GenerationResult:
        pid = prediction_id(job_id)
        body = {"id": pid, "input": request_to_input(request)}
        started = time.monotonic()
        deadline = started + self.settings.backend_timeout
        attempt = 0
        dropped_retry_used = False
        tried: set[str] = set()
        worker: Worker | None = None
        sticky: Worker | None = None  # after a dropped connection, ask the same worker again
        # Img2img runs only strength x steps of them, and a worker's progress bar counts those.
        progress(0, request.denoise_steps)
        # Hand-written, not tenacity: each attempt picks its worker (the same one after a dropped
        # connection), keeps that worker's breaker and load, and each failure kind has its own budget.
        while True:
            attempt += 1
            worker = sticky or self._pick(tried)
            sticky = None
            if worker is None:
                self.check_available()
                raise BackendUnavailable("no worker is available")
            tried.add(worker.url)
            worker.picked += 1
            worker.breaker.begin()
            worker.in_flight += 1
            try:
                data = await self._put(worker, pid, body)
            except asyncio.CancelledError:
                self._cancel_later(worker, pid)
                raise
            except _Busy as busy:
                worker.breaker.succeeded()  # it answered: alive, only full
                delay = self._backoff(attempt, busy.retry_after)
                if time.monotonic() + delay >= deadline:
                    raise BackendError(
                        "every worker stayed busy until the time limit", retryable=True
                    ) from None
                log.info("worker %s is busy; retrying %s in %.1f s", worker.shown, pid, delay)
                await asyncio.sleep(delay)
                continue
            except _Unreachable as exc:
                self._failed(worker, str(exc))
                delay = self._backoff(attempt, None)
                if attempt >= 4 or time.monotonic() + delay >= deadline:
                    raise BackendError(f"could not reach the worker ({exc})", retryable=True) from None
                await asyncio.sleep(delay)
                continue
            except _Dropped as exc:
                self._failed(worker, str(exc))
                if dropped_retry_used or time.monotonic() >= deadline:
                    raise BackendError(f"the worker {exc}", retryable=True) from None
                dropped_retry_used = True
                sticky = worker  # the same id on the same worker: it answers with the first result
                continue
            except BackendError as exc:
                self._failed(worker, exc.reason)
                raise
            finally:
                worker.in_flight -= 1
            break
        result = self._result(data, request)
        worker.breaker.succeeded()
        worker.last_error = ""
        result.timings.setdefault("round_trip", time.monotonic() - started)
        progress(request.denoise_steps, request.denoise_steps)
        return result

    def _failed(self, worker: Worker, reason: str) -> None:
        worker.last_error = reason
        worker.breaker.failed()
        if worker.breaker.state != "closed":
            failures = worker.breaker.failures
            log.warning("worker %s: circuit open after %s (%s)", worker.shown, failures, reason)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """``Retry-After`` when the worker gave one, else full jitter: uniform(0, base * 2^attempt)."""
        if retry_after is not None:
            return min(max(0.0, retry_after), 60.0)
        return random.uniform(0.0, min(self.backoff_cap, self.backoff_base * 2**attempt))

    async def _put(self, worker: Worker, pid: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{worker.url}/predictions/{pid}"
        try:
            async with self.client.stream("PUT", url, json=body, auth=worker.auth) as response:
                if response.status_code in BUSY_STATUSES:
                    raise _Busy(_retry_after(response.headers.get("retry-after")))
                raw = await self._read_bounded(response)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _Unreachable(_describe(exc)) from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise _Dropped(f"dropped the connection before answering ({_describe(exc)})") from None
        except httpx.TimeoutException:
            raise BackendError("did not answer in time") from None
        except httpx.HTTPError as exc:
            raise BackendError(f"could not be asked ({_describe(exc)})") from None
        status = response.status_code
        if status in (401, 403):
            raise BackendError(
                "the worker refused the gateway's key; check IMAGINE_BACKEND_API_KEY on both sides"
            )
        if status == 422:
            raise BackendError(f"the worker refused the request: {_detail(raw)}")
        if status >= 400:
            raise BackendError(f"the worker answered HTTP {status}")
        try:
            data = json.loads(raw)
        except ValueError:
            raise BackendError("the worker's answer was not valid JSON") from None
        if not isinstance(data, dict):
            raise BackendError("the worker's answer was not a prediction")
        return data

    async def _read_bounded(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length")
        limit = self.max_response_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BackendError(f"the worker's answer was larger than {limit // (1024 * 1024)} MB")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > limit:
                raise BackendError(f"the worker's answer was larger than {limit // (1024 * 1024)} MB")
            chunks.append(chunk)
        return b"".join(chunks)

    def _result(self, data: dict[str, Any], request: ImageRequest) -> GenerationResult:
        status = data.get("status")
        if status == "failed":
            raise BackendError(safe_reason(data.get("error") or "the worker failed"))
        if status == "canceled":
            raise BackendError("the worker cancelled the prediction")
        if status != "succeeded":
            raise BackendError(f"the worker's prediction ended as {safe_reason(status, 40)!r}")
        output = data.get("output")
        if not isinstance(output, list):
            raise BackendError("the worker's answer had no images")
        try:
            images = [png_from_data_uri(item) for item in output]
        except ValueError as exc:
            raise BackendError(f"the worker's answer was malformed ({exc})") from None
        seed = data.get("seed", request.seed)
        if not isinstance(seed, int):
            seed = request.seed or 0
        metrics = data.get("metrics") if isinstance(data.get("metrics"), dict) else {}
        assert isinstance(metrics, dict)
        timings = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        blocked = data.get("blocked", 0)
        blocked = blocked if isinstance(blocked, int) and blocked >= 0 else 0
        if not images and not blocked:
            raise BackendError("the worker's answer had no images")
        seeds = data.get("seeds")
        if not (isinstance(seeds, list) and all(isinstance(s, int) for s in seeds)):
            seeds = [seed + i for i in range(len(images) + blocked)]
        model = data.get("model") if isinstance(data.get("model"), str) else "worker"
        assert isinstance(model, str)
        return GenerationResult(
            images=images,
            seeds=seeds,
            model=model,
            blocked=blocked,
            prompt_truncated=bool(data.get("prompt_truncated", False)),
            timings=timings,
        )

    def _cancel_later(self, worker: Worker, pid: str) -> None:
        """The job was cancelled or timed out: ask the worker to drop it too (best effort)."""

        async def cancel() -> None:
            with contextlib.suppress(httpx.HTTPError, RuntimeError):
                await self.client.post(
                    f"{worker.url}/predictions/{pid}/cancel", timeout=5.0, auth=worker.auth
                )

        task = asyncio.create_task(cancel(), name=f"imagine-cancel-{pid}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def split_userinfo(url: str) -> tuple[str, httpx.BasicAuth | None]:
    """The URL without ``user:pass@``, and those credentials as Basic auth (None when there are none)."""
    parts = urllib.parse.urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return url, None
    user, _, password = userinfo.partition(":")
    bare = urllib.parse.urlunsplit(parts._replace(netloc=hostport))
    return bare, httpx.BasicAuth(urllib.parse.unquote(user), urllib.parse.unquote(password))


def shown_url(url: str) -> str:
    """A configured URL fit for a log line or a message: any credentials in it become ``***``."""
    parts = urllib.parse.urlsplit(url)
    _, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{hostport}"))


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _detail(raw: bytes) -> str:
    try:
        data = json.loads(raw)
    except ValueError:
        return "no reason given"
    detail = data.get("detail") if isinstance(data, dict) else None
    return safe_reason(detail if isinstance(detail, str) else "no reason given")


def _describe(exc: Exception) -> str:
    """The kind of network failure, never the URL (it may hold credentials)."""
    return type(exc).__name__
