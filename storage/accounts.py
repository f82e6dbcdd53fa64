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


#: The newest succeeded jobs whose GPU seconds per image make the month's percentiles: enough for a
#: steady figure, few enough that one read of them stays cheap in any month.
PERCENTILE_JOBS = 10_000
HOURS_SHOWN = 7 * 24
TOP_USERS = 10


def _hour_of(column: str) -> str:
    """The whole hours from ``?`` to ``column`` (never negative there). ``CAST(x AS INTEGER)``
    truncates on SQLite and rounds on PostgreSQL; taking one back where it came out above ``x``
    makes both the floor."""
    x = f"(({column} - ?) / 3600)"
    return f"CAST({x} AS INTEGER) - CASE WHEN CAST({x} AS INTEGER) > {x} THEN 1 ELSE 0 END"


def _window(c: Conn, start: float, end: float) -> dict[str, Any]:
    row = c.execute(
        "SELECT COUNT(*) AS jobs, COALESCE(SUM(spent), 0) AS images, "
        "COALESCE(SUM(gpu_seconds), 0) AS gpu FROM jobs WHERE finished_at >= ? AND finished_at < ?",
        (start, end),
    ).fetchone()
    return {"jobs": row["jobs"], "images": row["images"], "gpu_seconds": round(float(row["gpu"]), 6)}


def _percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest rank: a value that was seen, the same on every engine."""
    if not sorted_values:
        return None
    rank = max(1, -(-int(fraction * 1000) * len(sorted_values) // 1000))
    return round(sorted_values[rank - 1], 6)


def spend(c: Conn, *, day_start: float, month_start: float, hours_start: float, now: float) -> dict[str, Any]:
    """What the GPU did, by when the jobs finished: today and this month (jobs, images charged, GPU
    seconds, a failed job's GPU seconds too), this month's GPU seconds per image (p50/p95 of the newest
    succeeded jobs), its top users and its refunds by reason, and ``HOURS_SHOWN`` hourly buckets from
    ``hours_start``. Money is the gateway's business: this counts seconds."""
    end = now + 1  # a job finished in this very second still counts
    per_image = sorted(
        float(row["gpu_seconds"]) / row["spent"]
        for row in c.execute(
            "SELECT gpu_seconds, spent FROM jobs WHERE status = 'succeeded' AND finished_at >= ? "
            "AND finished_at < ? AND spent > 0 AND gpu_seconds IS NOT NULL "
            "ORDER BY finished_at DESC LIMIT ?",
            (month_start, end, PERCENTILE_JOBS),
        )
    )
    top_users = [
        {
            "user": row["user_id"],
            "jobs": row["jobs"],
            "images": row["images"],
            "gpu_seconds": round(float(row["gpu"]), 6),
        }
        for row in c.execute(
            "SELECT user_id, COUNT(*) AS jobs, SUM(spent) AS images, "
            "COALESCE(SUM(gpu_seconds), 0) AS gpu FROM jobs WHERE finished_at >= ? AND finished_at < ? "
            "GROUP BY user_id ORDER BY SUM(spent) DESC, COALESCE(SUM(gpu_seconds), 0) DESC, user_id "
            "LIMIT ?",
            (month_start, end, TOP_USERS),
        )
    ]
    refunds = [
        {"reason": row["reason"], "jobs": row["jobs"], "credits": row["credits"]}
        for row in c.execute(
            "SELECT COALESCE(error_kind, 'not delivered') AS reason, COUNT(*) AS jobs, "
            "SUM(refunded) AS credits FROM jobs WHERE refunded > 0 AND finished_at >= ? "
            "AND finished_at < ? GROUP BY COALESCE(error_kind, 'not delivered') "
            "ORDER BY SUM(refunded) DESC, COUNT(*) DESC, reason",
            (month_start, end),
        )
    ]
    hours_end = hours_start + HOURS_SHOWN * 3600
    buckets = {
        row["hour"]: row
        for row in c.execute(
            "SELECT hour, COUNT(*) AS jobs, COALESCE(SUM(spent), 0) AS images, "
            "COALESCE(SUM(gpu_seconds), 0) AS gpu "
            f"FROM (SELECT {_hour_of('finished_at')} AS hour, spent, gpu_seconds FROM jobs "
            "      WHERE finished_at >= ? AND finished_at < ?) AS finished "
            "GROUP BY hour",
            (hours_start, hours_start, hours_start, hours_start, hours_end),
        )
    }
    hourly = []
    for hour in range(HOURS_SHOWN):
        row = buckets.get(hour)
        hourly.append(
            {
                "start": hours_start + hour * 3600,
                "jobs": 0 if row is None else row["jobs"],
                "images": 0 if row is None else row["images"],
                "gpu_seconds": 0.0 if row is None else round(float(row["gpu"]), 6),
            }
        )
    return {
        "today": _window(c, day_start, end),
        "month": _window(c, month_start, end),
        "gpu_seconds_per_image": {
            "p50": _percentile(per_image, 0.5),
            "p95": _percentile(per_image, 0.95),
            "jobs": len(per_image),
        },
        "top_users": top_users,
        "refunds": refunds,
        "hourly": hourly,
    }


def users_page(c: Conn, *, day: str, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
    """How many users there are, and ``limit`` of them by id from ``offset``: the allowance an admin
    set (``None``: the default), used today, bonus, and the ban reason (``None``: not banned)."""
    known = "(SELECT id FROM users UNION SELECT user_id FROM bans) AS known"  # a ban may come first
    total = c.execute(f"SELECT COUNT(*) AS n FROM {known}").fetchone()["n"]
    rows = c.execute(
        "SELECT known.id, u.daily_allowance, COALESCE(u.bonus, 0) AS bonus, COALESCE(d.used, 0) AS used, "
        f"b.reason AS banned FROM {known} LEFT JOIN users u ON u.id = known.id "
        "LEFT JOIN daily_usage d ON d.user_id = known.id AND d.day = ? "
        "LEFT JOIN bans b ON b.user_id = known.id ORDER BY known.id LIMIT ? OFFSET ?",
        (day, limit, offset),
    )
    return total, [
        {
            "id": row["id"],
            "allowance": row["daily_allowance"],
            "used_today": row["used"],
            "bonus": row["bonus"],
            "banned": row["banned"],
        }
        for row in rows
    ]
