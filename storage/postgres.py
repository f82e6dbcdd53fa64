"""The shared engine: PostgreSQL (psycopg 3), for a store several hosts use at once.

psycopg rather than asyncpg: the operations are written once as functions of a connection that
runs one statement at a time (``storage.sql.Conn``), which psycopg's blocking connection is, on a
thread of its own per connection as aiosqlite does it, so every read is the same Python on both
engines. Its pipeline mode sends a whole group commit (the write lock, each write's one statement,
the commit) in one round trip; the writes are server-side functions (``pg_migrations``) so each is
one statement.

One connection writes (group commit; batches follow each other as on SQLite); a few more read. A
connection that breaks (the server restarted, a network cut) is dropped, the operation answers
``StoreUnavailable``, and the next one connects again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row

from storage.errors import StoreUnavailable
from storage.group_commit import GroupCommit, Outcome
from storage.schema import migrations

T = TypeVar("T")
log = logging.getLogger("imagine.storage")

#: Two hosts starting at once: the second waits while the first applies the migrations.
MIGRATION_LOCK = 7263
READERS = 3


def is_postgres_url(target: object) -> bool:
    return str(target).startswith(("postgresql://", "postgres://"))


def redacted(url: str) -> str:
    """The URL with its password replaced, for logs and sentences."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=netloc[0].split(":", 1)[0] + ":***@" + netloc[1]))


@dataclass(frozen=True)
class Call(Generic[T]):
    """One write as one statement; ``decode`` makes the answer from the first column of its row."""

    sql: str
    params: Sequence[Any]
    decode: Callable[[Any], T]


class PgConn:
    """A psycopg connection as a shared body sees it: ``?`` placeholders, rows by column name."""

    def __init__(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        self.raw = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> psycopg.Cursor[dict[str, Any]]:
        return self.raw.execute(sql.replace("%", "%%").replace("?", "%s"), parameters)  # type: ignore[arg-type]


class _Link:
    """One connection and the one thread that uses it, connected again when it broke."""

    def __init__(self, url: str, settings: Sequence[str], name: str) -> None:
        self._url = url
        self._settings = settings
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def _connection(self) -> psycopg.Connection[dict[str, Any]]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(
                self._url,
                autocommit=True,
                row_factory=dict_row,
                connect_timeout=10,
                application_name="imagine",
            )
            for statement in self._settings:
                self._conn.execute(statement)  # type: ignore[arg-type]
        return self._conn

    def _call(self, fn: Callable[[psycopg.Connection[dict[str, Any]]], T]) -> T:
        try:
            return fn(self._connection())
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if self._conn is not None and (self._conn.broken or self._conn.closed):
                self._conn.close()
                self._conn = None
            raise StoreUnavailable(f"the database did not answer: {_first_line(exc)}") from exc

    async def run(self, fn: Callable[[psycopg.Connection[dict[str, Any]]], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._call, fn)

    def close(self) -> None:
        def shut() -> None:
            if self._conn is not None:
                self._conn.close()

        self._thread.submit(shut).result()
        self._thread.shutdown()


class PostgresEngine:
    kind = "postgresql"

    def __init__(self, url: str, *, group_commit: bool, busy_timeout_ms: int) -> None:
        self.url = url
        settings = [f"SET lock_timeout = {int(busy_timeout_ms)}", "SET TIME ZONE 'UTC'"]
        self._writer = _Link(url, settings, "imagine-pg-write")
        self._readers = [_Link(url, settings, "imagine-pg-read") for _ in range(READERS)]
        self._next_reader = itertools.cycle(self._readers)
        self.writes: GroupCommit[Call[Any]] = GroupCommit(self._flush, enabled=group_commit)

    @classmethod
    async def open(cls, url: str, *, group_commit: bool, busy_timeout_ms: int) -> PostgresEngine:
        engine = cls(url, group_commit=group_commit, busy_timeout_ms=busy_timeout_ms)
        try:
            await engine._writer.run(migrate)
        except StoreUnavailable as exc:
            await engine.close()
            # At start the sentence is all an operator sees: say which store, never its password.
            reason = _first_line(exc.__cause__ or exc)
            raise StoreUnavailable(f"the database {engine.describe()} did not answer: {reason}") from exc
        except BaseException:
            await engine.close()
            raise
        return engine

    def describe(self) -> str:
        return redacted(self.url)

    async def close(self) -> None:
        for link in (self._writer, *self._readers):
            await asyncio.to_thread(link.close)

    async def read(self, fn: Callable[[PgConn], T]) -> T:
        """A shared body on a reading connection, each statement committed alone."""
        return await next(self._next_reader).run(lambda conn: fn(PgConn(conn)))

    async def call(self, call: Call[T]) -> T:
        """One statement alone on a reading connection (a read that needs PostgreSQL's words)."""
        return await next(self._next_reader).run(lambda conn: _decoded(conn, [call])[0][1])

    async def _flush(self, calls: list[Call[Any]]) -> list[Outcome]:
        return await self._writer.run(lambda conn: run_batch(conn, calls))


def run_batch(conn: psycopg.Connection[dict[str, Any]], calls: list[Call[Any]]) -> list[Outcome]:
    """The write lock, every write and the commit in one round trip. When one write fails, the
    transaction is gone: each write then runs again alone, so the others still land."""
    try:
        with conn.pipeline(), conn.transaction():
            conn.execute("SELECT imagine_write_lock()")
            cursors = [conn.execute(call.sql, call.params) for call in calls]  # type: ignore[arg-type]
    except (psycopg.OperationalError, psycopg.InterfaceError):
        raise
    except psycopg.Error as exc:
        if len(calls) == 1:
            return [(False, exc)]
        return [run_batch(conn, [call])[0] for call in calls]
    outcomes: list[Outcome] = []
    for call, cursor in zip(calls, cursors, strict=True):
        outcomes.append(_decode(call, cursor))
    return outcomes


def _decoded(conn: psycopg.Connection[dict[str, Any]], calls: list[Call[Any]]) -> list[Outcome]:
    return [_decode(call, conn.execute(call.sql, call.params)) for call in calls]  # type: ignore[arg-type]


def _decode(call: Call[Any], cursor: psycopg.Cursor[dict[str, Any]]) -> Outcome:
    row = cursor.fetchone() if cursor.description else None
    try:
        return True, call.decode(None if row is None else next(iter(row.values())))
    except Exception as exc:  # a refusal the statement answered (ReservationRefused, StoreError)
        return False, exc


def migrate(conn: psycopg.Connection[dict[str, Any]]) -> None:
    """The numbered files of ``storage/pg_migrations`` not applied yet, in one transaction; a host
    starting beside another waits on the migration lock, then finds them applied."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
        )
        applied = {row["version"] for row in conn.execute("SELECT version FROM schema_migrations")}
        for version, name, sql in migrations("storage.pg_migrations"):
            if version in applied:
                continue
            conn.execute(sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) "
                "VALUES (%s, %s, extract(epoch FROM clock_timestamp()))",
                (version, name),
            )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
