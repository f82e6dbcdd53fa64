"""Finished web images in the store, where every host sharing it can serve them.

The web front keeps a job's PNGs here on PostgreSQL (several hosts); on SQLite (one host) it keeps
them in a folder instead (``gateway/images.py``), but the operations read the same on both engines.
Each is one statement committed alone: a job's images go in together or not at all, and a sweep by
any host applies the lifetime and the byte budget to every host's images. An image is read one at
a time, so a download holds one PNG in memory, never a job's or the table's.
"""

from __future__ import annotations

from storage.sql import Conn


def put_web_images(c: Conn, job_id: str, images: list[bytes], *, now: float) -> bool:
    """All images of a job in one statement; False when they were stored already (or there are none)."""
    if not images:
        return False
    rows = ", ".join(["(?, ?, ?, ?, ?)"] * len(images))
    parameters = [value for n, png in enumerate(images) for value in (job_id, n, png, len(png), now)]
    cur = c.execute(
        f"INSERT INTO web_images (job_id, image_index, png, bytes, created_at) VALUES {rows} "
        "ON CONFLICT (job_id, image_index) DO NOTHING",
        parameters,
    )
    return cur.rowcount > 0


def count_web_images(c: Conn, job_id: str) -> int:
    row = c.execute("SELECT COUNT(*) AS n FROM web_images WHERE job_id = ?", (job_id,)).fetchone()
    return int(row["n"])


def web_image(c: Conn, job_id: str, index: int) -> bytes | None:
    """Image ``index`` of a job as PNG, or None when it is not (or no longer) stored."""
    row = c.execute(
        "SELECT png FROM web_images WHERE job_id = ? AND image_index = ?", (job_id, index)
    ).fetchone()
    return None if row is None else bytes(row["png"])


def delete_web_images(c: Conn, job_id: str) -> int:
    """Drop a job's images (refunded: served nowhere any more); how many went."""
    return c.execute("DELETE FROM web_images WHERE job_id = ?", (job_id,)).rowcount


def sweep_web_images(c: Conn, *, now: float, ttl_seconds: float, budget_bytes: int) -> int:
    """Drop images older than ``ttl_seconds``, then whole jobs, oldest first, while the images
    take more than ``budget_bytes``; returns how many images went."""
    expired = c.execute("DELETE FROM web_images WHERE created_at <= ?", (now - ttl_seconds,)).rowcount
    over_budget = c.execute(
        "DELETE FROM web_images WHERE job_id IN (SELECT job_id FROM ("
        " SELECT job_id, SUM(total) OVER (ORDER BY created_at DESC, job_id DESC) AS newer_and_this"
        " FROM (SELECT job_id, MIN(created_at) AS created_at, SUM(bytes) AS total"
        "  FROM web_images GROUP BY job_id) AS stored"
        ") AS newest_first WHERE newer_and_this > ?)",
        (budget_bytes,),
    ).rowcount
    return max(expired, 0) + max(over_budget, 0)


def web_images_bytes(c: Conn) -> int:
    """PNG bytes stored across every host."""
    return int(c.execute("SELECT COALESCE(SUM(bytes), 0) AS n FROM web_images").fetchone()["n"])
