"""How much the gateway core adds: accept -> reserve -> queue -> backend -> settle, on a real store.

The backend answers at once with a prepared PNG, so every microsecond measured is the core's:
validation, the reservation transaction, the queue, the settle transaction. Prints a table.

    python bench/gateway.py              # the full table on SQLite (about a minute)
    python bench/gateway.py --quick      # a smoke run (tests call this)
    python bench/gateway.py --db postgres               # SQLite vs a throwaway durable local server
    python bench/gateway.py --db postgresql://u@h/db    # SQLite vs that server (a fresh database a row)
    python bench/gateway.py --db postgres --pg-stats    # and where the server's time goes, per row

With ``--db`` (or ``--processes``) the table compares the engines in the same run: 1 and N gateway
processes (``--processes N``, default 2), each its own ImagineService on the same store, each a closed
loop of ``--concurrency`` clients for ``--seconds``; CPU per job of the gateway processes and, where
the server runs on this machine, of the PostgreSQL server's processes (from /proc).

``--pg-stats`` (with ``--db postgres``) loads pg_stat_statements into the throwaway server and prints,
after each PostgreSQL row, the measured seconds' statements: waiting for the write lock is the time of
``SELECT imagine_write_lock()``, holding it is every other statement of the batch and its COMMIT (whose
time is the WAL flush), and the batches are the lock's calls. It costs the server a few percent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway import GenerationResult, ImageRequest, ImagineService, Settings
from gateway.backend import ProgressCallback
from gateway.fake_backend import solid_png
from storage import Database

PNG = solid_png(8, 8, (200, 100, 50))


class ZeroLatencyBackend:
    """Answers at once with a prepared image: the cost of a GPU is not what this measures."""

    name = "zero"
    capacity = 64

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def check_available(self) -> None: ...

    async def generate(
        self, job_id: str, request: ImageRequest, progress: ProgressCallback
    ) -> GenerationResult:
        assert request.seed is not None
        progress(request.steps, request.steps)
        return GenerationResult([PNG], [request.seed], "zero", timings={"predict_time": 0.0})


async def run_case(
    concurrency: int, users: int, total: int, *, group_commit: bool = True
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(
            {
                "IMAGINE_DB": f"{tmp}/bench.sqlite3",
                "IMAGINE_DAILY_QUOTA": str(10**9),
                "IMAGINE_MAX_QUEUED_PER_USER": str(10**6),
                "IMAGINE_MAX_QUEUE": str(10**6),
            },
            env_file=None,
        )
        db = await Database.open(settings.store, group_commit=group_commit)
        service = ImagineService(settings, db, ZeroLatencyBackend())
        await service.start()
        latencies: list[float] = []
        counter = iter(range(total))

        async def client(index: int) -> None:
            for n in counter:
                user = f"bench:{(index + n) % users}"
                started = time.perf_counter()
                job = await service.submit(user, "a lighthouse at dusk --seed 1", job_id=f"bench:{n}")
                await job.wait()
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - began
        problems = await db.check_ledger()
        settled = (await db.stats(day="", since=0))["jobs"].get("succeeded", 0)
        await service.close()
        await db.close()
        assert not problems, problems
        assert settled == total, (settled, total)
        latencies.sort()
        return {
            "rps": total / elapsed,
            "p50": statistics.median(latencies) * 1000,
            "p99": latencies[int(0.99 * (len(latencies) - 1))] * 1000,
        }


def bench_settings(store: str) -> Settings:
    return Settings.from_env(
        {
            "IMAGINE_DB": store,
            "IMAGINE_DAILY_QUOTA": str(10**9),
            "IMAGINE_MAX_QUEUED_PER_USER": str(10**6),
            "IMAGINE_MAX_QUEUE": str(10**6),
        },
        env_file=None,
    )


# --- one gateway process of the engine comparison (``--child``) ------------------------------------


async def child(spec: dict[str, Any]) -> None:
    """One gateway process: warm up, say ready, run a closed loop from "go" for ``seconds``, report,
    then close on "close". Job ids and users carry the process's index, so processes never collide."""
    index, concurrency, seconds = int(spec["index"]), int(spec["concurrency"]), float(spec["seconds"])
    db = await Database.open(str(spec["store"]))
    service = ImagineService(bench_settings(str(spec["store"])), db, ZeroLatencyBackend())
    await service.start()
    lines = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(lines), sys.stdin)
    numbers = iter(range(10**9))
    latencies: list[float] = []

    async def client(deadline: float, keep: bool) -> None:
        while time.perf_counter() < deadline:
            n = next(numbers)
            started = time.perf_counter()
            job = await service.submit(
                f"bench:p{index}:u{n % 1000}", "a lighthouse at dusk --seed 1", job_id=f"bench:p{index}:{n}"
            )
            await job.wait()
            if keep:
                latencies.append(time.perf_counter() - started)

    warmup = time.perf_counter() + float(spec["warmup_seconds"])
    await asyncio.gather(*(client(warmup, False) for _ in range(concurrency)))
    warm_jobs = next(numbers)
    print(json.dumps({"ready": True}), flush=True)
    await lines.readline()
    cpu, began = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client(began + seconds, True) for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    latencies.sort()
    print(
        json.dumps(
            {
                "jobs": len(latencies),
                "submitted": next(numbers) - 1 - warm_jobs,
                "warm_jobs": warm_jobs,
                "elapsed": elapsed,
                "cpu": cpu,
                "latencies": latencies,
            }
        ),
        flush=True,
    )
    await lines.readline()
    await service.close()
    await db.close()


