"""Whose job runs next: fair turns by user, so one user's backlog does not make everyone else wait.

Deficit round robin (Shreedhar and Varghese, 1995) over the users with jobs waiting, each job weighed by
its :func:`estimated_cost`: in each round every waiting user gets the same quantum of GPU time, so
a user of four-image 1024x1024 jobs gets no more of the GPU per round than a user of single small
images. A user alone in the queue runs back to back; one user's jobs keep their arrival order; admins
get no priority. A user's state is dropped as soon as nothing of theirs waits.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from gateway.jobs import Job
from gateway.request import DEFAULT_STEPS, TARGET_PIXELS, ImageRequest


def estimated_cost(request: ImageRequest) -> float:
    """The GPU time a request takes, in standard images (one 512x512 image at 25 steps is 1.0).

    Denoising dominates and scales with pixels x steps x images; the real seconds depend on the GPU
    and the model, but fair turns only compare one job's share with another's.
    """
    pixels = request.width * request.height / TARGET_PIXELS
    return max(pixels * request.denoise_steps / DEFAULT_STEPS * request.num_images, 1e-3)


class Turns(Protocol):
    """The waiting jobs of one queue and the order they are taken in."""

    def __len__(self) -> int: ...

    def __contains__(self, job: object) -> bool: ...

    def put(self, job: Job) -> None: ...

    def pop(self) -> Job:
        """The next job to run (raises IndexError when none waits)."""
        ...

    def remove(self, job: Job) -> None: ...

    def order(self) -> list[Job]:
        """Every waiting job in the order :meth:`pop` would take them if nothing else arrived."""
        ...


@dataclass
class _Lane:
    """One user's waiting jobs, oldest first, and the GPU time they may still use in this round."""

    jobs: deque[Job] = field(default_factory=deque)
    deficit: float = 0.0
    turn_begun: bool = False  # got this round's quantum (it is at the head of the rotation)


class FairTurns:
    """Deficit round robin by user; ``quantum`` is the GPU time (in standard images) per user per round."""

    def __init__(self, quantum: float = 1.0) -> None:
        self.quantum = quantum
        self._lanes: dict[str, _Lane] = {}
        self._rotation: deque[str] = deque()  # users with jobs waiting; the head's turn is now
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, job: object) -> bool:
        if not isinstance(job, Job):
            return False
        lane = self._lanes.get(job.user_id)
        return lane is not None and job in lane.jobs

    def put(self, job: Job) -> None:
        lane = self._lanes.get(job.user_id)
        if lane is None:
            lane = self._lanes[job.user_id] = _Lane()
            self._rotation.append(job.user_id)  # a newcomer waits for the round to come to them
        lane.jobs.append(job)
        self._count += 1

    def pop(self) -> Job:
        if not self._count:
            raise IndexError("no job is waiting")
        user = _next_user(self._lanes, self._rotation, self.quantum)
        lane = self._lanes[user]
        job = lane.jobs.popleft()
        lane.deficit -= estimated_cost(job.request)
        self._count -= 1
        if not lane.jobs:
            self._drop(user)
        return job

    def remove(self, job: Job) -> None:
        """Take a waiting job out (cancelled); raises ValueError when it is not waiting."""
        lane = self._lanes.get(job.user_id)
        if lane is None:
            raise ValueError(f"job {job.id} is not waiting")
        lane.jobs.remove(job)
        self._count -= 1
        if not lane.jobs:
            self._drop(job.user_id)

    def order(self) -> list[Job]:
        """The pops to come, worked out on a copy of the lanes: O(jobs x users) at worst (each pop
        may pass every other user's turn), O(jobs) when turns rarely end idle."""
        lanes = {
            user: _Lane(deque(lane.jobs), lane.deficit, lane.turn_begun) for user, lane in self._lanes.items()
        }
        rotation = deque(self._rotation)
        taken: list[Job] = []
        while rotation:
            user = _next_user(lanes, rotation, self.quantum)
            lane = lanes[user]
            job = lane.jobs.popleft()
            lane.deficit -= estimated_cost(job.request)
            taken.append(job)
            if not lane.jobs:
                del lanes[user]
                rotation.popleft()
        return taken

    def _drop(self, user: str) -> None:
        """Nothing of ``user`` waits: forget them (their unused quantum too, as DRR does)."""
        del self._lanes[user]
        self._rotation.remove(user)


def _next_user(lanes: dict[str, _Lane], rotation: deque[str], quantum: float) -> str:
    """Move the rotation on to the user whose head job runs next, and return that user.

    A user's turn starts with a quantum added to their deficit and lasts while the deficit covers
    their next job. Rounds in which nobody could run anything (big jobs, small quantum) are skipped
    in one step, so this is O(users) however large the jobs are.
    """
    idle_turns = 0
    while True:
        user = rotation[0]
        lane = lanes[user]
        if lane.deficit >= estimated_cost(lane.jobs[0].request):
            return user
        if not lane.turn_begun:
            lane.deficit += quantum
            lane.turn_begun = True
            continue
        lane.turn_begun = False
        rotation.rotate(-1)
        idle_turns += 1
        if idle_turns >= len(rotation):
            # A whole round ran nothing: give every user the rounds the nearest of them still needs.
            rounds = min(
                math.ceil((estimated_cost(lanes[u].jobs[0].request) - lanes[u].deficit) / quantum) - 1
                for u in rotation
            )
            for u in rotation:
                lanes[u].deficit += max(rounds, 0) * quantum
            idle_turns = 0


class Lanes:
    """Paid jobs in fair turns first; relax-lane jobs (``--relax``) in fair turns of their own, taken
    only when no paid job waits. Positions follow the same order, so a relax job's is honest."""

    def __init__(self) -> None:
        self.paid = FairTurns()
        self.relax = FairTurns()

    def _lane(self, job: Job) -> FairTurns:
        return self.relax if job.request.relax else self.paid

    def __len__(self) -> int:
        return len(self.paid) + len(self.relax)

    def __contains__(self, job: object) -> bool:
        return job in self.paid or job in self.relax

    def put(self, job: Job) -> None:
        self._lane(job).put(job)

    def pop(self) -> Job:
        return self.paid.pop() if self.paid else self.relax.pop()

    def remove(self, job: Job) -> None:
        self._lane(job).remove(job)

    def order(self) -> list[Job]:
        return self.paid.order() + self.relax.order()
