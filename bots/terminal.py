"""The terminal as a front: `imagine generate`, on the same conversation helper as the chat bots.

It shows the queue position and progress on a terminal, writes the PNGs, and is charged only once
they are written (the delivery fence), like every other front.
"""

from __future__ import annotations

import getpass
import sys
import uuid
from pathlib import Path
from typing import TextIO

from gateway.conversation import Conversation
from gateway.errors import JobFailed, credits_word
from gateway.jobs import JobResult, JobStatus
from gateway.messages import status_text
from gateway.request import ImageRequest
from gateway.service import ImagineService

PROGRESS_EVERY = 0.1


class TerminalFront:
    name = "cli"

    def __init__(self, service: ImagineService, *, out: TextIO | None = None) -> None:
        self.conversation = Conversation(service, "cli")
        self.out = out or sys.stderr

    async def generate(self, request: ImageRequest, output: str | None) -> tuple[list[Path], JobResult]:
        """Submit, show progress, write the images; raises the job's error (its sentence) if it fails."""
        service = self.conversation.service
        user = self.conversation.user(getpass.getuser())
        job = await service.submit(user, request, job_id=f"cli:{uuid.uuid4().hex}", confirm_delivery=True)
        shown = ""
        async for update in self.conversation.follow(job, every=PROGRESS_EVERY):
            if not update.status.finished and self.out.isatty() and (line := status_text(update)) != shown:
                print(f"\r{line}", end="", file=self.out, flush=True)
                shown = line
        if shown:
            print(file=self.out)
        if job.status is JobStatus.FAILED:
            raise job.error or JobFailed("The job failed; its credits were refunded.")
        async with self.conversation.delivery(job, failed="Imagine could not write the image") as result:
            paths = output_paths(output, result.seeds)[: len(result.images)]
            for path, png in zip(paths, result.images, strict=True):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(png)
        return paths, result

    @staticmethod
    def summary(paths: list[Path], result: JobResult) -> str:
        left = "unlimited" if result.credits_left is None else credits_word(result.credits_left)
        seeds = ", ".join(str(s) for s in result.seeds)
        lines = [
            f"Saved {', '.join(str(p) for p in paths)} · {result.request.width}x{result.request.height} · "
            f"seed {seeds} · {result.elapsed:.1f} s · "
            + ("relax, no credits" if result.request.relax else f"{left} left"),
            *result.notes,
        ]
        return "\n".join(lines)


def output_paths(output: str | None, seeds: list[int]) -> list[Path]:
    if output is None:
        return [Path(f"imagine-{seed}.png") for seed in seeds]
    path = Path(output)
    if len(seeds) == 1:
        return [path]
    suffix = path.suffix or ".png"
    return [path.with_name(f"{path.stem}-{i + 1}{suffix}") for i in range(len(seeds))]
