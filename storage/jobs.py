"""A job's way through the queue: reading it, its state changes before the settle, the queue bound."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from storage.records import JobRecord, columns
from storage.sql import Conn

SELECT_JOBS = f"SELECT {columns(JobRecord)} FROM jobs"
#: Open jobs that still wait for the GPU: the global queue bound counts these (not finished images
#: waiting for their download).
WAITING = "status IN ('queued', 'running') AND ready_at IS NULL"


def get_job(c: Conn, job_id: str) -> JobRecord | None:
    row = c.execute(f"{SELECT_JOBS} WHERE id = ?", (job_id,)).fetchone()
    return JobRecord.from_row(row) if row else None


def count_jobs(c: Conn, where: str, parameters: tuple[object, ...] = ()) -> int:
    return int(c.execute(f"SELECT COUNT(*) AS n FROM jobs WHERE {where}", parameters).fetchone()["n"])


def count_waiting(c: Conn) -> int:
    """Open jobs across every process that still wait for the GPU (what the queue bound counts)."""
    return count_jobs(c, WAITING)


def position(c: Conn, job: JobRecord) -> int:
    """Open jobs ahead of ``job`` across every process."""
    if not job.is_open:
        return 0
    return count_jobs(c, f"{WAITING} AND created_at < ?", (job.created_at,))


def mark_running(c: sqlite3.Connection, job_id: str, now: float) -> bool:
    """Queued -> running; False when the job is no longer queued (recovered by another process)."""
    cur = c.execute(
        "UPDATE jobs SET status = 'running', started_at = ? WHERE id = ? AND status = 'queued'",
        (now, job_id),
    )
    return cur.rowcount == 1


def mark_ready(
    c: sqlite3.Connection, job_id: str, count: int, *, instance_id: str | None, now: float
) -> bool:
    """The images are made and wait for their delivery (they leave the global queue bound)."""
    cur = c.execute(
        "UPDATE jobs SET ready_at = ?, ready_count = ? WHERE id = ? AND status = 'running' "
        "AND instance_id IS ?",
        (now, count, job_id, instance_id),
    )
    return cur.rowcount == 1


def claim_delivery(c: sqlite3.Connection, job_id: str, *, instance_id: str | None, now: float) -> bool:
    """The fence before a front posts images: True only while the job is open and this
    process's. From then on recovery charges the job (the images may be out), never refunds it."""
    cur = c.execute(
        "UPDATE jobs SET delivering_at = COALESCE(delivering_at, ?) WHERE id = ? "
        "AND status IN ('queued', 'running') AND instance_id IS ?",
        (now, job_id, instance_id),
    )
    return cur.rowcount == 1


def set_reply(c: Conn, job_id: str, reply: dict[str, Any]) -> bool:
    """Where a front answered, as it knows once the images are out (Telegram's file ids of them)."""
    cur = c.execute("UPDATE jobs SET reply = ? WHERE id = ?", (json.dumps(reply), job_id))
    return cur.rowcount == 1
