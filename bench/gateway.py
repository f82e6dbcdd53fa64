"""How much the gateway core adds: accept -> reserve -> queue -> backend -> settle, on a real SQLite file.

The backend answers at once with a prepared PNG, so every microsecond measured is the core's:
validation, the reservation transaction, the queue, the settle transaction. Prints a table.

    python bench/gateway.py              # the full table (about a minute)
    python bench/gateway.py --quick      # a smoke run (tests call this)
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    args = parser.parse_args()
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
