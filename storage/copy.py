"""``imagine db copy``: a SQLite store moved into an empty PostgreSQL database, ledger and all.

One transaction on the target holds the store's write lock, checks that the target is empty, streams
every table over with ``COPY FROM STDIN`` (from one read snapshot of the file), and proves the copy
before it commits: balances equal the ledger (``check_ledger``, the same body the bots' check runs)
and every table holds as many rows as the file's. Any failure rolls the whole copy back, so the
target is either the file's store or as it was. Ledger ids are kept (the sequence then starts past
them) and the file's secret replaces the target's, so idempotency keys made before the move still
match.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from storage.db import Database
from storage.errors import StoreUnavailable
from storage.ledger import check_ledger
from storage.postgres import PgConn, is_postgres_url, redacted
from storage.sql import Conn

#: Every table of the store, parents before the rows that reference them.
TABLES = (
    "users",
    "instances",
    "jobs",
    "daily_usage",
    "ledger",
    "bans",
    "budget_months",
    "web_images",
    "secrets",
)
#: Tables each engine keeps for itself.
ENGINE_TABLES = {"schema_migrations"}
#: Rows that make a target a live store (the migrations themselves write one secret).
LIVE_TABLES = tuple(table for table in TABLES if table != "secrets")


class CopyFailed(Exception):
    """The copy did not happen; the target is as it was. The message is one sentence."""


class CopyInputError(CopyFailed):
    """The file or the URL named on the command line is not one the copy can use."""


class TargetNotEmpty(CopyFailed):
    """The target already holds a store: a copy never merges into one."""


@dataclass(frozen=True)
class CopyReport:
    source: str
    target: str  # the URL without its password
    rows: dict[str, int]  # table -> rows, equal on both sides
    seconds: float


async def copy_store(sqlite_file: Path, postgres_url: str) -> CopyReport:
    """Copy the store of ``sqlite_file`` into the empty database at ``postgres_url``, verified."""
    target = redacted(postgres_url)
    if not is_postgres_url(postgres_url):
        raise CopyInputError(f"{target} is not a postgresql:// URL.")
    if not await asyncio.to_thread(sqlite_file.is_file):
        raise CopyInputError(f"There is no SQLite file at {sqlite_file}.")
    started = time.monotonic()
    try:
        source = await Database.open(sqlite_file)
    except sqlite3.DatabaseError as exc:
        raise CopyInputError(f"{sqlite_file} is not a SQLite store: {exc}.") from None
    try:
        try:
            await (await Database.open(postgres_url)).close()  # migrated to the current version
        except (StoreUnavailable, psycopg.Error) as exc:
            raise CopyFailed(_sentence(f"Cannot open {target}", exc, postgres_url)) from None
        rows = await source.run(lambda c: _copy(c, sqlite_file, postgres_url))
    finally:
        await source.close()
    return CopyReport(str(sqlite_file), target, rows, time.monotonic() - started)


def _copy(source: Conn, sqlite_file: Path, url: str) -> dict[str, int]:
    """On the file's connection thread: one read snapshot of the file, one transaction on the target."""
    target = redacted(url)
    source.execute("BEGIN")  # a snapshot: every table read as of one moment
    try:
        with psycopg.connect(url, autocommit=True, row_factory=dict_row, connect_timeout=10) as conn:
            with conn.transaction():
                conn.execute("SET LOCAL lock_timeout = 30000")
                conn.execute("SELECT imagine_write_lock()")  # no bot writes beside the copy
                return _fill(source, conn, target)
    except sqlite3.Error as exc:
        raise CopyFailed(_sentence(f"Cannot read {sqlite_file}", exc, url)) from None
    except psycopg.Error as exc:
        raise CopyFailed(_sentence(f"The copy into {target} failed and was rolled back", exc, url)) from None
    finally:
        source.execute("COMMIT")


def _fill(source: Conn, conn: psycopg.Connection[dict[str, Any]], target: str) -> dict[str, int]:
    # 1. An empty target, with the tables this copier knows.
    held = {table: _count(PgConn(conn), table) for table in LIVE_TABLES}
    if any(held.values()):
        what = ", ".join(f"{n} {table}" for table, n in held.items() if n)
        raise TargetNotEmpty(
            f"{target} already holds a store ({what}); imagine db copy only fills an empty database."
        )
    _same_tables(source, conn)

    # 2. Every row, the file's secret in place of the one the target's migration made.
    conn.execute("DELETE FROM secrets")
    for table in TABLES:
        names = [row["name"] for row in source.execute(f"PRAGMA table_info({table})")]
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, names))
        )
        with conn.cursor().copy(statement) as copy:
            for row in source.execute(f"SELECT {', '.join(names)} FROM {table}"):
                copy.write_row(tuple(row))

    # 3. The proof, before anything is committed.
    problems = check_ledger(PgConn(conn))
    if problems:
        raise CopyFailed(f"The copy was rolled back: on {target}, {problems[0]}.")
    rows = {table: _count(source, table) for table in TABLES}
    for table, expected in rows.items():
        copied = _count(PgConn(conn), table)
        if copied != expected:
            raise CopyFailed(
                f"The copy was rolled back: {table} has {copied} rows on {target}, the file {expected}."
            )

    # 4. New ledger rows follow the copied ones (last: a rollback does not undo a sequence's change).
    conn.execute(
        "SELECT setval(pg_get_serial_sequence('ledger', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM ledger"
    )
    return rows


def _same_tables(source: Conn, conn: psycopg.Connection[dict[str, Any]]) -> None:
    """The file and the target hold the tables (and columns) this copier knows, no more, no fewer:
    a migration that adds one must teach the copier too."""
    found = {
        row["name"]
        for row in source.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if not row["name"].startswith("sqlite_")
    }
    unknown = sorted(found - ENGINE_TABLES - set(TABLES))
    if unknown:
        raise CopyFailed(f"The file holds tables the copy does not know: {', '.join(unknown)}.")
    for table in TABLES:
        mine = {row["name"] for row in source.execute(f"PRAGMA table_info({table})")}
        theirs = {
            row["column_name"]
            for row in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = %s",
                (table,),
            )
        }
        if mine != theirs:
            differ = ", ".join(sorted(mine ^ theirs))
            raise CopyFailed(f"The table {table} differs between the file and the target ({differ}).")


def _count(c: Conn, table: str) -> int:
    return int(c.execute(f"SELECT COUNT(*) AS n FROM {table}").fetchone()["n"])


def _sentence(what: str, exc: BaseException, url: str) -> str:
    """``what: the error's first line.``, the URL's password never in it."""
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
    password = urlsplit(url).password
    if password:
        for form in {password, unquote(password)}:
            detail = detail.replace(form, "***")
    return f"{what}: {detail}."
