"""The sentences every front shows: quota, results, help. Shared, so no front words them twice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.errors import credits_word
from gateway.jobs import JobResult, JobStatus, JobUpdate
from gateway.request import KNOWN_FLAGS

RESTARTING = "Imagine is restarting and could not finish your image"


def next_reset(now: float) -> datetime:
    """00:00 UTC after ``now``: when daily allowances come back."""
    today = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today + timedelta(days=1)


def utc_day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


def utc_month(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m")


def next_month_start(now: float) -> datetime:
    """00:00 UTC on the 1st after ``now``: when the month's GPU budget starts again."""
    day = datetime.fromtimestamp(now, UTC)
    return datetime(day.year + day.month // 12, day.month % 12 + 1, 1, tzinfo=UTC)


def reset_words(now: float) -> str:
    """``1 January at 00:00 UTC``."""
    start = next_month_start(now)
    return f"{start.day} {start:%B} at 00:00 UTC"


def duration(seconds: float) -> str:
    """``3 h 12 min``, ``12 min``, ``40 s``."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes = rest // 60
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min"
    return f"{seconds} s"


def until_reset(now: float) -> str:
    reset = next_reset(now)
    return f"00:00 UTC (in {duration(reset.timestamp() - now)})"


def result_caption(result: JobResult, *, limit: int | None = None) -> str:
    """Prompt, seed(s), time and credits left, cut to ``limit`` characters by shortening the prompt."""
    seeds = ", ".join(str(s) for s in result.seeds)
    left = "unlimited" if result.credits_left is None else credits_word(result.credits_left)
    tail_parts = [
        f"seed {seeds}" if len(result.seeds) == 1 else f"seeds {seeds}",
        f"{result.elapsed:.1f} s",
        "relax, no credits" if result.request.relax else f"{left} left",
    ]
    tail = " · ".join(tail_parts)
    notes = "".join(f"\n{note}" for note in result.notes)
    prompt = result.request.prompt
    text = f"{prompt}\n{tail}{notes}"
    if limit is not None and len(text) > limit:
        room = max(0, limit - len(tail) - len(notes) - 2)
        prompt = prompt[: max(0, room - 1)].rstrip() + "…"
        text = f"{prompt}\n{tail}{notes}"[:limit]
    return text


def queue_text(position: int, *, relax: bool = False) -> str:
    if position <= 0:
        return "Starting (relax)…" if relax else "Starting…"
    if relax:
        return f"Relax lane: {position} ahead of you; it runs when no paid image waits."
    return f"In the queue: {position} ahead of you."


def status_text(update: JobUpdate) -> str:
    """What a front shows while a job waits or runs: its place in the queue, then its progress."""
    if update.status is JobStatus.QUEUED:
        return queue_text(update.position, relax=update.relax)
    text = progress_text(update.step, update.total_steps)
    return f"{text} (relax)" if update.relax else text


def progress_text(step: int, total: int) -> str:
    if total <= 0:
        return "Working…"
    done = round(10 * step / total)
    return f"Working… {'▰' * done}{'▱' * (10 - done)} {step}/{total} steps"


HELP = (
    "Type /imagine followed by what you want to see, e.g.\n"
    "/imagine a lighthouse at dusk, oil painting --ar 16:9 --seed 42\n\n"
    "Flags:\n"
    "--ar W:H  aspect ratio, 1:4 to 4:1 (default 1:1)\n"
    "--size WxH  explicit size, multiples of 64 from 256 to 1024 (default 512x512)\n"
    "--seed N  the same seed gives the same image (0 to 4294967295)\n"
    "--steps N  denoising steps, 1 to 50 (default 25)\n"
    "--guidance F  how closely to follow the prompt, 1 to 20 (default 7.5)\n"
    "--no TEXT  what to leave out (negative prompt)\n"
    "--n N  how many images, 1 to 4 (default 1)\n"
    "--strength F  with a picture: how far the image may move from it, 0.05 to 1 (default 0.6)\n"
    "--relax  once your credits are spent: a free image that waits until the GPU is idle\n\n"
    "Each image costs one credit; your daily credits reset at 00:00 UTC. /quota shows yours."
)

assert all(flag in HELP for flag in KNOWN_FLAGS)
