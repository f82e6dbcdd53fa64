"""The web front's image store (gateway/images.py): chosen by engine, the same answers from both."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.images import DatabaseImages, FolderImages, ImageStore, open_image_store
from gateway.settings import Settings
from storage import Database


@pytest.fixture
async def db(engine_settings: Settings) -> AsyncIterator[Database]:
    store = await Database.open(engine_settings.store)
    yield store
    await store.close()


async def test_the_engine_chooses_where_images_wait(db: Database, engine_settings: Settings) -> None:
    images = open_image_store(db, engine_settings.data_dir / "web-images", budget_bytes=100, ttl_seconds=60)
    expected = DatabaseImages if db.kind == "postgresql" else FolderImages
    assert isinstance(images, expected)


@pytest.mark.parametrize("kind", ["folder", "database"])
async def test_both_stores_keep_budget_and_lifetime_alike(
    db: Database, engine_settings: Settings, kind: str
) -> None:
    now = [1000.0]
    images: ImageStore
    if kind == "folder":
        images = FolderImages(
            engine_settings.data_dir / "web-images", budget_bytes=250, ttl_seconds=60, clock=lambda: now[0]
        ).open()
    else:
        images = DatabaseImages(db, budget_bytes=250, ttl_seconds=60, clock=lambda: now[0])
    await images.put("web:1", [b"a" * 100, b"b" * 50])
    assert await images.count("web:1") == 2
    assert await images.get("web:1", 1) == b"b" * 50
    assert await images.get("web:1", 2) is None
    now[0] += 10
    await images.put("web:2", [b"c" * 100])
    await images.sweep()
    assert await images.count("web:1") == 2 and images.stored_bytes == 250
    now[0] += 10
    await images.put("web:3", [b"d" * 100])  # 350 bytes: the oldest job goes
    await images.sweep()
    assert [await images.count(f"web:{n}") for n in (1, 2, 3)] == [0, 1, 1]
    await images.delete("web:3")
    assert await images.get("web:3", 0) is None
    now[0] += 55  # web:2 is 65 s old
    await images.sweep()
    assert await images.count("web:2") == 0 and images.stored_bytes == 0
