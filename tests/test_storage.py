"""storage/: migrations, pragmas, and the ledger check that every scenario's test relies on; the
tests that take ``store_target`` run on both engines."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from storage import Database, ReservationRefused
from storage.schema import migrations
from tests.helpers.jobs import new_job


async def reserve(db: Database, job_id: str, user: str = "cli:a", cost: int = 1) -> None:
    await db.reserve(new_job(job_id, user_id=user, cost=cost, default_allowance=3, max_open=10))


async def test_migrations_apply_once_and_pragmas_hold(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    db = await Database.open(path)
    await db.close()
    db = await Database.open(path)  # a second start applies nothing again
    await db.close()
    conn = sqlite3.connect(path)
    versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
    assert versions == [number for number, _, _ in migrations()] == [1, 2, 3, 4]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_ledger_check_finds_a_tampered_balance(store_target: str) -> None:
    db = await Database.open(store_target)
    try:
        await reserve(db, "j1", cost=2)
        await db.settle("j1", delivered=2, seed=1, model="m", gpu_seconds=1.0, now=2.0)
        await db.grant("cli:a", 4, by="op", now=3.0)
        assert await db.check_ledger() == []
        await db.run(lambda c: c.execute("UPDATE users SET bonus = 9 WHERE id = 'cli:a'"))
        assert await db.check_ledger() == ["cli:a: bonus 9 but the ledger sums to 4"]
    finally:
        await db.close()


async def test_refused_reservations_in_one_batch_leave_the_others_whole(store_target: str) -> None:
    import asyncio

    db = await Database.open(store_target)
    try:
        outcomes = await asyncio.gather(*(reserve(db, f"j{i}") for i in range(6)), return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, ReservationRefused)]
        assert len(refused) == 3 and all(r.reason == "credits" for r in refused)
        quota = await db.quota("cli:a", day="2026-11-26", default_allowance=3)
        assert (quota.used, quota.reserved) == (3, 3)
        assert len(await db.open_jobs()) == 3
        assert await db.check_ledger() == []
    finally:
        await db.close()


async def test_a_jobs_reply_record_can_be_completed_after_delivery(store_target: str) -> None:
    db = await Database.open(store_target)
    try:
        await reserve(db, "j1")
        assert await db.set_reply("j1", {"chat_id": 7, "files": ["AgAC1"]})
        assert not await db.set_reply("no such job", {})
        job = await db.get_job("j1")
        assert job is not None and job.reply == {"chat_id": 7, "files": ["AgAC1"]}
    finally:
        await db.close()


async def test_foreign_keys_are_enforced(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "db.sqlite3")
    try:
        with pytest.raises(sqlite3.IntegrityError):
            await db.run(
                lambda c: c.execute(
                    "INSERT INTO ledger (user_id, kind, credits, created_at) VALUES ('nobody', 'grant', 1, 0)"
                )
            )
    finally:
        await db.close()


def test_each_engines_migrations_are_numbered_once() -> None:
    """Two files with one number would make the second start fail on schema_migrations' key."""
    for package in ("storage.migrations", "storage.pg_migrations"):
        numbers = [number for number, _, _ in migrations(package)]
        assert numbers == sorted(set(numbers)), package


def test_records_are_made_by_column_name_in_any_column_order() -> None:
    from dataclasses import fields

    from storage import InstanceRecord, JobRecord

    conn = sqlite3.connect(":memory:")
    conn.row_factory = sqlite3.Row
    row = conn.execute(
        "SELECT 7 AS pid, 'h' AS host, 'i' AS id, 2.0 AS heartbeat_at, 1.0 AS started_at, "
        "NULL AS stopped_at, 'x' AS ident"
    ).fetchone()
    assert InstanceRecord.from_row(row) == InstanceRecord("i", "h", 7, 1.0, 2.0, None, "x")
    names = [field.name for field in reversed(fields(JobRecord))]
    values = {name: None for name in names} | {
        "id": "j",
        "user_id": "cli:a",
        "request": '{"prompt": "x"}',
        "reply": '{"chat": 1}',
        "status": "queued",
        "cost": 2,
        "day": "2026-11-26",
    }
    row = conn.execute(
        "SELECT " + ", ".join(f"? AS {name}" for name in names), [values[name] for name in names]
    ).fetchone()
    job = JobRecord.from_row(row)
    assert (job.id, job.user_id, job.status, job.cost, job.day) == ("j", "cli:a", "queued", 2, "2026-11-26")
    assert (job.request, job.reply, job.created_at) == ({"prompt": "x"}, {"chat": 1}, None)
    conn.close()


async def test_spend_counts_windows_percentiles_users_refunds_and_hours(store_target: str) -> None:
    db = await Database.open(store_target)
    hour = 3600.0
    try:
        # cli:a: three images in two jobs; cli:b: one image, and one job failed after 4 GPU seconds
        for job_id, user, cost in [
            ("a1", "cli:a", 2),
            ("a2", "cli:a", 1),
            ("b1", "cli:b", 1),
            ("b2", "cli:b", 1),
        ]:
            await reserve(db, job_id, user=user, cost=cost)
        await db.settle("a1", delivered=2, seed=1, model="m", gpu_seconds=6.0, now=10 * hour + 5)
        await db.settle("a2", delivered=1, seed=1, model="m", gpu_seconds=2.0, now=30 * hour)
        await db.settle("b1", delivered=1, seed=1, model="m", gpu_seconds=1.0, now=30 * hour + 1)
        await db.refund("b2", error_kind="backend", error="down", now=31 * hour, gpu_seconds=4.0)
        spend = await db.spend(day_start=24 * hour, month_start=0.0, hours_start=0.0, now=32 * hour)
        assert spend["today"] == {"jobs": 3, "images": 2, "gpu_seconds": 7.0}
        assert spend["month"] == {"jobs": 4, "images": 4, "gpu_seconds": 13.0}
        assert spend["gpu_seconds_per_image"] == {"p50": 2.0, "p95": 3.0, "jobs": 3}
        assert spend["top_users"] == [
            {"user": "cli:a", "jobs": 2, "images": 3, "gpu_seconds": 8.0},
            {"user": "cli:b", "jobs": 2, "images": 1, "gpu_seconds": 5.0},
        ]
        assert spend["refunds"] == [{"reason": "backend", "jobs": 1, "credits": 1}]
        busy = {i: h for i, h in enumerate(spend["hourly"]) if h["jobs"]}
        assert len(spend["hourly"]) == 7 * 24 and spend["hourly"][1]["start"] == hour
        assert {i: (h["jobs"], h["images"], h["gpu_seconds"]) for i, h in busy.items()} == {
            10: (1, 2, 6.0),
            30: (2, 2, 3.0),
            31: (1, 0, 4.0),
        }
        await db.ban("cli:z", "spam", by="op", now=1.0)  # banned before ever asking: listed too
        await db.set_allowance("cli:b", 7, now=1.0)
        total, users = await db.users_page(day="2026-11-26", offset=1, limit=5)
        assert total == 3
        assert users == [
            {"id": "cli:b", "allowance": 7, "used_today": 1, "bonus": 0, "banned": None},
            {"id": "cli:z", "allowance": None, "used_today": 0, "bonus": 0, "banned": "spam"},
        ]
    finally:
        await db.close()
