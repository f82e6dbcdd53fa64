"""bench/fair_turns.py keeps running (a quick pass; its figures live in BENCHMARKS.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_fair_turns_quick_run_prints_both_orders() -> None:
    out = subprocess.run(
        [sys.executable, "bench/fair_turns.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "| order | light p50 wait ms | light p95 wait ms |" in out
    assert "| arrival (FIFO, before) |" in out and "| fair turns (DRR by user) |" in out
    assert "Light users' p95 wait: FIFO / fair = " in out
