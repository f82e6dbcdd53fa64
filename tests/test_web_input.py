"""What ``POST /api/jobs`` makes of odd input: huge numbers, long values, floats, flags that override.

Black-box over real loopback HTTP: the web front on uvicorn in a thread, a real SQLite file and the
fake backend, as `imagine web` runs it. Every refusal is a 400 with one short sentence and no charge.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway import ImagineService, Settings
from gateway.fake_backend import FakeBackend
from gateway.web.app import WebFront, WebOptions
from storage import Database

HUGE = "9" * 5000  # past Python's 4,300-digit int() limit
ENGLAND = "\U0001f3f4" + "".join(chr(0xE0000 + ord(ch)) for ch in "gbeng") + "\U000e007f"


class Server:
    """Database, fake backend, gateway and web front on their own event loop in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = ""
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "the web front did not start"

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.db = await Database.open(self.settings.store)
        service = ImagineService(self.settings, self.db, FakeBackend(self.settings))
        await service.start()
        front = WebFront(self.settings, service, WebOptions(post_rate=None))
        self.url = (await front.start()).rstrip("/")
        self._ready.set()
        await self._stop.wait()
        await front.stop()
        await service.close(drain_timeout=5)
        await self.db.close()

    def ledger(self) -> list[dict[str, Any]]:
        return asyncio.run_coroutine_threadsafe(self.db.ledger(), self.loop).result(timeout=30)

    def check(self) -> None:
        assert asyncio.run_coroutine_threadsafe(self.db.check_ledger(), self.loop).result(timeout=30) == []

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    db = tmp_path_factory.mktemp("web-input") / "imagine.sqlite3"
    settings = Settings.from_env(
        {
            "IMAGINE_DB": str(db),
            "IMAGINE_BACKEND": "fake",
            "IMAGINE_MODEL": "tiny",
            "IMAGINE_WEB_PORT": "0",
            "IMAGINE_DAILY_QUOTA": "1000",
        },
        env_file=None,
    )
    server = Server(settings)
    yield server
    server.check()
    server.stop()


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def post(http: httpx.Client, body: bytes | dict[str, Any]) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post("/api/jobs", content=raw, headers={"Content-Type": "application/json"})


def refused(server: Server, http: httpx.Client, body: bytes | dict[str, Any]) -> str:
    """The sentence of a 400 that charged nothing."""
    before = len(server.ledger())
    response = post(http, body)
    assert response.status_code == 400, response.text
    assert response.json()["kind"] == "invalid"
    assert len(server.ledger()) == before
    sentence: str = response.json()["error"]
    return sentence


def finished(http: httpx.Client, job_id: str) -> dict[str, Any]:
    """The job once done, its images downloaded (which settles a web job's credits)."""
    deadline = time.monotonic() + 15
    while True:
        view: dict[str, Any] = http.get(f"/api/jobs/{job_id}", params={"wait": 5}).json()
        if view["status"] in ("succeeded", "failed"):
            for url in view["images"]:
                assert http.get(url).status_code == 200
            return view
        assert time.monotonic() < deadline, view


# --- 1. numbers past 20 digits: the range sentence, never a 500 ------------------------------------


@pytest.mark.parametrize(
    ("flag", "sentence"),
    [
        ("--seed", "--seed must be a whole number from 0 to 4294967295"),
        ("--steps", "--steps must be a whole number from 1 to 50"),
        ("--n", "--n must be a whole number from 1 to 4"),
        ("--guidance", "--guidance must be a number from 1 to 20"),
    ],
)
def test_a_5000_digit_flag_gets_400_with_the_range_sentence(
    server: Server, http: httpx.Client, flag: str, sentence: str
) -> None:
    assert refused(server, http, {"prompt": f"a cat {flag} {HUGE}"}) == (
        f"{sentence}; got a number with more than 20 digits."
    )


