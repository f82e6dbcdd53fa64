"""The credit ledger: reserve, settle, refund and grant, each a ledger row with the counter it moves.

Every change of credits writes a ledger row and the counter it moves (``users.bonus``,
``daily_usage.used``) in the same transaction, so balances always equal what the ledger says;
``check_ledger`` is the proof every test runs.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from storage.accounts import ban_reason, ensure_user, quota
from storage.errors import RefusedReason, ReservationRefused, cannot_take_back
from storage.jobs import WAITING, count_jobs, get_job, position
from storage.records import OPEN_STATUSES, BudgetState, JobRecord, NewJob, QuotaState, Reservation
from storage.sql import Conn

_ADD_ROW = (
    "INSERT INTO ledger (user_id, job_id, kind, credits, daily, bonus, day, note, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def reserve(c: sqlite3.Connection, new: NewJob) -> Reservation:
    """Hold ``new.cost`` credits for a new job, or return the job this id already made."""
    seen = get_job(c, new.job_id)
    if seen is not None:
        return Reservation(seen, False, position(c, seen), None)
    banned = ban_reason(c, new.user_id)
    if banned is not None:
        raise ReservationRefused(RefusedReason.BANNED, ban_reason=banned)
    open_total = count_jobs(c, WAITING)
    if not new.unlimited:
        user_open = count_jobs(c, "user_id = ? AND status IN ('queued', 'running')", (new.user_id,))
        if user_open >= new.max_user_open:
            raise ReservationRefused(RefusedReason.USER_QUEUE, open_jobs=user_open)
    if open_total >= new.max_open:
        raise ReservationRefused(RefusedReason.QUEUE, open_jobs=open_total)
    ensure_user(c, new.user_id, new.now)
    before = quota(c, new.user_id, day=new.day, default_allowance=new.default_allowance)
    cost = new.cost
    if new.relax:
        if not new.unlimited and before.remaining >= new.cost:
            raise ReservationRefused(RefusedReason.RELAX_UNNEEDED, quota=before)
        relax_today = count_jobs(
            c, "user_id = ? AND day = ? AND relax = 1 AND status != 'failed'", (new.user_id, new.day)
        )
        if relax_today >= new.relax_daily:
            raise ReservationRefused(RefusedReason.RELAX_USED, quota=before, open_jobs=relax_today)
        cost = 0
    if new.unlimited or new.relax:
        daily = bonus = 0
    else:
        if before.remaining < new.cost:
            raise ReservationRefused(RefusedReason.CREDITS, quota=before)
        daily = min(new.cost, max(0, before.allowance - before.used))
        bonus = new.cost - daily
    _hold_budget(c, new)
    c.execute(
        "INSERT INTO jobs (id, user_id, request, status, cost, day, daily, bonus, seed, reply, "
        "instance_id, created_at, relax, budget_hold_ms) "
        "VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            new.job_id,
            new.user_id,
            json.dumps(new.request),
            cost,
            new.day,
            daily,
            bonus,
            new.request.get("seed"),
            json.dumps(new.reply) if new.reply is not None else None,
            new.instance_id,
            new.now,
            int(new.relax),
            new.budget_hold_ms,
        ),
    )
    note = "relax" if new.relax else "unlimited" if new.unlimited else None
    c.execute(
        _ADD_ROW,
        (new.user_id, new.job_id, "reserve", cost, daily, -bonus, new.day, note, new.now),
    )
    if daily:
        c.execute(
            "INSERT INTO daily_usage (user_id, day, used) VALUES (?, ?, ?) "
            "ON CONFLICT (user_id, day) DO UPDATE SET used = used + excluded.used",
            (new.user_id, new.day, daily),
        )
    if bonus:
        c.execute("UPDATE users SET bonus = bonus - ? WHERE id = ?", (bonus, new.user_id))
    after = QuotaState(
        new.user_id,
        new.day,
        before.allowance,
        before.used + daily,
        before.bonus - bonus,
        before.reserved + cost,
        before.override,
        new.unlimited,
    )
    return Reservation(_reread(c, new.job_id), True, open_total, after)


def settle(
    c: sqlite3.Connection,
    job_id: str,
    *,
    delivered: int,
    seed: int | None,
    model: str | None,
    gpu_seconds: float | None,
    now: float,
    note: str = "",
    instance_id: str | None = None,
) -> JobRecord | None:
    """Charge ``delivered`` credits and give the rest of the reservation back.

    ``None`` when nothing changed: the job is closed already, or (with ``instance_id``) it is
    not that process's. A front delivers nothing for which this returned ``None``.
    """
    job = _open_job(c, job_id)
    if job is None:
        return None
    if instance_id is not None and job.instance_id != instance_id:
        return None  # fenced: another process took this job over
    spent = max(0, min(delivered, job.cost))
    c.execute(_ADD_ROW, (job.user_id, job.id, "settle", spent, 0, 0, job.day, note or None, now))
    _give_back(c, job, job.cost - spent, now, note or "not delivered")
    used_ms = job.budget_hold_ms if gpu_seconds is None else max(0, round(gpu_seconds * 1000))
    used_ms = used_ms if job.budget_hold_ms > 0 else 0  # a job that held no budget charges none
    _close_budget(c, job, used_ms)
    c.execute(
        "UPDATE jobs SET status = 'succeeded', spent = ?, refunded = ?, seed = COALESCE(?, seed), "
        "model = ?, gpu_seconds = ?, finished_at = ?, budget_spent_ms = ? WHERE id = ?",
        (spent, job.cost - spent, seed, model, gpu_seconds, now, used_ms, job_id),
    )
    return _reread(c, job_id)


def settle_ready(c: sqlite3.Connection, job_id: str, *, now: float, note: str = "") -> JobRecord | None:
    """Charge a job whose images wait for their first download, whichever process owns it.

    The web's images wait where every host can serve them, so the first download may come to a
    host that did not run the job. The fence is the ledger, not the owner: the job must still be
    open (never after recovery or the pickup timer refunded it; the settle/refund pair is
    exclusive, the first to close the job wins) and ready (``ready_at`` set: its images are made).
    It is charged for ``ready_count`` images, as recovery charges a cut-off delivery, and its
    delivery is claimed in the same transaction. ``None`` when nothing changed: closed already
    (another host's download charged it, or it was refunded) or not ready.
    """
    job = _open_job(c, job_id)
    if job is None or job.ready_at is None:
        return None
    c.execute("UPDATE jobs SET delivering_at = COALESCE(delivering_at, ?) WHERE id = ?", (now, job_id))
    delivered = job.ready_count if job.ready_count is not None else job.cost
    return settle(
        c,
        job_id,
        delivered=delivered,
        seed=None,
        model=job.model,
        gpu_seconds=job.gpu_seconds,
        now=now,
        note=note,
    )


def refund(
    c: sqlite3.Connection,
    job_id: str,
    *,
    error_kind: str,
    error: str,
    now: float,
    gpu_seconds: float | None = None,
) -> JobRecord | None:
    """Fail an open job and return its credits; ``None`` when it was already closed."""
    job = _open_job(c, job_id)
    if job is None:
        return None
    _give_back(c, job, job.cost, now, error_kind)
    _close_budget(c, job, 0)  # a failed job's GPU time goes back to the month, as its credits do
    c.execute(
        "UPDATE jobs SET status = 'failed', refunded = cost, error_kind = ?, error = ?, "
        "gpu_seconds = ?, finished_at = ? WHERE id = ?",
        (error_kind, error, gpu_seconds, now, job_id),
    )
    return _reread(c, job_id)


def _hold_budget(c: sqlite3.Connection, new: NewJob) -> None:
    """Hold the job's estimated GPU time against its month, or refuse it past the ceiling."""
    if new.budget_hold_ms <= 0:
        return
    c.execute("INSERT OR IGNORE INTO budget_months (month) VALUES (?)", (new.month,))
    state = budget(c, new.month, default_ceiling_ms=new.budget_ceiling_ms)
    if (
        state.ceiling_ms is not None
        and state.spent_ms + state.held_ms + new.budget_hold_ms > state.ceiling_ms
    ):
        raise ReservationRefused(RefusedReason.BUDGET, budget=state)
    c.execute(
        "UPDATE budget_months SET held_ms = held_ms + ? WHERE month = ?", (new.budget_hold_ms, new.month)
    )


def _close_budget(c: sqlite3.Connection, job: JobRecord, used_ms: int) -> None:
    """A job ends: its hold leaves the month, and ``used_ms`` joins the month's spend."""
    if job.budget_hold_ms <= 0:
        return
    c.execute(
        "UPDATE budget_months SET held_ms = held_ms - ?, spent_ms = spent_ms + ? WHERE month = ?",
        (job.budget_hold_ms, used_ms, job.day[:7]),
    )


def budget(c: Conn, month: str, *, default_ceiling_ms: int | None) -> BudgetState:
    """The month's GPU time: the ceiling in force (an admin's, else ``default_ceiling_ms``), spent, held."""
    row = c.execute(
        "SELECT ceiling_ms, spent_ms, held_ms FROM budget_months WHERE month = ?", (month,)
    ).fetchone()
    if row is None:
        return BudgetState(month, default_ceiling_ms, 0, 0, False)
    override = row["ceiling_ms"] is not None
    ceiling = row["ceiling_ms"] if override else default_ceiling_ms
    return BudgetState(month, ceiling, row["spent_ms"], row["held_ms"], override)


def set_budget(c: sqlite3.Connection, month: str, ceiling_ms: int | None) -> None:
    """An admin's ceiling for ``month`` (None: back to the setting)."""
    c.execute(
        "INSERT INTO budget_months (month, ceiling_ms) VALUES (?, ?) "
        "ON CONFLICT (month) DO UPDATE SET ceiling_ms = excluded.ceiling_ms",
        (month, ceiling_ms),
    )


def grant(c: sqlite3.Connection, user_id: str, credits: int, *, by: str, now: float) -> int:
    """Add (or, negative, take back) bonus credits; returns the new bonus balance."""
    ensure_user(c, user_id, now)
    bonus = int(c.execute("SELECT bonus FROM users WHERE id = ?", (user_id,)).fetchone()["bonus"])
    if bonus + credits < 0:
        raise cannot_take_back(user_id, bonus, credits)
    c.execute(_ADD_ROW, (user_id, None, "grant", credits, 0, credits, None, f"by {by}", now))
    c.execute("UPDATE users SET bonus = bonus + ? WHERE id = ?", (credits, user_id))
    return bonus + credits


def _open_job(c: sqlite3.Connection, job_id: str) -> JobRecord | None:
    job = get_job(c, job_id)
    return job if job is not None and job.is_open else None


def _reread(c: sqlite3.Connection, job_id: str) -> JobRecord:
    job = get_job(c, job_id)
    assert job is not None, job_id  # written in this transaction
    return job


def _give_back(c: sqlite3.Connection, job: JobRecord, credits: int, now: float, note: str) -> None:
    """Refund ``credits`` of a job's reservation: bonus first (it never expires), then daily."""
    if credits <= 0:
        return
    bonus = min(credits, job.bonus)
    daily = min(credits - bonus, job.daily)
    c.execute(_ADD_ROW, (job.user_id, job.id, "refund", credits, -daily, bonus, job.day, note, now))
    if daily:
        c.execute(
            "UPDATE daily_usage SET used = used - ? WHERE user_id = ? AND day = ?",
            (daily, job.user_id, job.day),
        )
    if bonus:
        c.execute("UPDATE users SET bonus = bonus + ? WHERE id = ?", (bonus, job.user_id))


def ledger_rows(c: Conn, user_id: str | None = None) -> list[dict[str, Any]]:
    rows = c.execute(
        "SELECT id, user_id, job_id, kind, credits, daily, bonus, day, note, created_at FROM ledger "
        + ("WHERE user_id = ? " if user_id else "")
        + "ORDER BY id",
        (user_id,) if user_id else (),
    )
    return [dict(row) for row in rows]


def check_ledger(c: Conn) -> list[str]:
    """Every place where a stored balance differs from the ledger's sum (empty: all agree)."""
    problems = []
    for row in c.execute(
        "SELECT u.id AS user_id, u.bonus AS stored, "
        "COALESCE((SELECT SUM(bonus) FROM ledger l WHERE l.user_id = u.id), 0) AS summed FROM users u"
    ):
        if row["stored"] != row["summed"]:
            problems.append("{user_id}: bonus {stored} but the ledger sums to {summed}".format_map(row))
    for row in c.execute(
        "SELECT d.user_id, d.day, d.used AS stored, COALESCE((SELECT SUM(daily) FROM ledger l "
        "WHERE l.user_id = d.user_id AND l.day = d.day), 0) AS summed FROM daily_usage d"
    ):
        if row["stored"] != row["summed"]:
            problems.append(
                "{user_id} on {day}: used {stored} but the ledger sums to {summed}".format_map(row)
            )
    for row in c.execute(
        "SELECT j.id, j.status, j.cost, j.spent, j.refunded, "
        "COALESCE((SELECT SUM(credits) FROM ledger l WHERE l.job_id = j.id AND kind = 'reserve'), 0) "
        "AS reserved, "
        "COALESCE((SELECT SUM(credits) FROM ledger l WHERE l.job_id = j.id AND kind = 'settle'), 0) "
        "AS settled, "
        "COALESCE((SELECT SUM(credits) FROM ledger l WHERE l.job_id = j.id AND kind = 'refund'), 0) "
        "AS back "
        "FROM jobs j"
    ):
        job_id, status, cost, spent, refunded = (
            row["id"],
            row["status"],
            row["cost"],
            row["spent"],
            row["refunded"],
        )
        reserved, settled, back = row["reserved"], row["settled"], row["back"]
        if reserved != cost:
            problems.append(f"job {job_id}: reserved {reserved} of {cost}")
        if status in OPEN_STATUSES and (settled or back):
            problems.append(f"job {job_id}: open but settled {settled} and refunded {back}")
        if status not in OPEN_STATUSES and (settled != spent or back != refunded or spent + back != cost):
            problems.append(
                f"job {job_id}: cost {cost}, settled {settled}/{spent}, refunded {back}/{refunded}"
            )
    for row in c.execute(
        "SELECT b.month, b.held_ms, b.spent_ms, "
        "COALESCE((SELECT SUM(budget_hold_ms) FROM jobs j WHERE substr(j.day, 1, 7) = b.month "
        " AND j.status IN ('queued', 'running')), 0) AS held, "
        "COALESCE((SELECT SUM(budget_spent_ms) FROM jobs j WHERE substr(j.day, 1, 7) = b.month "
        " AND j.status NOT IN ('queued', 'running')), 0) AS spent "
        "FROM budget_months b"
    ):
        if (row["held_ms"], row["spent_ms"]) != (row["held"], row["spent"]):
            problems.append(
                f"budget {row['month']}: held {row['held_ms']} ms, spent {row['spent_ms']} ms, "
                f"but the jobs sum to {row['held']} ms and {row['spent']} ms"
            )
    return problems


def recover(
    c: sqlite3.Connection,
    job_id: str,
    *,
    owner: str | None,
    lease_seconds: float,
    proven_dead: bool,
    message: str,
    now: float,
) -> JobRecord | None:
    """Close an open job whose process is gone, the lease checked again in this transaction.

    ``None`` (nothing changed) when the job is closed already, is not ``owner``'s, or its owner has
    heartbeated within the lease since the caller looked (it was only slow), unless the caller has
    ``proven_dead`` (same kernel, the PID gone). A job whose delivery was claimed is charged (its
    images may be out); any other is refunded as ``interrupted`` with ``message``.
    """
    job = _open_job(c, job_id)
    if job is None or job.instance_id != owner:
        return None
    if owner is not None and not proven_dead:
        row = c.execute(
            "SELECT 1 FROM instances WHERE id = ? AND stopped_at IS NULL AND heartbeat_at >= ?",
            (owner, now - lease_seconds),
        ).fetchone()
        if row is not None:
            return None  # its lease is held again
    if job.delivering_at is not None:
        delivered = job.ready_count if job.ready_count is not None else job.cost
        return settle(
            c,
            job_id,
            delivered=delivered,
            seed=None,
            model=None,
            gpu_seconds=job.gpu_seconds,
            now=now,
            note="delivery cut off",
        )
    return refund(c, job_id, error_kind="interrupted", error=message, now=now)
