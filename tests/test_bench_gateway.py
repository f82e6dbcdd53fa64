"""The gateway benchmark keeps running (a quick pass; its figures live in BENCHMARKS.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_gateway_quick_run_prints_the_table() -> None:
    out = subprocess.run(
        [sys.executable, "bench/gateway.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    assert "| users | concurrency | accepted+settled req/s |" in out
    assert out.count("\n| 1") + out.count("\n| 1000") >= 6
