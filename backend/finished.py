"""Finished predictions the worker keeps for idempotent retries, within a byte budget and an age.

A retried ``PUT /predictions/{id}`` (the gateway's connection dropped, a poll after
``Prefer: respond-async``) should get the result already made rather than a second run. A
response at 1024x1024 with four images is about 12 MB of data URIs, so keeping a fixed number of
them (the worker once kept 1,000) is gigabytes; this keeps each response once, as the JSON body it
is served as, counts those bytes, and drops the oldest first past ``max_bytes`` or ``max_age``
seconds. A forgotten id is unknown again, and a PUT of it runs anew, as Cog does for every
finished prediction.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Room for the results of a full queue of the largest predictions (about 20 x 12 MB).
DEFAULT_KEEP_BYTES = 256 * 1024 * 1024
#: At least the gateway's default IMAGINE_BACKEND_TIMEOUT, so every retry it makes finds the result.
DEFAULT_KEEP_SECONDS = 300.0


@dataclass(frozen=True, eq=False)
class Finished:
    """A prediction that reached succeeded, failed or canceled, with its response body as served."""

    id: str
    input: dict[str, Any]
    status: str
    body: bytes
    finished_at: float


class FinishedPredictions:
    """The recent finished predictions by id, oldest first, within ``max_bytes`` and ``max_age``."""

    def __init__(
        self,
        max_bytes: int = DEFAULT_KEEP_BYTES,
        max_age: float = DEFAULT_KEEP_SECONDS,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes < 0 or max_age < 0:
            raise ValueError("The byte budget and the age of finished predictions cannot be negative.")
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.clock = clock
        self._kept: OrderedDict[str, Finished] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def bytes(self) -> int:
        """The bytes of the kept response bodies; never more than ``max_bytes``."""
        return self._bytes

    def add(self, finished: Finished) -> None:
        """Keep ``finished``, dropping the oldest to make room; one larger than the budget is not kept."""
        self._drop(finished.id)
        self.prune()
        size = len(finished.body)
        if size > self.max_bytes:
            return
        while self._bytes + size > self.max_bytes:
            self._drop(next(iter(self._kept)))
        self._kept[finished.id] = finished
        self._bytes += size

    def get(self, prediction_id: str) -> Finished | None:
        self.prune()
        return self._kept.get(prediction_id)

    def prune(self) -> None:
        """Drop what finished more than ``max_age`` seconds ago (the oldest are first)."""
        oldest_kept = self.clock() - self.max_age
        while self._kept:
            first = next(iter(self._kept.values()))
            if first.finished_at >= oldest_kept:
                break
            self._drop(first.id)

    def _drop(self, prediction_id: str) -> None:
        gone = self._kept.pop(prediction_id, None)
        if gone is not None:
            self._bytes -= len(gone.body)
