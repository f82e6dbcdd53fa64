"""The in-process backend: the real tiny pipeline behind the gateway's Backend interface."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from backend.local import LocalBackend
from backend.pipeline import ModelUnavailable
from gateway.backend import Backend, GenerationResult, create_backend
from gateway.errors import BackendError, BackendUnavailable
from gateway.request import ImageRequest
from gateway.settings import Settings
from tests.helpers.torch_threads import one_torch_thread  # noqa: F401 (autouse fixture)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def local_settings(settings: Settings) -> Settings:
    return settings.with_overrides(backend="local", model="tiny")


@pytest.fixture
async def backend(
    local_settings: Settings, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[LocalBackend]:
    monkeypatch.setenv("IMAGINE_CACHE_DIR", str(models_dir))
    made = create_backend(local_settings)
    assert isinstance(made, LocalBackend)
    await made.start()
    yield made
    await made.close()


def request(prompt: str = "a lighthouse at dusk", **fields: Any) -> ImageRequest:
    values: dict[str, Any] = {"width": 256, "height": 256, "steps": 3, "seed": 7, **fields}
    return ImageRequest(prompt=prompt, **values)


def test_importing_the_backend_does_not_import_torch() -> None:
    code = (
        "import sys, backend.local, backend.pipeline; "
        "heavy = sorted({'torch', 'diffusers', 'transformers'} & set(sys.modules)); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


async def test_it_is_the_local_backend_of_the_registry(backend: LocalBackend) -> None:
    assert isinstance(backend, Backend)
    assert (backend.name, backend.capacity) == ("local", 1)
    backend.check_available()
    assert backend.runner is not None and backend.runner.device == "cpu"


async def test_generate_returns_pngs_of_the_requested_size_with_progress_on_the_loop(
    backend: LocalBackend,
) -> None:
    loop_thread = threading.get_ident()
    steps: list[tuple[int, int, bool]] = []

    def progress(step: int, total: int) -> None:
        steps.append((step, total, threading.get_ident() == loop_thread))

    result = await backend.generate("job-1", request(width=320, num_images=2), progress)
    assert isinstance(result, GenerationResult)
    assert (result.seeds, result.blocked, result.model) == ([7, 8], 0, "tiny")
    assert not result.prompt_truncated
    assert result.timings["predict_time"] > 0
    for png in result.images:
        with Image.open(io.BytesIO(png)) as image:
            assert (image.format, image.size) == ("PNG", (320, 256))
    assert steps == [(1, 3, True), (2, 3, True), (3, 3, True)]
    again = await backend.generate("job-2", request(width=320, num_images=2), lambda s, t: None)
    assert again.images == result.images


async def test_the_event_loop_keeps_running_while_an_image_is_made(backend: LocalBackend) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    await backend.generate("job", request(steps=8), lambda s, t: None)
    elapsed = time.monotonic() - started
    ticker.cancel()
    # A blocked loop would tick once at most; a free one ticks about every 5 ms.
    assert ticks >= min(5, elapsed / 0.05), (ticks, elapsed)


async def test_cancelling_the_task_stops_the_pipeline_at_the_next_step(backend: LocalBackend) -> None:
    first_step = asyncio.Event()
    steps: list[int] = []

    def progress(step: int, total: int) -> None:
        steps.append(step)
        first_step.set()

    task = asyncio.create_task(backend.generate("job", request(steps=50), progress))
    await asyncio.wait_for(first_step.wait(), 30)
    step_time = 10.0  # generous: one tiny step takes a few hundredths of a second
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - cancelled_at < step_time
    stopped_at = len(steps)
    assert stopped_at < 50
    await asyncio.sleep(0.05)
    assert len(steps) == stopped_at, "no progress after the task ended"
    # The pipeline is free again for the next job.
    result = await backend.generate("next", request(), lambda s, t: None)
    assert result.images


async def test_a_timeout_ends_the_job_as_the_service_waits_for_it(backend: LocalBackend) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(backend.generate("job", request(steps=50), lambda s, t: None), 0.05)
    assert (await backend.generate("next", request(), lambda s, t: None)).images


async def test_a_long_prompt_is_reported_as_cut(backend: LocalBackend) -> None:
    result = await backend.generate("job", request("a lighthouse on a cliff, " * 15), lambda s, t: None)
    assert result.prompt_truncated
    assert result.images


async def test_pipeline_failures_become_backend_errors_a_user_can_read(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = backend.runner
    assert runner is not None

    def crash(*args: object, **kwargs: object) -> list[GenerationResult]:
        raise RuntimeError("CUDA kernel failed at /secret/path/model.py:12")

    monkeypatch.setattr(runner, "generate", crash)
    with pytest.raises(BackendError) as info:
        await backend.generate("job", request(), lambda s, t: None)
    assert info.value.reason == "the image pipeline failed (RuntimeError)"
    assert "secret" not in str(info.value)

    class OutOfMemoryError(RuntimeError):
        """Named like torch.cuda.OutOfMemoryError."""

    def out_of_memory(*args: object, **kwargs: object) -> list[GenerationResult]:
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(runner, "generate", out_of_memory)
    with pytest.raises(BackendError) as info:
        await backend.generate("job", request(), lambda s, t: None)
    assert info.value.retryable
    assert info.value.reason.startswith("the GPU ran out of memory")


async def test_a_model_that_cannot_load_refuses_work_with_the_reason(
    local_settings: Settings, tmp_path: Path
) -> None:
    missing = LocalBackend(local_settings.with_overrides(model=str(tmp_path / "no" / "model")))
    with pytest.raises(ModelUnavailable, match="neither a local model folder"):
        await missing.start()
    with pytest.raises(BackendUnavailable, match="neither a local model folder"):
        missing.check_available()
    with pytest.raises(BackendError):
        await missing.generate("job", request(), lambda s, t: None)
    await missing.close()


async def test_work_is_refused_at_no_charge_while_the_model_loads(
    local_settings: Settings, models_dir: Path
) -> None:
    loading = LocalBackend(local_settings, cache_dir=models_dir)
    loading.check_available()  # not started: the first job would load it
    start = asyncio.create_task(loading.start())
    await asyncio.sleep(0)
    with pytest.raises(BackendUnavailable, match="still loading"):
        loading.check_available()
    await start
    loading.check_available()
    await loading.close()


async def test_an_image_request_runs_img2img_with_its_own_step_count(backend: LocalBackend) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), (200, 40, 40)).save(buffer, format="PNG")
    job = request(kind="vary", strength=0.5, steps=6, init_image=buffer.getvalue())
    steps: list[tuple[int, int]] = []
    result = await backend.generate("job-v", job, lambda step, total: steps.append((step, total)))
    await asyncio.sleep(0)
    assert steps == [(1, 3), (2, 3), (3, 3)] and job.denoise_steps == 3
    with Image.open(io.BytesIO(result.images[0])) as image:
        assert image.size == (256, 256)
        red, green, _ = image.convert("RGB").getpixel((128, 128))  # type: ignore[misc]
    assert red > green
