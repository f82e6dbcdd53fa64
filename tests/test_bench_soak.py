"""A short soak of `imagine web` with 1 MB images: memory stays bounded and every credit is accounted for.

The full 20,000-job run is `python bench/soak.py`; its figures live in BENCHMARKS.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_short_soak_keeps_memory_flat_and_the_ledger_whole() -> None:
    done = subprocess.run(
        [sys.executable, "bench/soak.py", "--jobs", "300"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| ledger problems | 0 |" in done.stdout
    assert "goal: RSS under 300 MiB and every credit accounted for: met" in done.stdout
