"""The GPU worker's speed: latency and throughput over HTTP, cold start, and the GPU targets.

    python bench/worker.py                  # this CPU: the tiny model over HTTP at concurrency 1, 4, 8,
                                            # batching on and off; the full-size SD 1.5 architecture
                                            # (random fp16 weights): process start to weights loaded
                                            # against the time to read the weight bytes; in
                                            # process, upscale and vary against a generation
    python bench/worker.py --quick          # a smoke run of the same code (tests/test_bench_worker.py)
    python bench/worker.py --device cuda    # one GPU, one command, under 8 minutes, no Hub: see below
    ... --json FILE                         # the figures as JSON too

Every worker here is the real ``imagine worker`` process (``python imagine.py worker``), asked over
HTTP with a bearer key, as the gateway asks it. Weights come from ``backend.tiny``: the tiny model,
or the full Stable Diffusion 1.5 architecture from its published configs with random weights saved
as fp16 safetensors in a temp folder, so nothing is downloaded.

``--device cuda`` measures, in this order (sections that would overrun ``--budget`` are skipped
and say so): the time to read the weight bytes; cold start of a worker process to READY (page cache
dropped for the weight files), with its breakdown; 512x512 over HTTP at concurrency 1 and 4 with
batching on, and at 4 with batching off (another cold start, page cache warm); in this process the
plain diffusers default (fp16, the model's own PNDM scheduler, 50 steps) against the project's
settings (DPM-Solver++, channels-last, SDPA) at 25 and 50 steps; images/s at batch 1, 4 and 8;
upscale (1024x1024 from 512x512) and vary against the 512x512 generation at 25 steps; then
``IMAGINE_COMPILE=1``: compile time, compiled latency, and a cold start that reuses the compile cache.
It needs PyTorch with CUDA and the project's dependencies (diffusers, transformers, fastapi,
uvicorn, httpx, ...), nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import percentile  # noqa: E402

sys.path.insert(0, str(ROOT))

KEY = "bench-key"
PROMPT = "a lighthouse at dusk, oil painting, dramatic clouds"


# --- helpers -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def evict(folder: Path) -> None:
    """Drop the weight files from the page cache (no root needed), so the next read is from disk."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def read_weights(folder: Path) -> tuple[float, int]:
    """Seconds to read every safetensors byte of the model, and how many bytes."""
    started = time.perf_counter()
    total = 0
    buffer = bytearray(16 * 2**20)
    view = memoryview(buffer)
    for path in sorted(folder.rglob("*.safetensors")):
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return time.perf_counter() - started, total


@dataclass
class Report:
    device: str
    sections: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def add(self, section: str, label: str, value: str, key: str | None = None, raw: Any = None) -> None:
        self.sections.setdefault(section, []).append((label, value))
        if key is not None:
            self.figures[key] = raw
        print(f"  {label}: {value}", flush=True)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def table(self) -> str:
        lines = []
        for section, rows in self.sections.items():
            lines += ["", f"### {section}", "", "| measure | value |", "|---|---|"]
            lines += [f"| {label} | {value} |" for label, value in rows]
        return "\n".join(lines)


# --- a worker process --------------------------------------------------------------------------------


