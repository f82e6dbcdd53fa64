"""bench/worker.py keeps working: its CPU smoke run (tiny model, tiny counts) ends with its table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_bench(*args: str) -> str:
    """Run bench/worker.py as a user would (no IMAGINE_* settings leaking in); return its table."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGINE_")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "worker.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout[done.stdout.index("## bench/worker.py") :]


@pytest.mark.slow
def test_the_worker_bench_smoke_run_prints_its_table(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    table = run_bench("--quick", "--cache-dir", str(tmp_path / "models"), "--json", str(figures))
    assert "| batching on, concurrency 1 | p50 " in table
    assert "| batching off, concurrency 2 | p50 " in table
    assert "| batching on / off, concurrency 2 |" in table
    assert "| upscale to 512x512 (strength 0.3) | " in table and "| vary strong (strength 0.7) | " in table
    data = json.loads(figures.read_text())
    for key in ("http.batching on.c1", "http.batching on.c2", "http.batching off.c1", "http.batching off.c2"):
        assert data[key]["images_per_s"] > 0
        assert data[key]["p50"] <= data[key]["p99"]


def test_the_cuda_mode_is_wired(tmp_path: Path) -> None:
    """No GPU here: the CUDA path is checked for what it would run, not run."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "worker.py"), "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    assert "--device {cpu,cuda}" in done.stdout and "--budget" in done.stdout


@pytest.mark.slow
def test_the_cuda_sections_walk_on_the_cpu_with_dry_run(tmp_path: Path) -> None:
    """The GPU run happens rarely and on a short lease: walk its code here so it cannot rot.

    The budget leaves out the compile sections (a CPU compile takes about a minute); they were
    walked by hand with --budget 450.
    """
    table = run_bench(
        "--device",
        "cuda",
        "--dry-run",
        "--runs",
        "1",
        "--budget",
        "200",
        "--cache-dir",
        str(tmp_path / "models"),
    )
    for row in (
        "| batching on / off at concurrency 4 |",
        "| plain diffusers default: fp16, PNDMScheduler, 50 steps |",
        "| project: DPM-Solver++, 25 steps (to PNG bytes) |",
        "| batch 8 |",
    ):
        assert row in table, table
