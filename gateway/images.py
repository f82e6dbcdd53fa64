"""Finished images on disk, within a byte budget and a lifetime, instead of in process memory.

The web front keeps a job's PNGs here from the moment they are made until they expire, so memory
stays flat however many jobs wait for their download, and an image survives a restart of the
process (its job was settled before the first byte was served). Files are named by a hash of the
job id: nothing a user sends becomes a path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("imagine.images")


@dataclass
class _Entry:
    size: int
    count: int
    created: float


class ImageStore:
    """PNGs by job id under ``root``; the oldest go first past ``budget_bytes`` or ``ttl_seconds``.

    Its methods do file I/O: call them through ``asyncio.to_thread`` from the event loop.
    """

    def __init__(
        self,
        root: Path,
        *,
        budget_bytes: int,
        ttl_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.budget_bytes = budget_bytes
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # oldest first
        self._lock = threading.Lock()
        self.bytes = 0

    def open(self) -> ImageStore:
        """Index what an earlier run left (oldest first); drop half-written folders."""
        self.root.mkdir(parents=True, exist_ok=True)
        found = []
        for folder in self.root.iterdir():
            if folder.name.endswith(".tmp") or not folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
                continue
            files = sorted(folder.glob("*.png"))
            size = sum(f.stat().st_size for f in files)
            found.append(
                (folder.stat().st_mtime, folder.name, _Entry(size, len(files), folder.stat().st_mtime))
            )
        with self._lock:
            for _, key, entry in sorted(found):
                self._entries[key] = entry
                self.bytes += entry.size
        return self

    @staticmethod
    def _key(job_id: str) -> str:
        return hashlib.sha256(job_id.encode()).hexdigest()[:40]

    def put(self, job_id: str, images: list[bytes]) -> None:
        """Write all images of a job at once (a folder renamed into place: never half there)."""
        key = self._key(job_id)
        final = self.root / key
        temporary = self.root / f"{key}.{os.getpid()}.{threading.get_ident()}.tmp"
        temporary.mkdir(parents=True, exist_ok=True)
        for index, png in enumerate(images):
            (temporary / f"{index}.png").write_bytes(png)
        size = sum(len(png) for png in images)
        with self._lock:
            if key in self._entries:
                shutil.rmtree(temporary, ignore_errors=True)
                return
            temporary.rename(final)
            self._entries[key] = _Entry(size, len(images), self.clock())
            self.bytes += size
        self.sweep()

    def count(self, job_id: str) -> int:
        entry = self._entries.get(self._key(job_id))
        return entry.count if entry is not None else 0

    def get(self, job_id: str, index: int) -> bytes | None:
        key = self._key(job_id)
        entry = self._entries.get(key)
        if entry is None or not 0 <= index < entry.count:
            return None
        try:
            return (self.root / key / f"{index}.png").read_bytes()
        except FileNotFoundError:
            return None  # dropped a moment ago

    def delete(self, job_id: str) -> None:
        key = self._key(job_id)
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return
            self.bytes -= entry.size
        shutil.rmtree(self.root / key, ignore_errors=True)

    def sweep(self) -> int:
        """Drop expired folders, then the oldest while over the budget; returns how many went."""
        now = self.clock()
        doomed = []
        with self._lock:
            for key, entry in list(self._entries.items()):
                if now - entry.created < self.ttl_seconds and self.bytes <= self.budget_bytes:
                    break
                del self._entries[key]
                self.bytes -= entry.size
                doomed.append(key)
        for key in doomed:
            shutil.rmtree(self.root / key, ignore_errors=True)
        return len(doomed)

    def __len__(self) -> int:
        return len(self._entries)
