"""What the bench scripts measure alike: percentiles, a process's memory, whether it loaded torch."""

from __future__ import annotations

from pathlib import Path


def percentile(values: list[float], pct: float) -> float:
    """The nearest-rank percentile (p99 of 100 values is the 99th smallest)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def rss_mib(pid: int) -> float:
    import psutil

    return float(psutil.Process(pid).memory_info().rss) / 2**20


def torch_loaded(pid: int) -> bool:
    """Whether any torch library is mapped into the process (an import of torch maps libtorch)."""
    return "torch" in Path(f"/proc/{pid}/maps").read_text()
