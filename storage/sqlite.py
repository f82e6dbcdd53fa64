"""The embedded engine: one SQLite file (aiosqlite, WAL), the default for one host.

A write runs as one function on aiosqlite's connection thread in a ``BEGIN IMMEDIATE`` transaction
shared with the writes queued beside it (group commit): one thread hop per batch, atomic against
other coroutines and, through SQLite's write lock and busy timeout, against other processes sharing
the file. Reads and single-statement updates (the heartbeat) run at once in autocommit mode.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from storage import schema
from storage.connection import Connection
from storage.errors import unavailable
from storage.group_commit import GroupCommit, Outcome

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], Any]


class SqliteEngine:
    kind = "sqlite"

    def __init__(self, conn: Connection, path: Path, *, group_commit: bool) -> None:
        self._connection = conn
        self.path = path
        self.writes: GroupCommit[Work] = GroupCommit(self._flush, enabled=group_commit)

    @classmethod
    async def open(cls, path: Path, *, group_commit: bool, busy_timeout_ms: int) -> SqliteEngine:
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        conn = await Connection.open(str(path), busy_timeout_s=busy_timeout_ms / 1000)
        engine = cls(conn, path, group_commit=group_commit)
        try:
            await engine.run(lambda c: schema.configure(c, busy_timeout_ms))
            await engine.run(schema.migrate)
        except BaseException:
            await conn.close()
            raise
        return engine

    def describe(self) -> str:
        return str(self.path)

    async def close(self) -> None:
        await self._connection.close()

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(sqlite3_connection)`` on the connection thread, the store's failures told apart."""
        try:
            return await self._connection.run(fn)
        except sqlite3.OperationalError as exc:
            raise unavailable(exc) from exc

    async def _flush(self, works: list[Work]) -> list[Outcome]:
        return await self.run(lambda c: run_batch(c, works))


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
