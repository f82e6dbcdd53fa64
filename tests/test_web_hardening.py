"""The web front under a failing store, a stalled process and a restart: no image is ever free.

In-process servers (tests/test_web.py's LiveServer) where the test needs a short busy timeout; a real
`imagine web` process where the attack is a signal (SIGSTOP/SIGCONT).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx

from gateway import ImagineService, Settings
from gateway.fake_backend import FakeBackend
from gateway.service import LEASE_SECONDS
from gateway.web.app import WebOptions
from storage import Database
from tests.helpers.imagine_process import Imagine, base_env, ledger_problems, read_jobs  # noqa: F401 (fixture)
from tests.helpers.sqlite_lock import write_lock
from tests.test_web import LiveServer


def web_settings(data_dir: Path, **env: str) -> Settings:
    return Settings.from_env(
        {
            "IMAGINE_DB": str(data_dir / "web.sqlite3"),
            "IMAGINE_BACKEND": "fake",
            "IMAGINE_MODEL": "tiny",
            "IMAGINE_WEB_PORT": "0",
            **env,
        },
        env_file=None,
    )


def finished(client: httpx.Client, job_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        view: dict[str, object] = client.get(f"/api/jobs/{job_id}", params={"wait": 5}).json()
        if view["status"] in ("succeeded", "failed"):
            return view
    raise AssertionError(f"job {job_id} did not finish")


def kinds(server: LiveServer, job_id: str) -> list[str]:
    return [row["kind"] for row in server.ledger() if row["job_id"] == job_id]


def test_an_image_is_never_served_before_its_settle_is_written(data_dir: Path) -> None:
    """Item 2: the first download was marked delivered before the settle; when the settle raised,
    every later download was free and the next start refunded the job."""
    settings = web_settings(data_dir)
    server = LiveServer(settings, WebOptions(post_rate=None), busy_timeout_ms=200).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            job_id = client.post("/api/jobs", json={"prompt": "a lighthouse"}).json()["id"]
            view = finished(client, job_id)
            image = str(view["images"][0])  # type: ignore[index]
            with write_lock(settings.db_path):
                refused = client.get(image)
                assert refused.status_code == 503, refused.text
                assert refused.headers["Retry-After"]
                assert "nothing was charged" in refused.json()["error"]
                health = client.get("/healthz")
                assert health.status_code == 503 and health.json()["status"] == "degraded"
                assert client.get(image).status_code == 503  # still not served free
            assert kinds(server, job_id) == ["reserve"]
            served = client.get(image)
            assert served.status_code == 200 and served.content.startswith(b"\x89PNG")
            assert kinds(server, job_id) == ["reserve", "settle"]
            assert client.get(image).status_code == 200
            assert kinds(server, job_id) == ["reserve", "settle"]  # charged once
            assert client.get("/healthz").json()["status"] == "ok"
        server.check()
    finally:
        server.stop()


def test_all_images_of_a_job_survive_a_restart(data_dir: Path) -> None:
    """Item 6: an --n 4 job was charged 4 on its first download, and a restart lost images 2-4
    (kept only in memory)."""
    settings = web_settings(data_dir)
    first = LiveServer(settings, WebOptions(post_rate=None)).start()
    try:
        with httpx.Client(base_url=first.url, timeout=30) as client:
            job_id = client.post("/api/jobs", json={"prompt": "four foxes --n 4"}).json()["id"]
            images = [str(url) for url in finished(client, job_id)["images"]]  # type: ignore[attr-defined]
            assert len(images) == 4
            originals = [client.get(url).content for url in images]
    finally:
        first.stop()
    second = LiveServer(settings, WebOptions(post_rate=None)).start()
    try:
        with httpx.Client(base_url=second.url, timeout=30) as client:
            view = client.get(f"/api/jobs/{job_id}").json()
            assert view["status"] == "succeeded" and view["images"] == images
            assert [client.get(url).content for url in images] == originals
            assert kinds(second, job_id) == ["reserve", "settle"]
        second.check()
    finally:
        second.stop()


def test_a_stalled_web_process_does_not_serve_what_another_process_refunded(
    base_env: dict[str, str],  # noqa: F811 (the fixture of tests/test_run.py)
    data_dir: Path,
) -> None:
    """Item 3, black box: `imagine web` is stopped (SIGSTOP) past its lease; another process takes
    its open jobs over and refunds them; woken (SIGCONT), it must not serve the image."""
    db_path = Path(base_env["IMAGINE_DB"])
    web = Imagine(["web"], base_env, data_dir)
    try:
        url = web.read_until("web is on: ").split("web is on: ", 1)[1].strip()
        with httpx.Client(base_url=url, timeout=30) as client:
            job_id = client.post("/api/jobs", json={"prompt": "a lighthouse"}).json()["id"]
            image = str(finished(client, job_id)["images"][0])  # type: ignore[index]
            os.kill(web.proc.pid, signal.SIGSTOP)
            try:
                asyncio.run(_take_over(db_path, base_env))
            finally:
                os.kill(web.proc.pid, signal.SIGCONT)
            answer = client.get(image)
            assert answer.status_code == 410, answer.text
            assert "refunded" in answer.json()["error"]
            assert client.get(f"/api/jobs/{job_id}").json()["status"] == "failed"
        assert [(row[0], row[1], row[3], row[4]) for row in read_jobs(db_path)] == [(job_id, "failed", 0, 1)]
        assert asyncio.run(ledger_problems(db_path)) == []
    finally:
        web.proc.send_signal(signal.SIGTERM)
        assert web.finish() == 0


async def _take_over(db_path: Path, env: dict[str, str]) -> None:
    """A second process whose clock says the stopped one's lease ran out (instead of waiting it)."""
    settings = Settings.from_env({**env, "IMAGINE_DB": str(db_path)}, env_file=None)
    db = await Database.open(db_path)
    try:
        rescuer = ImagineService(
            settings, db, FakeBackend(settings), clock=lambda: time.time() + LEASE_SECONDS + 1
        )
        refunded = await rescuer.recover()
        assert len(refunded) == 1
    finally:
        await db.close()


def test_an_idempotency_key_id_cannot_be_worked_out_from_address_and_key(data_dir: Path) -> None:
    """Item 11: the id of a job sent with an Idempotency-Key was uuid5(address + key): anyone who knew
    the address and guessed a weak key could read the prompt and the image. Now a secret kept in the
    database keys it: the same key from the same address gives the same job, and another store (another
    secret) gives another id."""
    import uuid

    ids = []
    for folder in ("a", "b"):
        (data_dir / folder).mkdir()
        server = LiveServer(web_settings(data_dir / folder), WebOptions(post_rate=None)).start()
        try:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                headers = {"Idempotency-Key": "1"}
                first = client.post("/api/jobs", json={"prompt": "a fox --seed 1"}, headers=headers).json()
                again = client.post("/api/jobs", json={"prompt": "a fox --seed 1"}, headers=headers)
                assert again.json()["id"] == first["id"] and again.headers["Idempotent-Replayed"] == "true"
                ids.append(first["id"])
                finished(client, first["id"])
            server.check()
        finally:
            server.stop()
    old_scheme = uuid.uuid5(uuid.UUID("6f1d8c2e-5a0b-4f7e-9a51-1f3c0e2b7d44"), "web:127.0.0.1 1")
    assert f"web:{old_scheme}" not in ids
    assert ids[0] != ids[1]
