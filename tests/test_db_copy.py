"""`imagine db copy`: a SQLite store made by the real operations, moved to PostgreSQL and checked there."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

import imagine
from storage import Database, NewJob
from storage.copy import TABLES
from storage.sql import Conn

PASSWORD = "s3cret-pw"  # the test server trusts loopback, so any password connects
DAYS = ("2026-11-24", "2026-11-25", "2026-11-26")
USERS = [f"discord:{i}" for i in range(12)] + [f"telegram:{i}" for i in range(8)]


def with_password(url: str) -> str:
    return url.replace("postgres@", f"postgres:{PASSWORD}@", 1)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = imagine.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def new_job(i: int, *, instance_id: str | None) -> NewJob:
    return NewJob(
        job_id=f"job-{i}",
        user_id=USERS[i % len(USERS)],
        request={"prompt": f"fox {i}", "seed": i},
        cost=1 + i % 4,
        day=DAYS[i % len(DAYS)],
        default_allowance=500,
        unlimited=i % 97 == 0,
        max_user_open=10_000,
        max_open=10_000,
        instance_id=instance_id,
        reply={"chat_id": i} if i % 2 else None,
        now=1_000.0 + i / 7,
        budget_hold_ms=0 if i % 5 == 0 else 1_000 + i,  # held against the month, settled or given back
        budget_ceiling_ms=10**12,
    )


async def finish(db: Database, i: int) -> None:
    """Each job its own way: delivered whole or in part, failed, interrupted, or left open."""
    job_id, now = f"job-{i}", 2_000.0 + i / 3
    match i % 6:
        case 0 | 1:
            await db.mark_running(job_id, now)
            await db.settle(job_id, delivered=4, seed=i, model="tiny", gpu_seconds=0.25, now=now)
        case 2:
            await db.settle(job_id, delivered=1, seed=None, model="tiny", gpu_seconds=None, now=now)
        case 3:
            await db.refund(job_id, error_kind="backend", error="out of memory", now=now)
        case 4:
            await db.refund(job_id, error_kind="interrupted", error="restart", now=now)
        case _:
            await db.mark_running(job_id, now)  # still open when the store moves


async def build_store(path: Path, jobs: int) -> None:
    """A store written through the real operations: grants, allowances, a ban, and ``jobs`` jobs."""
    db = await Database.open(path)
    try:
        await db.register_instance("host-a:1", host="host-a", pid=1, now=1.0, ident="boot-1")
        for n, user in enumerate(USERS):
            await db.grant(user, 20 + n, by="cli:op", now=2.0)
        await db.grant(USERS[0], -5, by="cli:op", now=3.0)
        await db.set_allowance(USERS[1], 7_000, now=3.0)
        await db.ban("discord:999", "spam", by="cli:op", now=4.0)
        await db.set_budget("2026-11", 5_000_000)
        for start in range(0, jobs, 100):
            batch = range(start, min(jobs, start + 100))
            await asyncio.gather(*(db.reserve(new_job(i, instance_id="host-a:1")) for i in batch))
            await asyncio.gather(*(finish(db, i) for i in batch))
        assert await db.check_ledger() == []
    finally:
        await db.close()


def counts(c: Conn) -> dict[str, int]:
    return {t: int(c.execute(f"SELECT COUNT(*) AS n FROM {t}").fetchone()["n"]) for t in TABLES}


async def snapshot(target: str | Path) -> dict[str, Any]:
    """What a store holds, as the bots read it."""
    db = await Database.open(target)
    try:
        return {
            "counts": await db.run(counts),
            "ledger": await db.ledger(),
            "secret": await db.secret("idempotency"),
            "quotas": [await db.quota(u, day=DAYS[-1], default_allowance=500) for u in USERS[:5]],
            "jobs": [await db.get_job(f"job-{i}") for i in (0, 2, 3, 4, 5)],
            "open": await db.open_jobs(),
            "instances": await db.instances(),
            "check": await db.check_ledger(),
            "budget": [await db.budget(month, default_ceiling_ms=None) for month in ("2026-11", "2026-12")],
        }
    finally:
        await db.close()


def test_copy_moves_the_store_ledger_and_all(
    env: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = env / "old.sqlite3"
    asyncio.run(build_store(source, jobs=1600))
    code, out, err = run(capsys, "db", "copy", str(source), with_password(postgres_url))
    assert code == 0, err
    assert PASSWORD not in out + err
    assert out.rstrip().endswith("done")
    seconds = float(re.search(r" in ([0-9.]+) s", out).group(1))  # type: ignore[union-attr]
    assert seconds < 10, out

    before, after = asyncio.run(snapshot(source)), asyncio.run(snapshot(postgres_url))
    assert after["check"] == []
    assert after["counts"] == before["counts"]
    assert after["counts"]["ledger"] > 3000
    for key in ("ledger", "secret", "quotas", "jobs", "open", "instances"):
        assert after[key] == before[key], key
    for table, n in before["counts"].items():
        assert re.search(rf"^  {table} +{n}$", out, re.M), out

    async def reserve_on_target() -> tuple[int, list[str]]:
        db = await Database.open(postgres_url)
        try:
            await db.reserve(new_job(5000, instance_id=None))
            return (await db.ledger())[-1]["id"], await db.check_ledger()
        finally:
            await db.close()

    new_id, problems = asyncio.run(reserve_on_target())
    assert new_id == before["ledger"][-1]["id"] + 1 and problems == []


def test_a_target_that_holds_a_store_is_refused_and_left_alone(
    env: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = env / "first.sqlite3", env / "second.sqlite3"
    asyncio.run(build_store(first, jobs=30))
    asyncio.run(build_store(second, jobs=12))
    assert run(capsys, "db", "copy", str(first), postgres_url)[0] == 0
    held = asyncio.run(snapshot(postgres_url))

    code, out, err = run(capsys, "db", "copy", str(second), with_password(postgres_url))
    assert code == imagine.EXIT_REFUSED and out == ""
    assert err.count("\n") == 1 and "already holds a store (20 users, 1 instances, 30 jobs" in err
    assert PASSWORD not in err
    assert asyncio.run(snapshot(postgres_url)) == held


def test_a_copy_that_fails_its_check_is_rolled_back(
    env: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = env / "tampered.sqlite3"
    asyncio.run(build_store(source, jobs=30))

    async def tamper() -> None:
        db = await Database.open(source)
        try:
            await db.run(lambda c: c.execute("UPDATE users SET bonus = bonus + 7 WHERE id = 'telegram:3'"))
        finally:
            await db.close()

    asyncio.run(tamper())
    empty = asyncio.run(snapshot(postgres_url))
    code, out, err = run(capsys, "db", "copy", str(source), postgres_url)
    assert code == imagine.EXIT_ERROR and out == ""
    assert err.startswith("imagine: The copy was rolled back: on postgresql://") and err.count("\n") == 1
    assert "telegram:3: bonus" in err
    assert asyncio.run(snapshot(postgres_url)) == empty  # not a row, and the target's own secret


def test_a_missing_or_foreign_file_is_one_sentence_and_exit_2(
    env: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "db", "copy", "nowhere.sqlite3", with_password(postgres_url))
    assert (code, out) == (imagine.EXIT_INVALID, "")
    assert err == "imagine: There is no SQLite file at nowhere.sqlite3.\n"
    assert not (env / "nowhere.sqlite3").exists()
    (env / "notes.txt").write_text("not a database, only words " * 20)
    code, out, err = run(capsys, "db", "copy", "notes.txt", postgres_url)
    assert (code, err) == (
        imagine.EXIT_INVALID,
        "imagine: notes.txt is not a SQLite store: file is not a database.\n",
    )


def test_a_target_that_cannot_be_reached_never_shows_the_password(
    env: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = env / "old.sqlite3"
    asyncio.run(build_store(source, jobs=3))
    missing = with_password(postgres_url).rsplit("/", 1)[0] + "/no_such_database"
    code, out, err = run(capsys, "db", "copy", str(source), missing)
    assert code == imagine.EXIT_ERROR and out == ""
    assert err.startswith("imagine: Cannot open postgresql://postgres:***@") and err.count("\n") == 1
    assert PASSWORD not in err
    code, out, err = run(capsys, "db", "copy", str(source), "mysql://root:pw@host/db")
    assert (code, err) == (
        imagine.EXIT_INVALID,
        "imagine: mysql://root:***@host/db is not a postgresql:// URL.\n",
    )
