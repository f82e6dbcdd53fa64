"""The one place that touches aiosqlite: run a function on its connection thread.

aiosqlite's public API runs one statement per thread hop (``execute``, ``commit``). A reservation
is a transaction of several statements that must not interleave with another coroutine's, so the
store runs each transaction as one function on the connection's own thread, which aiosqlite only
offers through ``Connection._execute`` and the ``Connection._conn`` property. Those two private
names are used here and nowhere else; ``tests/test_storage_adapter.py`` fails with a sentence
saying what changed if a new aiosqlite moves them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiosqlite

T = TypeVar("T")


class Connection:
    """A SQLite connection whose work runs, one function at a time, on its own thread."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    @classmethod
    async def open(cls, path: str, *, busy_timeout_s: float) -> Connection:
        """Autocommit mode (``isolation_level=None``): the store writes its own BEGIN and COMMIT."""
        return cls(await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout_s))

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> Awaitable[T]:
        """``fn(sqlite3_connection)`` on the connection thread, in turn with every other call."""
        raw: sqlite3.Connection = self._conn._conn
        result: Awaitable[T] = self._conn._execute(fn, raw)  # type: ignore[no-untyped-call]
        return result

    async def close(self) -> None:
        await self._conn.close()
