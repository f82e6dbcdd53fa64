"""The storage contract on both engines at once: one script of every operation the gateway uses,
run on a SQLite file and on a PostgreSQL database, must give the same answers (records, refusals,
sentences) and leave both ledgers whole. The SQLite bodies are Python and PostgreSQL's writes are
server-side functions, so this is what holds the two to one behaviour."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg

from storage import Database, NewJob, ReservationRefused, StoreError

DAY = "2026-12-02"


def new_job(job_id: str, user: str = "discord:1", cost: int = 1, **limits: Any) -> NewJob:
    return NewJob(
        job_id=job_id,
        user_id=user,
        request={"prompt": "a lighthouse", "seed": 4_000_000_000, "n": cost},
        cost=cost,
        day=DAY,
        default_allowance=limits.get("allowance", 3),
        unlimited=limits.get("unlimited", False),
        max_user_open=limits.get("max_user_open", 3),
        max_open=limits.get("max_open", 6),
        instance_id=limits.get("instance", "host-a"),
        relax=limits.get("relax", False),
        relax_daily=limits.get("relax_daily", 0),
        budget_hold_ms=limits.get("hold", 0),
        budget_ceiling_ms=limits.get("ceiling"),
        reply={"channel": 5, "text": "ünïcode ✓"},
        now=100.0 + len(job_id) / 10,
    )


async def attempt(call: Any) -> Any:
    """The answer, or what was refused and why (both engines must refuse alike)."""
    try:
        return await call
    except ReservationRefused as refused:
        quota = refused.quota
        return ("refused", refused.reason, refused.open_jobs, refused.ban_reason, quota, refused.budget)
    except StoreError as error:
        return ("store error", str(error))


async def script(db: Database) -> list[Any]:
    seen: list[Any] = []
    add = seen.append
    await db.register_instance("host-a", host="a", pid=1, now=100.0, ident="boot/1/1/1")
    await db.register_instance("host-b", host="b", pid=1, now=100.0, ident="boot/2/1/1")
    add(await attempt(db.grant("discord:1", 2, by="admin", now=100.0)))
    add(await attempt(db.grant("discord:1", -5, by="admin", now=100.0)))  # more than there is
    add(await attempt(db.reserve(new_job("j1", cost=2))))
    add(await attempt(db.reserve(new_job("j1", cost=2))))  # the same event again: not charged twice
    add(await attempt(db.reserve(new_job("j2", cost=2))))  # the allowance runs out into the bonus
    add(await attempt(db.reserve(new_job("j3", cost=2))))  # out of credits
    add(await attempt(db.reserve(new_job("j4", user="discord:2", max_user_open=0))))  # user queue
    add(await attempt(db.reserve(new_job("j5", user="discord:3", max_open=2))))  # global queue
    add(await attempt(db.reserve(new_job("j6", user="discord:9", unlimited=True, cost=4))))
    await db.ban("discord:4", "spam", by="admin", now=101.0)
    add(await attempt(db.reserve(new_job("j7", user="discord:4"))))
    add(await db.unban("discord:4"))
    add(await db.unban("discord:4"))
    await db.set_allowance("discord:5", 0, now=101.0)
    add(await attempt(db.reserve(new_job("j8", user="discord:5"))))
    await db.set_allowance("discord:5", None, now=101.0)
    add(await db.quota("discord:5", day=DAY, default_allowance=3))
    add(await db.quota("discord:1", day=DAY, default_allowance=3))
    add(await db.quota("nobody", day=DAY, default_allowance=3))
    # j1: runs, made, claimed and settled in part; a stranger's settle and claim are fenced
    add(await db.mark_running("j1", 102.0))
    add(await db.mark_running("j1", 102.0))
    add(await db.count_waiting())
    add(await db.mark_ready("j1", 2, instance_id="host-b", now=103.0))
    add(await db.mark_ready("j1", 2, instance_id="host-a", now=103.0))
    add(await db.count_waiting())
    add(await db.claim_delivery("j1", instance_id="host-b", now=104.0))
    add(await db.claim_delivery("j1", instance_id="host-a", now=104.0))
    done = {"delivered": 1, "seed": 7, "model": "m", "gpu_seconds": 2.0, "now": 105.0}
    add(await db.settle("j1", **done, instance_id="host-b"))  # type: ignore[arg-type]
    add(await db.settle("j1", **done, instance_id="host-a"))  # type: ignore[arg-type]
    add(await db.settle("j1", **done))  # type: ignore[arg-type]  # closed already
    add(await db.refund("j1", error_kind="late", error="late", now=106.0))  # closed
    # j2: refunded (bonus first), then its notice taken once
    add(await db.refund("j2", error_kind="interrupted", error="host-a stopped", now=107.0, gpu_seconds=0.5))
    add(await db.take_notices("discord:", 108.0))
    add(await db.take_notices("discord:", 108.0))
    add(await db.take_notices("telegram:", 108.0))
    add(await db.set_reply("j6", {"files": ["AgAC"]}))
    add(await db.get_job("j6"))
    add(await db.get_job("missing"))
    # recovery: host-b's lease lapsed (last heartbeat at 100); host-a's is held
    await db.register_instance("host-c", host="c", pid=1, now=100.0)
    for job_id, owner in (("k1", "host-b"), ("k2", "host-b"), ("k3", "host-a"), ("k4", "host-c")):
        await db.reserve(
            new_job(job_id, user="discord:8", instance=owner, max_user_open=9, max_open=99, allowance=9)
        )
    await db.mark_running("k2", 109.0)
    await db.claim_delivery("k2", instance_id="host-b", now=109.0)  # images may be out: charged
    again = {"lease_seconds": 30.0, "message": "restarted", "now": 140.0}
    recovered = [
        await db.recover("k1", owner="host-b", proven_dead=False, **again),  # type: ignore[arg-type]
        await db.recover("k1", owner="host-b", proven_dead=False, **again),  # type: ignore[arg-type]
        await db.recover("k2", owner="host-b", proven_dead=False, **again),  # type: ignore[arg-type]
        await db.recover("k3", owner="host-b", proven_dead=False, **again),  # type: ignore[arg-type]
    ]
    await db.heartbeat("host-c", 135.0)  # slow, not gone: it heartbeated since the rescuer looked
    recovered.append(await db.recover("k4", owner="host-c", proven_dead=False, **again))  # type: ignore[arg-type]
    recovered.append(await db.recover("k4", owner="host-c", proven_dead=True, **again))  # type: ignore[arg-type]
    outcome = [None if job is None else (job.id, job.status, job.spent, job.error_kind) for job in recovered]
    assert outcome == [
        ("k1", "failed", 0, "interrupted"),  # refunded
        None,  # closed already
        ("k2", "succeeded", 1, None),  # its delivery was claimed: charged, never refunded
        None,  # not host-b's job
        None,  # host-c holds its lease again
        ("k4", "failed", 0, "interrupted"),  # unless it is proven dead
    ]
    seen.extend(recovered)
    # the month's GPU budget: 10 s, jobs holding 4 s each
    month = {"user": "discord:10", "allowance": 9, "max_user_open": 9, "max_open": 99, "ceiling": 10_000}
    add(await attempt(db.reserve(new_job("b1", hold=4000, **month))))
    add(await attempt(db.reserve(new_job("b2", hold=4000, **month))))
    add(await attempt(db.reserve(new_job("b3", hold=4000, **month))))  # would overrun: refused
    add(await db.refund("b1", error_kind="failed", error="x", now=120.0))  # gives its hold back
    add(await attempt(db.reserve(new_job("b4", hold=4000, **month))))
    add(await db.settle("b2", delivered=1, seed=1, model="m", gpu_seconds=2.5, now=121.0))
    add(await db.budget("2026-12", default_ceiling_ms=10_000))
    add(await attempt(db.reserve(new_job("b5", hold=4000, **month))))  # 2.5 + 4 + 4 > 10
    await db.set_budget("2026-12", 20_000)  # an admin raises it
    add(await attempt(db.reserve(new_job("b6", hold=4000, **month))))
    add(await db.budget("2026-12", default_ceiling_ms=10_000))
    add(await db.budget("2027-01", default_ceiling_ms=10_000))  # a new month starts empty
    # the relax lane: once credits are spent, one free job a day
    relax = {"user": "discord:11", "allowance": 1, "relax_daily": 1, "max_user_open": 9, "max_open": 99}
    add(await attempt(db.reserve(new_job("r1", relax=True, **relax))))  # credits left: not needed
    add(await attempt(db.reserve(new_job("r2", **relax))))
    add(await attempt(db.reserve(new_job("r3", relax=True, hold=1000, **relax))))
    add(await attempt(db.reserve(new_job("r4", relax=True, **relax))))  # today's relax job is used
    add(await db.quota("discord:11", day=DAY, default_allowance=1))
    lanes = [
        step[1] if isinstance(step, tuple) else step.job.id
        for step in seen[-18:]
        if hasattr(step, "job") or isinstance(step, tuple)
    ]
    assert lanes == ["b1", "b2", "budget", "b4", "budget", "b6", "relax_unneeded", "r2", "r3", "relax_used"]
    await db.heartbeat("host-a", 110.0)
    await db.stop_instance("host-b", 111.0)
    add(await db.instances())
    add(await db.open_jobs())
    add(await db.open_jobs(["host-b"]))
    add(await db.stats(day=DAY, since=0.0))
    add(await db.spend(day_start=0.0, month_start=0.0, hours_start=0.0, now=200.0))
    # j1 finished at 105, j2 at 107: 0.9999 and 1.0004 hours after this start, so buckets 0 and 1
    # on both engines (PostgreSQL's CAST would round the first up)
    add(await db.spend(day_start=106.0, month_start=0.0, hours_start=105.5 - 3600, now=200.0))
    add(await db.users_page(day=DAY, offset=0, limit=100))
    add(await db.users_page(day=DAY, offset=1, limit=2))
    add(await db.ledger("discord:1"))
    add(await db.check_ledger())
    add(await db.integrity_check())
    return seen


def comparable(value: Any) -> Any:
    """Ledger row ids come from each engine's own counter; everything else must match exactly."""
    if isinstance(value, list) and value and isinstance(value[0], dict) and "kind" in value[0]:
        return [{k: v for k, v in row.items() if k != "id"} for row in value]
    return value


async def test_both_engines_answer_every_operation_alike(tmp_path: Path, postgres_url: str) -> None:
    sqlite = await Database.open(tmp_path / "contract.sqlite3")
    postgres = await Database.open(postgres_url)
    try:
        on_sqlite, on_postgres = await asyncio.gather(script(sqlite), script(postgres))
    finally:
        await sqlite.close()
        await postgres.close()
    assert len(on_sqlite) == len(on_postgres)
    for step, (a, b) in enumerate(zip(on_sqlite, on_postgres, strict=True)):
        assert comparable(a) == comparable(b), f"step {step} differs"
    assert on_sqlite[-2:] == [[], "ok"]
    assert queue_length(postgres_url) == count_waiting(postgres_url) > 0


def queue_length(url: str) -> int:
    """The queue length PostgreSQL keeps by triggers (what a reservation reads under the lock)."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT open_jobs FROM queue_length").fetchone()
    assert row is not None
    return int(row[0])


def count_waiting(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running') AND ready_at IS NULL"
        ).fetchone()
    assert row is not None
    return int(row[0])
