"""The writes on PostgreSQL: each operation of ``storage.db`` whose SQLite body writes, as one
statement (mostly a call of a ``pg_migrations`` function). Same names and arguments as the SQLite
bodies, without the connection; the contract tests hold the two to the same answers."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

from psycopg.types.json import Jsonb

from storage.errors import ReservationRefused, cannot_take_back
from storage.postgres import Call
from storage.records import BudgetState, JobRecord, NewJob, QuotaState, Reservation

#: JSON writes 2.0 as 2: the columns that are floats in the table are floats in the record again.
_FLOATS = [f.name for f in fields(JobRecord) if "float" in str(f.type)]


def _record(value: dict[str, Any]) -> JobRecord:
    for name in _FLOATS:
        if value.get(name) is not None:
            value[name] = float(value[name])
    return JobRecord.from_row(value)


def _job(value: dict[str, Any] | None) -> JobRecord | None:
    return None if value is None else _record(value)


def _quota(value: dict[str, Any]) -> QuotaState:
    return QuotaState(**value)


def reserve(new: NewJob) -> Call[Reservation]:
    payload = {
        "job_id": new.job_id,
        "user_id": new.user_id,
        "cost": new.cost,
        "day": new.day,
        "request": json.dumps(new.request),
        "reply": json.dumps(new.reply) if new.reply is not None else None,
        "seed": new.request.get("seed"),
        "instance_id": new.instance_id,
        "now": new.now,
        "default_allowance": new.default_allowance,
        "unlimited": new.unlimited,
        "max_user_open": new.max_user_open,
        "max_open": new.max_open,
        "relax": new.relax,
        "relax_daily": new.relax_daily,
        "budget_hold_ms": new.budget_hold_ms,
        "budget_ceiling_ms": new.budget_ceiling_ms,
    }

    def decode(value: dict[str, Any]) -> Reservation:
        refused = value.get("refused")
        if refused is not None:
            quota = value.get("quota")
            budget = value.get("budget")
            raise ReservationRefused(
                refused,
                quota=_quota(quota) if quota else None,
                ban_reason=value.get("ban_reason") or "",
                open_jobs=value.get("open_jobs") or 0,
                budget=BudgetState(**budget) if budget else None,
            )
        job = _record(value["job"])
        quota = value.get("quota")
        return Reservation(job, value["created"], value["position"], _quota(quota) if quota else None)

    return Call("SELECT imagine_reserve(%s)", (Jsonb(payload),), decode)


def _changed(value: Any) -> bool:
    return value is not None


def mark_running(job_id: str, now: float) -> Call[bool]:
    return Call(
        "UPDATE jobs SET status = 'running', started_at = %s WHERE id = %s AND status = 'queued' "
        "RETURNING true",
        (now, job_id),
        _changed,
    )


def mark_ready(job_id: str, count: int, *, instance_id: str | None, now: float) -> Call[bool]:
    return Call(
        "UPDATE jobs SET ready_at = %s, ready_count = %s WHERE id = %s AND status = 'running' "
        "AND instance_id IS NOT DISTINCT FROM %s RETURNING true",
        (now, count, job_id, instance_id),
        _changed,
    )


def claim_delivery(job_id: str, *, instance_id: str | None, now: float) -> Call[bool]:
    return Call(
        "UPDATE jobs SET delivering_at = COALESCE(delivering_at, %s) WHERE id = %s "
        "AND status IN ('queued', 'running') AND instance_id IS NOT DISTINCT FROM %s RETURNING true",
        (now, job_id, instance_id),
        _changed,
    )


def settle(
    job_id: str,
    *,
    delivered: int,
    seed: int | None,
    model: str | None,
    gpu_seconds: float | None,
    now: float,
    note: str = "",
    instance_id: str | None = None,
) -> Call[JobRecord | None]:
    return Call(
        "SELECT imagine_settle(%s, %s, %s, %s, %s, %s, %s, %s)",
        (job_id, delivered, seed, model, gpu_seconds, now, note, instance_id),
        _job,
    )


def settle_ready(job_id: str, *, now: float, note: str = "") -> Call[JobRecord | None]:
    return Call("SELECT imagine_settle_ready(%s, %s, %s)", (job_id, now, note), _job)


def refund(
    job_id: str, *, error_kind: str, error: str, now: float, gpu_seconds: float | None = None
) -> Call[JobRecord | None]:
    return Call(
        "SELECT imagine_refund(%s, %s, %s, %s, %s)", (job_id, error_kind, error, now, gpu_seconds), _job
    )


def grant(user_id: str, credits: int, *, by: str, now: float) -> Call[int]:
    def decode(value: dict[str, Any]) -> int:
        if value.get("refused"):
            raise cannot_take_back(user_id, value["bonus"], credits)
        return int(value["bonus"])

    return Call("SELECT imagine_grant(%s, %s, %s, %s)", (user_id, credits, by, now), decode)


def set_allowance(user_id: str, allowance: int | None, *, now: float) -> Call[None]:
    return Call(
        "INSERT INTO users (id, daily_allowance, created_at) VALUES (%s, %s, %s) "
        "ON CONFLICT (id) DO UPDATE SET daily_allowance = excluded.daily_allowance",
        (user_id, allowance, now),
        lambda _: None,
    )


def ban(user_id: str, reason: str, *, by: str, now: float) -> Call[None]:
    return Call(
        "INSERT INTO bans (user_id, reason, banned_by, created_at) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (user_id) DO UPDATE SET reason = excluded.reason, "
        "banned_by = excluded.banned_by, created_at = excluded.created_at",
        (user_id, reason, by, now),
        lambda _: None,
    )


def unban(user_id: str) -> Call[bool]:
    return Call("DELETE FROM bans WHERE user_id = %s RETURNING true", (user_id,), _changed)


def register_instance(
    instance_id: str, *, host: str, pid: int, now: float, ident: str | None = None
) -> Call[None]:
    return Call(
        "INSERT INTO instances (id, host, pid, started_at, heartbeat_at, ident) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET host = excluded.host, "
        "pid = excluded.pid, started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, "
        "stopped_at = NULL, ident = excluded.ident",
        (instance_id, host, pid, now, now, ident),
        lambda _: None,
    )


def take_notices(prefix: str, now: float, limit: int = 100) -> Call[list[JobRecord]]:
    """As ``storage.instances.take_notices``; rows another host is taking are skipped, not waited for."""
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return Call(
        "WITH taken AS (UPDATE jobs SET notified_at = %s WHERE id IN ("
        " SELECT id FROM jobs WHERE error_kind = 'interrupted' AND notified_at IS NULL"
        " AND user_id LIKE %s ESCAPE '\\' ORDER BY finished_at LIMIT %s FOR UPDATE SKIP LOCKED)"
        " RETURNING *) "
        "SELECT COALESCE(jsonb_agg(to_jsonb(taken) ORDER BY finished_at), '[]'::jsonb) FROM taken",
        (now, pattern, limit),
        lambda rows: [_record(row) for row in rows],
    )


def server_clock() -> Call[float | None]:
    """The database server's clock, to compare this host's with: leases compare hosts' clocks."""
    return Call("SELECT extract(epoch FROM clock_timestamp())::DOUBLE PRECISION", (), float)


def integrity_check() -> Call[str]:
    """PostgreSQL keeps its own pages whole; this asks the server to answer at all."""
    return Call("SELECT 'ok'", (), str)


def recover(
    job_id: str, *, owner: str | None, lease_seconds: float, proven_dead: bool, message: str, now: float
) -> Call[JobRecord | None]:
    return Call(
        "SELECT imagine_recover(%s, %s, %s, %s, %s, %s)",
        (job_id, owner, lease_seconds, proven_dead, message, now),
        _job,
    )


def set_budget(month: str, ceiling_ms: int | None) -> Call[None]:
    return Call(
        "INSERT INTO budget_months (month, ceiling_ms) VALUES (%s, %s) "
        "ON CONFLICT (month) DO UPDATE SET ceiling_ms = excluded.ceiling_ms",
        (month, ceiling_ms),
        lambda _: None,
    )
