"""The store the gateway holds: users, quotas, the credit ledger, jobs and bans, on one of two engines.

``Database.open(target)`` takes a SQLite file (``storage.sqlite``: the embedded default, one host)
or a ``postgresql://`` URL (``storage.postgres``: one store for several hosts). Each operation is
declared once below with its body on each engine:

- a read (and a single-statement update such as the heartbeat) is one Python function of a
  ``storage.sql.Conn``, the same on both engines;
- a write is a function of a ``sqlite3.Connection`` run in SQLite's group-committed transaction,
  and on PostgreSQL one statement (``storage.pg_ops``) pipelined in its group commit.

The contract tests run every scenario on both engines.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from storage import accounts, jobs, pg_ops, schema, web_images
from storage import instances as _instances  # the names `instances` and `ledger` are operations here
from storage import ledger as _ledger
from storage.postgres import Call, PostgresEngine, is_postgres_url
from storage.sql import Conn
from storage.sqlite import SqliteEngine

P = ParamSpec("P")
T = TypeVar("T")

BUSY_TIMEOUT_MS = 30_000

Body = Callable[Concatenate[sqlite3.Connection, P], T]
Shared = Callable[Concatenate[Conn, P], T]
Statement = Callable[P, Call[T]]
Operation = Callable[Concatenate["Database", P], Coroutine[Any, Any, T]]


def grouped(body: Body[P, T], postgres: Statement[P, T]) -> Operation[P, T]:
    """A write: in the next group-committed transaction (on SQLite in its own savepoint)."""

    async def operation(db: Database, /, *args: P.args, **kwargs: P.kwargs) -> T:
        engine = db.engine
        if isinstance(engine, PostgresEngine):
            result: T = await engine.writes.write(postgres(*args, **kwargs))
            return result
        return await engine.writes.write(lambda c: body(c, *args, **kwargs))  # type: ignore[no-any-return]

    return _named(operation, body)


def autocommit(body: Shared[P, T], postgres: Statement[P, T] | None = None) -> Operation[P, T]:
    """A read, or an update of one statement: at once, each statement committed alone. The same
    body on both engines unless PostgreSQL needs words of its own."""

    async def operation(db: Database, /, *args: P.args, **kwargs: P.kwargs) -> T:
        engine = db.engine
        if isinstance(engine, PostgresEngine):
            if postgres is not None:
                return await engine.call(postgres(*args, **kwargs))
            return await engine.read(lambda c: body(c, *args, **kwargs))
        return await engine.run(lambda c: body(c, *args, **kwargs))

    return _named(operation, body)


def _named(operation: Operation[P, T], body: Callable[..., Any]) -> Operation[P, T]:
    operation.__name__ = operation.__qualname__ = body.__name__
    operation.__doc__ = body.__doc__
    return operation


class Database:
    """The facade the gateway holds: open, close, and one awaitable per storage operation."""

    def __init__(self, engine: SqliteEngine | PostgresEngine) -> None:
        self.engine = engine

    @classmethod
    async def open(
        cls, target: str | Path, *, group_commit: bool = True, busy_timeout_ms: int = BUSY_TIMEOUT_MS
    ) -> Database:
        """Open (and migrate) a SQLite file or a ``postgresql://`` database; ``busy_timeout_ms``
        is how long a write waits for the store's write lock."""
        if is_postgres_url(target):
            return cls(
                await PostgresEngine.open(
                    str(target), group_commit=group_commit, busy_timeout_ms=busy_timeout_ms
                )
            )
        return cls(
            await SqliteEngine.open(Path(target), group_commit=group_commit, busy_timeout_ms=busy_timeout_ms)
        )

    async def close(self) -> None:
        await self.engine.close()

    @property
    def kind(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.kind

    def describe(self) -> str:
        """Where the store is, for logs (a URL's password hidden)."""
        return self.engine.describe()

    async def run(self, fn: Callable[[Conn], T]) -> T:
        """``fn`` on a connection of either engine, each statement committed alone: statements of
        the caller's own (``imagine db copy``'s checks, tests that tamper with a balance)."""
        engine = self.engine
        if isinstance(engine, PostgresEngine):
            return await engine.read(fn)
        return await engine.run(fn)

    @property
    def group_commit(self) -> bool:
        """Off: one transaction per write (the benchmark's baseline)."""
        return self.engine.writes.enabled

    # --- jobs and credits -------------------------------------------------------------
    reserve = grouped(_ledger.reserve, pg_ops.reserve)
    mark_running = grouped(jobs.mark_running, pg_ops.mark_running)
    mark_ready = grouped(jobs.mark_ready, pg_ops.mark_ready)
    claim_delivery = grouped(jobs.claim_delivery, pg_ops.claim_delivery)
    settle = grouped(_ledger.settle, pg_ops.settle)
    settle_ready = grouped(_ledger.settle_ready, pg_ops.settle_ready)
    refund = grouped(_ledger.refund, pg_ops.refund)
    recover = grouped(_ledger.recover, pg_ops.recover)
    budget = autocommit(_ledger.budget)
    set_budget = grouped(_ledger.set_budget, pg_ops.set_budget)
    set_reply = autocommit(jobs.set_reply)
    get_job = autocommit(jobs.get_job)
    count_waiting = autocommit(jobs.count_waiting)
    secret = autocommit(schema.secret)

    # --- quota and admin --------------------------------------------------------------
    quota = autocommit(accounts.quota)
    set_allowance = grouped(accounts.set_allowance, pg_ops.set_allowance)
    grant = grouped(_ledger.grant, pg_ops.grant)
    ban = grouped(accounts.ban, pg_ops.ban)
    unban = grouped(accounts.unban, pg_ops.unban)
    stats = autocommit(accounts.stats)
    spend = autocommit(accounts.spend)
    users_page = autocommit(accounts.users_page)
    ledger = autocommit(_ledger.ledger_rows)
    check_ledger = autocommit(_ledger.check_ledger)
    integrity_check = autocommit(schema.integrity_check, pg_ops.integrity_check)
    server_clock = autocommit(schema.server_clock, pg_ops.server_clock)

    # --- process instances (crash recovery) -------------------------------------------
    register_instance = grouped(_instances.register_instance, pg_ops.register_instance)
    heartbeat = autocommit(_instances.heartbeat)
    stop_instance = autocommit(_instances.stop_instance)
    instances = autocommit(_instances.instances)
    open_jobs = autocommit(_instances.open_jobs)
    take_notices = grouped(_instances.take_notices, pg_ops.take_notices)

    # --- web images waiting for their download (storage.web_images) -----------------
    put_web_images = autocommit(web_images.put_web_images)
    count_web_images = autocommit(web_images.count_web_images)
    web_image = autocommit(web_images.web_image)
    delete_web_images = autocommit(web_images.delete_web_images)
    sweep_web_images = autocommit(web_images.sweep_web_images)
    web_images_bytes = autocommit(web_images.web_images_bytes)
