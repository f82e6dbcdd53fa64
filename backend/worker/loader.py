"""What setup loads: a batch runner, and where the seconds of a cold start went.

The worker loads once and serves many (Cog's ``setup()``/``predict()`` split); :class:`Worker
<backend.worker.runner.Worker>` calls a :data:`Loader` on its GPU thread and serves with the
:class:`BatchRunner` it gives back. :func:`pipeline_loader` loads the real pipeline; this is the
only part of the worker that reaches torch, and only inside the loader it returns.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.backend import GenerationResult
from gateway.request import DEFAULT_SCHEDULER, ImageRequest
from gateway.settings import Settings

WARMUP_REQUEST = ImageRequest(
    prompt="a lighthouse at dusk", width=512, height=512, steps=2, seed=0, scheduler=DEFAULT_SCHEDULER
)


class BatchRunner(Protocol):
    """Makes the images of several requests that share size, steps, guidance, scheduler and strength
    (all text prompts, or all img2img from their ``init_image``) in ONE pipeline call; one result per
    request, in order. Blocking: runs on the worker's GPU thread. ``cancel`` is asked between
    denoising steps (``DiffusionRunner.generate`` is one)."""

    def __call__(
        self, requests: Sequence[ImageRequest], *, cancel: Callable[[], bool] | None = None
    ) -> list[GenerationResult]: ...


@dataclass
class Loaded:
    """What setup produced: the runner, where the seconds went, and what it runs on."""

    runner: BatchRunner
    timings: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    model: str = ""


#: Loads the model (in a thread); ``phase`` is called with what it is doing, for the health check.
Loader = Callable[[Callable[[str], None]], Loaded]


def given_runner(runner: BatchRunner, model: str) -> Loader:
    """A loader that loads nothing: ``runner`` is already there (tests, benchmarks)."""

    def load(phase: Callable[[str], None]) -> Loaded:
        return Loaded(runner, device="injected", model=model)

    return load


def pipeline_loader(settings: Settings, device: str | None = None) -> Loader:
    """Load ``IMAGINE_MODEL`` for :class:`backend.pipeline.DiffusionRunner`, timing each cold-start step.

    :func:`backend.pipeline.load_pipeline` reports the seconds of its steps (imports, weights,
    to device) so the health check can say where a cold start went; compile is timed here
    (``IMAGINE_COMPILE=1``: the first generation, which is when torch compiles; the kernels are
    cached under the model cache folder, so a new container with the same cache does not
    compile again).
    """

    def load(phase: Callable[[str], None]) -> Loaded:
        from backend import pipeline as sd
        from backend.tiny import default_cache_dir

        # 1-3. Imports, weights (safetensors; on CUDA straight onto the GPU), to the device
        timings: dict[str, float] = {}
        where = device or sd.default_device()
        pipe = sd.load_pipeline(
            settings.model,
            where,
            compile_unet=settings.compile,
            compile_cache_dir=default_cache_dir() / "torch-compile",
            phase=phase,
            timings=timings,
        )
        runner = sd.DiffusionRunner(pipe, settings.model)
        # 4. Compile (opt-in): torch compiles on the first call, so that call is the compile step
        timings["compile"] = 0.0
        if settings.compile:
            phase("compiling the UNet")
            t = time.perf_counter()
            runner.generate([WARMUP_REQUEST])
            timings["compile"] = time.perf_counter() - t
        return Loaded(runner.generate, timings, device=where, model=settings.model)

    return load


def process_started_at() -> float:
    """When this process started (wall clock), from /proc where there is one."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT


_IMPORTED_AT = time.time()