# --- the PostgreSQL server: a database a row, its processes' CPU ------------------------------------


#: The server settings of ``--pg-stats``: every statement, those inside the ledger functions too.
PG_STATS = (
    "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all "
    "-c pg_stat_statements.track_utility=on"
)


@contextmanager
def postgres_server(target: str, *, stats: bool = False) -> Iterator[str]:
    """The server URL to make databases on: ``target`` itself, or for ``postgres`` a throwaway
    local cluster with the default (durable) fsync and synchronous commit."""
    if target != "postgres":
        yield target
        return
    from tests.helpers.postgres import PostgresServer, binaries

    bin_dir = binaries()
    if bin_dir is None:
        sys.exit(
            "--db postgres needs PostgreSQL's server binaries (initdb, pg_ctl): apt-get install postgresql"
        )
    server = PostgresServer(bin_dir, durable=True, options=PG_STATS if stats else "")
    server.start()
    try:
        yield server.url()
    finally:
        server.stop()


def fresh_database(server_url: str) -> str:
    import psycopg

    name = "imagine_bench_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return urlunsplit(urlsplit(server_url)._replace(path="/" + name))


def drop_database(server_url: str, url: str) -> None:
    import psycopg

    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def postmaster_pid(url: str) -> int | None:
    """The server's main process when it runs on this machine (its backends are its children)."""
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        stat = _stat(int(row[0])) if row else None  # while the backend is there
    return int(stat[1]) if stat else None


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat from the field after the command: state, ppid, ... (utime is [11])."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def server_cpu(postmaster: int) -> float:
    """CPU seconds of the server so far: the postmaster, the children it reaped, the live children."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat(int(entry))
        if stat and (int(entry) == postmaster or int(stat[1]) == postmaster):
            total += sum(int(v) for v in stat[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def check_queue_length(url: str) -> None:
    """The queue length the triggers kept through the run is the jobs' count."""
    import psycopg

    with psycopg.connect(url) as conn:
        kept = conn.execute("SELECT open_jobs FROM queue_length").fetchone()
        counted = conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running') AND ready_at IS NULL"
        ).fetchone()
    assert kept == counted, (kept, counted)


