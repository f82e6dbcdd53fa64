"""A fixture for the tests that run the tiny model in this process (imported where used: it loads torch)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The tiny model's layers are too small to share between threads; on a busy two-core box,
    two threads spend most of a step waiting for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
