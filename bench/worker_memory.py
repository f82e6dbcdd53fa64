"""The worker's resident memory before and after a soak of predictions with large outputs.

    python bench/worker_memory.py                        # this tree
    python bench/worker_memory.py --baseline 77c320d     # and the worker as of that commit, in the same run
    ... --predictions 40 --size 1024 --outputs 4 --steps 1 --concurrency 2 --json FILE

Each run is the real ``imagine worker`` process (``python imagine.py worker``) with the tiny model on
this CPU, asked over loopback HTTP with a bearer key as the gateway asks it: an idempotent
``PUT /predictions/{id}`` per prediction, each a new id. One answer at 1024x1024 with four images is
about 12 MB of PNG data URIs (the tiny model's images are noise, which PNG cannot shrink), so the
soak is about what the worker keeps of its answers, not about the model. The resident set size
(psutil) is read when the worker is READY, sampled every 0.2 s during the soak (the peak), and read
after it. The baseline is the tree at ``--baseline``, taken with ``git archive`` into a temp folder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key"
MB = 1024 * 1024


@dataclass
class Soak:
    code: str
    predictions: int
    response_mb: float
    rss_ready_mb: float
    rss_after_mb: float
    rss_peak_mb: float
    kept: str
    seconds: float

    @property
    def growth_mb(self) -> float:
        return self.rss_after_mb - self.rss_ready_mb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def worker_process(tree: Path, log_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``python imagine.py worker`` from ``tree`` on a free loopback port, stopped with SIGTERM."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGINE_", "REPLICATE_"))}
    env.update(
        IMAGINE_MODEL="tiny",
        IMAGINE_BACKEND_API_KEY=KEY,
        IMAGINE_DB=str(log_path.parent / "unused.sqlite3"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "imagine.py", "worker", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tree,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield process, f"http://127.0.0.1:{port}"
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def wait_ready(process: subprocess.Popen[bytes], url: str, log_path: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited with {process.returncode}; see {log_path}")
        with contextlib.suppress(httpx.HTTPError):
            status = httpx.get(f"{url}/health-check", timeout=2).json()["status"]
            if status == "READY":
                return
            if status == "SETUP_FAILED":
                raise RuntimeError(f"the worker could not start; see {log_path}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the worker was not READY in {timeout:.0f} s; see {log_path}")
        time.sleep(0.2)


class PeakRss:
    """The largest resident set size seen, sampled on a thread."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.process = psutil.Process(pid)
        self.every = every
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def soak(url: str, args: argparse.Namespace, label: str) -> tuple[float, float]:
    """``args.predictions`` large predictions at ``args.concurrency``; (mean answer MiB, seconds)."""
    body_input = {
        "prompt": "a lighthouse at dusk",
        "width": args.size,
        "height": args.size,
        "num_outputs": args.outputs,
        "num_inference_steps": args.steps,
        "guidance_scale": 1.0,  # no classifier-free guidance: half the UNet work, the same output size
    }
    sizes: list[int] = []
    started = time.perf_counter()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(args.predictions):
        queue.put_nowait(i)

    async def client() -> None:
        async with httpx.AsyncClient(timeout=600, headers={"Authorization": f"Bearer {KEY}"}) as http:
            while not queue.empty():
                i = queue.get_nowait()
                response = await http.put(
                    f"{url}/predictions/soak-{i}", json={"input": {**body_input, "seed": i}}
                )
                if response.status_code != 200 or response.json()["status"] != "succeeded":
                    raise RuntimeError(f"prediction {i}: HTTP {response.status_code} {response.text[:200]}")
                sizes.append(len(response.content))
                if len(sizes) % 10 == 0:
                    print(f"  {label}: {len(sizes)}/{args.predictions}", flush=True)

    await asyncio.gather(*(client() for _ in range(args.concurrency)))
    return sum(sizes) / len(sizes) / MB, time.perf_counter() - started


def measure(tree: Path, label: str, args: argparse.Namespace, folder: Path) -> Soak:
    log_path = folder / f"{label}.log"
    with worker_process(tree, log_path) as (process, url):
        wait_ready(process, url, log_path)
        rss = psutil.Process(process.pid)
        ready = rss.memory_info().rss
        with PeakRss(process.pid) as peak:
            response_mb, seconds = asyncio.run(soak(url, args, label))
        after = rss.memory_info().rss
        health = httpx.get(f"{url}/health-check", timeout=5).json()
    kept = health.get("kept")
    kept_text = (
        f"{kept['predictions']} ({kept['bytes'] / MB:.0f} of {kept['max_bytes'] / MB:.0f} MiB)"
        if isinstance(kept, dict)
        else "all (up to 1,000)"
    )
    return Soak(
        label, args.predictions, response_mb, ready / MB, after / MB, peak.peak / MB, kept_text, seconds
    )


def baseline_tree(ref: str, folder: Path) -> Path:
    tree = folder / "baseline"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def table(rows: list[Soak]) -> str:
    lines = [
        "| code | predictions | MiB per answer | RSS at READY MiB | RSS after MiB | growth MiB | peak MiB | "
        "kept after | soak s |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.code} | {r.predictions} | {r.response_mb:.1f} | {r.rss_ready_mb:.0f} | "
            f"{r.rss_after_mb:.0f} | {r.growth_mb:+.0f} | {r.rss_peak_mb:.0f} | {r.kept} | {r.seconds:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--baseline", metavar="REF", help="also measure the worker as of this git ref")
    parser.add_argument("--predictions", type=int, default=40)
    parser.add_argument("--size", type=int, default=1024, help="width and height")
    parser.add_argument("--outputs", type=int, default=4, help="images per prediction")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON too")
    args = parser.parse_args()

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    rows: list[Soak] = []
    with tempfile.TemporaryDirectory(prefix="imagine-worker-memory-") as tmp:
        folder = Path(tmp)
        if args.baseline:
            rows.append(
                measure(baseline_tree(args.baseline, folder), f"baseline {args.baseline}", args, folder)
            )
        rows.append(measure(ROOT, "this tree", args, folder))
    print(
        f"\n## bench/worker_memory.py: {args.predictions} predictions of {args.outputs} x "
        f"{args.size}x{args.size}, {args.steps} step(s), concurrency {args.concurrency}, tiny model\n"
    )
    print(table(rows))
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        figures: list[dict[str, Any]] = [{**asdict(r), "growth_mb": r.growth_mb} for r in rows]
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
