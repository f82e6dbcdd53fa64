"""Group commit: the writes that arrive while one transaction runs share the next one.

Each write runs in its own savepoint, so one failing (a refused reservation) leaves the others
whole, and a busy gateway pays one thread hop and one commit per batch instead of per write.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from storage.errors import unavailable

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], Any]
Outcome = tuple[bool, Any]  # (True, result) or (False, the exception the write raised)


class Runner(Protocol):
    """Runs a function on the connection thread (``Database._run``)."""

    def __call__(self, fn: Callable[[sqlite3.Connection], T], /) -> Awaitable[T]: ...


class GroupCommit:
    def __init__(self, run: Runner, *, enabled: bool = True) -> None:
        self._run = run
        self.enabled = enabled  # off: one transaction per write (the benchmark's baseline)
        self._batch: list[tuple[Work, asyncio.Future[Any]]] = []
        self._flushing: set[asyncio.Future[Any]] = set()

    async def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` in a write transaction, committed together with the writes queued beside it."""
        if not self.enabled:
            ok, value = (await self._run(lambda c: run_batch(c, [work])))[0]
            if not ok:
                raise unavailable(value)
            return value  # type: ignore[no-any-return]
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batch.append((work, future))
        if not self._flushing:
            self._flush()  # nothing in flight: go now; writes arriving meanwhile form the next batch
        result: T = await future
        return result

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

        works = [work for work, _ in batch]
        task = asyncio.ensure_future(self._run(lambda c: run_batch(c, works)))
        self._flushing.add(task)
        task.add_done_callback(deliver)
        task.add_done_callback(self._next_batch)

    def _next_batch(self, task: asyncio.Future[Any]) -> None:
        self._flushing.discard(task)
        if self._batch:
            self._flush()


def run_batch(c: sqlite3.Connection, batch: list[Work]) -> list[Outcome]:
    """One ``BEGIN IMMEDIATE`` ... ``COMMIT`` around the batch, a savepoint around each write."""
    results: list[Outcome] = []
    c.execute("BEGIN IMMEDIATE")
    try:
        for work in batch:
            c.execute("SAVEPOINT write")
            try:
                results.append((True, work(c)))
            except Exception as exc:
                c.execute("ROLLBACK TO write")
                results.append((False, exc))
            c.execute("RELEASE write")
        c.execute("COMMIT")
    except BaseException:
        if c.in_transaction:
            c.execute("ROLLBACK")
        raise
    return results
