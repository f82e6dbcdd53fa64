"""The web front under load on loopback: `imagine web` with the zero-latency fake backend.

100 concurrent clients, each a person's browser in a loop: POST /api/jobs, long-poll GET
/api/jobs/{id} until the image is made, download it (which is when the credit is charged).
Every client comes through a trusted proxy with its own forwarded-for address (from 198.18.0.0/15,
the benchmarking network), so each job is a different web user, as on a public site.
Measured: jobs/s (delivered), the latency of POST /api/jobs (p50, p99), and the page's weight.
A second run only POSTs (no polling, no download) to show the accept path alone.

    python bench/web.py                 # the full table (about a minute)
    python bench/web.py --quick         # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a lighthouse at dusk, oil painting"  # 512x512, 25 steps: the default request
PAGE_GOAL = 50 * 1024


def forwarded_address(n: int) -> str:
    """The n-th address of 198.18.0.0/15 (RFC 2544's benchmarking network; never contacted)."""
    n %= 2**17
    return f"198.{18 + (n >> 16)}.{(n >> 8) & 255}.{n & 255}"


@dataclass
class Server:
    proc: subprocess.Popen[str]
    url: str
    tmp: tempfile.TemporaryDirectory[str]

    @property
    def cpu_seconds(self) -> float:
        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self, *, cleanup: bool = True) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        if cleanup:
            self.tmp.cleanup()
        return code


