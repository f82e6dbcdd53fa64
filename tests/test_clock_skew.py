"""Leases compare the clocks of different hosts: on PostgreSQL a process compares its clock with the
database server's at start (and every minute) and says so in the log when they disagree."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from gateway import ImagineService, Settings, create_backend
from storage import Database


async def started(settings: Settings, clock_offset: float) -> tuple[ImagineService, Database]:
    db = await Database.open(settings.store)
    backend = create_backend(settings)
    await backend.start()
    service = ImagineService(settings, db, backend, clock=lambda: time.time() + clock_offset)
    await service.start()
    return service, db


def on(url: str, data_dir: Path) -> Settings:
    return Settings.from_env(
        {"IMAGINE_DB": url, "IMAGINE_BACKEND": "fake", "IMAGINE_DATA_DIR": str(data_dir)}, env_file=None
    )


async def test_a_host_whose_clock_is_off_the_database_servers_says_so(
    postgres_url: str, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "imagine.gateway"):
        service, db = await started(on(postgres_url, data_dir), clock_offset=60.0)
    try:
        warnings = [r.getMessage() for r in caplog.records if "clock" in r.getMessage()]
        assert len(warnings) == 1 and warnings[0].startswith("this host's clock is 60.")
        assert "ahead of the database server's" in warnings[0] and "(NTP)" in warnings[0]
        assert service._instance.clock_skew is not None and 59 < service._instance.clock_skew < 61
    finally:
        await service.close()
        await db.close()


async def test_a_synchronised_host_and_a_sqlite_store_say_nothing(
    postgres_url: str, data_dir: Path, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "imagine.gateway"):
        for store in (on(postgres_url, data_dir), settings):
            service, db = await started(store, clock_offset=0.0)
            skew = service._instance.clock_skew
            await service.close()
            await db.close()
            assert skew is None if store is settings else abs(skew or 0) < 1.0
    assert not [r for r in caplog.records if "clock" in r.getMessage()]
