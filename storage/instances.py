"""Process instances and crash recovery: who runs, who stopped, and the jobs they left open."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

from storage.jobs import SELECT_JOBS
from storage.records import InstanceRecord, JobRecord, columns
from storage.sql import Conn


def register_instance(
    c: sqlite3.Connection, instance_id: str, *, host: str, pid: int, now: float, ident: str | None = None
) -> None:
    c.execute(
        "INSERT OR REPLACE INTO instances (id, host, pid, started_at, heartbeat_at, ident) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (instance_id, host, pid, now, now, ident),
    )


def heartbeat(c: Conn, instance_id: str, now: float) -> None:
    c.execute("UPDATE instances SET heartbeat_at = ? WHERE id = ?", (now, instance_id))


def stop_instance(c: Conn, instance_id: str, now: float) -> None:
    c.execute(
        "UPDATE instances SET stopped_at = ?, heartbeat_at = ? WHERE id = ?",
        (now, now, instance_id),
    )


def instances(c: Conn) -> list[InstanceRecord]:
    rows = c.execute(f"SELECT {columns(InstanceRecord)} FROM instances ORDER BY started_at, id")
    return [InstanceRecord.from_row(row) for row in rows]


def open_jobs(c: Conn, instance_ids: list[str] | None = None) -> list[JobRecord]:
    rows = c.execute(f"{SELECT_JOBS} WHERE status IN ('queued', 'running') ORDER BY created_at")
    jobs = [JobRecord.from_row(row) for row in rows]
    if instance_ids is not None:
        wanted = set(instance_ids)
        jobs = [j for j in jobs if j.instance_id in wanted]
    return jobs


def take_notices(c: sqlite3.Connection, prefix: str, now: float, limit: int = 100) -> list[JobRecord]:
    """Jobs of ``prefix`` users (``discord:``) that recovery refunded and nobody told yet.

    Taking them marks them told, in one transaction: whichever process's front takes a notice,
    takes it alone.
    """
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = c.execute(
        f"{SELECT_JOBS} WHERE error_kind = 'interrupted' AND notified_at IS NULL "
        "AND user_id LIKE ? ESCAPE '\\' ORDER BY finished_at LIMIT ?",
        (pattern, limit),
    ).fetchall()
    jobs = [replace(JobRecord.from_row(row), notified_at=now) for row in rows]
    c.executemany("UPDATE jobs SET notified_at = ? WHERE id = ?", [(now, job.id) for job in jobs])
    return jobs
