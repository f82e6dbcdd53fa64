"""Soak of `imagine web`: many web jobs with ~1 MB images, then the memory and the ledger.

`imagine web` with the fake backend padding each PNG to ``--image-bytes``; 32 clients, each job from
its own forwarded-for address (a different web user each, as on a public site): POST, long-poll,
download. A share of the jobs is never downloaded (a closed tab); `imagine web` is then stopped
with SIGTERM, which refunds those. Measured: the resident memory of the server before, at its peak
during and after the soak, the images kept on disk, and the ledger: every job closed, balances
equal to the ledger.

    python bench/soak.py                # 20,000 jobs (a few minutes)
    python bench/soak.py --quick        # 1,000 jobs
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.web import Server, load, start_server
from storage import Database

RSS_GOAL_MIB = 300


async def sample_rss(pid: int, peak: list[float], stop: asyncio.Event) -> None:
    process = psutil.Process(pid)
    while not stop.is_set():
        peak[0] = max(peak[0], process.memory_info().rss / 2**20)
        await asyncio.sleep(0.25)


async def soak(server: Server, jobs: int, skipped: int) -> tuple[float, float, float, int]:
    pid = server.proc.pid
    await load(server, clients=8, total=50, first=0, full_cycle=True, name="warm-up")
    before = psutil.Process(pid).memory_info().rss / 2**20
    peak, stop = [before], asyncio.Event()
    sampler = asyncio.create_task(sample_rss(pid, peak, stop))
    began = time.perf_counter()
    run = await load(server, clients=32, total=jobs - skipped, first=1000, full_cycle=True, name="soak")
    await load(server, clients=8, total=skipped, first=1000 + jobs, full_cycle=False, name="never fetched")
    seconds = time.perf_counter() - began
    stop.set()
    await sampler
    after = psutil.Process(pid).memory_info().rss / 2**20
    failed = sum(n for status, n in run.statuses.items() if status not in (200, 202))
    print(f"soak: {run.jobs} jobs downloaded in {seconds:.1f} s; answers {dict(run.statuses)}")
    return before, peak[0], after, failed


async def ledger(db_path: str) -> tuple[list[str], str]:
    db = await Database.open(db_path)
    try:
        return await db.check_ledger(), await db.integrity_check()
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1,000 jobs instead of 20,000")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--image-bytes", type=int, default=1_000_000)
    args = parser.parse_args()
    jobs = args.jobs or (1000 if args.quick else 20_000)
    skipped = max(1, jobs // 20)
    server = start_server(
        max_queue=10 * jobs,
        IMAGINE_FAKE_IMAGE_BYTES=str(args.image_bytes),
        IMAGINE_MAX_QUEUED_PER_USER="2",
    )
    db_path = f"{server.tmp.name}/bench.sqlite3"
    try:
        before, peak, after, failed = asyncio.run(soak(server, jobs, skipped))
        cpu = server.cpu_seconds
        disk = sum(f.stat().st_size for f in Path(server.tmp.name).rglob("*.png"))
    finally:
        code = server.stop(cleanup=False)
    problems, integrity = asyncio.run(ledger(db_path))
    with closing(sqlite3.connect(db_path)) as conn:
        by_status = dict(conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
        spent, refunded = conn.execute("SELECT SUM(spent), SUM(refunded) FROM jobs").fetchone()
    server.tmp.cleanup()
    print()
    print(
        f"imagine web soak · {platform.python_implementation()} {platform.python_version()} · "
        f"{os.cpu_count()} CPUs (server and clients share them) · fake backend · "
        f"{jobs} jobs, {args.image_bytes:,} bytes an image, {skipped} never downloaded"
    )
    print()
    print("| figure | value |")
    print("|---|---:|")
    print(f"| RSS after warm-up (MiB) | {before:.1f} |")
    print(f"| RSS peak during the soak (MiB) | {peak:.1f} |")
    print(f"| RSS after the soak (MiB) | {after:.1f} |")
    print(f"| server CPU ms per job | {cpu / jobs * 1000:.2f} |")
    print(f"| PNG bytes on disk at the end (MiB) | {disk / 2**20:.1f} |")
    print(f"| jobs by status | {by_status} |")
    print(f"| credits spent / refunded | {spent} / {refunded} |")
    print(f"| ledger problems | {len(problems)} |")
    print(f"| integrity_check | {integrity} |")
    print(f"| requests that failed | {failed} |")
    print(f"| imagine web exit code | {code} |")
    print()
    open_jobs = by_status.get("queued", 0) + by_status.get("running", 0)
    ok = peak < RSS_GOAL_MIB and not problems and not open_jobs and code == 0 and not failed
    print(f"goal: RSS under {RSS_GOAL_MIB} MiB and every credit accounted for: {'met' if ok else 'NOT met'}")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
