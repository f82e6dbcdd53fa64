"""The Discord bot process against the fake Discord: memory, start-up, torch, and time to defer.

Runs the real ``imagine discord`` process (fake backend, temp SQLite) against
tests/fakes/discord_server.py on loopback, then fires bursts of simultaneous ``/imagine``s and times
each from INTERACTION_CREATE leaving the fake to the defer arriving back at it.

    .venv/bin/python bench/discord_bot.py [--burst 50] [--rounds 3] [--shards 1] [--delay 0.02]
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

TOKEN = "MTA1NzY0NjQ4OTQ0NTYzNzI0OA.GbenchX.bot-token-for-benchmarks"
CALLBACK = "/interactions/{interaction_id}/{token}/callback"


async def burst(fake: Any, user_ids: list[int], prompt: str) -> list[float]:
    """``/imagine`` from every user at once; seconds from each INTERACTION_CREATE to its defer."""
    sent: dict[int, float] = {}

    async def imagine(user_id: int) -> Any:
        started = time.monotonic()
        interaction = await fake.dispatch_slash_command(
            "imagine", {"prompt": f"{prompt} --steps 10"}, user_id=user_id
        )
        sent[interaction.id] = started
        return interaction

    interactions = await asyncio.gather(*(imagine(user_id) for user_id in user_ids))
    await fake.wait_for(lambda: all(i.acknowledged for i in interactions), 60)
    latencies = []
    for interaction in interactions:
        callback = next(r for r in fake.requests_for(interaction) if r.matches("POST", CALLBACK))
        latencies.append(callback.time - sent[interaction.id])
    await fake.wait_for(lambda: all(i.attachments for i in interactions), 300)
    return latencies


async def run(args: argparse.Namespace) -> list[tuple[str, str]]:
    from tests.fakes.discord_server import FakeDiscord

    fake = FakeDiscord(token=TOKEN, recommended_shards=args.shards)
    users = [fake.add_user(f"user{i}") for i in range(args.burst)]
    await fake.start()
    rows: list[tuple[str, str]] = []
    process: asyncio.subprocess.Process | None = None
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGINE_", "DISCORD_", "TELEGRAM_"))}
        env |= {
            "DISCORD_TOKEN": TOKEN,
            "DISCORD_API_BASE_URL": fake.api_base_url,
            "DISCORD_GATEWAY_URL": fake.gateway_url,
            "IMAGINE_DB": str(Path(tmp) / "imagine.sqlite3"),
            "IMAGINE_BACKEND": "fake",
            "IMAGINE_MODEL": "tiny",
            "IMAGINE_FAKE_DELAY": str(args.delay),
        }
        try:
            spawned = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(ROOT / "imagine.py"),
                "discord",
                env=env,
                cwd=tmp,
                stdout=asyncio.subprocess.PIPE,
                stderr=(Path(tmp) / "bot.log").open("ab"),
            )
            assert process.stdout is not None
            await fake.wait_until_ready(shard_count=args.shards, timeout=120)
            ready = time.monotonic() - spawned
            line = ""
            while not line.startswith("imagine: discord is on:"):
                line = (await process.stdout.readline()).decode()
                if not line:
                    raise RuntimeError("the bot exited: " + (Path(tmp) / "bot.log").read_text()[-3000:])
            on = time.monotonic() - spawned
            await asyncio.sleep(1.0)
            rows += [
                ("shards", str(args.shards)),
                ("spawn -> READY sent by the fake", f"{ready * 1000:.0f} ms"),
                ("spawn -> `imagine discord` prints it is on", f"{on * 1000:.0f} ms"),
                ("resident memory after start", f"{rss_mib(process.pid):.1f} MiB"),
                ("torch loaded in the bot process", "yes" if torch_loaded(process.pid) else "no"),
            ]

            latencies: list[float] = []
            for round_no in range(args.rounds):
                burst_started = time.monotonic()
                latencies += await burst(fake, [user.id for user in users], f"a lighthouse, take {round_no}")
                if round_no == 0:
                    rows.append(
                        (
                            f"{args.burst} images delivered (fake backend {args.delay:g} s/step x 10)",
                            f"{time.monotonic() - burst_started:.2f} s",
                        )
                    )
            ms = [x * 1000 for x in latencies]
            rows += [
                (
                    f"INTERACTION_CREATE -> defer, {args.burst} at once x {args.rounds}: p50",
                    f"{statistics.median(ms):.1f} ms",
                ),
                ("  p99", f"{percentile(ms, 99):.1f} ms"),
                ("  max", f"{max(ms):.1f} ms"),
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
            await fake.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--burst", type=int, default=50, help="simultaneous /imagine interactions")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--delay", type=float, default=0.02, help="fake backend seconds per step")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))  # tests.fakes, when run as a script
    rows = asyncio.run(run(args))
    width = max(len(name) for name, _ in rows)
    python = sys.version.split()[0]
    print(f"Discord bot (`imagine discord`, fake backend) against the fake Discord; python {python}")
    print(f"{'measure'.ljust(width)}  value")
    print(f"{'-' * width}  {'-' * 12}")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
