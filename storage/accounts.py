"""Users: their quota (allowance, override, bonus, reserved), bans, and the operator's figures."""

from __future__ import annotations

import sqlite3
from typing import Any

from storage.jobs import count_jobs
from storage.records import QuotaState
from storage.sql import Conn


def ensure_user(c: sqlite3.Connection, user_id: str, now: float) -> None:
    c.execute("INSERT OR IGNORE INTO users (id, created_at) VALUES (?, ?)", (user_id, now))


def quota(c: Conn, user_id: str, *, day: str, default_allowance: int) -> QuotaState:
    row = c.execute(
        "SELECT u.daily_allowance AS override, u.bonus, COALESCE(d.used, 0) AS used, "
        "(SELECT COALESCE(SUM(cost), 0) FROM jobs j "
        " WHERE j.user_id = u.id AND j.status IN ('queued', 'running')) AS reserved "
        "FROM users u LEFT JOIN daily_usage d ON d.user_id = u.id AND d.day = ? WHERE u.id = ?",
        (day, user_id),
    ).fetchone()
    if row is None:
        return QuotaState(user_id, day, default_allowance, 0, 0, 0, False)
    override = row["override"]
    return QuotaState(
        user_id,
        day,
        allowance=default_allowance if override is None else override,
        used=row["used"],
        bonus=row["bonus"],
        reserved=row["reserved"],
        override=override is not None,
    )


def set_allowance(c: sqlite3.Connection, user_id: str, allowance: int | None, *, now: float) -> None:
    ensure_user(c, user_id, now)
    c.execute("UPDATE users SET daily_allowance = ? WHERE id = ?", (allowance, user_id))


def ban(c: sqlite3.Connection, user_id: str, reason: str, *, by: str, now: float) -> None:
    c.execute(
        "INSERT INTO bans (user_id, reason, banned_by, created_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (user_id) DO UPDATE SET reason = excluded.reason, "
        "banned_by = excluded.banned_by, created_at = excluded.created_at",
        (user_id, reason, by, now),
    )


def unban(c: sqlite3.Connection, user_id: str) -> bool:
    return c.execute("DELETE FROM bans WHERE user_id = ?", (user_id,)).rowcount == 1


def ban_reason(c: Conn, user_id: str) -> str | None:
    row = c.execute("SELECT reason FROM bans WHERE user_id = ?", (user_id,)).fetchone()
    return None if row is None else str(row["reason"])


def stats(c: Conn, *, day: str, since: float) -> dict[str, Any]:
    by_status = {
        row["status"]: row["n"]
        for row in c.execute(
            "SELECT status, COUNT(*) AS n FROM jobs WHERE created_at >= ? GROUP BY status", (since,)
        )
    }
    failures = {
        row["error_kind"]: row["n"]
        for row in c.execute(
            "SELECT error_kind, COUNT(*) AS n FROM jobs WHERE status = 'failed' AND created_at >= ? "
            "GROUP BY error_kind",
            (since,),
        )
    }
    totals = c.execute(
        "SELECT COALESCE(SUM(spent), 0) AS spent, COALESCE(SUM(refunded), 0) AS refunded, "
        "COALESCE(SUM(gpu_seconds), 0) AS gpu FROM jobs WHERE created_at >= ?",
        (since,),
    ).fetchone()
    users_today = c.execute("SELECT COUNT(DISTINCT user_id) AS n FROM jobs WHERE day = ?", (day,))
    return {
        "jobs": by_status,
        "failures": failures,
        "credits_spent": totals["spent"],
        "credits_refunded": totals["refunded"],
        "gpu_seconds": totals["gpu"],
        "images": totals["spent"],
        "active_users_today": users_today.fetchone()["n"],
        "users": c.execute("SELECT COUNT(*) AS n FROM users").fetchone()["n"],
        "banned": c.execute("SELECT COUNT(*) AS n FROM bans").fetchone()["n"],
        "open_jobs": count_jobs(c, "status IN ('queued', 'running')"),
    }