def reset_statements(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SELECT pg_stat_statements_reset()")


def report_statements(url: str, jobs: int, elapsed: float) -> None:
    """Where the server's time went since ``reset_statements``: per job, per call, and the lock."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT toplevel, calls, total_exec_time, query FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "ORDER BY total_exec_time DESC"
        ).fetchall()
    top = [row for row in rows if row[0]]
    wait = sum(row[2] for row in top if "imagine_write_lock()" in row[3])
    batches = sum(row[1] for row in top if "imagine_write_lock()" in row[3])
    held = sum(row[2] for row in top if "imagine_write_lock()" not in row[3])
    commit = sum(row[2] for row in top if row[3].strip().upper() == "COMMIT")
    writes = sum(row[1] for row in top if row[3].strip().upper() not in ("COMMIT", "BEGIN"))
    writes -= batches
    ms = 1000.0 / max(jobs, 1)  # milliseconds of a total -> microseconds per job
    print(
        f"    {batches} batches, {writes / max(batches, 1):.1f} writes a batch; per batch: wait for the "
        f"lock {wait / max(batches, 1):.2f} ms, hold it {held / max(batches, 1):.2f} ms (commit "
        f"{commit / max(batches, 1):.2f} ms); lock held {held / 10 / elapsed:.0f}% of the wall time"
    )
    for toplevel, calls, total, query in rows[:14]:
        text = " ".join(query.split())[:90]
        print(
            f"    {'top ' if toplevel else 'in  '} {total * ms:7.1f} us/job {total / calls * 1000:7.1f} "
            f"us/call {calls:7d}  {text}"
        )


# --- the engine comparison -----------------------------------------------------------------------


async def compare_case(
    store: str, processes: int, concurrency: int, seconds: float, warmup: float, *, stats: bool = False
) -> dict[str, float]:
    """``processes`` gateway processes on ``store`` at once; their rates summed, their latencies pooled."""
    spec = {"store": store, "concurrency": concurrency, "seconds": seconds, "warmup_seconds": warmup}
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--child",
            json.dumps({**spec, "index": index}),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=2**26,
        )
        for index in range(processes)
    ]

    async def answer(proc: asyncio.subprocess.Process) -> dict[str, Any]:
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a gateway process exited ({await proc.wait()}) before answering")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def tell(proc: asyncio.subprocess.Process) -> None:
        assert proc.stdin is not None
        proc.stdin.write(b"\n")

    postmaster = postmaster_pid(store) if store.startswith("postgresql://") else None
    await asyncio.gather(*(answer(proc) for proc in children))
    server_before = server_cpu(postmaster) if postmaster else 0.0
    if stats:
        reset_statements(store)
    load = os.getloadavg()[0]
    for proc in children:
        tell(proc)
    results = await asyncio.gather(*(answer(proc) for proc in children))
    server = server_cpu(postmaster) - server_before if postmaster else None
    for proc in children:
        tell(proc)
    codes = await asyncio.gather(*(proc.wait() for proc in children))
    assert codes == [0] * processes, codes

    jobs = sum(int(r["jobs"]) for r in results)
    expected = sum(int(r["warm_jobs"]) + int(r["submitted"]) for r in results)
    db = await Database.open(store)
    try:
        problems = await db.check_ledger()
        settled = (await db.stats(day="", since=0))["jobs"].get("succeeded", 0)
    finally:
        await db.close()
    assert not problems, problems
    assert settled == expected, (settled, expected)
    if store.startswith("postgresql://"):
        check_queue_length(store)
    if stats:
        report_statements(store, jobs, max(float(r["elapsed"]) for r in results))
    latencies = sorted(x for r in results for x in r["latencies"])
    return {
        "rps": sum(int(r["jobs"]) / float(r["elapsed"]) for r in results),
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[int(0.99 * (len(latencies) - 1))] * 1000,
        "gateway_cpu_ms": sum(float(r["cpu"]) for r in results) * 1000 / jobs,
        "server_cpu_ms": -1.0 if server is None else server * 1000 / jobs,
        "load": load,
    }


async def compare(
    target: str | None, processes: int, concurrency: int, seconds: float, quick: bool, stats: bool = False
) -> None:
    warmup = 0.5 if quick else 2.0
    rows: list[tuple[str, int, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp, postgres_server(target or "", stats=stats) as server_url:
        engines = ["sqlite"] + (["postgresql"] if target else [])
        for engine in engines:
            for count in sorted({1, processes}):
                if engine == "sqlite":
                    store = f"{tmp}/bench-{count}.sqlite3"
                else:
                    store = fresh_database(server_url)
                try:
                    result = await compare_case(
                        store, count, concurrency, seconds, warmup, stats=stats and engine != "sqlite"
                    )
                finally:
                    if engine != "sqlite":
                        drop_database(server_url, store)
                rows.append((engine, count, result))
                print(
                    f"{engine:>10}  processes {count}  concurrency {concurrency}: "
                    f"{result['rps']:7.0f} req/s  "
                    f"p50 {result['p50']:6.2f} ms  p99 {result['p99']:6.2f} ms  "
                    f"gateway CPU {result['gateway_cpu_ms']:.2f} ms/job  load {result['load']:.2f}",
                    flush=True,
                )
    where = "a throwaway durable local server" if target == "postgres" else "the given server"
    print()
    machine = f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs"
    print(f"Gateway core, zero-latency backend, on {machine},")
    print(f"Python {platform.python_version()}); SQLite WAL file; PostgreSQL: {where if target else '-'}.")
    print(
        f"Closed loop, {concurrency} clients per process, {seconds:g} s a row after {warmup:g} s of warm-up."
    )
    print()
    print(
        "| engine | processes | concurrency per process | accepted+settled req/s | p50 ms | p99 ms "
        "| gateway CPU ms/job | server CPU ms/job | load avg (1 min) | vs SQLite | vs 1 process |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    by = {(engine, count): r for engine, count, r in rows}
    for engine, count, r in rows:
        server = "-" if r["server_cpu_ms"] < 0 else f"{r['server_cpu_ms']:.2f}"
        vs_sqlite = f"{r['rps'] / by['sqlite', count]['rps']:.2f}x" if engine != "sqlite" else "-"
        vs_one = f"{r['rps'] / by[engine, 1]['rps']:.2f}x" if count != 1 else "-"
        print(
            f"| {engine} | {count} | {concurrency} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} "
            f"| {r['gateway_cpu_ms']:.2f} | {server} | {r['load']:.2f} | {vs_sqlite} | {vs_one} |"
        )
    if target:
        one = by["postgresql", 1]["rps"]
        print()
        verdict = "met" if one >= 1000 else "NOT met"
        print(f"Goal: PostgreSQL >= 1000 req/s with one process: {verdict} ({one:.0f})")
        if processes > 1:
            scale = by["postgresql", processes]["rps"] / one
            verdict = "met" if scale >= 1.5 else "NOT met"
            print(f"Goal: {processes} processes >= 1.5x one on PostgreSQL: {verdict} ({scale:.2f}x)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument(
        "--db",
        help="compare SQLite with PostgreSQL: a postgresql:// server URL (a fresh database is made "
        "on it for each row), or `postgres` for a throwaway durable server on this machine",
    )
    parser.add_argument("--processes", type=int, help="gateway processes for the comparison (default 2)")
    parser.add_argument("--concurrency", type=int, default=50, help="clients per gateway process")
    parser.add_argument("--seconds", type=float, help="measured seconds a comparison row (default 10)")
    parser.add_argument(
        "--pg-stats",
        action="store_true",
        help="with --db postgres: pg_stat_statements on the server; where its time went, per row",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        await child(json.loads(args.child))
        return
    if args.db or args.processes:
        seconds = args.seconds or (1.0 if args.quick else 10.0)
        await compare(args.db, args.processes or 2, args.concurrency, seconds, args.quick, args.pg_stats)
        return
    total = 200 if args.quick else 3000
    rows = []
    for users in (1, 1000):
        for concurrency in (1, 50, 200):
            n = total if concurrency > 1 else total // 3
            base = await run_case(concurrency, users, n, group_commit=False)
            result = await run_case(concurrency, users, n)
            result["base_rps"], result["base_p99"] = base["rps"], base["p99"]
            rows.append((users, concurrency, result))
            print(
                f"users {users:>5}  concurrency {concurrency:>4}: {result['rps']:8.0f} req/s  "
                f"p50 {result['p50']:6.2f} ms  p99 {result['p99']:6.2f} ms  "
                f"(one transaction per write: {base['rps']:.0f} req/s)",
                flush=True,
            )
    print()
    print(f"Gateway core, zero-latency backend, SQLite WAL on {platform.node()} ({platform.machine()},")
    print(f"Python {platform.python_version()}), {total} requests per row (1/3 at concurrency 1)")
    print()
    print(
        "| users | concurrency | accepted+settled req/s | p50 ms | p99 ms "
        "| baseline req/s (a transaction per write) | baseline p99 ms | ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for users, concurrency, r in rows:
        print(
            f"| {users} | {concurrency} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} "
            f"| {r['base_rps']:.0f} | {r['base_p99']:.2f} | {r['rps'] / r['base_rps']:.2f}x |"
        )
    goal = next(r for u, c, r in rows if u == 1 and c == 50)
    ok = goal["rps"] >= 1000 and goal["p99"] < 20
    print()
    print(
        f"Goal at concurrency 50 (>= 1000 req/s, p99 < 20 ms): {'met' if ok else 'NOT met'} "
        f"({goal['rps']:.0f} req/s, p99 {goal['p99']:.2f} ms)"
    )


if __name__ == "__main__":
    asyncio.run(main())
