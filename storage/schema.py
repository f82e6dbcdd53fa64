"""The file itself: its pragmas, the numbered migrations, the store's secret and its integrity check."""

from __future__ import annotations

import sqlite3
import time
from importlib import resources

from storage.sql import Conn


def configure(c: sqlite3.Connection, busy_timeout_ms: int) -> None:
    c.row_factory = sqlite3.Row  # rows are read by column name
    c.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    # Switching to WAL takes an exclusive lock without waiting on the busy timeout: when several
    # processes open a new file at once, the losers retry until the winner has switched it.
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            c.execute("PRAGMA journal_mode = WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    c.execute("PRAGMA synchronous = NORMAL")
    c.execute("PRAGMA foreign_keys = ON")


def migrations(package: str = "storage.migrations") -> list[tuple[int, str, str]]:
    """Numbered ``NNNN_name.sql`` files shipped in ``package`` (``storage/pg_migrations`` holds
    PostgreSQL's)."""
    found = []
    for entry in resources.files(package).iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def migrate(c: sqlite3.Connection) -> None:
    c.execute("BEGIN IMMEDIATE")
    try:
        c.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        applied = {row["version"] for row in c.execute("SELECT version FROM schema_migrations")}
        for version, name, sql in migrations():
            if version in applied:
                continue
            for statement in split_sql(sql):
                c.execute(statement)
            c.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, time.time()),
            )
        c.execute("COMMIT")
    except BaseException:
        c.execute("ROLLBACK")
        raise


def split_sql(sql: str) -> list[str]:
    """Statements of a migration file (executescript would commit our transaction)."""
    statements, current = [], []
    for line in sql.splitlines():
        stripped = line.split("--", 1)[0].rstrip()
        if not stripped:
            continue
        current.append(stripped)
        candidate = "\n".join(current)
        if stripped.endswith(";") and sqlite3.complete_statement(candidate):
            statements.append(candidate)
            current = []
    if current:
        statements.append("\n".join(current))
    return statements


def secret(c: Conn, name: str) -> str:
    """A random secret made once per store (e.g. to key idempotency ids)."""
    return str(c.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()["value"])


def server_clock(c: Conn) -> float | None:
    """The store server's clock (epoch seconds), where the store is a server; a SQLite file is read
    on this host, with this host's clock: None."""
    return None


def integrity_check(c: Conn) -> str:
    return str(c.execute("PRAGMA integrity_check").fetchone()["integrity_check"])
