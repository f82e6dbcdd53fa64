"""The worker's HTTP API on real loopback HTTP (uvicorn in-process): auth, input checks, idempotent PUT,
health states, the full path, batching (with the real tiny pipeline for "batched == alone")."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from backend.worker import MAX_BODY_BYTES, Loaded, create_app
from gateway.backend import GenerationResult
from gateway.cog import png_data_uri, png_from_data_uri, request_to_input
from gateway.errors import InvalidRequest
from gateway.fake_backend import solid_png
from gateway.picture import MAX_PICTURE_BYTES, upscale
from gateway.request import ImageRequest, parse_prompt, validate
from gateway.settings import Settings
from tests.helpers.png import png_size

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}


def worker_settings(**env: str) -> Settings:
    base = {
        "IMAGINE_MODEL": "tiny",
        "IMAGINE_BACKEND_API_KEY": KEY,
        "IMAGINE_MAX_BATCH": "4",
        "IMAGINE_BATCH_WAIT_MS": "50",
    }
    return Settings.from_env({**base, **env}, env_file=None)


class FakeRunner:
    """Solid PNGs from the seed; records each call's batch; can be held at a gate or made to fail."""

    def __init__(self) -> None:
        self.calls: list[list[ImageRequest]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail: Exception | None = None
        self.fail_batches_over: int | None = None

    def __call__(
        self, requests: Sequence[ImageRequest], *, cancel: Callable[[], bool] | None = None
    ) -> list[GenerationResult]:
        self.calls.append(list(requests))
        self.entered.set()
        assert self.gate.wait(10)
        if self.fail is not None:
            raise self.fail
        if self.fail_batches_over is not None and len(requests) > self.fail_batches_over:
            raise RuntimeError("CUDA out of memory")
        results = []
        for r in requests:
            assert r.seed is not None
            seeds = [r.seed + i for i in range(r.num_images)]
            images = [solid_png(r.width, r.height, (s % 256, 1, 2)) for s in seeds]
            results.append(GenerationResult(images, seeds, "fake", timings={"step_time": 0.01}))
        return results


@contextlib.asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app on a loopback port with its lifespan, and a client pointed at it."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn offers no event to wait on)
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def wait_status(client: httpx.AsyncClient, status: str, within: float = 30) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        health: dict[str, Any] = (await client.get("/health-check")).json()
        if health["status"] == status:
            return health
        assert loop.time() < deadline, health
        await asyncio.sleep(0.02)


@pytest.fixture
def runner() -> FakeRunner:
    return FakeRunner()


@pytest.fixture
async def client(runner: FakeRunner) -> AsyncIterator[httpx.AsyncClient]:
    async with served(create_app(worker_settings(), runner, warmup=None)) as c:
        await wait_status(c, "READY")
        yield c


def predict(client: httpx.AsyncClient, inp: dict[str, Any], **kw: Any) -> Any:
    return client.post("/predictions", json={"input": inp}, headers=AUTH, **kw)


# --- auth -------------------------------------------------------------------------------------


async def test_auth_missing_wrong_and_right(client: httpx.AsyncClient) -> None:
    body = {"input": {"prompt": "a red fox", "width": 256, "height": 256, "seed": 7}}
    missing = await client.post("/predictions", json=body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert "Missing bearer token" in missing.json()["detail"]
    wrong = await client.post("/predictions", json=body, headers={"Authorization": "Bearer s3cres"})
    assert wrong.status_code == 401 and "Wrong bearer token" in wrong.json()["detail"]
    basic = await client.post("/predictions", json=body, headers={"Authorization": f"Basic {KEY}"})
    assert basic.status_code == 401
    right = await client.post("/predictions", json=body, headers=AUTH)
    assert right.status_code == 200
    assert (await client.get("/health-check")).status_code == 200  # open
    assert (await client.get("/openapi.json")).status_code == 401
    assert (await client.put("/predictions/x", json=body)).status_code == 401
    assert (await client.post("/predictions/x/cancel")).status_code == 401


async def test_no_key_configured_means_open(runner: FakeRunner) -> None:
    app = create_app(Settings.from_env({"IMAGINE_MODEL": "tiny"}, env_file=None), runner, warmup=None)
    async with served(app) as client:
        await wait_status(client, "READY")
        response = await client.post("/predictions", json={"input": {"prompt": "a fox", "width": 256}})
        assert response.status_code == 200


# --- a prediction -------------------------------------------------------------------------------


async def test_a_prediction_has_the_cog_fields(client: httpx.AsyncClient) -> None:
    response = await predict(
        client, {"prompt": "a red fox", "width": 256, "height": 320, "seed": 7, "num_outputs": 2}
    )
    assert response.status_code == 200
    data = response.json()
    assert data["status"] == "succeeded" and data["error"] is None
    assert data["seed"] == 7 and data["seeds"] == [7, 8]
    assert len(data["output"]) == 2
    png = png_from_data_uri(data["output"][0])
    assert png[16:24] == (256).to_bytes(4, "big") + (320).to_bytes(4, "big")
    assert data["metrics"]["predict_time"] >= 0 and data["metrics"]["batch_size"] == 1
    assert data["input"] == {"prompt": "a red fox", "width": 256, "height": 320, "seed": 7, "num_outputs": 2}
    assert data["id"] and data["created_at"].endswith("Z") and data["completed_at"]


async def test_a_missing_seed_is_chosen_and_returned(client: httpx.AsyncClient, runner: FakeRunner) -> None:
    data = (await predict(client, {"prompt": "a red fox", "width": 256})).json()
    assert isinstance(data["seed"], int)
    assert runner.calls[0][0].seed == data["seed"]


async def test_replicate_scheduler_names_are_accepted(client: httpx.AsyncClient, runner: FakeRunner) -> None:
    await predict(client, {"prompt": "a fox", "width": 256, "scheduler": "K_EULER_ANCESTRAL"})
    assert runner.calls[0][0].scheduler == "euler_a"


def sentence(**fields: Any) -> str:
    """What the gateway's validator says about the same request."""
    with pytest.raises(InvalidRequest) as info:
        validate(ImageRequest(**{"prompt": "a fox", **fields}))
    return str(info.value)


INVALID: list[tuple[dict[str, Any], str]] = [
    ({"prompt": ""}, sentence(prompt="")),
    ({"prompt": "x" * 1001}, sentence(prompt="x" * 1001)),
    ({"prompt": "a\x00fox"}, sentence(prompt="a\x00fox")),
    ({"prompt": "a fox", "negative_prompt": "y" * 501}, sentence(negative_prompt="y" * 501)),
    ({"prompt": "a fox", "width": 300}, sentence(width=300)),
    ({"prompt": "a fox", "height": 2048}, sentence(height=2048)),
    ({"prompt": "a fox", "width": "512"}, sentence(width="512")),
    ({"prompt": "a fox", "num_outputs": 5}, sentence(num_images=5)),
    ({"prompt": "a fox", "num_inference_steps": 0}, sentence(steps=0)),
    ({"prompt": "a fox", "num_inference_steps": 51}, sentence(steps=51)),
    ({"prompt": "a fox", "guidance_scale": 25}, sentence(guidance=25)),
    ({"prompt": "a fox", "guidance_scale": True}, sentence(guidance=True)),
    ({"prompt": "a fox", "seed": -1}, sentence(seed=-1)),
    ({"prompt": "a fox", "seed": 2**32}, sentence(seed=2**32)),
    ({"prompt": "a fox", "scheduler": "heun"}, sentence(scheduler="heun")),
    ({"prompt": 42}, "The prompt must be text; got 42."),
    ({"negative_prompt": "x"}, 'The input needs a "prompt": describe the image you want.'),
    ({"prompt": "a fox", "num_output": 2}, "Unknown input field 'num_output'; the known fields are prompt, "),
]


@pytest.mark.parametrize(
    ("inp", "reason"), INVALID, ids=[repr(sorted(i))[:40] + str(n) for n, (i, _) in enumerate(INVALID)]
)
async def test_each_invalid_field_is_a_422_with_the_reason(
    client: httpx.AsyncClient, runner: FakeRunner, inp: dict[str, Any], reason: str
) -> None:
    response = await predict(client, inp)
    assert response.status_code == 422
    assert response.json()["detail"].startswith(reason)
    assert not runner.calls


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "The body is not valid JSON"),
        (b'{"prompt": "a fox"}', 'The body must be a JSON object with an "input" object'),
        (b'["a fox"]', 'The body must be a JSON object with an "input" object'),
        (b'{"input": {"prompt": "a fox"}, "webhook": "http://x"}', "Unknown field 'webhook'"),
        (b'{"input": {"prompt": "a fox"}, "id": "../etc"}', "The prediction id must be"),
    ],
)
async def test_malformed_bodies_are_a_422(client: httpx.AsyncClient, body: bytes, reason: str) -> None:
    response = await client.post(
        "/predictions", content=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"].startswith(reason)


async def test_a_body_over_the_bound_is_refused_before_parsing(client: httpx.AsyncClient) -> None:
    big = b'{"input": {"prompt": "' + b"x" * MAX_BODY_BYTES + b'"}}'
    response = await client.post("/predictions", content=big, headers=AUTH)
    assert response.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    response = await client.post("/predictions", content=chunks(), headers=AUTH)
    assert response.status_code == 413


# --- idempotency --------------------------------------------------------------------------------


async def test_put_is_idempotent(client: httpx.AsyncClient, runner: FakeRunner) -> None:
    body = {"input": {"prompt": "a red fox", "width": 256, "seed": 3}}
    first = await client.put("/predictions/job-1", json=body, headers=AUTH)
    again = await client.put("/predictions/job-1", json=body, headers=AUTH)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert first.json()["id"] == "job-1"
    assert len(runner.calls) == 1
    other = await client.put(
        "/predictions/job-1", json={"input": {"prompt": "a blue fox", "width": 256, "seed": 3}}, headers=AUTH
    )
    assert other.status_code == 422
    assert other.json()["detail"] == "Prediction 'job-1' already exists with a different input; use a new id."
    mismatch = await client.put("/predictions/job-2", json={**body, "id": "job-3"}, headers=AUTH)
    assert mismatch.status_code == 422


async def test_a_put_retried_while_running_joins_the_first(
    client: httpx.AsyncClient, runner: FakeRunner
) -> None:
    runner.gate.clear()
    body = {"input": {"prompt": "a red fox", "width": 256, "seed": 3}}
    first = asyncio.create_task(client.put("/predictions/job-9", json=body, headers=AUTH))
    await asyncio.to_thread(runner.entered.wait, 10)
    second = asyncio.create_task(client.put("/predictions/job-9", json=body, headers=AUTH))
    await asyncio.sleep(0.1)
    runner.gate.set()
    a, b = await asyncio.gather(first, second)
    assert a.json() == b.json()
    assert len(runner.calls) == 1


async def test_post_with_an_id_is_idempotent_too(client: httpx.AsyncClient, runner: FakeRunner) -> None:
    body = {"id": "abc", "input": {"prompt": "a red fox", "width": 256, "seed": 3}}
    first = await client.post("/predictions", json=body, headers=AUTH)
    again = await client.post("/predictions", json=body, headers=AUTH)
    assert first.json() == again.json() and len(runner.calls) == 1


# --- health states --------------------------------------------------------------------------------


async def test_starting_then_ready_after_the_warm_up_with_the_cold_start_breakdown(
    runner: FakeRunner,
) -> None:
    release = threading.Event()

    def loader(phase: Callable[[str], None]) -> Loaded:
        phase("loading the weights of tiny")
        assert release.wait(10)
        return Loaded(
            runner, {"imports": 0.5, "weights": 1.0, "to_device": 0.25, "compile": 0.0}, "cpu", "tiny"
        )

    app = create_app(worker_settings(), loader=loader)
    async with served(app) as client:
        health = (await client.get("/health-check")).json()
        assert health["status"] == "STARTING"
        assert health["setup"]["phase"] == "loading the weights of tiny"
        early = await predict(client, {"prompt": "a fox"})
        assert early.status_code == 503 and int(early.headers["retry-after"]) > 0
        release.set()
        health = await wait_status(client, "READY")
        assert len(runner.calls) == 1 and runner.calls[0][0].prompt  # the warm-up image
        cold = health["cold_start"]
        assert {"imports", "weights", "to_device", "compile", "warmup", "setup_total"} <= set(cold)
        assert cold["process_start_to_ready"] > 0
        assert health["setup"]["status"] == "succeeded" and health["device"] == "cpu"


async def test_setup_failed_says_why(runner: FakeRunner) -> None:
    def loader(phase: Callable[[str], None]) -> Loaded:
        raise OSError("model_index.json not found in /models/sd")

    async with served(create_app(worker_settings(), loader=loader)) as client:
        health = await wait_status(client, "SETUP_FAILED")
        assert "model_index.json not found" in health["setup"]["error"]
        response = await predict(client, {"prompt": "a fox"})
        assert response.status_code == 503 and "could not start" in response.json()["detail"]
        assert "retry-after" in response.headers


async def test_busy_when_full_then_409_with_retry_after(runner: FakeRunner) -> None:
    settings = worker_settings(IMAGINE_MAX_BATCH="1", IMAGINE_BATCH_WAIT_MS="0")
    async with served(create_app(settings, runner, capacity=2, warmup=None)) as client:
        await wait_status(client, "READY")
        runner.gate.clear()
        first = asyncio.create_task(predict(client, {"prompt": "a fox", "width": 256, "seed": 1}))
        second = asyncio.create_task(predict(client, {"prompt": "a fox", "width": 256, "seed": 2}))
        health = await wait_status(client, "BUSY")
        assert health["queue"] == 2
        refused = await predict(client, {"prompt": "a fox", "width": 256, "seed": 3})
        assert refused.status_code == 409
        assert int(refused.headers["retry-after"]) >= 1
        assert "full" in refused.json()["detail"]
        runner.gate.set()
        assert [r.status_code for r in await asyncio.gather(first, second)] == [200, 200]
        await wait_status(client, "READY")


async def test_a_failed_generation_is_a_failed_prediction(
    client: httpx.AsyncClient, runner: FakeRunner
) -> None:
    runner.fail = RuntimeError("CUDA error: device-side assert triggered")
    data = (await predict(client, {"prompt": "a fox", "width": 256})).json()
    assert data["status"] == "failed" and data["output"] is None
    assert "CUDA error: device-side assert triggered" in data["error"]


async def test_cancel_a_queued_prediction(runner: FakeRunner) -> None:
    settings = worker_settings(IMAGINE_MAX_BATCH="1", IMAGINE_BATCH_WAIT_MS="0")
    async with served(create_app(settings, runner, warmup=None)) as client:
        await wait_status(client, "READY")
        runner.gate.clear()
        body = {"input": {"prompt": "a fox", "width": 256}}
        first = asyncio.create_task(client.put("/predictions/one", json=body, headers=AUTH))
        await asyncio.to_thread(runner.entered.wait, 10)
        queued = asyncio.create_task(client.put("/predictions/two", json=body, headers=AUTH))
        await asyncio.sleep(0.1)
        cancel = await client.post("/predictions/two/cancel", headers=AUTH)
        assert cancel.status_code == 200
        assert (await queued).json()["status"] == "canceled"
        runner.gate.set()
        assert (await first).json()["status"] == "succeeded"
        assert len(runner.calls) == 1
        assert (await client.post("/predictions/nope/cancel", headers=AUTH)).status_code == 404


async def test_cancel_of_a_finished_or_unknown_prediction_is_a_404_as_in_cog(
    client: httpx.AsyncClient,
) -> None:
    done = await client.put(
        "/predictions/done-1", json={"input": {"prompt": "a fox", "width": 256}}, headers=AUTH
    )
    assert done.json()["status"] == "succeeded"
    finished = await client.post("/predictions/done-1/cancel", headers=AUTH)
    assert finished.status_code == 404
    assert finished.json()["detail"] == "Prediction 'done-1' already succeeded; there is nothing to cancel."
    unknown = await client.post(f"/predictions/{'x' * 100}/cancel", headers=AUTH)
    assert unknown.status_code == 404
    assert (
        unknown.json()["detail"]
        == f"No prediction '{'x' * 40}...' is queued, running or recently finished here."
    )
    # The finished one is untouched: its result is still there for a retry.
    again = await client.put(
        "/predictions/done-1", json={"input": {"prompt": "a fox", "width": 256}}, headers=AUTH
    )
    assert again.json() == done.json()


async def test_cancel_a_running_prediction(client: httpx.AsyncClient, runner: FakeRunner) -> None:
    runner.gate.clear()
    body = {"input": {"prompt": "a fox", "width": 256}}
    started = await client.put("/predictions/run-1", json=body, headers={**AUTH, "Prefer": "respond-async"})
    assert started.status_code == 202
    await asyncio.to_thread(runner.entered.wait, 10)
    cancel = await client.post("/predictions/run-1/cancel", headers=AUTH)
    assert cancel.status_code == 200 and cancel.json() == {"id": "run-1", "status": "canceled"}
    runner.gate.set()
    final = await client.put("/predictions/run-1", json=body, headers=AUTH)
    assert (
        final.status_code == 200 and final.json()["status"] == "canceled" and final.json()["output"] is None
    )


# --- Cog's asynchronous predictions and discovery ----------------------------------------------------

ASYNC = {**AUTH, "Prefer": "respond-async"}


async def test_respond_async_answers_202_starting_at_once_and_a_put_gives_state_then_result(
    client: httpx.AsyncClient, runner: FakeRunner
) -> None:
    runner.gate.clear()
    body = {"input": {"prompt": "a red fox", "width": 256, "seed": 5, "num_outputs": 2}}
    accepted = await client.put("/predictions/late-1", json=body, headers=ASYNC)
    assert accepted.status_code == 202
    data = accepted.json()
    assert (data["id"], data["status"], data["output"], data["completed_at"]) == (
        "late-1",
        "starting",
        None,
        None,
    )
    await asyncio.to_thread(runner.entered.wait, 10)
    running = await client.put("/predictions/late-1", json=body, headers=ASYNC)
    assert running.status_code == 202 and running.json()["status"] == "processing"
    assert len(runner.calls) == 1
    runner.gate.set()
    result = await client.put("/predictions/late-1", json=body, headers=AUTH)  # a synchronous PUT waits
    assert result.status_code == 200 and result.json()["status"] == "succeeded"
    assert len(result.json()["output"]) == 2 and result.json()["seeds"] == [5, 6]
    polled = await client.put("/predictions/late-1", json=body, headers=ASYNC)
    assert polled.status_code == 202 and polled.json() == result.json()
    assert len(runner.calls) == 1


async def test_respond_async_post_gives_an_id_to_put_later(
    client: httpx.AsyncClient, runner: FakeRunner
) -> None:
    body = {"input": {"prompt": "a red fox", "width": 256, "seed": 5}}
    accepted = await client.post(
        "/predictions", json=body, headers={**AUTH, "Prefer": "wait=5, respond-async"}
    )
    assert accepted.status_code == 202 and accepted.json()["status"] == "starting"
    prediction_id = accepted.json()["id"]
    result = await client.put(f"/predictions/{prediction_id}", json=body, headers=AUTH)
    assert result.status_code == 200 and result.json()["status"] == "succeeded"
    assert len(runner.calls) == 1


async def test_respond_async_still_checks_the_input_and_the_capacity(runner: FakeRunner) -> None:
    settings = worker_settings(IMAGINE_MAX_BATCH="1", IMAGINE_BATCH_WAIT_MS="0")
    async with served(create_app(settings, runner, capacity=1, warmup=None)) as client:
        await wait_status(client, "READY")
        bad = await client.post("/predictions", json={"input": {"prompt": ""}}, headers=ASYNC)
        assert bad.status_code == 422
        runner.gate.clear()
        body = {"input": {"prompt": "a fox", "width": 256}}
        assert (await client.put("/predictions/a", json=body, headers=ASYNC)).status_code == 202
        full = await client.put("/predictions/b", json=body, headers=ASYNC)
        assert full.status_code == 409 and "retry-after" in full.headers
        runner.gate.set()


async def test_the_root_is_cogs_discovery_document(client: httpx.AsyncClient) -> None:
    assert (await client.get("/")).status_code == 401
    discovery = await client.get("/", headers=AUTH)
    assert discovery.status_code == 200
    assert discovery.json() == {
        "docs_url": "/docs",
        "openapi_url": "/openapi.json",
        "healthcheck_url": "/health-check",
        "predictions_url": "/predictions",
        "predictions_idempotent_url": "/predictions/{prediction_id}",
        "predictions_cancel_url": "/predictions/{prediction_id}/cancel",
    }
    paths = (await client.get("/openapi.json", headers=AUTH)).json()["paths"]
    for key, url in discovery.json().items():
        if key.startswith("predictions"):
            assert url in paths, key
        else:
            assert (await client.get(url, headers=AUTH)).status_code == 200, key


# --- finished predictions: kept within a byte budget --------------------------------------------------


async def test_kept_results_stay_within_the_byte_budget_oldest_dropped_first(runner: FakeRunner) -> None:
    """Each response here is 4 to 20 KB; a budget of 40 KB keeps the last few, never more bytes."""
    budget = 40_000
    app = create_app(worker_settings(IMAGINE_BATCH_WAIT_MS="0"), runner, warmup=None, keep_bytes=budget)
    async with served(app) as client:
        await wait_status(client, "READY")
        sizes = []
        for i in range(12):
            body = {
                "input": {"prompt": "a fox", "width": 256 + 64 * (i % 3), "num_outputs": 1 + i % 4, "seed": i}
            }
            response = await client.put(f"/predictions/p{i}", json=body, headers=AUTH)
            assert response.json()["status"] == "succeeded"
            sizes.append(len(response.content))
            kept = (await client.get("/health-check")).json()["kept"]
            assert kept["max_bytes"] == budget and kept["max_age_s"] == 300
            assert 0 < kept["bytes"] <= budget
        assert max(sizes) < budget < sum(sizes)
        assert kept["predictions"] < 12
        # The newest is answered from memory; the oldest was dropped, so its id runs again, as in Cog.
        calls = len(runner.calls)
        newest = {"input": {"prompt": "a fox", "width": 256 + 64 * 2, "num_outputs": 4, "seed": 11}}
        assert len((await client.put("/predictions/p11", json=newest, headers=AUTH)).content) == sizes[11]
        assert len(runner.calls) == calls
        oldest = {"input": {"prompt": "a fox", "width": 256, "num_outputs": 1, "seed": 0}}
        assert (await client.put("/predictions/p0", json=oldest, headers=AUTH)).json()[
            "status"
        ] == "succeeded"
        assert len(runner.calls) == calls + 1
        assert (await client.get("/health-check")).json()["kept"]["bytes"] <= budget


async def test_a_result_larger_than_the_budget_is_answered_but_not_kept(runner: FakeRunner) -> None:
    app = create_app(worker_settings(), runner, warmup=None, keep_bytes=100)
    async with served(app) as client:
        await wait_status(client, "READY")
        response = await predict(client, {"prompt": "a fox", "width": 256})
        assert response.json()["status"] == "succeeded"
        assert (await client.get("/health-check")).json()["kept"] == {
            "predictions": 0,
            "bytes": 0,
            "max_bytes": 100,
            "max_age_s": 300,
        }


# --- batching -------------------------------------------------------------------------------------


async def test_compatible_predictions_share_one_call(client: httpx.AsyncClient, runner: FakeRunner) -> None:
    runner.gate.clear()
    blocker = asyncio.create_task(predict(client, {"prompt": "first", "width": 256, "seed": 0}))
    await asyncio.to_thread(runner.entered.wait, 10)
    same = [predict(client, {"prompt": f"fox {i}", "width": 256, "seed": i}) for i in range(3)]
    other = predict(client, {"prompt": "a wolf", "width": 256, "num_inference_steps": 10, "seed": 9})
    tasks = [asyncio.create_task(c) for c in [*same, other]]
    await asyncio.sleep(0.2)
    runner.gate.set()
    responses = await asyncio.gather(blocker, *tasks)
    assert all(r.json()["status"] == "succeeded" for r in responses)
    sizes = sorted(len(call) for call in runner.calls)
    assert sizes == [1, 1, 3], sizes
    batched = next(call for call in runner.calls if len(call) == 3)
    assert sorted(r.seed for r in batched if r.seed is not None) == [0, 1, 2]
    assert responses[1].json()["metrics"]["batch_size"] == 3


async def test_a_batch_counts_images_up_to_the_max(client: httpx.AsyncClient, runner: FakeRunner) -> None:
    runner.gate.clear()
    blocker = asyncio.create_task(predict(client, {"prompt": "first", "width": 256, "seed": 0}))
    await asyncio.to_thread(runner.entered.wait, 10)
    tasks = [
        asyncio.create_task(predict(client, {"prompt": "x", "width": 256, "num_outputs": 3, "seed": i}))
        for i in range(2)
    ]
    await asyncio.sleep(0.2)
    runner.gate.set()
    await asyncio.gather(blocker, *tasks)
    assert [len(call) for call in runner.calls] == [1, 1, 1]  # 3 + 3 images > IMAGINE_MAX_BATCH=4


async def test_a_failed_batch_is_retried_one_by_one(client: httpx.AsyncClient, runner: FakeRunner) -> None:
    runner.fail_batches_over = 1
    runner.gate.clear()
    blocker = asyncio.create_task(predict(client, {"prompt": "first", "width": 256, "seed": 0}))
    await asyncio.to_thread(runner.entered.wait, 10)
    tasks = [asyncio.create_task(predict(client, {"prompt": "x", "width": 256, "seed": i})) for i in range(2)]
    await asyncio.sleep(0.2)
    runner.gate.set()
    responses = await asyncio.gather(blocker, *tasks)
    assert [r.json()["status"] for r in responses] == ["succeeded"] * 3
    assert [len(call) for call in runner.calls] == [1, 2, 1, 1]


async def test_the_openapi_schema_lists_routes_and_input_fields(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json", headers=AUTH)).json()
    assert {"/health-check", "/predictions", "/predictions/{prediction_id}"} <= set(schema["paths"])
    body = schema["paths"]["/predictions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]["input"]["properties"]) == {
        "prompt",
        "negative_prompt",
        "width",
        "height",
        "num_outputs",
        "num_inference_steps",
        "guidance_scale",
        "scheduler",
        "seed",
        "image",
        "prompt_strength",
        "imagine_kind",
    }


# --- img2img: image, prompt_strength, imagine_kind ------------------------------------------------


def picture(width: int = 300, height: int = 200, rgb: tuple[int, int, int] = (200, 30, 40)) -> bytes:
    return solid_png(width, height, rgb)


async def test_an_image_prompt_reaches_the_runner_with_its_picture_and_strength(
    client: httpx.AsyncClient, runner: FakeRunner
) -> None:
    request = parse_prompt("a red fox --strength 0.45 --seed 3", image=picture())
    response = await predict(client, request_to_input(request))
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["status"] == "succeeded"
    assert png_size(png_from_data_uri(data["output"][0])) == (request.width, request.height)
    ((got,),) = runner.calls
    assert got.init_image == request.init_image and got.init_image is not None
    assert (got.kind, got.strength, got.width, got.height) == ("image", 0.45, 1024, 704)
    assert got.denoise_steps == request.denoise_steps
    # The answer echoes the picture by its digest, not its megabytes.
    assert data["input"]["image"].startswith("sha256:") and data["input"]["prompt_strength"] == 0.45


async def test_an_upscale_may_be_2048_a_side(client: httpx.AsyncClient, runner: FakeRunner) -> None:
    source = validate(ImageRequest(prompt="a lighthouse", width=1024, height=512, seed=9))
    request = upscale(source, picture(1024, 512), seed=9)
    response = await predict(client, request_to_input(request))
    assert response.status_code == 200, response.text
    ((got,),) = runner.calls
    assert (got.kind, got.width, got.height, got.strength, got.seed) == ("upscale", 2048, 1024, 0.3, 9)
    assert got.init_image == request.init_image
    # Only an upscale goes past 1024.
    too_big = {**request_to_input(request), "imagine_kind": "vary"}
    refused = await predict(client, too_big)
    assert refused.status_code == 422 and "1024" in refused.json()["detail"]


async def test_a_bare_replicate_style_input_is_sized_like_its_picture(
    client: httpx.AsyncClient, runner: FakeRunner
) -> None:
    response = await predict(client, {"prompt": "a fox", "image": png_data_uri(picture(300, 600))})
    assert response.status_code == 200, response.text
    ((got,),) = runner.calls
    assert (got.kind, got.strength, got.width, got.height) == ("image", 0.6, 512, 1024)
    assert got.init_image is not None and png_size(got.init_image) == (512, 1024)


def _truncated() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.effect_noise((300, 300), 64).convert("RGB").save(out, format="JPEG")
    return out.getvalue()[:400]


BAD_PICTURES: list[tuple[str, str]] = [
    (
        "data:image/png;base64," + base64.b64encode(b"GIF89a not a png").decode(),
        "must be a PNG, JPEG or WebP",
    ),
    ("data:image/jpeg;base64," + base64.b64encode(_truncated()).decode(), "damaged or cut off"),
    ("data:image/png;base64," + png_data_uri(solid_png(4097, 1, (0, 0, 0)))[22:], "is 4097x1; the limit"),
    ("data:image/png;base64,%%%", "The image must be a data:image/png;base64"),
    ("https://example.com/fox.png", "The worker does not fetch pictures from URLs"),
    ("http://169.254.169.254/latest/meta-data", "The worker does not fetch pictures from URLs"),
]


@pytest.mark.parametrize(("image", "reason"), BAD_PICTURES, ids=[r for _, r in BAD_PICTURES])
async def test_a_bad_picture_is_a_422_with_one_sentence(
    client: httpx.AsyncClient, runner: FakeRunner, image: str, reason: str
) -> None:
    response = await predict(client, {"prompt": "a fox", "image": image})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert reason in detail and "\n" not in detail and len(detail) < 300, detail
    assert not runner.calls


async def test_a_picture_over_10_mb_is_refused_and_one_under_it_travels(
    client: httpx.AsyncClient, runner: FakeRunner
) -> None:
    under = solid_png(256, 256, (5, 6, 7), pad_to=MAX_PICTURE_BYTES - 4096)
    assert MAX_PICTURE_BYTES - 8192 < len(under) <= MAX_PICTURE_BYTES
    ok = await predict(client, {"prompt": "a fox", "image": png_data_uri(under)})
    assert ok.status_code == 200, ok.text
    over = solid_png(256, 256, (5, 6, 7), pad_to=MAX_PICTURE_BYTES + 4096)
    refused = await predict(client, {"prompt": "a fox", "image": png_data_uri(over)})
    assert refused.status_code == 422
    assert refused.json()["detail"] == "The picture is 10.0 MB; the limit is 10 MB."
    assert len(runner.calls) == 1


@pytest.mark.parametrize(
    ("inp", "reason"),
    [
        ({"prompt_strength": 0.5}, 'The input has "prompt_strength" but no "image"'),
        ({"imagine_kind": "upscale"}, 'The input has "imagine_kind" but no "image"'),
        ({"image": "IMAGE", "prompt_strength": 1.5}, "--strength must be a number from 0.05 to 1"),
        ({"image": "IMAGE", "imagine_kind": "text"}, "imagine_kind must be one of image, upscale, vary"),
        ({"image": 42}, "The image must be a data: URI as text; got 42."),
    ],
)
async def test_img2img_fields_are_checked(
    client: httpx.AsyncClient, runner: FakeRunner, inp: dict[str, Any], reason: str
) -> None:
    if inp.get("image") == "IMAGE":
        inp = {**inp, "image": png_data_uri(picture())}
    response = await predict(client, {"prompt": "a fox", **inp})
    assert response.status_code == 422
    assert response.json()["detail"].startswith(reason), response.json()["detail"]
    assert not runner.calls


async def test_a_put_with_an_image_is_idempotent_by_the_pictures_content(
    client: httpx.AsyncClient, runner: FakeRunner
) -> None:
    body = {"input": {"prompt": "a fox", "image": png_data_uri(picture()), "seed": 1}}
    first = await client.put("/predictions/img-1", json=body, headers=AUTH)
    again = await client.put("/predictions/img-1", json=body, headers=AUTH)
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    assert len(runner.calls) == 1
    other = {"input": {**body["input"], "image": png_data_uri(picture(rgb=(1, 2, 3)))}}
    conflict = await client.put("/predictions/img-1", json=other, headers=AUTH)
    assert conflict.status_code == 422 and "different input" in conflict.json()["detail"]


async def test_img2img_is_batched_apart_from_text_and_other_strengths(
    client: httpx.AsyncClient, runner: FakeRunner
) -> None:
    runner.gate.clear()
    blocker = asyncio.create_task(predict(client, {"prompt": "first", "width": 256, "seed": 0}))
    await asyncio.to_thread(runner.entered.wait, 10)
    image = png_data_uri(picture(256, 256))
    inputs: list[dict[str, Any]] = [
        {"prompt": "text", "width": 256, "height": 256, "seed": 1},
        {"prompt": "img a", "image": image, "width": 256, "height": 256, "prompt_strength": 0.5, "seed": 2},
        {"prompt": "img b", "image": image, "width": 256, "height": 256, "prompt_strength": 0.5, "seed": 3},
        {"prompt": "img c", "image": image, "width": 256, "height": 256, "prompt_strength": 0.7, "seed": 4},
        {"prompt": "text", "width": 256, "height": 256, "seed": 5},
    ]
    tasks = [asyncio.create_task(predict(client, inp)) for inp in inputs]
    await asyncio.sleep(0.3)
    runner.gate.set()
    responses = await asyncio.gather(blocker, *tasks)
    assert all(r.json()["status"] == "succeeded" for r in responses)
    batches = sorted(sorted(r.prompt for r in call) for call in runner.calls[1:])
    assert batches == [["img a", "img b"], ["img c"], ["text", "text"]], batches
    for call in runner.calls[1:]:
        assert len({(r.strength, r.init_image is None) for r in call}) == 1


# --- the real tiny pipeline -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_runner() -> Any:
    from backend.pipeline import DiffusionRunner

    return DiffusionRunner.load("tiny", "cpu")


def pixels(data_uri: str) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(png_from_data_uri(data_uri))) as image:
        return np.asarray(image.convert("RGB")).astype(int)


async def test_batched_images_equal_images_made_alone(tiny_runner: Any) -> None:
    calls: list[int] = []

    def runner(
        requests: Sequence[ImageRequest], *, cancel: Callable[[], bool] | None = None
    ) -> list[GenerationResult]:
        calls.append(len(requests))
        results: list[GenerationResult] = tiny_runner.generate(requests, cancel=cancel)
        return results

    inputs = [
        {"prompt": "a red fox", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 11},
        {"prompt": "a lighthouse at dusk", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 12},
        {
            "prompt": "a red fox",
            "width": 256,
            "height": 256,
            "num_inference_steps": 2,
            "seed": 13,
            "num_outputs": 2,
        },
    ]
    settings = worker_settings(IMAGINE_BATCH_WAIT_MS="300")
    async with served(create_app(settings, runner, warmup=None)) as client:
        await wait_status(client, "READY")
        batched = await asyncio.gather(*(predict(client, inp) for inp in inputs))
        assert calls == [3]
        alone = [await predict(client, inp) for inp in inputs]
        assert calls == [3, 1, 1, 1]
    for together, single in zip(batched, alone, strict=True):
        a, b = together.json(), single.json()
        assert a["status"] == b["status"] == "succeeded"
        assert a["seeds"] == b["seeds"]
        for x, y in zip(a["output"], b["output"], strict=True):
            # The same seed makes the same image. Not bit for bit: a batched convolution or matmul
            # sums in another order than a batch of one (on CPU and CUDA alike), which moves a
            # handful of pixels across a rounding boundary by one level out of 255.
            diff = abs(pixels(x) - pixels(y))
            assert diff.max() <= 1, diff.max()
            assert (diff > 0).mean() < 0.001, (diff > 0).mean()
    different = abs(pixels(batched[0].json()["output"][0]) - pixels(batched[2].json()["output"][0]))
    assert different.mean() > 5  # other seeds make other images
