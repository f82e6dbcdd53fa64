"""Group commit: the writes that arrive while one transaction runs share the next one.

Each engine says how a batch runs (``storage.sqlite.run_batch``: a savepoint around each write;
``storage.postgres.run_batch``: the writes pipelined in one transaction), so one failing write (a
refused reservation) leaves the others whole, and a busy gateway pays one round trip and one commit
per batch instead of per write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from storage.errors import unavailable

W = TypeVar("W")  # what an engine runs as one write
Outcome = tuple[bool, Any]  # (True, result) or (False, the exception the write raised)
Flush = Callable[[list[W]], Awaitable[list[Outcome]]]


class GroupCommit(Generic[W]):
    def __init__(self, flush: Flush[W], *, enabled: bool = True) -> None:
        self._run_batch = flush
        self.enabled = enabled  # off: one transaction per write (the benchmark's baseline)
        self._batch: list[tuple[W, asyncio.Future[Any]]] = []
        self._flushing: set[asyncio.Future[Any]] = set()

    async def write(self, work: W) -> Any:
        """``work`` in a write transaction, committed together with the writes queued beside it."""
        if not self.enabled:
            ok, value = (await self._run_batch([work]))[0]
            if not ok:
                raise unavailable(value)
            return value
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batch.append((work, future))
        if not self._flushing:
            self._flush()  # nothing in flight: go now; writes arriving meanwhile form the next batch
        return await future

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return

        def deliver(task: asyncio.Future[list[Outcome]]) -> None:
            error = task.exception() if not task.cancelled() else asyncio.CancelledError()
            for index, (_, future) in enumerate(batch):
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    ok, value = task.result()[index]
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(unavailable(value))

        task = asyncio.ensure_future(self._run_batch([work for work, _ in batch]))  # noqa: RUF006 (kept in _flushing)
        self._flushing.add(task)
        task.add_done_callback(deliver)
        task.add_done_callback(self._next_batch)

    def _next_batch(self, task: asyncio.Future[Any]) -> None:
        self._flushing.discard(task)
        if self._batch:
            self._flush()
