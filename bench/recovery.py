"""How fast the gateway heals: a store lock released, and a stalled process fenced.

1. Lock: an in-process gateway (fake backend, one worker, as with the local backend) runs a job
   while a second OS process holds the SQLite write lock; the next job waits in the queue. Measured:
   from the lock's release to the next job running. With the lock held past the busy timeout the
   running job's settle fails and it is refunded (by repair), and the next job still runs. Baseline
   in the same run: the same hand-off with no lock.
2. Stall: `imagine web` makes an image nobody has downloaded yet and is stopped with SIGSTOP; a second
   gateway process on the same file runs its real heartbeat. Measured: from SIGSTOP to the second
   process refunding the job (the lease, 30 s, plus up to one heartbeat, 10 s). Then SIGCONT: the
   woken process must answer 410, not the image.

    python bench/recovery.py            # about a minute
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.web import start_server
from gateway import ImagineService, JobStatus, Settings
from gateway.fake_backend import FakeBackend
from gateway.service import HEARTBEAT_SECONDS, LEASE_SECONDS
from storage import Database
from tests.helpers.sqlite_lock import WriteLock


async def settled(condition: Callable[[], bool], pause: float = 0.001) -> None:
    """Wait until ``condition()`` holds, looking every ``pause`` seconds."""
    for _ in range(int(120 / pause)):
        if condition():
            return
        await asyncio.sleep(pause)
    raise TimeoutError("the gateway did not get there in two minutes")


async def lock_case(folder: Path, hold: float, busy_timeout_ms: int, locked: bool) -> tuple[float, str]:
    """Seconds from the release (or, unlocked, from the first job's end) to the next job running."""
    db_path = folder / f"lock-{time.monotonic_ns()}.sqlite3"
    settings = Settings.from_env({"IMAGINE_DB": str(db_path), "IMAGINE_BACKEND": "fake"}, env_file=None)
    db = await Database.open(db_path, busy_timeout_ms=busy_timeout_ms)
    backend = FakeBackend(settings)
    backend.capacity_value, backend.delay = 1, 0.05
    service = ImagineService(settings, db, backend)
    await service.start()
    try:
        first = await service.submit("cli:a", "a fox --steps 4", job_id="first")
        second = await service.submit("cli:b", "a hen --steps 4", job_id="second")
        await settled(lambda: first.step >= 1)
        if not locked:
            async for update in first.updates():
                if update.status.finished:
                    break
            began = time.perf_counter()
        else:
            lock = await asyncio.to_thread(WriteLock, db_path)
            await asyncio.sleep(hold)
            await asyncio.to_thread(lock.release)
            began = time.perf_counter()
        await settled(lambda: second.status is not JobStatus.QUEUED)
        waited = time.perf_counter() - began
        async for update in first.updates():
            if update.status.finished:
                break
        outcome = first.status.value
        await asyncio.wait_for(second.wait(), 60)
        await settled(lambda: not service.repairs_pending, 0.01)
        assert await db.check_ledger() == []
        return waited, outcome
    finally:
        await service.close()
        await db.close()


async def stall_case(folder: Path) -> tuple[float, int]:
    server = start_server(max_queue=100)
    db_path = Path(server.tmp.name) / "bench.sqlite3"
    try:
        async with httpx.AsyncClient(base_url=server.url.rstrip("/"), timeout=30) as client:
            job = (await client.post("/api/jobs", json={"prompt": "a lighthouse"})).json()["id"]
            while (view := (await client.get(f"/api/jobs/{job}", params={"wait": 5})).json())[
                "status"
            ] != "succeeded":
                pass
            settings = Settings.from_env(
                {"IMAGINE_DB": str(db_path), "IMAGINE_BACKEND": "fake"}, env_file=None
            )
            db = await Database.open(db_path)
            rescuer = ImagineService(settings, db, FakeBackend(settings))
            await rescuer.start()
            os.kill(server.proc.pid, signal.SIGSTOP)
            stopped = time.perf_counter()
            try:
                while True:
                    with closing(sqlite3.connect(db_path)) as conn:
                        status = conn.execute("SELECT status FROM jobs WHERE id = ?", (job,)).fetchone()[0]
                    if status == "failed":
                        break
                    await asyncio.sleep(0.1)
                fenced = time.perf_counter() - stopped
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
                await rescuer.close()
                await db.close()
            answer = await client.get(view["images"][0])
            return fenced, answer.status_code
    finally:
        server.stop()


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        baseline = [(await lock_case(folder, 0, 30_000, locked=False))[0] for _ in range(5)]
        short = [await lock_case(folder, 1.0, 30_000, locked=True) for _ in range(5)]
        past = [await lock_case(folder, 1.5, 500, locked=True) for _ in range(3)]
        fenced, status = await stall_case(folder)

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:.1f} / {max(values) * 1000:.1f}"

    print(f"gateway recovery · {os.cpu_count()} CPUs · fake backend · one worker")
    print()
    print("| case | next job running after, ms (median / max) | ratio to baseline | first job |")
    print("|---|---:|---:|---|")
    base = statistics.median(baseline)
    print(f"| baseline: hand-off, no lock | {ms(baseline)} | 1.0 | succeeded |")
    for name, rows in (
        ("lock held 1 s (< 30 s busy timeout): release -> next", short),
        ("lock held 1.5 s past a 0.5 s busy timeout: release -> next", past),
    ):
        values = [seconds for seconds, _ in rows]
        outcomes = ", ".join(sorted({outcome for _, outcome in rows}))
        print(f"| {name} | {ms(values)} | {statistics.median(values) / base:.1f} | {outcomes} |")
    print()
    print(f"| stalled process (SIGSTOP) | lease {LEASE_SECONDS:g} s, heartbeat {HEARTBEAT_SECONDS:g} s |")
    print("|---|---:|")
    print(f"| SIGSTOP -> its job refunded by the other process | {fenced:.1f} s |")
    print(f"| woken process asked for the image | HTTP {status} |")


if __name__ == "__main__":
    asyncio.run(main())
