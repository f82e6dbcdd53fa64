"""The ``http`` backend against real loopback servers that misbehave, through the real ImagineService.

Every scenario ends with the ledger balanced, no job left open, and the user's credits either
spent once (success) or all back (refund).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate
from pathlib import Path

import pytest

from backend.worker import MAX_BODY_BYTES
from gateway import Busy, ImagineService, JobFailed, JobStatus, Settings, SettingsError, create_backend
from gateway.cog import PNG_SIGNATURE, png_from_data_uri, prediction_id
from gateway.fake_backend import solid_png
from gateway.http_backend import CircuitBreaker, HttpBackend, _retry_after, shown_url, split_userinfo
from gateway.picture import upscale
from gateway.request import ImageRequest, parse_prompt, validate
from storage import Database
from tests.fakes.worker_server import ScriptedWorker
from tests.helpers.png import png_size

USER = "telegram:42"
QUOTA = 25


def http_settings(data_dir: Path, urls: list[str], timeout: float = 5.0) -> Settings:
    return Settings.from_env(
        {
            "IMAGINE_DB": str(data_dir / "imagine.sqlite3"),
            "IMAGINE_BACKEND": "http",
            "IMAGINE_BACKEND_URL": ",".join(urls),
            "IMAGINE_BACKEND_API_KEY": "s3cret",
            "IMAGINE_BACKEND_TIMEOUT": str(timeout),
            "IMAGINE_MAX_QUEUED_PER_USER": "20",
            "IMAGINE_DAILY_QUOTA": str(QUOTA),
        },
        env_file=None,
    )


class Rig:
    """A started service over an HttpBackend built through create_backend, on a real SQLite file."""

    def __init__(self, service: ImagineService, backend: HttpBackend, db: Database) -> None:
        self.service = service
        self.backend = backend
        self.db = db
        self.n = 0

    async def submit(self, text: str = "a red fox --seed 7 --size 256x256") -> object:
        self.n += 1
        job = await self.service.submit(USER, text, job_id=f"telegram:{self.n}")
        return await job.wait()

    async def fails(self, text: str = "a red fox --seed 7 --size 256x256") -> JobFailed:
        with pytest.raises(JobFailed) as info:
            await self.submit(text)
        assert info.value.refunded
        return info.value

    async def remaining(self) -> int:
        return (await self.service.quota(USER)).remaining


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def rig(data_dir: Path) -> AsyncIterator[RigFactory]:
    made: list[tuple[Rig, HttpBackend, Database]] = []

    async def make(urls: list[str], limit: float = 5.0, **tune: float) -> Rig:
        settings = http_settings(data_dir, urls, limit)
        backend = create_backend(settings)
        assert isinstance(backend, HttpBackend)
        backend.health_interval = 0  # tests ask for health checks themselves
        backend.backoff_base = 0.02
        for worker in backend.workers:
            worker.breaker.threshold = int(tune.get("threshold", 5))
            worker.breaker.cooldown = tune.get("cooldown", 30.0)
        db = await Database.open(settings.store)
        await backend.start()
        service = ImagineService(settings, db, backend)
        await service.start()
        r = Rig(service, backend, db)
        made.append((r, backend, db))
        return r

    yield make
    for r, backend, db in made:
        await r.service.close()
        await backend.close()
        assert await db.check_ledger() == []
        assert await db.open_jobs() == [], "a job was left open"
        assert await db.integrity_check() == "ok"
        await db.close()


@pytest.fixture
async def worker() -> AsyncIterator[ScriptedWorker]:
    server = await ScriptedWorker().start()
    yield server
    await server.close()


@pytest.fixture
async def second_worker() -> AsyncIterator[ScriptedWorker]:
    server = await ScriptedWorker().start()
    yield server
    await server.close()


def closed_port_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_success_is_an_idempotent_put_with_the_key(rig: RigFactory, worker: ScriptedWorker) -> None:
    r = await rig([worker.url])
    result = await r.submit("a red fox --seed 7 --size 256x256 --n 2")
    assert [img[:8] for img in result.images] == [PNG_SIGNATURE] * 2  # type: ignore[attr-defined]
    assert result.seeds == [7, 8]  # type: ignore[attr-defined]
    (put,) = worker.predictions
    assert put.method == "PUT"
    assert put.path == f"/predictions/{prediction_id('telegram:1')}"
    assert put.headers["authorization"] == "Bearer s3cret"
    body = put.json()
    assert body["input"] == {
        "prompt": "a red fox",
        "negative_prompt": "",
        "width": 256,
        "height": 256,
        "num_outputs": 2,
        "num_inference_steps": 25,
        "guidance_scale": 7.5,
        "scheduler": "dpmpp",
        "seed": 7,
    }
    assert await r.remaining() == QUOTA - 2


async def test_500_is_refunded_without_a_retry(rig: RigFactory, worker: ScriptedWorker) -> None:
    worker.default = ("status", 500)
    r = await rig([worker.url])
    error = await r.fails()
    assert "HTTP 500" in str(error) and "refunded" in str(error)
    assert len(worker.predictions) == 1
    assert await r.remaining() == QUOTA


async def test_503_retry_after_is_honoured_with_the_same_id(rig: RigFactory, worker: ScriptedWorker) -> None:
    worker.script = [("status", 503, "0.3")]
    r = await rig([worker.url])
    await r.submit()
    first, second = worker.predictions
    assert first.path == second.path and first.method == second.method == "PUT"
    assert second.at - first.at >= 0.28
    assert await r.remaining() == QUOTA - 1


async def test_429_and_409_back_off_then_succeed(rig: RigFactory, worker: ScriptedWorker) -> None:
    worker.script = [("status", 429), ("status", 409)]
    r = await rig([worker.url])
    await r.submit()
    assert len({p.path for p in worker.predictions}) == 1
    assert len(worker.predictions) == 3
    assert await r.remaining() == QUOTA - 1


async def test_busy_until_the_deadline_is_refunded(rig: RigFactory, worker: ScriptedWorker) -> None:
    worker.default = ("status", 503, "0.2")
    r = await rig([worker.url], limit=1.0)
    error = await r.fails()
    assert "busy" in str(error)
    assert await r.remaining() == QUOTA


async def test_a_hang_times_out_refunds_and_cancels_on_the_worker(
    rig: RigFactory, worker: ScriptedWorker
) -> None:
    worker.script = ["hang"]
    r = await rig([worker.url], limit=1.0)
    started = time.monotonic()
    error = await r.fails()
    assert time.monotonic() - started < 3
    assert "longer than 1 s" in str(error)
    for _ in range(100):
        if worker.cancels:
            break
        await asyncio.sleep(0.02)
    (cancel,) = worker.cancels
    assert cancel.path == f"/predictions/{prediction_id('telegram:1')}/cancel"
    assert await r.remaining() == QUOTA
    await r.submit()  # the backend is not stuck
    assert await r.remaining() == QUOTA - 1


async def test_a_dropped_connection_is_retried_once_on_the_same_worker(
    rig: RigFactory, worker: ScriptedWorker, second_worker: ScriptedWorker
) -> None:
    worker.script = ["drop"]
    r = await rig([worker.url, second_worker.url])
    for w in r.backend.workers:
        w.health = "READY"
    r.backend.workers[1].reported_load = 5  # the first worker is the one picked
    await r.submit()
    assert len(worker.predictions) == 2 and not second_worker.predictions
    assert worker.predictions[0].path == worker.predictions[1].path
    assert await r.remaining() == QUOTA - 1


async def test_a_connection_dropped_twice_is_refunded(rig: RigFactory, worker: ScriptedWorker) -> None:
    worker.default = "drop"
    r = await rig([worker.url])
    error = await r.fails()
    assert "dropped the connection" in str(error)
    assert len(worker.predictions) == 2
    assert await r.remaining() == QUOTA


async def test_malformed_json_is_refunded(rig: RigFactory, worker: ScriptedWorker) -> None:
    worker.default = "malformed"
    r = await rig([worker.url])
    error = await r.fails()
    assert "not valid JSON" in str(error)
    assert len(worker.predictions) == 1
    assert await r.remaining() == QUOTA


async def test_a_50_mb_body_is_cut_off_and_refunded(rig: RigFactory, worker: ScriptedWorker) -> None:
    worker.default = ("huge", 50 * 1024 * 1024)
    r = await rig([worker.url])
    error = await r.fails()
    assert "larger than 48 MB" in str(error)
    assert await r.remaining() == QUOTA


async def test_a_failed_prediction_gives_its_reason(rig: RigFactory, worker: ScriptedWorker) -> None:
    worker.default = ("failed", "CUDA out of memory.\nTried to allocate 2 GiB")
    r = await rig([worker.url])
    error = await r.fails()
    assert "CUDA out of memory. Tried to allocate 2 GiB" in str(error)
    assert await r.remaining() == QUOTA


async def test_a_wrong_key_names_the_setting(rig: RigFactory, worker: ScriptedWorker) -> None:
    worker.default = ("status", 401)
    r = await rig([worker.url])
    error = await r.fails()
    assert "IMAGINE_BACKEND_API_KEY" in str(error)
    assert "s3cret" not in str(error)


async def test_unreachable_worker_is_retried_then_refunded(rig: RigFactory) -> None:
    r = await rig([closed_port_url()])
    error = await r.fails()
    assert "could not reach the worker" in str(error)
    assert await r.remaining() == QUOTA


async def test_circuit_breaker_fails_fast_without_charging_then_probes(
    rig: RigFactory, worker: ScriptedWorker
) -> None:
    worker.default = ("status", 500)
    r = await rig([worker.url], threshold=2, cooldown=0.5)
    await r.fails()
    await r.fails()
    with pytest.raises(Busy) as info:
        await r.submit()
    assert "nothing was charged" in str(info.value)
    assert len(worker.predictions) == 2  # the open breaker sent nothing
    assert await r.remaining() == QUOTA
    await asyncio.sleep(0.55)
    worker.default = "ok"
    await r.submit()  # the half-open probe succeeds and closes the breaker
    assert r.backend.workers[0].breaker.state == "closed"
    assert await r.remaining() == QUOTA - 1


async def test_a_failed_probe_opens_the_breaker_again(rig: RigFactory, worker: ScriptedWorker) -> None:
    worker.default = ("status", 500)
    r = await rig([worker.url], threshold=1, cooldown=0.3)
    await r.fails()
    await asyncio.sleep(0.35)
    await r.fails()  # the probe
    assert r.backend.workers[0].breaker.state == "open"
    with pytest.raises(Busy):
        await r.submit()


async def test_a_healthy_least_busy_worker_is_chosen(
    rig: RigFactory, worker: ScriptedWorker, second_worker: ScriptedWorker
) -> None:
    worker.health = {"status": "BUSY", "queue": 6}
    second_worker.health = {"status": "READY", "queue": 1}
    r = await rig([worker.url, second_worker.url])
    await r.submit()
    assert not worker.predictions and len(second_worker.predictions) == 1
    worker.health = {"status": "READY", "queue": 0}
    second_worker.health = {"status": "SETUP_FAILED", "queue": 0}
    await r.backend.check_health()
    await r.submit()
    assert len(worker.predictions) == 1 and len(second_worker.predictions) == 1


async def test_concurrent_jobs_spread_over_workers(
    rig: RigFactory, worker: ScriptedWorker, second_worker: ScriptedWorker
) -> None:
    worker.default = second_worker.default = ("delay", 0.3)
    r = await rig([worker.url, second_worker.url])
    await asyncio.gather(r.submit(), r.submit())
    assert len(worker.predictions) == 1 and len(second_worker.predictions) == 1


async def test_an_unreachable_worker_is_passed_over(rig: RigFactory, worker: ScriptedWorker) -> None:
    r = await rig([closed_port_url(), worker.url])
    r.backend.workers[0].health = "READY"  # looks fine, but refuses connections
    r.backend.workers[1].health = "UNKNOWN"
    await r.submit()
    assert len(worker.predictions) == 1
    assert await r.remaining() == QUOTA - 1


async def test_credentials_in_a_worker_url_are_never_logged_or_shown(
    rig: RigFactory, worker: ScriptedWorker, caplog: pytest.LogCaptureFixture
) -> None:
    password = "pa55-in-the-url"
    failing = worker.url.replace("http://", f"http://imagine:{password}@")
    down = closed_port_url().replace("http://", f"http://imagine:{password}@")
    worker.default = ("status", 500)
    shown: list[str] = []
    with caplog.at_level(logging.DEBUG):  # every logger, httpx's request lines included
        r = await rig([failing, down], threshold=1, cooldown=30.0)
        for _ in range(2):
            shown.append(str(await r.fails()))
        with pytest.raises(Busy) as info:
            await r.submit()
        shown.append(str(info.value))
    assert all(w.breaker.state == "open" for w in r.backend.workers)  # the breaker did trip
    logged = [caplog.handler.format(record) for record in caplog.records]
    for text in logged + shown:
        assert password not in text, text
    assert any("circuit open" in line for line in logged)
    assert f"http://***@127.0.0.1:{worker.port}" in "\n".join(logged)  # which worker, without its secret
    basic = base64.b64encode(f"imagine:{password}".encode()).decode()
    assert worker.predictions[0].headers["authorization"] == f"Basic {basic}"  # still sent, as before


def test_userinfo_is_split_from_a_url() -> None:
    bare, auth = split_userinfo("https://us%40er:p%3Ass@worker.example:5000/base")
    assert bare == "https://worker.example:5000/base" and auth is not None
    assert (
        shown_url("https://us%40er:p%3Ass@worker.example:5000/base") == "https://***@worker.example:5000/base"
    )
    assert split_userinfo("http://worker:5000") == ("http://worker:5000", None)
    assert shown_url("http://worker:5000") == "http://worker:5000"


def test_no_url_names_the_variable(data_dir: Path) -> None:
    settings = http_settings(data_dir, ["http://x"]).with_overrides(backend_urls=())
    with pytest.raises(SettingsError, match="IMAGINE_BACKEND_URL"):
        HttpBackend(settings)


def test_retry_after_takes_seconds_and_dates() -> None:
    assert _retry_after("3") == 3.0
    assert _retry_after(None) is None
    assert _retry_after("soon") is None
    when = _retry_after(formatdate(time.time() + 20, usegmt=True))
    assert when is not None and 15 < when <= 20


def test_breaker_states() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown=10, clock=lambda: now[0])
    breaker.failed()
    assert breaker.allows()
    breaker.failed()
    assert breaker.state == "open" and not breaker.allows() and breaker.retry_in() == 10
    now[0] = 10
    assert breaker.state == "half-open" and breaker.allows()
    breaker.begin()
    assert not breaker.allows()  # one probe at a time
    breaker.succeeded()
    assert breaker.state == "closed"


async def test_an_image_prompt_sends_its_picture_and_strength(
    rig: RigFactory, worker: ScriptedWorker
) -> None:
    r = await rig([worker.url])
    request = parse_prompt(
        "a red fox --strength 0.4 --seed 7 --steps 20", image=solid_png(300, 200, (9, 9, 9))
    )
    job = await r.service.submit(USER, request, job_id="telegram:img")
    totals = {u.total_steps async for u in job.updates() if u.status is JobStatus.RUNNING}
    result = await job.wait()
    assert png_size(result.images[0]) == (1024, 704)
    (put,) = worker.predictions
    body = put.json()["input"]
    assert png_from_data_uri(body["image"]) == request.init_image
    assert (body["prompt_strength"], body["imagine_kind"]) == (0.4, "image")
    assert (body["width"], body["height"], body["num_inference_steps"]) == (1024, 704, 20)
    assert totals == {8}, totals  # img2img runs strength x steps: 0.4 x 20
    assert await r.remaining() == QUOTA - 1


async def test_an_upscale_sends_its_kind_and_a_body_within_the_workers_bound(
    rig: RigFactory, worker: ScriptedWorker
) -> None:
    r = await rig([worker.url])
    source = validate(ImageRequest(prompt="a lighthouse", width=1024, height=1024, seed=3))
    request = upscale(source, solid_png(1024, 1024, (40, 50, 60)), seed=3)
    result = await (await r.service.submit(USER, request, job_id="telegram:up")).wait()
    assert png_size(result.images[0]) == (2048, 2048)
    (put,) = worker.predictions
    assert put.json()["input"]["imagine_kind"] == "upscale"
    assert (put.json()["input"]["width"], put.json()["input"]["prompt_strength"]) == (2048, 0.3)
    assert len(put.body) < MAX_BODY_BYTES
