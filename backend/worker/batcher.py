"""Dynamic batching: concurrent predictions that share size, steps, guidance, scheduler and
(for img2img) strength run in one pipeline call; text prompts and img2img never share one.

A batch is the oldest queued prediction and the compatible ones after it, up to ``max_batch``
images, waiting at most ``batch_wait`` seconds (from the oldest one's arrival) for company. Each
keeps its own seed, so an image is the same batched or alone. A batch that fails is run again
one prediction at a time, so one bad request (or a batch too big for memory) fails only itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from backend.worker.prediction import Prediction
from gateway.backend import GenerationResult
from gateway.request import ImageRequest

log = logging.getLogger("imagine.worker")


class Generate(Protocol):
    """A :class:`~backend.worker.loader.BatchRunner` call, awaited off the event loop."""

    def __call__(
        self, requests: Sequence[ImageRequest], *, cancel: Callable[[], bool] | None = None
    ) -> Awaitable[list[GenerationResult]]: ...


class Batcher:
    """The queue of predictions waiting for the GPU, and the batch that holds it now."""

    def __init__(self, max_batch: int, batch_wait: float) -> None:
        self.max_batch = max(1, max_batch)
        self.batch_wait = max(0.0, batch_wait)
        self.pending: list[Prediction] = []
        self.running: list[Prediction] = []
        self.batches = 0
        #: Seconds a batch takes lately (a moving average), for ``Retry-After``.
        self.recent_batch_seconds = 5.0
        self._wakeup = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return len(self.pending) + len(self.running)

    def wake(self) -> None:
        """Look at the queue again (a prediction came, or the GPU became ready)."""
        self._wakeup.set()

    def add(self, prediction: Prediction) -> None:
        self.pending.append(prediction)
        self._wakeup.set()

    def withdraw(self, prediction: Prediction) -> bool:
        """Take a queued prediction out of the queue; False if it is not queued (running or done)."""
        if prediction not in self.pending:
            return False
        self.pending.remove(prediction)
        return True

    def drain(self) -> list[Prediction]:
        """Empty the queue, giving back what was queued (the worker stops or could not start)."""
        queued, self.pending = self.pending, []
        return queued

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the batches ahead at the recent pace."""
        batches_ahead = max(1, math.ceil(self.in_flight / self.max_batch))
        return max(1, math.ceil(batches_ahead * self.recent_batch_seconds))

    async def next_batch(self, ready: Callable[[], bool]) -> list[Prediction]:
        """Wait until ``ready()`` and something is queued, then form a batch (empty if all were cancelled)."""
        while not ready() or not self.pending:
            self._wakeup.clear()
            await self._wakeup.wait()
        return await self._gather()

    async def _gather(self) -> list[Prediction]:
        """The oldest prediction and compatible ones after it, waiting up to the batch window."""
        head = self.pending[0]
        deadline = head.queued_at + self.batch_wait
        while True:
            batch = self._compatible(head)
            images = sum(p.request.num_images for p in batch)
            left = deadline - time.monotonic()
            if images >= self.max_batch or left <= 0:
                break
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), left)
            if head not in self.pending:  # cancelled while waiting
                if not self.pending:
                    return []
                head = self.pending[0]
                deadline = head.queued_at + self.batch_wait
        for prediction in batch:
            self.pending.remove(prediction)
        return batch

    def _compatible(self, head: Prediction) -> list[Prediction]:
        batch = [head]
        images = head.request.num_images
        for other in self.pending:
            if other is head or other.batch_key != head.batch_key:
                continue
            if images + other.request.num_images > self.max_batch:
                continue
            batch.append(other)
            images += other.request.num_images
        return batch

    async def run(
        self, batch: list[Prediction], generate: Generate
    ) -> tuple[list[GenerationResult | BaseException], float]:
        """One result (or error) per prediction, in order, and the seconds the batch took.

        While it runs the batch counts as in flight; ``generate`` is asked to stop between
        denoising steps once every prediction in it is cancelled.
        """
        self.running = batch
        t = time.perf_counter()

        def all_cancelled() -> bool:
            return all(p.canceled for p in batch)

        try:
            results: list[GenerationResult | BaseException] = list(
                await generate([p.request for p in batch], cancel=all_cancelled)
            )
            if len(results) != len(batch):
                raise RuntimeError(f"the runner returned {len(results)} results for {len(batch)} requests")
        except Exception as exc:
            if all_cancelled():
                results = [exc] * len(batch)
            elif len(batch) == 1:
                log.exception("prediction %s failed", batch[0].id)
                results = [exc]
            else:
                # One bad request (or a batch too big for memory) should not fail the others.
                log.warning("a batch of %d failed (%s); running each alone", len(batch), type(exc).__name__)
                results = []
                for prediction in batch:
                    try:
                        (one,) = await generate([prediction.request])
                        results.append(one)
                    except Exception as single:
                        log.exception("prediction %s failed", prediction.id)
                        results.append(single)
        finally:
            self.running = []
        seconds = time.perf_counter() - t
        self.recent_batch_seconds = 0.7 * self.recent_batch_seconds + 0.3 * seconds
        self.batches += 1
        return results, seconds
