"""Finished web images, within a byte budget and a lifetime, instead of in process memory.

The web front keeps a job's PNGs in an :class:`ImageStore` from the moment they are made until they
expire, so memory stays flat however many jobs wait for their download, and an image survives a
restart of the process. Where depends on the store (:func:`open_image_store`): on SQLite (one host)
a folder under the data folder (:class:`FolderImages`); on PostgreSQL the database itself
(:class:`DatabaseImages`), so that a job made on one host is downloaded from any other, and the
budget and lifetime hold across hosts.
"""

from __future__ import annotations

import asyncio
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
from typing import Protocol

from storage import Database

log = logging.getLogger("imagine.images")


@dataclass
class _Entry:
    size: int
    count: int
    created: float


class ImageStore(Protocol):
    """PNGs by job id; the oldest go first past the byte budget or the lifetime."""

    #: PNG bytes stored (the database's as of its last sweep).
    stored_bytes: int

    async def put(self, job_id: str, images: list[bytes]) -> None:
        """All images of a job at once: never half there."""

    async def count(self, job_id: str) -> int: ...

    async def get(self, job_id: str, index: int) -> bytes | None:
        """One image (one in memory at a time), or None when it is not (or no longer) kept."""

    async def delete(self, job_id: str) -> None:
        """The job was refunded: its images are served nowhere any more."""

    async def sweep(self) -> int:
        """Drop the expired, then the oldest past the budget; returns how many went."""


def open_image_store(db: Database, folder: Path, *, budget_bytes: int, ttl_seconds: float) -> ImageStore:
    """The database on PostgreSQL (every host serves every image); ``folder`` on SQLite (one host)."""
    if db.kind == "postgresql":
        return DatabaseImages(db, budget_bytes=budget_bytes, ttl_seconds=ttl_seconds)
    return FolderImages(folder, budget_bytes=budget_bytes, ttl_seconds=ttl_seconds).open()


class DatabaseImages:
    """PNGs in the store's ``web_images`` table, where every host sharing it can serve them."""

    def __init__(
        self,
        db: Database,
        *,
        budget_bytes: int,
        ttl_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.budget_bytes = budget_bytes
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self.stored_bytes = 0

    async def put(self, job_id: str, images: list[bytes]) -> None:
        await self.db.put_web_images(job_id, images, now=self.clock())

    async def count(self, job_id: str) -> int:
        return await self.db.count_web_images(job_id)

    async def get(self, job_id: str, index: int) -> bytes | None:
        return await self.db.web_image(job_id, index)

    async def delete(self, job_id: str) -> None:
        await self.db.delete_web_images(job_id)

    async def sweep(self) -> int:
        """Every host sweeps every host's images; whichever comes first does the work."""
        gone = await self.db.sweep_web_images(
            now=self.clock(), ttl_seconds=self.ttl_seconds, budget_bytes=self.budget_bytes
        )
        self.stored_bytes = await self.db.web_images_bytes()
        return gone


class FolderImages:
    """PNGs by job id under ``root``; the oldest go first past ``budget_bytes`` or ``ttl_seconds``.

    The file I/O runs on a worker thread. Files are named by a hash of the job id: nothing a user
    sends becomes a path.
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
        self.stored_bytes = 0

    def open(self) -> FolderImages:
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
                self.stored_bytes += entry.size
        return self

    @staticmethod
    def _key(job_id: str) -> str:
        return hashlib.sha256(job_id.encode()).hexdigest()[:40]

    async def put(self, job_id: str, images: list[bytes]) -> None:
        await asyncio.to_thread(self._put, job_id, images)

    async def count(self, job_id: str) -> int:
        entry = self._entries.get(self._key(job_id))
        return entry.count if entry is not None else 0

    async def get(self, job_id: str, index: int) -> bytes | None:
        return await asyncio.to_thread(self._get, job_id, index)

    async def delete(self, job_id: str) -> None:
        await asyncio.to_thread(self._delete, job_id)

    async def sweep(self) -> int:
        return await asyncio.to_thread(self._sweep)

    def _put(self, job_id: str, images: list[bytes]) -> None:
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
            self.stored_bytes += size
        self._sweep()

    def _get(self, job_id: str, index: int) -> bytes | None:
        key = self._key(job_id)
        entry = self._entries.get(key)
        if entry is None or not 0 <= index < entry.count:
            return None
        try:
            return (self.root / key / f"{index}.png").read_bytes()
        except FileNotFoundError:
            return None  # dropped a moment ago

    def _delete(self, job_id: str) -> None:
        key = self._key(job_id)
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return
            self.stored_bytes -= entry.size
        shutil.rmtree(self.root / key, ignore_errors=True)

    def _sweep(self) -> int:
        """Drop expired folders, then the oldest while over the budget; returns how many went."""
        now = self.clock()
        doomed = []
        with self._lock:
            for key, entry in list(self._entries.items()):
                if now - entry.created < self.ttl_seconds and self.stored_bytes <= self.budget_bytes:
                    break
                del self._entries[key]
                self.stored_bytes -= entry.size
                doomed.append(key)
        for key in doomed:
            shutil.rmtree(self.root / key, ignore_errors=True)
        return len(doomed)

    def __len__(self) -> int:
        return len(self._entries)
