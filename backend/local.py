"""The in-process backend (``IMAGINE_BACKEND=local``): the diffusers pipeline in this process.

The pipeline runs in one worker thread of its own, so the event loop that serves the bots and
the web page stays responsive while images are made. Importing this module does not import
torch; loading the model (``start()``) does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from gateway.backend import GenerationResult, ProgressCallback
from gateway.errors import BackendError, BackendUnavailable
from gateway.request import ImageRequest

if TYPE_CHECKING:
    from collections.abc import Callable

    from backend.pipeline import DiffusionRunner
    from gateway.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a cancelled job waits for the pipeline thread to stop at the end of its step before
#: it gives up waiting (the thread still stops there; the next job queues behind it).
CANCEL_GRACE_SECONDS = 10.0


class LocalBackend:
    """One pipeline, one image call at a time (``capacity`` 1), loaded once by :meth:`start`."""

    name = "local"

    def __init__(
        self, settings: Settings, *, device: str | None = None, cache_dir: Path | None = None
    ) -> None:
        self.settings = settings
        self.device = device
        self.cache_dir = cache_dir
        self._runner: DiffusionRunner | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._start_lock = asyncio.Lock()
        self._loading = False
        self._load_error: str | None = None

    @property
    def capacity(self) -> int:
        return 1

    @property
    def runner(self) -> DiffusionRunner | None:
        """The loaded pipeline, or None before :meth:`start` (for the worker and tests)."""
        return self._runner

    async def start(self) -> None:
        """Load the model in the pipeline thread; a failure is raised and remembered."""
        async with self._start_lock:
            if self._runner is not None:
                return
            self._loading, self._load_error = True, None
            try:
                self._runner = await self._in_pipeline_thread(self._load)
            except BackendError as exc:
                self._load_error = exc.reason
                raise
            except Exception as exc:
                log.exception("loading the model %s failed", self.settings.model)
                self._load_error = (
                    f"The image model {self.settings.model!r} failed to load ({type(exc).__name__})."
                )
                raise BackendError(self._load_error) from exc
            finally:
                self._loading = False

    def _load(self) -> DiffusionRunner:
        from backend.pipeline import DiffusionRunner

        runner = DiffusionRunner.load(
            self.settings.model,
            self.device,
            compile_unet=self.settings.compile,
            compile_cache_dir=self.settings.data_dir / "compile-cache",
            cache_dir=self.cache_dir,
        )
        log.info("model %s loaded on %s", self.settings.model, runner.device)
        if self.settings.compile:
            log.info("compiled UNet warmed up in %.1f s", runner.warmup())
        return runner

    async def close(self) -> None:
        self._runner = None
        if self._executor is not None:
            # A call still running finishes on its own; nothing waits for it.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def check_available(self) -> None:
        if self._load_error is not None:
            raise BackendUnavailable(self._load_error)
        if self._loading:
            raise BackendUnavailable("The image model is still loading; try again in a minute.")

    async def generate(
        self, job_id: str, request: ImageRequest, progress: ProgressCallback
    ) -> GenerationResult:
        """Run the pipeline in its thread; task cancellation stops it at the end of the current step."""
        if self._runner is None:
            await self.start()
        runner = self._runner
        if runner is None:
            raise BackendUnavailable("The image model is not loaded; Imagine is shutting down.")
        loop = asyncio.get_running_loop()
        cancel = threading.Event()

        def report(step: int, total: int) -> None:
            if not cancel.is_set():
                with contextlib.suppress(RuntimeError):  # the loop closed under us
                    loop.call_soon_threadsafe(progress, step, total)

        call = functools.partial(runner.generate, [request], progress=report, cancel=cancel)
        future = asyncio.wrap_future(self._submit(call))
        try:
            results = await asyncio.shield(future)
        except asyncio.CancelledError:
            cancel.set()
            done, _ = await asyncio.wait({future}, timeout=CANCEL_GRACE_SECONDS)
            if not done:
                log.warning("job %s: the pipeline did not stop within %.0f s", job_id, CANCEL_GRACE_SECONDS)
            elif not future.cancelled():
                future.exception()  # GenerationCancelled, expected: mark it seen
            raise
        except BackendError:
            raise
        except Exception as exc:
            raise _backend_error(job_id, exc) from exc
        return results[0]

    def _submit(self, call: Callable[[], T]) -> Future[T]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imagine-pipeline")
        future = self._executor.submit(call)
        # A cancelled job no longer awaits its call; mark the call's error as seen.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        return future

    async def _in_pipeline_thread(self, call: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self._submit(call))


def _backend_error(job_id: str, exc: Exception) -> BackendError:
    """A reason fit for a user: no paths, no tensors, no stack."""
    if type(exc).__name__ == "OutOfMemoryError":
        return BackendError("the GPU ran out of memory; try a smaller size or fewer images", retryable=True)
    if isinstance(exc, ValueError):
        return BackendError(str(exc))
    log.exception("job %s: the pipeline failed", job_id, exc_info=exc)
    return BackendError(f"the image pipeline failed ({type(exc).__name__})")
