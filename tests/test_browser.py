"""The page in a real browser: Debian's headless Chromium, driven by playwright-core, against `imagine web`.

Needs `apt-get install chromium` and `npm ci` in tests/browser (no browser download). A machine without
them skips this test and says why; in CI (CI or IMAGINE_REQUIRE_BROWSER set) their absence fails it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from gateway.messages import utc_day
from storage import Database
from tests.helpers.imagine_process import imagine_command
from tests.helpers.jobs import new_job

ROOT = Path(__file__).resolve().parents[1]
BROWSER_DIR = ROOT / "tests" / "browser"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))

#: The in-process diffusers backend with the tiny model when it is there; else the fake backend.
LOCAL_BACKEND = importlib.util.find_spec("backend.local") is not None


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: apt-get install chromium"
    if shutil.which("node") is None:
        return "node is missing: apt-get install nodejs npm"
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is missing: (cd tests/browser && npm ci)"
    return None


@pytest.fixture
def browser() -> None:
    missing = _missing()
    if missing is not None:
        if os.environ.get("IMAGINE_REQUIRE_BROWSER") or os.environ.get("CI"):
            pytest.fail(f"the browser test cannot run: {missing}")
        pytest.skip(missing)


@pytest.fixture
def web_url(browser: None, data_dir: Path) -> Iterator[str]:
    yield from _serve(data_dir, "local" if LOCAL_BACKEND else "fake")


@pytest.fixture
def fake_web_url(browser: None, data_dir: Path) -> Iterator[str]:
    """`imagine web` on the fake backend: the page's side of the image actions, whatever the pipeline does."""
    yield from _serve(data_dir, "fake")


ADMIN_TOKEN = "browser-admin-token"
ADMIN_ENV = {"IMAGINE_ADMIN_TOKEN": ADMIN_TOKEN, "IMAGINE_GPU_COST_PER_SECOND": "0.0125"}


@pytest.fixture
def admin_web_url(browser: None, data_dir: Path) -> Iterator[str]:
    """`imagine web` with the admin page on, over a store with a few finished jobs and a ban."""
    asyncio.run(_seed_jobs(data_dir / "browser.sqlite3"))
    yield from _serve(data_dir, "fake", **ADMIN_ENV)


async def _seed_jobs(path: Path) -> None:
    db = await Database.open(path)
    now = time.time()
    try:
        for job_id, user, cost, gpu_seconds, failed in [
            ("b1", "discord:7", 2, 12.0, False),
            ("b2", "telegram:8", 1, 3.0, True),
            ("b3", "discord:9", 1, 4.5, False),
        ]:
            await db.reserve(
                new_job(
                    job_id,
                    user_id=user,
                    cost=cost,
                    day=utc_day(now),
                    now=now - 300,
                    prompt="a fox",
                    max_user_open=2,
                    max_open=10,
                )
            )
            if failed:
                await db.refund(
                    job_id, error_kind="timeout", error="slow", now=now - 60, gpu_seconds=gpu_seconds
                )
            else:
                await db.settle(
                    job_id, delivered=cost, seed=1, model="tiny", gpu_seconds=gpu_seconds, now=now - 120
                )
        await db.ban("discord:66", "spam", by="operator", now=now)
    finally:
        await db.close()


