"""Fair turns against arrival order: how long light users wait behind one heavy user's backlog.

One heavy user queues a backlog of two-image jobs at once; ten light users then arrive over time with
one image each. The backend runs one job at a time for a fixed time per estimated GPU cost (see
:func:`gateway.turns.estimated_cost`), on a real SQLite file through the real service. The same run is
made with the old order (first in, first out) and with fair turns; the table gives the light users'
wait from acceptance to start, and when the heavy user's last image and everyone's were done
(medians over the runs).

    python bench/fair_turns.py              # the full table (about 10 s)
    python bench/fair_turns.py --quick      # a smoke run (tests call this)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway import GenerationResult, ImageRequest, ImagineService, Job, Settings
from gateway.backend import ProgressCallback
from gateway.fake_backend import solid_png
from gateway.turns import FairTurns, Turns, estimated_cost
from storage import Database

PNG = solid_png(8, 8, (40, 90, 160))


class ArrivalOrder:
    """The old order: first in, first out, whoever asked."""

    def __init__(self) -> None:
        self._jobs: deque[Job] = deque()

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job: object) -> bool:
        return job in self._jobs

    def put(self, job: Job) -> None:
        self._jobs.append(job)

    def pop(self) -> Job:
        return self._jobs.popleft()

    def remove(self, job: Job) -> None:
        self._jobs.remove(job)

    def order(self) -> list[Job]:
        return list(self._jobs)


class OneGpuBackend:
    """One job at a time, ``unit`` seconds per standard image of estimated cost."""

    name = "one-gpu"
    capacity = 1

    def __init__(self, unit: float) -> None:
        self.unit = unit

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def check_available(self) -> None: ...

    async def generate(
        self, job_id: str, request: ImageRequest, progress: ProgressCallback
    ) -> GenerationResult:
        assert request.seed is not None
        await asyncio.sleep(self.unit * estimated_cost(request))
        progress(request.steps, request.steps)
        seeds = [request.seed + i for i in range(request.num_images)]
        return GenerationResult([PNG] * len(seeds), seeds, "one-gpu", timings={"predict_time": 0.0})


@dataclass
class Scenario:
    backlog: int  # the heavy user's jobs, two images each, queued at once
    light_users: int  # one image each
    unit: float  # seconds per standard image
    spacing: float  # seconds between light users' arrivals
    runs: int


@dataclass
class Outcome:
    light_waits: list[float]  # seconds from acceptance to start, every light job of every run
    heavy_done: list[float]  # seconds from the first job to the heavy user's last, one per run
    all_done: list[float]  # seconds from the first job to the last, one per run


async def run_once(order: str, scenario: Scenario, index: int) -> tuple[list[float], float, float]:
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
        db = await Database.open(settings.db_path)
        service = ImagineService(settings, db, OneGpuBackend(scenario.unit))
        turns: Turns = FairTurns() if order == "fair" else ArrivalOrder()
        service.turns = turns
        await service.start()
        began = time.monotonic()

        async def light(user: int) -> Job:
            await asyncio.sleep(scenario.unit + user * scenario.spacing)
            job = await service.submit(f"bench:light{user}", "a fox --seed 1", job_id=f"{index}:light:{user}")
            await job.wait()
            return job

        try:
            lights = [asyncio.create_task(light(u)) for u in range(scenario.light_users)]
            heavy = [
                await service.submit("bench:heavy", "a castle --n 2 --seed 1", job_id=f"{index}:heavy:{k}")
                for k in range(scenario.backlog)
            ]
            for job in heavy:
                await job.wait()
            heavy_done = time.monotonic() - began
            light_jobs = await asyncio.gather(*lights)
            all_done = time.monotonic() - began
        finally:
            await service.close()
        problems = await db.check_ledger()
        await db.close()
        assert problems == [], problems
        waits = []
        for job in light_jobs:
            assert job.started_at is not None
            waits.append(job.started_at - job.accepted_at)
        return waits, heavy_done, all_done


async def measure(order: str, scenario: Scenario) -> Outcome:
    outcome = Outcome([], [], [])
    for index in range(scenario.runs):
        waits, heavy_done, all_done = await run_once(order, scenario, index)
        outcome.light_waits += waits
        outcome.heavy_done.append(heavy_done)
        outcome.all_done.append(all_done)
    return outcome


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run with small counts")
    args = parser.parse_args()
    if args.quick:
        scenario = Scenario(backlog=6, light_users=3, unit=0.005, spacing=0.01, runs=1)
    else:
        scenario = Scenario(backlog=20, light_users=10, unit=0.02, spacing=0.05, runs=5)
    outcomes = {order: asyncio.run(measure(order, scenario)) for order in ("fifo", "fair")}

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print("## bench/fair_turns.py")
    print(
        f"\n{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average {load:.2f}; one job at a time, {scenario.unit * 1000:g} ms per standard image; "
        f"a heavy user's backlog of {scenario.backlog} two-image jobs, {scenario.light_users} light users "
        f"arriving every {scenario.spacing * 1000:g} ms; {scenario.runs} run(s) each.\n"
    )
    print("| order | light p50 wait ms | light p95 wait ms | light max wait ms | heavy done s | all done s |")
    print("|---|---:|---:|---:|---:|---:|")
    names = {"fifo": "arrival (FIFO, before)", "fair": "fair turns (DRR by user)"}
    for order, outcome in outcomes.items():
        waits = outcome.light_waits
        print(
            f"| {names[order]} | {percentile(waits, 50) * 1000:.0f} | {percentile(waits, 95) * 1000:.0f} "
            f"| {max(waits) * 1000:.0f} | {statistics.median(outcome.heavy_done):.2f} "
            f"| {statistics.median(outcome.all_done):.2f} |"
        )
    fifo, fair = (percentile(outcomes[o].light_waits, 95) for o in ("fifo", "fair"))
    heavy_fifo, heavy_fair = (statistics.median(outcomes[o].heavy_done) for o in ("fifo", "fair"))
    print(
        f"\nLight users' p95 wait: FIFO / fair = {fifo / fair:.1f}x; "
        f"heavy user done: fair / FIFO = {heavy_fair / heavy_fifo:.2f}x"
    )


if __name__ == "__main__":
    main()