class WorkerProcess:
    """``python imagine.py worker`` on a free loopback port, with its own environment."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGINE_", "REPLICATE_"))}
        base.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        base.update(IMAGINE_BACKEND_API_KEY=KEY, IMAGINE_DB=str(log_path.parent / "unused.sqlite3"))
        base.update(env)
        self.log = open(log_path, "w")  # closed in stop()
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "imagine.py"),
                "worker",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=base,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_for(
        self, done: Callable[[dict[str, Any]], bool], timeout: float
    ) -> tuple[float, dict[str, Any]]:
        """Poll the health check until ``done(health)``; seconds since the process started, and the health."""
        import httpx

        deadline = time.perf_counter() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited with {self.process.returncode}; see {self.log.name}")
            try:
                health: dict[str, Any] = httpx.get(f"{self.url}/health-check", timeout=2).json()
                if health["status"] == "SETUP_FAILED":
                    raise RuntimeError(f"worker setup failed: {health['setup']['error']}")
                if done(health):
                    return time.perf_counter() - self.started, health
            except httpx.HTTPError:
                pass
            if time.perf_counter() > deadline:
                raise TimeoutError(f"the worker was not ready in {timeout:.0f} s; see {self.log.name}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@contextlib.contextmanager
def worker(env: dict[str, str], log_path: Path) -> Iterator[WorkerProcess]:
    process = WorkerProcess(env, log_path)
    try:
        yield process
    finally:
        process.stop()


def cold_start(w: WorkerProcess, timeout: float) -> tuple[float, dict[str, float]]:
    seconds, health = w.wait_for(lambda h: h["status"] == "READY", timeout)
    return seconds, health["cold_start"]


# --- load over HTTP ---------------------------------------------------------------------------------


async def load_test(url: str, concurrency: int, requests: int, inp: dict[str, Any]) -> dict[str, float]:
    """``requests`` predictions from ``concurrency`` clients, each sending its next one when the last
    comes back (409/503 are retried after Retry-After, as the gateway does). Latency per prediction."""
    import httpx

    latencies: list[float] = []
    batch_sizes: list[float] = []
    retries = 0
    queue = list(range(requests))

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal retries
        while queue:
            seed = queue.pop(0)
            started = time.perf_counter()
            while True:
                response = await client.post(
                    f"{url}/predictions", json={"input": {**inp, "prompt": PROMPT, "seed": 1000 + seed}}
                )
                if response.status_code in (409, 503):
                    retries += 1
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                    continue
                break
            data = response.json()
            if response.status_code != 200 or data["status"] != "succeeded":
                raise RuntimeError(f"prediction failed: {response.status_code} {data}")
            latencies.append(time.perf_counter() - started)
            batch_sizes.append(data["metrics"].get("batch_size", 1.0))

    headers = {"Authorization": f"Bearer {KEY}"}
    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(headers=headers, timeout=600, limits=limits) as client:
        # One unmeasured prediction with these settings first (the warm-up used others).
        await client.post(f"{url}/predictions", json={"input": {**inp, "prompt": PROMPT, "seed": 1}})
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    images = requests * inp.get("num_outputs", 1)
    return {
        "p50": statistics.median(latencies),
        "p99": percentile(latencies, 99),
        "images_per_s": images / wall,
        "mean_batch": statistics.fmean(batch_sizes),
        "retries": float(retries),
        "n": float(requests),
    }


def http_section(
    report: Report,
    section: str,
    env: dict[str, str],
    logs: Path,
    levels: list[tuple[int, int]],
    inp: dict[str, Any],
    label: str,
    ready_timeout: float,
) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    with worker(env, logs / f"worker-{label.replace(' ', '-')}.log") as w:
        seconds, _ = cold_start(w, ready_timeout)
        report.add(section, f"{label}: process start to READY", f"{seconds:.1f} s")
        for concurrency, requests in levels:
            r = asyncio.run(load_test(w.url, concurrency, requests, inp))
            out[concurrency] = r
            report.add(
                section,
                f"{label}, concurrency {concurrency}",
                f"p50 {r['p50']:.2f} s, p99 {r['p99']:.2f} s, {r['images_per_s']:.2f} images/s "
                f"(n={int(r['n'])}, mean batch {r['mean_batch']:.1f}, retries {int(r['retries'])}, "
                f"load average {os.getloadavg()[0]:.1f})",
                key=f"http.{label}.c{concurrency}",
                raw=r,
            )
    return out


# --- CPU ---------------------------------------------------------------------------------------------


def run_cpu(args: argparse.Namespace, report: Report, work: Path) -> None:
    global GPU
    GPU = "cpu"  # measure_actions times in this process
    size, steps = (256, 2) if args.quick else (args.size, args.steps)
    inp = {"width": size, "height": size, "num_inference_steps": steps}
    levels = [(1, 2), (2, 2)] if args.quick else [(c, max(args.requests, 2 * c)) for c in (1, 4, 8)]
    section = f"Tiny model over HTTP, {size}x{size}, {steps} steps (CPU)"
    results = {}
    for label, batch in (("batching on", args.max_batch), ("batching off", 1)):
        env = {"IMAGINE_MODEL": "tiny", "IMAGINE_MAX_BATCH": str(batch), "IMAGINE_BATCH_WAIT_MS": "20"}
        if args.cache_dir:
            env["IMAGINE_CACHE_DIR"] = args.cache_dir
        results[label] = http_section(report, section, env, work, levels, inp, label, 300)
    for concurrency, _ in levels:
        on, off = results["batching on"][concurrency], results["batching off"][concurrency]
        ratio = on["images_per_s"] / off["images_per_s"]
        report.add(section, f"batching on / off, concurrency {concurrency}", f"{ratio:.2f}x images/s")
    from backend.pipeline import DiffusionRunner

    measure_actions(
        report,
        f"Image actions, tiny model, {steps} steps, in process (CPU)",
        DiffusionRunner.load("tiny", "cpu", cache_dir=Path(args.cache_dir) if args.cache_dir else None),
        size,
        steps,
        1 if args.quick else args.runs,
        "cpu.actions",
    )
    if not args.quick:
        full_size_load(report, work, "cpu", args)


def full_size_load(report: Report, work: Path, device: str, args: argparse.Namespace) -> Path:
    """Build SD 1.5 with random fp16 weights; time reading its bytes and a worker loading them."""
    import torch

    from backend.tiny import build_random_model

    section = f"Full-size SD 1.5 architecture, random fp16 safetensors ({device.upper()})"
    folder = work / "sd15"
    started = time.perf_counter()
    build_random_model(folder, "sd15", torch.float16)
    built = time.perf_counter() - started
    size_gb = sum(p.stat().st_size for p in folder.rglob("*.safetensors")) / 1e9
    report.add(
        section, "weights on disk (built here, not timed as load)", f"{size_gb:.2f} GB in {built:.0f} s"
    )
    evict(folder)
    cold_read, nbytes = read_weights(folder)
    warm_read, _ = read_weights(folder)
    report.add(
        section,
        "read the weight bytes, page cache dropped",
        f"{cold_read:.2f} s ({nbytes / 1e9 / cold_read:.2f} GB/s)",
        key=f"{device}.read_cold",
        raw=cold_read,
    )
    report.add(
        section,
        "read them again (page cache)",
        f"{warm_read:.2f} s",
        key=f"{device}.read_warm",
        raw=warm_read,
    )
    evict(folder)
    env = {"IMAGINE_MODEL": str(folder)}
    with worker(env, work / f"worker-sd15-{device}.log") as w:
        if device == "cpu":
            # A full-size generation on this CPU takes minutes: stop at the warm-up, whose
            # start means the weights are loaded and on the device.
            seconds, health = w.wait_for(
                lambda h: h["status"] == "READY" or h["setup"]["phase"] == "warming up", 900
            )
            what = "process start to weights loaded (READY minus the warm-up image)"
        else:
            seconds, health = w.wait_for(lambda h: h["status"] == "READY", 600)
            what = "process start to READY (page cache dropped)"
        report.add(section, what, f"{seconds:.1f} s", key=f"{device}.cold_start", raw=seconds)
        cold = health["cold_start"]
        parts = ", ".join(
            f"{k} {cold[k]:.2f} s"
            for k in ("imports", "weights", "to_device", "compile", "warmup")
            if k in cold
        )
        report.add(
            section, "where it went (the worker's /health-check)", parts, key=f"{device}.breakdown", raw=cold
        )
        report.add(
            section,
            "load / just reading the bytes",
            f"{seconds / cold_read:.1f}x",
            key=f"{device}.load_over_read",
            raw=seconds / cold_read,
        )
    return folder


# --- CUDA --------------------------------------------------------------------------------------------


# Where the "CUDA" sections run: "cuda", or "cpu" for --dry-run, which walks the same code with the
# tiny model so a GPU session is not spent finding a typo.
GPU = "cuda"


def sync() -> None:
    import torch

    if GPU == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        sync()
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return times


def free_cuda() -> None:
    import torch

    gc.collect()
    if GPU == "cuda":
        torch.cuda.empty_cache()


LATENCY = "512x512 latency, warm, in process (CUDA)"


def measure_plain_default(report: Report, folder: Path, runs: int) -> None:
    """What a user of diffusers gets by default: fp16, the model's own scheduler, 50 steps."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipeline_class: Any = StableDiffusionPipeline
    dtype = torch.float16 if GPU == "cuda" else torch.float32
    pipe = pipeline_class.from_pretrained(str(folder), torch_dtype=dtype).to(GPU)
    pipe.set_progress_bar_config(disable=True)

    def call(steps: int) -> None:
        pipe(
            PROMPT,
            num_inference_steps=steps,
            guidance_scale=7.5,
            generator=torch.Generator("cpu").manual_seed(0),
        )

    call(2)
    t = timed(functools.partial(call, 50), runs)
    report.add(
        LATENCY,
        f"plain diffusers default: fp16, {type(pipe.scheduler).__name__}, 50 steps",
        f"{statistics.median(t):.3f} s (median of {len(t)})",
        key="cuda.plain_50",
        raw=t,
    )


