"""storage/connection.py: the one adapter over aiosqlite's private internals fails loudly when they change."""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import threading
from pathlib import Path

import aiosqlite
import pytest

from storage.connection import Connection

CHANGED = (
    "aiosqlite {version} changed {what}, which storage/connection.py uses to run a whole transaction "
    "on the connection thread: adapt Connection.run to the new internals (or to a public API, if "
    "aiosqlite now has one) before upgrading."
)


def _changed(what: str) -> str:
    return CHANGED.format(version=aiosqlite.__version__, what=what)


def test_aiosqlite_still_has_the_internals_the_adapter_uses() -> None:
    execute = getattr(aiosqlite.Connection, "_execute", None)
    assert execute is not None, _changed("Connection._execute (it is gone)")
    assert inspect.iscoroutinefunction(execute), _changed("Connection._execute (no longer a coroutine)")
    parameters = list(inspect.signature(execute).parameters.values())
    assert [p.kind for p in parameters[1:]] == [
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
    ], _changed(
        f"the signature of Connection._execute (now {inspect.signature(execute)}, "
        "was (self, fn, *args, **kwargs))"
    )
    assert isinstance(inspect.getattr_static(aiosqlite.Connection, "_conn", None), property), _changed(
        "Connection._conn (no longer a property giving the sqlite3 connection)"
    )


async def test_run_calls_the_function_with_the_sqlite3_connection_on_its_thread(tmp_path: Path) -> None:
    conn = await Connection.open(str(tmp_path / "adapter.sqlite3"), busy_timeout_s=1.0)
    try:
        seen: list[tuple[sqlite3.Connection, int]] = []

        def body(c: sqlite3.Connection) -> int:
            seen.append((c, threading.get_ident()))
            return int(c.execute("SELECT 41 + 1").fetchone()[0])

        answers = await asyncio.gather(*(conn.run(body) for _ in range(3)))
        assert answers == [42, 42, 42], _changed("what Connection._execute returns")
        assert all(isinstance(c, sqlite3.Connection) for c, _ in seen), _changed(
            "Connection._conn (it no longer gives a sqlite3.Connection)"
        )
        assert len({id(c) for c, _ in seen}) == 1, _changed("Connection._conn (a new connection per call)")
        threads = {thread for _, thread in seen}
        assert threads != {threading.get_ident()} and len(threads) == 1, _changed(
            "where Connection._execute runs the function (no longer on the one connection thread)"
        )
        assert seen[0][0].isolation_level is None, "the store writes its own BEGIN and COMMIT"
    finally:
        await conn.close()


async def test_run_raises_what_the_function_raised(tmp_path: Path) -> None:
    conn = await Connection.open(str(tmp_path / "adapter.sqlite3"), busy_timeout_s=1.0)
    try:
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            await conn.run(lambda c: c.execute("SELECT * FROM nowhere"))
    finally:
        await conn.close()
