"""bench/worker_memory.py keeps working: a tiny soak of this tree's worker ends with its table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_memory_bench_smoke_run_prints_its_table(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGINE_")}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "worker_memory.py"),
            *("--predictions", "2", "--size", "256", "--outputs", "1", "--json", str(figures)),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| this tree | 2 |" in done.stdout
    (row,) = json.loads(figures.read_text())
    assert row["rss_after_mb"] > 0 and row["kept"].startswith("2 (")
