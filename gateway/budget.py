"""The operator's GPU budget: what a job is expected to cost, the month's ceiling, and its words.

The store holds each job's estimated GPU time against its UTC month from the reservation until the
job ends, and refuses a job that would take the month past its ceiling (``storage.ledger``), so
however many requests arrive at once, on however many hosts, the month is never overrun by more
than one job's estimate. Here the gateway works out the estimate: the job's size in standard
images (:func:`gateway.turns.estimated_cost`) times the GPU seconds a standard image has really
taken lately on this backend (the 95th percentile of the last jobs, so the estimate errs high), and
the ceiling: ``IMAGINE_MONTHLY_BUDGET`` over ``IMAGINE_GPU_COST_PER_SECOND``, or an admin's figure
for the month.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

from gateway.messages import reset_words
from gateway.request import ImageRequest
from gateway.settings import Settings
from gateway.turns import estimated_cost
from storage import BudgetState

#: Seconds a standard image (512x512, 25 steps) is assumed to take before any job has finished:
#: a slow GPU's figure, so the first jobs of a month hold more than they use, never less.
FIRST_GUESS_SECONDS = 5.0
#: Finished jobs the estimate learns from.
SAMPLES = 200


class Budget:
    """Estimates for the store's budget holds, and the ceiling in force."""

    def __init__(self, settings: Settings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.clock = clock
        self._seconds: deque[float] = deque(maxlen=SAMPLES)  # GPU seconds per standard image
        self.seconds_per_image = FIRST_GUESS_SECONDS

    def hold_ms(self, request: ImageRequest) -> int:
        """The GPU time the store holds for ``request`` while it runs; none while the budget is off,
        so a bot without one pays nothing for it on every job."""
        if self.ceiling_ms() is None:
            return 0
        return max(1, math.ceil(estimated_cost(request) * self.seconds_per_image * 1000))

    def ceiling_ms(self) -> int | None:
        """The setting's ceiling in GPU milliseconds (None: no budget set)."""
        budget, rate = self.settings.monthly_budget, self.settings.gpu_cost_per_second
        if budget is None or rate <= 0:
            return None
        return math.floor(budget / rate * 1000)

    def observe(self, request: ImageRequest, gpu_seconds: float) -> None:
        """A job finished in ``gpu_seconds``: the estimate follows what the backend really takes."""
        if gpu_seconds <= 0:
            return
        self._seconds.append(gpu_seconds / estimated_cost(request))
        ordered = sorted(self._seconds)
        self.seconds_per_image = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]

    def money(self, milliseconds: int | None) -> float | None:
        return None if milliseconds is None else milliseconds / 1000 * self.settings.gpu_cost_per_second

    def describe(self, state: BudgetState) -> str:
        """The month's budget for an admin: spent, held by open jobs, the ceiling, the reset."""
        spent, held, ceiling = (self.money(v) for v in (state.spent_ms, state.held_ms, state.ceiling_ms))
        assert spent is not None and held is not None
        shown = "no ceiling" if ceiling is None else f"a ceiling of {ceiling:.2f}"
        who = " (set by an admin)" if state.override else ""
        return (
            f"GPU budget for {state.month}: {spent:.2f} spent and {held:.2f} held by open jobs, "
            f"{shown}{who}; GPU time {state.spent_ms / 1000:.1f} s used. It resets on "
            f"{reset_words(self.clock())}."
        )