@pytest.mark.parametrize(
    ("field", "sentence"),
    [
        ("seed", "--seed must be a whole number from 0 to 4294967295"),
        ("steps", "--steps must be a whole number from 1 to 50"),
        ("num_images", "--n must be a whole number from 1 to 4"),
        ("guidance", "--guidance must be a number from 1 to 20"),
        ("width", "The width must be a multiple of 64 from 256 to 1024"),
    ],
)
@pytest.mark.parametrize("digits", [HUGE, "-" + HUGE, "1" * 21])
def test_a_long_json_number_gets_the_range_sentence(
    server: Server, http: httpx.Client, field: str, sentence: str, digits: str
) -> None:
    body = b'{"prompt": "a cat", "%s": %s}' % (field.encode(), digits.encode())
    assert refused(server, http, body) == f"{sentence}; got a number with more than 20 digits."


# --- 2. every sentence quotes at most 40 characters of a bad value --------------------------------

LONG = "z" * 4000


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "a cat --" + "z" * 990},
        {"prompt": "a cat --size " + "z" * 990},
        {"prompt": "a cat --seed 1 " + "z" * 990},
        {"prompt": "a cat", LONG: 1},
        {"prompt": "a cat", "steps": LONG},
        {"prompt": "a cat", "steps": [LONG]},
        {"prompt": "a cat", "scheduler": LONG},
        {"prompt": "a cat", "negative_prompt": 7},
    ],
)
def test_error_sentences_stay_short_whatever_the_value(
    server: Server, http: httpx.Client, body: dict[str, Any]
) -> None:
    sentence = refused(server, http, body)
    assert len(sentence) < 300, sentence
    assert "z" * 41 not in sentence, sentence


# --- 4. typed fields: whole floats are numbers; every field is checked before flags override ------


def test_whole_numbers_written_as_floats_are_accepted(server: Server, http: httpx.Client) -> None:
    body = {"prompt": "a cat", "steps": 3.0, "seed": 42.0, "width": 256.0, "num_images": 1.0}
    response = post(http, body)
    assert response.status_code == 202, response.text
    view = finished(http, response.json()["id"])
    assert view["status"] == "succeeded", view
    assert view["total_steps"] == 3 and view["seeds"] == [42] and view["width"] == 256


@pytest.mark.parametrize(
    ("field", "value", "sentence"),
    [
        ("steps", 21.5, "--steps must be a whole number from 1 to 50; got 21.5."),
        ("seed", 0.5, "--seed must be a whole number from 0 to 4294967295; got 0.5."),
        (
            "num_images",
            1e300,
            "--n must be a whole number from 1 to 4; got a number with more than 20 digits.",
        ),
    ],
)
def test_a_float_that_is_not_whole_is_refused_for_a_whole_number_field(
    server: Server, http: httpx.Client, field: str, value: float, sentence: str
) -> None:
    assert refused(server, http, {"prompt": "a cat", field: value}) == sentence


@pytest.mark.parametrize(
    ("body", "flag_prompt"),
    [
        ({"prompt": "x --steps 20", "steps": 999}, "x --steps 999"),
        ({"prompt": "x --seed 1", "seed": 2**32}, "x --seed 4294967296"),
        ({"prompt": "x --n 1", "num_images": 5}, "x --n 5"),
        ({"prompt": "x --guidance 7", "guidance": 0.5}, "x --guidance 0.5"),
        ({"prompt": "x --no blur", "negative_prompt": "n" * 501}, "x --no " + "n" * 501),
        ({"prompt": "x --size 512x512", "width": 100}, None),
        ({"prompt": "x --ar 1:1", "height": 2048}, None),
    ],
)
def test_an_out_of_range_field_is_refused_even_when_a_flag_overrides_it(
    server: Server, http: httpx.Client, body: dict[str, Any], flag_prompt: str | None
) -> None:
    sentence = refused(server, http, body)
    if flag_prompt is not None:  # the same sentence the flag would get
        assert sentence == refused(server, http, {"prompt": flag_prompt})


# --- 3. subdivision flags ------------------------------------------------------------------------


def test_a_subdivision_flag_in_the_prompt_is_accepted(server: Server, http: httpx.Client) -> None:
    response = post(http, {"prompt": f"a pub sign {ENGLAND} --steps 2", "negative_prompt": ENGLAND})
    assert response.status_code == 202, response.text
    assert finished(http, response.json()["id"])["status"] == "succeeded"
    assert "control character" in refused(server, http, {"prompt": "a pub sign \U000e0067"})