def measure_project(report: Report, settings: Any, runs: int) -> None:
    """The worker's own loader and runner: DPM-Solver++, channels-last, SDPA, PNG bytes out."""
    from backend.worker import pipeline_loader
    from gateway.request import ImageRequest

    runner = pipeline_loader(settings, device=GPU)(print).runner

    def generate(n: int, steps: int) -> Any:
        return runner([ImageRequest(PROMPT, steps=steps, seed=i) for i in range(n)])

    generate(1, 2)
    for steps in (25, 50):
        t = timed(functools.partial(generate, 1, steps), runs)
        timings = generate(1, steps)[0].timings
        report.add(
            LATENCY,
            f"project: DPM-Solver++, {steps} steps (to PNG bytes)",
            f"{statistics.median(t):.3f} s (median of {len(t)}; denoise {timings['denoise_time']:.3f} s, "
            f"decode+PNG {timings['decode_time']:.3f} s)",
            key=f"cuda.project_{steps}",
            raw=t,
        )
    section = "Images/s by batch size, 512x512, 25 steps, in process (CUDA)"
    for n in (1, 4, 8):
        generate(n, 2)
        t = timed(functools.partial(generate, n, 25), max(2, runs // 2))
        report.add(
            section, f"batch {n}", f"{n / statistics.median(t):.2f} images/s", key=f"cuda.batch_{n}", raw=t
        )


def measure_compiled(report: Report, settings: Any, runs: int) -> None:
    from backend.worker import pipeline_loader
    from gateway.request import ImageRequest

    section = "IMAGINE_COMPILE=1 (CUDA)"
    loaded = pipeline_loader(settings.with_overrides(compile=True), device=GPU)(print)
    compile_seconds = loaded.timings["compile"]
    report.add(
        section,
        "compile (first generation, cache empty)",
        f"{compile_seconds:.1f} s",
        key="cuda.compile",
        raw=compile_seconds,
    )

    def generate(steps: int) -> Any:
        return loaded.runner([ImageRequest(PROMPT, steps=steps, seed=0)])

    for steps in (25, 50):
        generate(steps)
        t = timed(functools.partial(generate, steps), runs)
        report.add(
            section,
            f"compiled, {steps} steps",
            f"{statistics.median(t):.3f} s",
            key=f"cuda.compiled_{steps}",
            raw=t,
        )


def measure_actions(
    report: Report, section: str, runner: Any, size: int, steps: int, runs: int, key: str
) -> None:
    """Upscale (2x each side) and vary against the size x size generation they start from, same steps."""
    import io

    from PIL import Image

    from gateway.request import ImageRequest

    def text() -> Any:
        return runner.generate([ImageRequest(PROMPT, width=size, height=size, steps=steps, seed=1)])[0]

    source = Image.open(io.BytesIO(text().images[0])).convert("RGB")

    def png(image: Any) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    big = png(source.resize((2 * size, 2 * size), Image.Resampling.LANCZOS))
    actions: dict[str, Callable[[], Any]] = {f"generate {size}x{size}": text}
    for label, kind, strength, side, picture in (
        (f"upscale to {2 * size}x{2 * size} (strength 0.3)", "upscale", 0.3, 2 * size, big),
        ("vary subtle (strength 0.35)", "vary", 0.35, size, png(source)),
        ("vary strong (strength 0.7)", "vary", 0.7, size, png(source)),
    ):
        request = ImageRequest(
            PROMPT,
            width=side,
            height=side,
            steps=steps,
            seed=2,
            kind=kind,
            strength=strength,
            init_image=picture,
        )
        actions[label] = functools.partial(runner.generate, [request])
    medians: dict[str, float] = {}
    for label, action in actions.items():
        action()  # warm: the img2img pipeline object, allocations at this size
        medians[label] = statistics.median(timed(action, runs))
    base = medians[f"generate {size}x{size}"]
    for (label, seconds), name in zip(
        medians.items(), ("text", "upscale", "vary_subtle", "vary_strong"), strict=True
    ):
        target = " (target under 1.5x)" if name == "upscale" and key.startswith("cuda") else ""
        report.add(
            section,
            label,
            f"{seconds:.3f} s, {seconds / base:.2f}x the generation{target}",
            key=f"{key}.{name}",
            raw={"seconds": seconds, "ratio": seconds / base},
        )


def run_cuda(args: argparse.Namespace, report: Report, work: Path) -> None:
    import torch

    from gateway.settings import Settings

    global GPU
    if args.dry_run:
        GPU = "cpu"
        report.add("Machine", "GPU", "none: --dry-run walks the CUDA sections on the CPU with the tiny model")
    else:
        assert torch.cuda.is_available(), "--device cuda needs a GPU that PyTorch can see"
        report.add("Machine", "GPU", torch.cuda.get_device_name(0))
        report.add("Machine", "torch / CUDA", f"{torch.__version__} / {torch.version.cuda}")
    budget = args.budget

    def left() -> float:
        return float(budget - report.elapsed)

    os.environ["IMAGINE_CACHE_DIR"] = str(work / "cache")  # the compile cache, shared with the workers
    # 1-2. Weights and cold start (page cache dropped).
    if args.dry_run:
        from backend.tiny import tiny_model_path

        folder = tiny_model_path(Path(args.cache_dir) if args.cache_dir else None)
    else:
        folder = full_size_load(report, work, "cuda", args)

    # 3. Over HTTP: batching on at concurrency 1 and 4, off at 4.
    section = "SD 1.5 over HTTP, 512x512, 25 steps DPM-Solver++ (CUDA)"
    inp = {"width": 512, "height": 512, "num_inference_steps": 25}
    levels_on, levels_off = [(1, 8), (4, 16)], [(4, 16)]
    if args.dry_run:
        inp = {"width": 256, "height": 256, "num_inference_steps": 2}
        levels_on, levels_off = [(1, 2), (4, 4)], [(4, 4)]
    env = {"IMAGINE_MODEL": str(folder), "IMAGINE_CACHE_DIR": str(work / "cache")}
    if left() > 120:
        on = http_section(
            report, section, {**env, "IMAGINE_MAX_BATCH": "8"}, work, levels_on, inp, "batching on", 300
        )
        off = http_section(
            report, section, {**env, "IMAGINE_MAX_BATCH": "1"}, work, levels_off, inp, "batching off", 300
        )
        ratio = on[4]["images_per_s"] / off[4]["images_per_s"]
        report.add(
            section,
            "batching on / off at concurrency 4",
            f"{ratio:.2f}x images/s (target 1.3x)",
            key="cuda.batching_gain",
            raw=ratio,
        )
    else:
        report.add(section, "skipped", "time budget")

    # 4. In this process: the plain diffusers default against the project's settings.
    settings = Settings.from_env({"IMAGINE_MODEL": str(folder)}, env_file=None)
    measure_plain_default(report, folder, args.runs)
    free_cuda()
    measure_project(report, settings, args.runs)
    free_cuda()
    from backend.pipeline import DiffusionRunner

    size, steps = (256, 2) if args.dry_run else (512, 25)
    measure_actions(
        report,
        f"Image actions, {steps} steps, in process (CUDA)",
        DiffusionRunner.load(str(folder), GPU),
        size,
        steps,
        args.runs,
        "cuda.actions",
    )
    free_cuda()

    # 5. IMAGINE_COMPILE=1: compile once (cached), the compiled speed, a cold start from the cache.
    section = "IMAGINE_COMPILE=1 (CUDA)"
    if left() < 240:
        report.add(section, "skipped", f"time budget ({left():.0f} s left)")
        return
    measure_compiled(report, settings, args.runs)
    free_cuda()
    if left() < 150:
        report.add(
            section, "cold start with the compile cache", f"skipped: time budget ({left():.0f} s left)"
        )
        return
    with worker({**env, "IMAGINE_COMPILE": "1"}, work / "worker-compiled.log") as w:
        seconds, cold = cold_start(w, max(60.0, left() - 20))
    report.add(
        section,
        "cold start to READY, compile cache warm",
        f"{seconds:.1f} s (compile {cold.get('compile', 0):.1f} s, warm-up {cold.get('warmup', 0):.1f} s)",
        key="cuda.cold_start_compiled",
        raw=cold,
    )


# --- main --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes and counts")
    parser.add_argument("--size", type=int, default=512, help="CPU: image side for the tiny model")
    parser.add_argument("--steps", type=int, default=10, help="CPU: steps for the tiny model")
    parser.add_argument(
        "--requests", type=int, default=8, help="CPU: predictions per concurrency level (at least 2x it)"
    )
    parser.add_argument("--max-batch", type=int, default=4, help="IMAGINE_MAX_BATCH for 'batching on'")
    parser.add_argument("--runs", type=int, default=5, help="CUDA: timed runs per latency figure")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="with --device cuda: walk every CUDA section on this CPU, tiny model (a check, no figures)",
    )
    parser.add_argument("--budget", type=float, default=450, help="CUDA: seconds the whole run may take")
    parser.add_argument("--cache-dir", help="IMAGINE_CACHE_DIR for the tiny model (default: the usual)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    report = Report(args.device)
    report.add(
        "Machine",
        "platform",
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    report.add("Machine", "load average at start", f"{load:.1f}")
    work = Path(tempfile.mkdtemp(prefix="imagine-bench-worker-"))
    try:
        if args.device == "cuda":
            run_cuda(args, report, work)
        else:
            run_cpu(args, report, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.add("Machine", "whole run", f"{report.elapsed:.0f} s")
    print("\n## bench/worker.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps(report.figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
