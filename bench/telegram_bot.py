"""The Telegram bot process against the fake Bot API: memory, torch, and time from update to status message.

Runs the real ``imagine telegram`` process (fake backend with no delay, temp SQLite) against
tests/fakes/telegram_server.py on loopback (long polling), has 100 users send ``/imagine`` at once and
times each from the update being queued at the fake to the bot's status message arriving there, and to
the photo. python-telegram-bot's rate limiter keeps the bot to Telegram's 30 messages a second overall;
``--unlimited`` runs a second bot process with that overall cap lifted (per-group limits and
``retry_after`` handling kept) to show what the cap costs.

    .venv/bin/python bench/telegram_bot.py [--users 100] [--rounds 3] [--unlimited]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import percentile, rss_mib, torch_loaded  # noqa: E402

FIRST_USER = 10_001


async def serve_unlimited() -> None:
    """``imagine telegram`` with the overall 30/s cap of the rate limiter lifted (the --unlimited child)."""
    from telegram.ext import AIORateLimiter

    import imagine
    from bots.telegram_bot import RATE_LIMIT_RETRIES, TelegramFront
    from gateway.settings import Settings

    settings = Settings.from_env()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with imagine.open_service(settings) as service:
        limiter = AIORateLimiter(overall_max_rate=0, max_retries=RATE_LIMIT_RETRIES)
        front = TelegramFront(settings, service, rate_limiter=limiter)
        print(f"imagine: telegram is on: {await front.start()}", flush=True)
        await stop.wait()
        await front.stop()


async def burst(fake: Any, users: list[int], prompt: str) -> tuple[list[float], list[float]]:
    """``/imagine`` from every user at once: seconds from each update to its status message, to its photo."""
    first_status = len(fake.calls("sendMessage"))
    first_photo = len(fake.calls("sendPhoto"))
    first_delete = len(fake.calls("deleteMessage"))
    queued = {}
    for user in users:
        fake.send_message(user, f"/imagine {prompt}")
        queued[user] = time.monotonic()
    await fake.wait_for_call("sendPhoto", lambda c: c.ok, n=first_photo + len(users), timeout=120)
    # The bot is idle again once every status message is gone: the next burst starts from a quiet bot.
    await fake.wait_for_call("deleteMessage", n=first_delete + len(users), timeout=120)
    statuses = [c for c in fake.calls("sendMessage")[first_status:] if c.ok]
    photos = [c for c in fake.calls("sendPhoto")[first_photo:] if c.ok]
    to_status = {c.chat_id: c.received_at - queued[c.chat_id] for c in statuses if c.chat_id in queued}
    to_photo = {c.chat_id: c.received_at - queued[c.chat_id] for c in photos if c.chat_id in queued}
    assert len(to_status) == len(users) == len(to_photo), "a user got no status message or no photo"
    return list(to_status.values()), list(to_photo.values())


async def measure(args: argparse.Namespace, *, unlimited: bool) -> list[tuple[str, str]]:
    from tests.fakes.telegram_server import FakeTelegram

    label = "overall cap lifted" if unlimited else "PTB rate limiter, 30 msg/s overall"
    rows: list[tuple[str, str]] = []
    process: asyncio.subprocess.Process | None = None
    async with FakeTelegram() as fake:
        users = list(range(FIRST_USER, FIRST_USER + args.users))
        with tempfile.TemporaryDirectory() as tmp:
            env = {
                k: v for k, v in os.environ.items() if not k.startswith(("IMAGINE_", "DISCORD_", "TELEGRAM_"))
            }
            env |= {
                "PYTHONPATH": str(ROOT),
                "TELEGRAM_TOKEN": fake.token,
                "TELEGRAM_API_BASE_URL": fake.base_url,
                "IMAGINE_DB": str(Path(tmp) / "imagine.sqlite3"),
                "IMAGINE_BACKEND": "fake",
                "IMAGINE_MODEL": "tiny",
                "IMAGINE_FAKE_DELAY": "0",
            }
            command = [str(ROOT / "imagine.py"), "telegram"]
            if unlimited:
                command = [str(ROOT / "bench" / "telegram_bot.py"), "--serve-unlimited"]
            try:
                spawned = time.monotonic()
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    *command,
                    env=env,
                    cwd=tmp,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=(Path(tmp) / "bot.log").open("ab"),
                )
                assert process.stdout is not None
                line = ""
                while not line.startswith("imagine: telegram is on:"):
                    line = (await process.stdout.readline()).decode()
                    if not line:
                        raise RuntimeError("the bot exited: " + (Path(tmp) / "bot.log").read_text()[-3000:])
                started = time.monotonic() - spawned
                await asyncio.sleep(1.0)
                if not unlimited:
                    rows += [
                        ("spawn -> `imagine telegram` prints it is on", f"{started * 1000:.0f} ms"),
                        ("resident memory after start", f"{rss_mib(process.pid):.1f} MiB"),
                        ("torch loaded in the bot process", "yes" if torch_loaded(process.pid) else "no"),
                    ]
                to_status: list[float] = []
                to_photo: list[float] = []
                for round_no in range(args.rounds):
                    status, photo = await burst(fake, users, f"a lighthouse at dusk, take {round_no}")
                    to_status += status
                    to_photo += photo
                    await asyncio.sleep(1.0)  # let the rate limiter's bucket refill between rounds
                status_ms = [x * 1000 for x in to_status]
                photo_ms = [x * 1000 for x in to_photo]
                n = f"{args.users} at once x {args.rounds}, {label}"
                rows += [
                    (f"update -> status message, {n}: p50", f"{statistics.median(status_ms):.0f} ms"),
                    ("  p99", f"{percentile(status_ms, 99):.0f} ms"),
                    ("  max", f"{max(status_ms):.0f} ms"),
                    ("update -> photo: p50", f"{statistics.median(photo_ms):.0f} ms"),
                    ("  p99", f"{percentile(photo_ms, 99):.0f} ms"),
                    ("429s from the fake", str(sum(1 for c in fake.calls() if c.status == 429))),
                    ("resident memory after the bursts", f"{rss_mib(process.pid):.1f} MiB"),
                    ("torch loaded after the bursts", "yes" if torch_loaded(process.pid) else "no"),
                ]
                process.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(process.wait(), 60)
                rows.append(("exit code after SIGTERM", str(code)))
            finally:
                if process is not None and process.returncode is None:
                    process.kill()
                    await process.wait()
    return rows


async def run(args: argparse.Namespace) -> list[tuple[str, str]]:
    rows = await measure(args, unlimited=False)
    if args.unlimited:
        rows += await measure(args, unlimited=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=100, help="users sending /imagine at the same moment")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--unlimited", action="store_true", help="also run with the overall 30/s cap lifted")
    parser.add_argument("--serve-unlimited", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))  # tests.fakes and the project, when run as a script
    if args.serve_unlimited:
        asyncio.run(serve_unlimited())
        return
    rows = asyncio.run(run(args))
    width = max(len(name) for name, _ in rows)
    python = sys.version.split()[0]
    print(
        f"Telegram bot (`imagine telegram`, fake backend, no delay) against the fake Bot API; python {python}"
    )
    print(f"{'measure'.ljust(width)}  value")
    print(f"{'-' * width}  {'-' * 12}")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
