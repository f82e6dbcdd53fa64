"""The store the gateway holds: SQLite (aiosqlite, WAL) for users, quotas, the credit ledger, jobs and bans.

Each operation is written once, as a function of a ``sqlite3.Connection`` in the module of what it
is about (``ledger``, ``accounts``, ``jobs``, ``instances``, ``schema``); ``Database`` lists them
and says how each runs. A write runs as one function on aiosqlite's connection thread in a
``BEGIN IMMEDIATE`` transaction shared with the writes queued beside it (``group_commit``): one
thread hop per batch, atomic against other coroutines and, through SQLite's write lock and busy
timeout, against other processes sharing the file. Reads and single-statement updates (the
heartbeat) run at once in autocommit mode, outside any batch.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from storage import accounts, jobs, schema
from storage import instances as _instances  # the names `instances` and `ledger` are operations here
from storage import ledger as _ledger
from storage.connection import Connection
from storage.errors import unavailable
from storage.group_commit import GroupCommit

P = ParamSpec("P")
T = TypeVar("T")

BUSY_TIMEOUT_MS = 30_000

Body = Callable[Concatenate[sqlite3.Connection, P], T]
Operation = Callable[Concatenate["Database", P], Coroutine[Any, Any, T]]


def _operation(body: Body[P, T], *, grouped: bool) -> Operation[P, T]:
    async def operation(db: Database, /, *args: P.args, **kwargs: P.kwargs) -> T:
        def work(c: sqlite3.Connection) -> T:
            return body(c, *args, **kwargs)

        return await (db._writes.write(work) if grouped else db._run(work))

    operation.__name__ = operation.__qualname__ = body.__name__
    operation.__doc__ = body.__doc__
    return operation


def grouped(body: Body[P, T]) -> Operation[P, T]:
    """An operation that runs in the next group-committed write transaction, in its own savepoint."""
    return _operation(body, grouped=True)


def autocommit(body: Body[P, T]) -> Operation[P, T]:
    """An operation that runs at once on the connection thread, each statement committed alone
    (reads, and updates of one statement)."""
    return _operation(body, grouped=False)


class Database:
    """The facade the gateway holds: open, close, and one awaitable per storage operation."""

    def __init__(
        self,
        conn: Connection,
        path: Path,
        *,
        group_commit: bool = True,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
    ) -> None:
        self._connection = conn
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self._writes = GroupCommit(self._run, enabled=group_commit)

    @classmethod
    async def open(
        cls, path: str | Path, *, group_commit: bool = True, busy_timeout_ms: int = BUSY_TIMEOUT_MS
    ) -> Database:
        """Open (and migrate) the file; ``busy_timeout_ms`` is how long a write waits for a lock."""
        path = Path(path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        conn = await Connection.open(str(path), busy_timeout_s=busy_timeout_ms / 1000)
        db = cls(conn, path, group_commit=group_commit, busy_timeout_ms=busy_timeout_ms)
        try:
            await db._run(lambda c: schema.configure(c, busy_timeout_ms))
            await db._run(schema.migrate)
        except BaseException:
            await conn.close()
            raise
        return db

    async def close(self) -> None:
        await self._connection.close()

    @property
    def group_commit(self) -> bool:
        """Off: one transaction per write (the benchmark's baseline)."""
        return self._writes.enabled

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(sqlite3_connection)`` on the connection thread, the store's failures told apart."""
        try:
            return await self._connection.run(fn)
        except sqlite3.OperationalError as exc:
            raise unavailable(exc) from exc

    # --- jobs and credits -------------------------------------------------------------
    reserve = grouped(_ledger.reserve)
    mark_running = grouped(jobs.mark_running)
    mark_ready = grouped(jobs.mark_ready)
    claim_delivery = grouped(jobs.claim_delivery)
    settle = grouped(_ledger.settle)
    refund = grouped(_ledger.refund)
    set_reply = autocommit(jobs.set_reply)
    get_job = autocommit(jobs.get_job)
    count_waiting = autocommit(jobs.count_waiting)
    secret = autocommit(schema.secret)

    # --- quota and admin --------------------------------------------------------------
    quota = autocommit(accounts.quota)
    set_allowance = grouped(accounts.set_allowance)
    grant = grouped(_ledger.grant)
    ban = grouped(accounts.ban)
    unban = grouped(accounts.unban)
    stats = autocommit(accounts.stats)
    ledger = autocommit(_ledger.ledger_rows)
    check_ledger = autocommit(_ledger.check_ledger)
    integrity_check = autocommit(schema.integrity_check)

    # --- process instances (crash recovery) -------------------------------------------
    register_instance = grouped(_instances.register_instance)
    heartbeat = autocommit(_instances.heartbeat)
    stop_instance = autocommit(_instances.stop_instance)
    instances = autocommit(_instances.instances)
    open_jobs = autocommit(_instances.open_jobs)
    take_notices = grouped(_instances.take_notices)