def start_server(max_queue: int, **extra_env: str) -> Server:
    tmp = tempfile.TemporaryDirectory()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGINE_", "DISCORD_", "TELEGRAM_"))}
    env.update(
        {
            "IMAGINE_DB": f"{tmp.name}/bench.sqlite3",
            "IMAGINE_BACKEND": "fake",
            "IMAGINE_WEB_HOST": "127.0.0.1",
            "IMAGINE_WEB_PORT": "0",
            "IMAGINE_TRUSTED_PROXIES": "127.0.0.1",
            "IMAGINE_MAX_QUEUE": str(max_queue),
            "PYTHONPATH": str(ROOT),
            **extra_env,
        }
    )
    script = Path(sys.executable).with_name("imagine")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "imagine"]
    proc = subprocess.Popen(
        [*command, "web"], cwd=tmp.name, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "imagine: web is on: " in line:
            return Server(proc, line.split("imagine: web is on: ", 1)[1].split()[0], tmp)
    raise SystemExit("imagine web did not start")


@dataclass
class Run:
    name: str
    jobs: int = 0
    seconds: float = 0.0
    post_latencies: list[float] = field(default_factory=list)
    statuses: Counter[int | str] = field(default_factory=Counter)
    server_cpu: float = 0.0
    client_cpu: float = 0.0

    @property
    def jobs_per_second(self) -> float:
        return self.jobs / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.post_latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000 if ordered else 0.0


async def load(
    server: Server,
    *,
    clients: int,
    total: int,
    first: int,
    full_cycle: bool,
    name: str,
    rate: float | None = None,
    prompt: str = PROMPT,
) -> Run:
    """``total`` jobs from ``clients`` clients: as fast as they go (closed loop), or, with ``rate``,
    at that many jobs a second in all, each POST sent on schedule whatever the answers before it
    (open loop; a POST's latency counts from when it was due, so a late client counts against us)."""
    run = Run(name)
    numbers = iter(range(first, first + total))
    body = json.dumps({"prompt": prompt}).encode()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    base = server.url.rstrip("/")

    async def one_job(session: aiohttp.ClientSession, n: int, due: float) -> None:
        try:
            await web_job(session, n, due)
        except (aiohttp.ClientError, TimeoutError) as exc:
            run.statuses[type(exc).__name__] += 1

    async def web_job(session: aiohttp.ClientSession, n: int, due: float) -> None:
        headers = {"Content-Type": "application/json", "X-Forwarded-For": forwarded_address(n)}
        async with session.post(f"{base}/api/jobs", data=body, headers=headers) as response:
            created = await response.json()
            run.statuses[response.status] += 1
        run.post_latencies.append(time.perf_counter() - due)
        if response.status != 202:
            return
        if full_cycle:
            tag = created["tag"]
            while True:
                url = f"{base}/api/jobs/{created['id']}?wait=10&after={tag}"
                async with session.get(url, headers=headers) as response:
                    view = await response.json()
                if view["status"] in ("succeeded", "failed"):
                    break
                tag = view["tag"]
            for image in view["images"]:
                async with session.get(base + image, headers=headers) as response:
                    await response.read()
                    run.statuses[response.status] += 1
        run.jobs += 1

    async def closed_loop_client(session: aiohttp.ClientSession) -> None:
        for n in numbers:
            await one_job(session, n, time.perf_counter())

    async def open_loop_client(session: aiohttp.ClientSession, index: int, began: float) -> None:
        assert rate is not None
        interval = clients / rate
        due = began + index * interval / clients
        jobs: list[asyncio.Task[None]] = []
        for n in numbers:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            jobs.append(asyncio.create_task(one_job(session, n, due)))
            due += interval
        await asyncio.gather(*jobs)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        cpu_before, client_before = server.cpu_seconds, time.process_time()
        began = time.perf_counter()
        if rate is None:
            await asyncio.gather(*(closed_loop_client(session) for _ in range(clients)))
        else:
            await asyncio.gather(*(open_loop_client(session, i, began) for i in range(clients)))
        run.seconds = time.perf_counter() - began
        run.server_cpu = server.cpu_seconds - cpu_before
        run.client_cpu = time.process_time() - client_before
    return run


async def page_weight(server: Server) -> tuple[int, int, int]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.get(server.url, headers={"Accept-Encoding": "identity"}) as response:
            raw = len(await response.read())
        async with session.get(server.url, headers={"Accept-Encoding": "gzip"}) as response:
            wire = await response.read()
            assert response.headers.get("Content-Encoding") == "gzip"
    html = gzip.decompress(wire).decode()
    external = html.count(' src="http') + html.count(' href="http') + html.count("<script src")
    return raw, len(wire), external


async def main(quick: bool, rate: float, prompt: str) -> None:
    clients = 100
    total = 600 if quick else 6000
    load_before = os.getloadavg()[0]
    # IMAGINE_MAX_QUEUE=1000: past it a POST gets 429 at once rather than a place in an ever longer queue.
    server = start_server(max_queue=1000)
    try:
        await load(server, clients=clients, total=300, first=0, full_cycle=True, name="warm-up")
        offered = await load(
            server,
            clients=clients,
            total=total,
            first=10_000,
            full_cycle=True,
            rate=rate,
            name=f"{rate:g} jobs/s offered: POST, poll, download",
            prompt=prompt,
        )
        flat = await load(
            server,
            clients=clients,
            total=total,
            first=30_000,
            full_cycle=True,
            name="flat out: POST, poll, download",
        )
        raw, wire, external = await page_weight(server)
    finally:
        code = server.stop()
    # Jobs nobody downloads stay open until their pickup time: this run needs room for all of them.
    server = start_server(max_queue=10 * total)
    try:
        await load(server, clients=clients, total=300, first=0, full_cycle=True, name="warm-up")
        posts = await load(
            server,
            clients=clients,
            total=total,
            first=50_000,
            full_cycle=False,
            name="flat out: POST only",
            prompt=prompt,
        )
    finally:
        code = max(code, server.stop())
    runs = [offered, flat, posts]
    print(
        f"load average before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f} "
        "(other work on the machine skews the figures)"
    )
    print(
        f"web front on loopback · {platform.python_implementation()} {platform.python_version()} · "
        f"{os.cpu_count()} CPUs (server and clients share them) · fake backend, zero latency · "
        f"{clients} concurrent clients · {total} jobs a run · prompt {prompt!r}"
    )
    print()
    print(
        "| run | jobs/s | POST p50 ms | POST p99 ms | POST max ms | server CPU ms/job | clients' CPU ms/job "
        "| answers |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for run in runs:
        answers = ", ".join(f"{status}: {n}" for status, n in sorted(run.statuses.items(), key=str))
        jobs = max(1, run.jobs)
        print(
            f"| {run.name} | {run.jobs_per_second:.0f} | {run.percentile(50):.1f} | "
            f"{run.percentile(99):.1f} | {run.percentile(100):.1f} | {run.server_cpu / jobs * 1000:.2f} | "
            f"{run.client_cpu / jobs * 1000:.2f} | {answers} |"
        )
    print()
    print("| page | bytes |")
    print("|---|---:|")
    print(f"| GET / as sent (gzip) | {wire} |")
    print(f"| GET / uncompressed | {raw} |")
    print(f"| other requests to show it | {external} |")
    print()
    page_ok = raw < PAGE_GOAL and not external
    latency_ok = offered.percentile(99) < 50 and offered.jobs_per_second >= 0.95 * rate
    print(
        f"goals: >= 500 jobs/s flat out: {'met' if flat.jobs_per_second >= 500 else 'NOT met'}; "
        f"POST p99 < 50 ms at {rate:g} jobs/s: {'met' if latency_ok else 'NOT met'}; "
        f"page < {PAGE_GOAL // 1024} KB in one round trip: {'met' if page_ok else 'NOT met'}; "
        f"imagine web exited {code}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer jobs")
    parser.add_argument("--rate", type=float, default=500.0, help="jobs/s offered in the open-loop run")
    parser.add_argument("--prompt", default=PROMPT, help=f"the request (default {PROMPT!r}: 512x512)")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(args.quick, args.rate, args.prompt))
    else:
        uvloop.run(main(args.quick, args.rate, args.prompt))
