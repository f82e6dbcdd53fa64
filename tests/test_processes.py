"""Two OS processes on one database file, and SIGKILL at every point of a job's life."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import ImagineService, Settings
from gateway.fake_backend import FakeBackend
from storage import Database

ROOT = Path(__file__).resolve().parents[1]


def child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.service_child", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.slow
def test_two_processes_share_5_credits_exactly(tmp_path: Path) -> None:
    db = str(tmp_path / "shared.sqlite3")
    procs = [child(db, "burst", "cli:bob", "100", f"p{i}-") for i in range(2)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(r["accepted"] for r in results) == 5
    assert sum(r["refused"] for r in results) == 195

    async def check() -> None:
        database = await Database.open(db)
        try:
            quota = await database.quota("cli:bob", day=_today(), default_allowance=5)
            assert (quota.used, quota.reserved) == (5, 0)
            assert await database.check_ledger() == []
            assert await database.integrity_check() == "ok"
        finally:
            await database.close()

    _run(check())


@pytest.mark.slow
@pytest.mark.parametrize("point", ["reserved", "generating", "generated"])
def test_sigkill_at_any_point_refunds_exactly_once_on_the_next_start(tmp_path: Path, point: str) -> None:
    db = str(tmp_path / "crash.sqlite3")
    proc = child(db, "crash", point, "telegram:1001")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == point
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)

    async def restart() -> None:
        database = await Database.open(db)
        settings = Settings.from_env(
            {"IMAGINE_DB": db, "IMAGINE_BACKEND": "fake", "IMAGINE_DAILY_QUOTA": "5"}, env_file=None
        )
        before = await database.quota("cli:victim", day=_today(), default_allowance=5)
        assert (before.used, before.reserved) == (2, 2)  # held by the dead process
        service = ImagineService(settings, database, FakeBackend(settings))
        recovered = await service.start()
        try:
            assert [job.id for job in recovered] == ["telegram:1001"]
            assert recovered[0].error == (
                "Imagine restarted while making your image; your 2 credits were refunded. Please try again."
            )
            assert [job.id for job in await service.take_recovered("cli:")] == ["telegram:1001"]
            assert await service.take_recovered("cli:") == []
            after = await database.quota("cli:victim", day=_today(), default_allowance=5)
            assert (after.used, after.reserved, after.remaining) == (0, 0, 5)
            assert await service.recover() == []  # exactly once
            kinds = [row["kind"] for row in await database.ledger("cli:victim")]
            assert kinds == ["reserve", "refund"]
            assert await database.check_ledger() == []
            assert await database.integrity_check() == "ok"
            # The same event delivered again after the restart is not charged again.
            again = await service.submit("cli:victim", "a fox --n 2", job_id="telegram:1001")
            assert again.duplicate
        finally:
            await service.close()
            await database.close()

    _run(restart())


def _today() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%d")


def _run(coro: object) -> None:
    import asyncio

    asyncio.run(coro)  # type: ignore[arg-type]
