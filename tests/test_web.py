"""The web front's HTTP API on a real uvicorn server on loopback, a real SQLite file, the fake backend.

The server runs in a thread with its own event loop (as `imagine web` runs it); the tests talk to it
over TCP with httpx and read the database through the server's loop.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import hypothesis
import pytest
import schemathesis
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from gateway import BackendError, ImagineService, Settings
from gateway.fake_backend import FakeBackend
from gateway.web.app import WebFront, WebOptions
from gateway.web.guard import ClientResolver, RateLimiter, parse_address
from storage import Database
from tests.helpers.png import png_size

T = TypeVar("T")
PAGE_LIMIT = 50 * 1024


class LiveServer:
    """Database, fake backend, gateway and web front on a uvicorn server in a thread."""

    def __init__(self, settings: Settings, options: WebOptions, *, busy_timeout_ms: int = 30_000) -> None:
        self.settings = settings
        self.options = options
        self.busy_timeout_ms = busy_timeout_ms
        self.url = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> LiveServer:
        self._thread.start()
        assert self._ready.wait(30), "the web front did not start"
        if self._error is not None:
            raise self._error
        return self

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self.db = await Database.open(self.settings.store, busy_timeout_ms=self.busy_timeout_ms)
            self.backend = FakeBackend(self.settings)
            self.service = ImagineService(self.settings, self.db, self.backend)
            await self.service.start()
            self.front = WebFront(self.settings, self.service, self.options)
            self.url = (await self.front.start()).rstrip("/")
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise
        self._ready.set()
        await self._stop.wait()
        await self.front.stop()
        await self.service.close(drain_timeout=5)
        await self.db.close()

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's loop (the database is not thread-safe)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def ledger(self) -> list[dict[str, Any]]:
        return self.call(self.db.ledger())

    def check(self) -> None:
        assert self.call(self.db.check_ledger()) == []

    def stop(self) -> None:
        if self._thread.is_alive() and self._error is None:
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)


ServerFactory = Callable[..., LiveServer]


@pytest.fixture
def make_server(data_dir: Path) -> Iterator[ServerFactory]:
    servers: list[LiveServer] = []

    def make(options: WebOptions | None = None, **env: str) -> LiveServer:
        settings = Settings.from_env(
            {
                "IMAGINE_DB": str(data_dir / f"web{len(servers)}.sqlite3"),
                "IMAGINE_BACKEND": "fake",
                "IMAGINE_MODEL": "tiny",
                "IMAGINE_WEB_PORT": "0",
                **env,
            },
            env_file=None,
        )
        server = LiveServer(settings, options or WebOptions(post_rate=None)).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.check()
        server.stop()


@pytest.fixture
def server(make_server: ServerFactory) -> LiveServer:
    return make_server()


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def submit(http: httpx.Client, prompt: str, **headers: str) -> httpx.Response:
    return http.post("/api/jobs", json={"prompt": prompt}, headers=headers)


def wait_done(http: httpx.Client, job_id: str, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    tag = ""
    while time.monotonic() < deadline:
        view: dict[str, Any] = http.get(f"/api/jobs/{job_id}", params={"wait": 5, "after": tag}).json()
        if view["status"] in ("succeeded", "failed"):
            return view
        tag = view["tag"]
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def remaining(http: httpx.Client, **headers: str) -> int:
    value: int = http.get("/api/quota", headers=headers).json()["remaining"]
    return value


# --- the page ------------------------------------------------------------------------------------


def test_page_is_one_small_self_contained_file(http: httpx.Client) -> None:
    response = http.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert len(response.content) < PAGE_LIMIT
    assert response.headers["content-encoding"] == "gzip"
    html = response.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the page loads nothing from elsewhere"
    assert not re.search(r"<script[^>]+src=|<link[^>]+stylesheet", html), "scripts and styles are inline"
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp
    again = http.get("/", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304


# --- a job from POST to image --------------------------------------------------------------------


def test_a_job_is_accepted_with_202_then_served_at_the_requested_size(
    server: LiveServer, http: httpx.Client
) -> None:
    server.backend.delay = 0.01
    before = remaining(http)
    created = submit(http, "a lighthouse at dusk --size 384x256 --steps 5 --seed 7")
    assert created.status_code == 202, created.text
    body = created.json()
    assert re.fullmatch(r"web:[0-9a-f-]{36}", body["id"])
    assert created.headers["location"] == f"/api/jobs/{body['id']}"
    view = wait_done(http, body["id"])
    assert view["status"] == "succeeded" and view["progress"] == 1.0
    assert view["error"] is None and view["refunded"] is False
    assert view["seeds"] == [7] and (view["width"], view["height"]) == (384, 256)
    assert "seed 7" in view["caption"]
    assert len(view["images"]) == 1
    image = http.get(view["images"][0])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert png_size(image.content) == (384, 256)
    assert remaining(http) == before - 1
    kinds = [row["kind"] for row in server.ledger()]
    assert kinds == ["reserve", "settle"]


def test_progress_and_queue_position_are_reported_while_waiting(
    make_server: ServerFactory,
) -> None:
    server = make_server(WebOptions(post_rate=None, poll_pace_seconds=0.1), IMAGINE_MAX_QUEUED_PER_USER="10")
    server.backend.delay = 0.05
    with httpx.Client(base_url=server.url, timeout=10) as http:
        ids = [submit(http, f"fox {i} --steps 10").json()["id"] for i in range(6)]
        seen_running = False
        positions = {http.get(f"/api/jobs/{job_id}").json()["position"] for job_id in ids}
        assert max(positions) >= 1, "with six jobs on four workers someone waits in the queue"
        tag, steps = "", set()
        while True:
            view = http.get(f"/api/jobs/{ids[-1]}", params={"wait": 5, "after": tag}).json()
            tag = view["tag"]
            if view["status"] == "running":
                seen_running = True
                steps.add(view["step"])
                assert 0 <= view["progress"] <= 1
            if view["status"] == "succeeded":
                break
        assert seen_running and len(steps) >= 3, "the long poll reports step after step"
        for job_id in ids:
            view = wait_done(http, job_id)
            assert http.get(view["images"][0]).status_code == 200


def test_long_poll_returns_at_once_on_news_and_after_the_wait_without(
    server: LiveServer, http: httpx.Client
) -> None:
    server.backend.delay = 0.5
    job_id = submit(http, "slow fox --steps 3").json()["id"]
    first = http.get(f"/api/jobs/{job_id}").json()
    started = time.monotonic()
    later = http.get(f"/api/jobs/{job_id}", params={"wait": 10, "after": first["tag"]}).json()
    assert later["tag"] != first["tag"]
    assert time.monotonic() - started < 2
    started = time.monotonic()
    same = http.get(f"/api/jobs/{job_id}", params={"wait": 0.2, "after": "not.a.tag"}).json()
    assert time.monotonic() - started < 0.5 and same["id"] == job_id
    view = wait_done(http, job_id)
    http.get(view["images"][0])


def test_long_polls_are_paced_so_fast_steps_cost_few_requests(make_server: ServerFactory) -> None:
    server = make_server(WebOptions(post_rate=None, poll_pace_seconds=0.4))
    server.backend.delay = 0.04  # 30 steps in 1.2 s: a step every 40 ms
    with httpx.Client(base_url=server.url, timeout=10) as http:
        job_id = submit(http, "fast fox --steps 30").json()["id"]
        tag, polls, started = "", 0, time.monotonic()
        while True:
            view = http.get(f"/api/jobs/{job_id}", params={"wait": 10, "after": tag}).json()
            polls += 1
            tag = view["tag"]
            if view["status"] == "succeeded":
                break
        elapsed = time.monotonic() - started
        assert polls <= elapsed / 0.4 + 3, f"{polls} polls in {elapsed:.1f} s"
        assert elapsed < 2, "the finish is answered at once, not at the next pace"
        http.get(view["images"][0])


# --- refusals: 400, 413, 415, nothing charged ----------------------------------------------------

BAD_BODIES: list[tuple[Any, str]] = [
    ({"prompt": "a cat --foo 3"}, "Unknown flag --foo"),
    ({"prompt": "   "}, "The prompt is empty"),
    ({"prompt": "a cat --steps 80"}, "--steps must be a whole number from 1 to 50; got 80."),
    ({"prompt": "a cat --ar 9:1"}, "--ar must be from 1:4 to 4:1"),
    ({"prompt": "a cat --seed x"}, "--seed takes a whole number"),
    ({"prompt": "x" * 1001}, "the limit is 1000"),
    ({"prompt": "a cat\x07"}, "control character"),
    ({"prompt": "a cat \ud800"}, "not valid text"),
    ({"prompt": 42}, 'The request needs "prompt"'),
    ({}, 'The request needs "prompt"'),
    (["a cat"], "must be a JSON object"),
    ({"prompt": "a cat", "colour": "red"}, 'Unknown field "colour"'),
    ({"prompt": "a cat", "width": "512"}, '"width" must be a whole number; got "512".'),
    ({"prompt": "a cat", "steps": True}, '"steps" must be a whole number; got true.'),
    ({"prompt": "a cat", "width": 500}, "The width must be a multiple of 64"),
    ({"prompt": "a cat", "guidance": 1e999}, "--guidance must be a number from 1 to 20"),
    ({"prompt": "a cat", "scheduler": "magic"}, "Unknown scheduler 'magic'"),
]


@pytest.mark.parametrize(("body", "sentence"), BAD_BODIES)
def test_bad_input_gets_400_with_the_sentence_and_costs_nothing(
    server: LiveServer, http: httpx.Client, body: Any, sentence: str
) -> None:
    raw = json.dumps(body).encode()  # json.dumps keeps a lone surrogate as \ud800
    response = http.post("/api/jobs", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert sentence in response.json()["error"]
    assert response.json()["kind"] == "invalid"
    assert server.ledger() == []


def test_typed_fields_are_defaults_that_flags_override(server: LiveServer, http: httpx.Client) -> None:
    body = {"prompt": "a cat --steps 3", "steps": 9, "width": 256, "height": 320, "seed": 11, "num_images": 2}
    job_id = http.post("/api/jobs", json=body).json()["id"]
    view = wait_done(http, job_id)
    assert view["total_steps"] == 3 and (view["width"], view["height"]) == (256, 320)
    assert view["seeds"] == [11, 12] and len(view["images"]) == 2
    for url in view["images"]:
        assert png_size(http.get(url).content) == (256, 320)


def test_not_json_gets_400_or_415(server: LiveServer, http: httpx.Client) -> None:
    garbage = http.post("/api/jobs", content=b"{prompt: nope", headers={"Content-Type": "application/json"})
    assert garbage.status_code == 400 and "must be a JSON object" in garbage.json()["error"]
    form = http.post("/api/jobs", data={"prompt": "a cat"})
    assert form.status_code == 415 and "Content-Type: application/json" in form.json()["error"]
    plain = http.post("/api/jobs", content=b'{"prompt": "a cat"}', headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415
    assert server.ledger() == []


def test_bodies_are_bounded_in_size(server: LiveServer, http: httpx.Client) -> None:
    """POST /api/jobs has room for a 10 MB picture as base64, and no more; an action's body is small."""
    limit = server.options.max_image_body_bytes
    assert 4 * 10 * 2**20 / 3 < limit < 4 * 10 * 2**20 / 3 + 20_000
    big = json.dumps({"prompt": "a cat", "negative_prompt": "x" * limit})
    declared = http.post("/api/jobs", content=big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413 and f"larger than {limit} bytes" in declared.json()["error"]
    long_text = json.dumps({"prompt": "a cat", "negative_prompt": "x" * 20_000})
    refused = http.post("/api/jobs", content=long_text, headers={"Content-Type": "application/json"})
    assert refused.status_code == 400 and "the limit is 500" in refused.json()["error"]
    action = http.post(
        "/api/jobs/web:x/images/0/vary", content=long_text, headers={"Content-Type": "application/json"}
    )
    assert action.status_code == 413 and "larger than 16384 bytes" in action.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts as it reads
        yield b'{"prompt": "a cat", "negative_prompt": "'
        for _ in range(limit // 2**20 + 1):
            yield b"y" * 2**20
        yield b'"}'

    chunked = http.post("/api/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413
    assert server.ledger() == []


def data_uri(picture: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64,{base64.b64encode(picture).decode()}"


def jpeg(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def test_an_image_prompt_takes_its_pictures_shape_and_one_credit(
    server: LiveServer, http: httpx.Client
) -> None:
    body = {"prompt": "a red fox --steps 4", "image": data_uri(jpeg(600, 400), "jpeg"), "strength": 0.5}
    created = http.post("/api/jobs", json=body)
    assert created.status_code == 202, created.text
    view = wait_done(http, created.json()["id"])
    assert (view["width"], view["height"]) == (1024, 704) and view["total_steps"] == 2
    assert png_size(http.get(view["images"][0]).content) == (1024, 704)
    sized = http.post("/api/jobs", json={**body, "prompt": "a red fox --ar 1:1"})
    assert png_size(http.get(wait_done(http, sized.json()["id"])["images"][0]).content) == (512, 512)
    assert [row["kind"] for row in server.ledger()] == ["reserve", "settle"] * 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"image": data_uri(b"GIF89a not really")}, "The picture must be a PNG, JPEG or WebP image."),
        (
            {"image": data_uri(jpeg(300, 300)[:300], "jpeg")},
            "The picture is damaged or cut off; send it again.",
        ),
        (
            {"image": "https://example.com/fox.png"},
            '"image" must be a PNG, JPEG or WebP picture as a data: URI',
        ),
        ({"image": "data:image/png;base64,!!"}, '"image" is not valid base64 after "base64,".'),
        ({"image": data_uri(b"x" * (10 * 2**20 + 3))}, "The picture is 10.0 MB; the limit is 10 MB."),
        ({"strength": 0.5}, "--strength sets how far an image prompt moves from its picture"),
        (
            {"image": data_uri(jpeg(64, 64), "jpeg"), "strength": 2},
            "--strength must be a number from 0.05 to 1",
        ),
    ],
)
def test_a_bad_picture_gets_one_sentence_and_costs_nothing(
    server: LiveServer, http: httpx.Client, body: dict[str, Any], message: str
) -> None:
    refused = http.post("/api/jobs", json={"prompt": "a red fox", **body})
    assert refused.status_code == 400 and refused.json()["error"].startswith(message), refused.text
    assert server.ledger() == []


def test_upscale_and_vary_an_image_of_a_web_job(server: LiveServer, http: httpx.Client) -> None:
    source = wait_done(http, submit(http, "a heron --size 384x256 --n 2 --seed 7 --steps 4").json()["id"])
    job = source["id"]
    up = http.post(f"/api/jobs/{job}/images/1/upscale")
    assert up.status_code == 202, up.text
    upscaled = wait_done(http, up.json()["id"])
    assert (upscaled["width"], upscaled["height"]) == (768, 512) and upscaled["seeds"] == [8]
    assert upscaled["prompt"] == "a heron" and upscaled["total_steps"] == 1
    assert png_size(http.get(upscaled["images"][0]).content) == (768, 512)
    for strength, steps in (("subtle", 1), ("strong", 2), (0.5, 2)):
        varied = http.post(f"/api/jobs/{job}/images/0/vary", json={"strength": strength})
        assert varied.status_code == 202, varied.text
        view = wait_done(http, varied.json()["id"])
        assert (view["width"], view["height"], view["total_steps"]) == (384, 256, steps)
        assert view["seeds"] != [7]
        http.get(view["images"][0])
    plain = http.post(f"/api/jobs/{job}/images/0/vary")
    assert plain.status_code == 202, "no body: subtle"
    http.get(wait_done(http, plain.json()["id"])["images"][0])
    settled = [row["job_id"] for row in server.ledger() if row["kind"] == "settle"]
    assert settled[0] == job and len(settled) == 6, "the source charged once (2 images), each action once"


def test_image_actions_refuse_with_a_sentence_and_are_idempotent(
    server: LiveServer, http: httpx.Client
) -> None:
    job = wait_done(http, submit(http, "a heron --steps 2").json()["id"])["id"]
    missing = http.post("/api/jobs/web:nope/images/0/upscale")
    assert (
        missing.status_code == 404
        and missing.json()["error"] == "There is no image '0' of web job 'web:nope'."
    )
    assert http.post(f"/api/jobs/{job}/images/3/upscale").status_code == 404
    wild = http.post(f"/api/jobs/{job}/images/0/vary", json={"strength": "wild"})
    assert wild.status_code == 400
    assert (
        wild.json()["error"]
        == '"strength" must be "subtle", "strong" or a number from 0.05 to 1; got "wild".'
    )
    extra = http.post(f"/api/jobs/{job}/images/0/upscale", json={"strength": 1})
    assert extra.json()["error"] == 'Unknown field "strength"; this request takes no fields.'
    assert [row["kind"] for row in server.ledger()] == ["reserve"], "refusals charge nothing"

    first = http.post(f"/api/jobs/{job}/images/0/vary", headers={"Idempotency-Key": "v-1"})
    again = http.post(f"/api/jobs/{job}/images/0/vary", headers={"Idempotency-Key": "v-1"})
    assert first.status_code == again.status_code == 202 and first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = http.post(f"/api/jobs/{job}/images/0/upscale", headers={"Idempotency-Key": "v-1"})
    assert other.status_code == 409
    http.get(wait_done(http, first.json()["id"])["images"][0])

    server.call(server.front.state.pickups.images.delete(job))
    gone = http.post(f"/api/jobs/{job}/images/0/upscale")
    assert gone.status_code == 410 and gone.json()["error"].startswith("This image is no longer kept")
    assert [row["kind"] for row in server.ledger()] == ["reserve", "settle"] * 2


def test_idempotency_key_makes_one_job_for_repeats(server: LiveServer, http: httpx.Client) -> None:
    first = submit(http, "a heron --steps 2", **{"Idempotency-Key": "k-1"})
    again = submit(http, "a heron --steps 2", **{"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = submit(http, "a crane --steps 2", **{"Idempotency-Key": "k-1"})
    assert other.status_code == 409 and "different request" in other.json()["error"]
    bad = submit(http, "a heron", **{"Idempotency-Key": "has space"})
    assert bad.status_code == 400 and "Idempotency-Key" in bad.json()["error"]
    view = wait_done(http, first.json()["id"])
    http.get(view["images"][0])
    assert [row["kind"] for row in server.ledger()] == ["reserve", "settle"]


# --- 403: blocked addresses, forwarded-for, bans -------------------------------------------------


def test_blocked_ip_gets_403_on_every_route(make_server: ServerFactory) -> None:
    server = make_server(IMAGINE_BLOCKED_IPS="198.51.100.0/24, 127.0.0.0/8")
    with httpx.Client(base_url=server.url) as http:
        for response in (http.get("/"), http.get("/api/quota"), submit(http, "a cat")):
            assert response.status_code == 403
            assert response.json() == {
                "error": "Requests from your address are blocked by this Imagine server.",
                "kind": "blocked",
            }
    assert server.ledger() == []


def test_forged_forwarded_for_is_ignored_without_trusted_proxies(make_server: ServerFactory) -> None:
    server = make_server(IMAGINE_BLOCKED_IPS="127.0.0.1")
    with httpx.Client(base_url=server.url) as http:
        forged = {"X-Forwarded-For": "198.51.100.7"}
        assert http.get("/api/quota", headers=forged).status_code == 403
        assert submit(http, "a cat", **forged).status_code == 403
    server = make_server(IMAGINE_BLOCKED_IPS="203.0.113.0/24")
    with httpx.Client(base_url=server.url) as http:
        quota = http.get("/api/quota", headers={"X-Forwarded-For": "203.0.113.5"})
        assert quota.status_code == 200 and quota.json()["user"] == "web:127.0.0.1"


def test_forwarded_for_from_a_trusted_proxy_names_the_client(make_server: ServerFactory) -> None:
    server = make_server(IMAGINE_TRUSTED_PROXIES="127.0.0.0/8", IMAGINE_BLOCKED_IPS="203.0.113.0/24")

    def user(http: httpx.Client, forwarded: str) -> str:
        response = http.get("/api/quota", headers={"X-Forwarded-For": forwarded})
        assert response.status_code == 200, response.text
        name: str = response.json()["user"]
        return name

    with httpx.Client(base_url=server.url) as http:
        assert user(http, "198.51.100.7") == "web:198.51.100.7"
        # the client wrote the left part itself; the proxy appended the address it saw
        assert user(http, "203.0.113.5, 198.51.100.7") == "web:198.51.100.7"
        assert user(http, "198.51.100.9, 127.0.0.2") == "web:198.51.100.9"
        assert user(http, "[2001:db8:1:2::99]:4711") == "web:2001:db8:1:2::/64"
        assert user(http, "garbage, 198.51.100.8") == "web:198.51.100.8"
        blocked = http.get("/api/quota", headers={"X-Forwarded-For": "203.0.113.5"})
        assert blocked.status_code == 403
        # a blocked client cannot hide behind an address it writes itself
        assert submit(http, "a cat", **{"X-Forwarded-For": "198.51.100.1, 203.0.113.5"}).status_code == 403


def test_a_banned_web_user_gets_403_with_the_reason(server: LiveServer, http: httpx.Client) -> None:
    server.call(server.service.ban(None, "web:127.0.0.1", "spamming the queue"))
    response = submit(http, "a cat")
    assert response.status_code == 403
    assert response.json() == {"error": "You are banned from Imagine: spamming the queue", "kind": "banned"}
    assert server.ledger() == []


# --- 429: quota, queue, rate limit, busy backend -------------------------------------------------


def test_quota_exhaustion_from_the_web_gets_429_until_the_reset(make_server: ServerFactory) -> None:
    server = make_server(IMAGINE_DAILY_QUOTA="2")
    with httpx.Client(base_url=server.url) as http:
        for i in range(2):
            view = wait_done(http, submit(http, f"owl {i} --steps 1").json()["id"])
            assert http.get(view["images"][0]).status_code == 200
        assert remaining(http) == 0
        rows = len(server.ledger())
        refused = submit(http, "one owl too many")
        assert refused.status_code == 429
        assert refused.json()["kind"] == "out_of_credits"
        assert "You have used all 2 credits of today's allowance" in refused.json()["error"]
        assert 0 < int(refused.headers["retry-after"]) <= 86400
        two = http.post("/api/jobs", json={"prompt": "owls", "num_images": 2})
        assert two.status_code == 429
        assert len(server.ledger()) == rows


def test_too_many_jobs_in_progress_gets_429_with_retry_after(server: LiveServer, http: httpx.Client) -> None:
    server.backend.delay = 0.05
    ids = [submit(http, f"slow {i} --steps 20").json()["id"] for i in range(2)]
    third = submit(http, "one more")
    assert third.status_code == 429 and third.json()["kind"] == "busy"
    assert "You already have 2 images in progress" in third.json()["error"]
    assert third.headers["retry-after"] == "15"
    for job_id in ids:
        http.get(wait_done(http, job_id)["images"][0])


def test_rate_limit_gets_429_with_retry_after(make_server: ServerFactory) -> None:
    server = make_server(WebOptions(post_rate=0.1, post_burst=3))
    with httpx.Client(base_url=server.url) as http:
        answers = [submit(http, "a cat --foo") for _ in range(4)]
        assert [a.status_code for a in answers] == [400, 400, 400, 429]
        limited = answers[-1]
        assert limited.json()["kind"] == "rate_limited"
        assert "Too many requests from your address" in limited.json()["error"]
        assert 1 <= int(limited.headers["retry-after"]) <= 10
        # another client (behind no proxy here, so: another server user) is not affected
        assert http.get("/api/quota").status_code == 200


def test_unavailable_backend_gets_429_and_charges_nothing(server: LiveServer, http: httpx.Client) -> None:
    server.backend.unavailable = "the GPU host is down"
    response = submit(http, "a cat")
    assert response.status_code == 429 and "nothing was charged" in response.json()["error"]
    assert "retry-after" in response.headers
    assert server.ledger() == []


# --- failures and refunds ------------------------------------------------------------------------


def test_a_failing_backend_shows_refunded_true(server: LiveServer, http: httpx.Client) -> None:
    server.backend.fail_with = BackendError("the GPU ran out of memory")
    before = remaining(http)
    job_id = submit(http, "a cat --n 2").json()["id"]
    view = wait_done(http, job_id)
    assert view["status"] == "failed" and view["refunded"] is True
    assert view["error"] == (
        "The image generator failed: the GPU ran out of memory; your 2 credits were refunded."
    )
    assert view["images"] == []
    assert remaining(http) == before
    assert [row["kind"] for row in server.ledger()] == ["reserve", "refund"]


def test_an_image_nobody_downloads_is_refunded_then_gone(make_server: ServerFactory) -> None:
    server = make_server(WebOptions(post_rate=None, pickup_seconds=0.3, sweep_seconds=0.1))
    with httpx.Client(base_url=server.url) as http:
        view = wait_done(http, submit(http, "a cat").json()["id"])
        assert view["status"] == "succeeded"
        deadline = time.monotonic() + 5
        while view["status"] != "failed" and time.monotonic() < deadline:
            time.sleep(0.1)
            view = http.get(f"/api/jobs/{view['id']}").json()
        assert view["refunded"] is True and view["status"] == "failed"
        assert view["error"] == "The image was not downloaded within 0 s; your 1 credit was refunded."
        gone = http.get(f"/api/jobs/{view['id']}/images/0.png")
        assert gone.status_code == 410
        assert remaining(http) == 25


def test_images_are_served_for_a_limited_time(make_server: ServerFactory) -> None:
    server = make_server(WebOptions(post_rate=None, image_ttl_seconds=0.3, sweep_seconds=0.1))
    with httpx.Client(base_url=server.url) as http:
        view = wait_done(http, submit(http, "a cat").json()["id"])
        url = view["images"][0]
        assert http.get(url).status_code == 200
        assert http.get(url).status_code == 200, "a second download is free"
        time.sleep(0.6)
        gone = http.get(url)
        assert gone.status_code == 410 and "no longer kept" in gone.json()["error"]
        later = http.get(f"/api/jobs/{view['id']}").json()
        assert later["status"] == "succeeded" and later["expired"] is True and later["images"] == []
    assert [row["kind"] for row in server.ledger()] == ["reserve", "settle"]


# --- 404 and the other routes --------------------------------------------------------------------


def test_unknown_and_other_fronts_jobs_are_404(server: LiveServer, http: httpx.Client) -> None:
    assert http.get("/api/jobs/web:nope").status_code == 404
    server.call(server.service.submit("discord:1", "a secret cat", job_id="discord:42"))
    foreign = http.get("/api/jobs/discord:42")
    assert foreign.status_code == 404 and foreign.json()["kind"] == "not_found"
    view = wait_done(http, submit(http, "a cat").json()["id"])
    assert http.get(f"/api/jobs/{view['id']}/images/1.png").status_code == 404
    assert http.get(f"/api/jobs/{view['id']}/images/zero.png").status_code == 404
    http.get(view["images"][0])
    assert http.get("/nothing/here").json() == {
        "error": "There is nothing at /nothing/here.",
        "kind": "not_found",
    }
    wrong = http.delete("/api/quota")
    assert (
        wrong.status_code == 405 and wrong.json()["error"] == "DELETE is not allowed on /api/quota; use GET."
    )
    bad_wait = http.get(f"/api/jobs/{view['id']}", params={"wait": "forever"})
    assert bad_wait.status_code == 400 and bad_wait.json()["error"].startswith("wait takes a number")


def test_quota_healthz_and_metrics(server: LiveServer, http: httpx.Client) -> None:
    quota = http.get("/api/quota").json()
    assert quota["user"] == "web:127.0.0.1" and quota["remaining"] == 25 and quota["unlimited"] is False
    assert quota["resets_at"].endswith("T00:00:00Z") and "reset at 00:00 UTC" in quota["text"]
    assert http.get("/healthz").json() == {"status": "ok", "backend": "fake", "available": True, "queue": 0}
    http.get(wait_done(http, submit(http, "a cat").json()["id"])["images"][0])
    submit(http, "a cat --steps 0")
    metrics = http.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = metrics.text
    assert 'imagine_jobs_total{outcome="succeeded"} 1' in text
    assert "imagine_credits_spent_total 1" in text
    assert 'imagine_http_requests_total{route="/api/jobs",status="202"} 1' in text
    assert 'imagine_http_requests_total{route="/api/jobs",status="400"} 1' in text
    assert "imagine_generation_seconds_count 1" in text
    assert "imagine_web_images_kept_bytes" in text


def test_a_kept_alive_connection_answers_without_the_delayed_ack_wait(http: httpx.Client) -> None:
    """With Nagle's algorithm on, each answer on a reused connection waits ~40 ms for the client's ACK."""
    timings = []
    for _ in range(11):
        started = time.perf_counter()
        assert http.get("/healthz").status_code == 200
        timings.append(time.perf_counter() - started)
    assert sorted(timings)[5] < 0.02, timings


def test_a_stopping_front_refuses_new_jobs_with_503(server: LiveServer, http: httpx.Client) -> None:
    server.loop.call_soon_threadsafe(server.front.state.stopping.set)
    time.sleep(0.05)
    health = http.get("/healthz")
    assert health.status_code == 503 and health.json()["status"] == "stopping"
    refused = submit(http, "a cat")
    assert refused.status_code == 503 and refused.headers["retry-after"] == "60"
    assert refused.json() == {"error": "Imagine is restarting; try again in a minute.", "kind": "busy"}
    assert server.ledger() == []


def test_openapi_schema_describes_the_api(http: httpx.Client) -> None:
    schema = http.get("/openapi.json").json()
    assert set(schema["paths"]) == {
        "/api/jobs",
        "/api/jobs/{job_id}",
        "/api/jobs/{job_id}/images/{name}",
        "/api/jobs/{job_id}/images/{n}/upscale",
        "/api/jobs/{job_id}/images/{n}/vary",
        "/api/quota",
        "/healthz",
        "/metrics",
    }
    post = schema["paths"]["/api/jobs"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    body = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]] if "$ref" in body else body
    assert body["required"] == ["prompt"]
    assert {"202", "400", "403", "409", "413", "415", "429"} <= set(post["responses"])
    assert "422" not in json.dumps(schema["paths"])


# --- fuzzing from the OpenAPI schema -------------------------------------------------------------


@pytest.mark.slow
def test_fuzzing_the_api_gives_no_500_and_refusals_never_touch_the_ledger(make_server: ServerFactory) -> None:
    server = make_server(
        IMAGINE_MAX_QUEUED_PER_USER="100000", IMAGINE_MAX_QUEUE="100000", IMAGINE_DAILY_QUOTA="100000"
    )
    with httpx.Client(base_url=server.url) as http:
        raw = http.get("/openapi.json").json()
        real_job = submit(http, "a real job for the routes that read one --n 2").json()["id"]
        wait_done(http, real_job)
    schema = schemathesis.openapi.from_dict(raw)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    user = "web:127.0.0.1"
    seen: Counter[tuple[str, int]] = Counter()

    def balances() -> tuple[int, Any]:
        quota = server.db.quota(user, day=_today(), default_allowance=100000)
        return len(server.ledger()), server.call(quota)

    def fuzz(strategy: Any) -> None:
        @hypothesis.settings(
            max_examples=100,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=strategy)
        def one(case: schemathesis.Case) -> None:
            before = balances()
            response = case.call(base_url=server.url, timeout=10)
            seen[(f"{case.method} {case.operation.path}", response.status_code)] += 1
            case.validate_response(response, checks=checks)
            assert server.call(server.db.check_ledger()) == []
            if response.status_code >= 400:
                assert balances() == before, f"{case.method} {case.formatted_path} -> {response.status_code}"

        one()

    for result in schema.get_all_operations():
        operation = result.ok()
        fuzz(operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
        if operation.path in ("/api/jobs", "/api/jobs/{job_id}"):  # the others take no input to get wrong
            fuzz(operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
        if "{job_id}" in operation.path:
            fuzz(operation.as_strategy(path_parameters={"job_id": real_job}))
    assert seen[("POST /api/jobs", 202)] > 0 and seen[("POST /api/jobs", 400)] > 0
    assert seen[("GET /api/jobs/{job_id}", 200)] > 0 and seen[("GET /api/jobs/{job_id}", 404)] > 0


def _today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


# --- the guard, without a server -----------------------------------------------------------------


def test_addresses_as_proxies_write_them() -> None:
    assert str(parse_address("203.0.113.9")) == "203.0.113.9"
    assert str(parse_address("203.0.113.9:443")) == "203.0.113.9"
    assert str(parse_address("[2001:db8::1]:443")) == "2001:db8::1"
    assert str(parse_address("::ffff:198.51.100.3")) == "198.51.100.3"
    assert parse_address("unknown") is None and parse_address("") is None


def test_resolver_without_trusted_proxies_uses_the_peer() -> None:
    resolver = ClientResolver(trusted_proxies=(), blocked=())
    assert resolver.resolve("127.0.0.1", ["198.51.100.7"]).user_id == "web:127.0.0.1"
    assert resolver.resolve(None).user_id == "web:unknown"


def test_rate_limiter_refills_over_time() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=1.0, burst=2, clock=lambda: now[0], max_clients=2)
    assert limiter.take("a") == 0 and limiter.take("a") == 0
    assert limiter.take("a") == pytest.approx(1.0)
    now[0] = 1.0
    assert limiter.take("a") == 0
    assert limiter.take("b") == 0
    assert limiter.take("c") == 0, "a full table forgets idle clients rather than refusing new ones"


def test_an_undelivered_image_outlives_the_gateways_finished_job_window(server: LiveServer) -> None:
    server.service._finished_keep = 2  # the gateway forgets finished jobs past this many
    with httpx.Client(base_url=server.url) as http:
        first = wait_done(http, submit(http, "first --steps 1").json()["id"])
        for i in range(4):
            view = wait_done(http, submit(http, f"later {i} --steps 1").json()["id"])
            http.get(view["images"][0])
        assert http.get(first["images"][0]).status_code == 200
    settled = [row["job_id"] for row in server.ledger() if row["kind"] == "settle"]
    assert first["id"] in settled, "the late download still charged the first job"