def _serve(data_dir: Path, backend: str, **extra: str) -> Iterator[str]:
    env = {
        **os.environ,
        **extra,
        "IMAGINE_DB": str(data_dir / "browser.sqlite3"),
        "IMAGINE_MODEL": "tiny",
        "IMAGINE_BACKEND": backend,
        "IMAGINE_FAKE_DELAY": "0.04",  # seconds per step, so the fake takes about as long as tiny
        "IMAGINE_WEB_HOST": "127.0.0.1",
        "IMAGINE_WEB_PORT": "0",
        "PYTHONUNBUFFERED": "1",
    }
    for token in ("DISCORD_TOKEN", "TELEGRAM_TOKEN"):
        env.pop(token, None)
    proc = subprocess.Popen(
        [*imagine_command(), "web"],
        cwd=data_dir,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    url = None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "imagine: web is on: " in line:
            url = line.split("imagine: web is on: ", 1)[1].split()[0]
            break
    assert url is not None, "imagine web did not start:\n" + "".join(lines)
    try:
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        proc.stdout.close()


@pytest.mark.slow
def test_a_person_generates_an_image_and_sees_a_bad_flag_explained(web_url: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    # 50 steps at 1024x576 take the tiny model a few seconds on this CPU: long enough to see progress
    prompt = "a lighthouse at dusk, oil painting --size 1024x576 --steps 50 --seed 42"
    bad = "a lighthouse --steps 99"
    run = subprocess.run(
        ["node", "generate.mjs", web_url, prompt, bad, str(ARTIFACTS)],
        cwd=BROWSER_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr + run.stdout
    seen = json.loads(run.stdout.strip().splitlines()[-1])

    assert seen["pageStatus"] == 200
    assets = [url for url in seen["requests"][: seen["pageRequests"]] if "/api/" not in url]
    assert assets == [web_url], "the page loads in one round trip: no scripts, styles or fonts to fetch"
    assert seen["errorsBeforeBadFlag"] == []
    assert all(url.startswith(web_url) for url in seen["requests"]), "nothing is fetched from elsewhere"
    assert seen["quotaBefore"] == "25 credits left · resets at 00:00 UTC"

    texts = [state["text"] for state in seen["states"]]
    values = [state["value"] for state in seen["states"] if state["value"] is not None]
    assert any(text.startswith("Making your image… step") for text in texts), texts
    assert any(0 < value < 1 for value in values), f"the progress bar moved: {values}"

    width, height = 1024, 576
    image = seen["image"]
    assert (image["naturalWidth"], image["naturalHeight"]) == (width, height)
    assert (image["width"], image["height"]) == (width, height), "the page reserves the image's space"
    shown_width, shown_height = image["shown"]
    assert 0 < shown_width <= width and abs(shown_width / shown_height - width / height) < 0.02
    assert "seed 42" in seen["caption"] and "24 credits left" in seen["caption"]
    assert seen["quotaAfter"] == "24 credits left · resets at 00:00 UTC"
    assert seen["buttonEnabled"] is True

    assert seen["error"] == "--steps must be a whole number from 1 to 50; got 99."
    assert (ARTIFACTS / "browser-result.png").stat().st_size > 0


@pytest.mark.slow
def test_a_person_upscales_a_result_and_starts_from_their_own_picture(
    fake_web_url: str, tmp_path: Path
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    picture, dropped = tmp_path / "fox.jpg", tmp_path / "tall.png"
    Image.new("RGB", (600, 400), (200, 90, 30)).save(picture, quality=90)
    Image.new("RGB", (256, 512), (30, 90, 200)).save(dropped)
    run = subprocess.run(
        [
            "node",
            "actions.mjs",
            fake_web_url,
            "a heron in the reeds --size 384x256 --seed 7 --steps 4",
            str(picture),
            "a red fox --strength 0.5 --steps 4",
            str(dropped),
            str(ARTIFACTS),
        ],
        cwd=BROWSER_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr + run.stdout
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["consoleErrors"] == []
    assert seen["tools"] == ["Upscale", "Vary", "Vary (strong)"]
    assert seen["first"]["size"] == [384, 256]
    assert seen["upscaled"]["size"] == [768, 512] and "seed 7" in seen["upscaled"]["caption"]
    assert seen["uploaded"]["size"] == [1024, 704], "the picture's aspect ratio, fitted to 1024"
    assert seen["dropped"]["size"] == [512, 1024]
    assert seen["posts"] == ["/api/jobs", "/api/jobs/ID/images/0/upscale", "/api/jobs", "/api/jobs"]
    assert seen["quota"] == "21 credits left · resets at 00:00 UTC"
    for name in ("upscale", "picked", "upload", "drop"):
        assert (ARTIFACTS / f"browser-{name}.png").stat().st_size > 0


@pytest.mark.slow
def test_the_admin_page_needs_its_token_and_shows_the_stats_figures(
    admin_web_url: str, data_dir: Path
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    run = subprocess.run(
        ["node", "admin.mjs", admin_web_url, ADMIN_TOKEN, str(ARTIFACTS)],
        cwd=BROWSER_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr + run.stdout
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    cli = subprocess.run(
        [*imagine_command(), "stats", "--json"],
        cwd=data_dir,
        env={
            **os.environ,
            **ADMIN_ENV,
            "IMAGINE_DB": str(data_dir / "browser.sqlite3"),
            "PYTHONPATH": str(ROOT),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    stats = json.loads(cli.stdout)

    assert (seen["noToken"], seen["wrongToken"]) == (401, 401)
    assert seen["pageStatus"] == 200 and seen["address"] == admin_web_url + "admin", (
        "the token left the address"
    )
    assert seen["consoleErrors"] == []
    assert all(url.startswith(admin_web_url) for url in seen["requests"]), "nothing is fetched from elsewhere"

    figures = {key: figure["value"] for key, figure in seen["figures"].items()}
    for key in ("today.cost", "month.cost", "today.gpu_seconds", "month.gpu_seconds"):
        section, name = key.split(".")
        assert float(figures[key]) == stats[section][name], key
    for key in ("today.images", "month.images"):
        section, name = key.split(".")
        assert int(figures[key]) == stats[section][name] == 3, key
    assert float(figures["month.projected_cost"]) == pytest.approx(stats["month"]["projected_cost"], rel=1e-3)
    per_image = stats["gpu_seconds_per_image"]
    assert (float(figures["gpu_seconds_per_image.p50"]), float(figures["gpu_seconds_per_image.p95"])) == (
        per_image["p50"],
        per_image["p95"],
    )
    assert int(figures["users"]) == stats["users"] and int(figures["banned"]) == stats["banned"] == 1
    assert stats["month"]["gpu_seconds"] == 19.5 and stats["month"]["cost"] == pytest.approx(19.5 * 0.0125)
    assert seen["figures"]["month.cost"]["text"] == f"{stats['month']['cost']:,.2f}"

    assert seen["charts"]["chart-jobs"]["total"] == sum(hour["jobs"] for hour in stats["hourly"]) == 3
    assert seen["charts"]["chart-spend"]["total"] == pytest.approx(
        sum(hour["cost"] for hour in stats["hourly"])
    )
    assert seen["charts"]["chart-jobs"]["bars"] >= 1
    assert seen["topUsers"] == [user["user"] for user in stats["top_users"]]
    assert seen["refunds"] == [["timeout", "1", "1"]]
    assert seen["users"] == ["discord:66", "discord:7", "discord:9", "telegram:8"]
    assert "0.0125 a second" in seen["note"]

    assert seen["picked"] == "discord:7"
    assert seen["granted"] == "Granted 5 credits to discord:7; bonus now 5."
    for name in ("admin", "admin-granted"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 0
