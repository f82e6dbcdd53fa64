"""What a shared operation body sees: a connection that runs one statement and hands back rows
readable by column name. ``sqlite3.Connection`` is one; ``storage.postgres.PgConn`` is the other
(it writes ``?`` placeholders the way psycopg reads them)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...
