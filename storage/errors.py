"""What a storage operation raises instead of its answer."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from storage.records import BudgetState, QuotaState


class RefusedReason:
    BANNED = "banned"
    CREDITS = "credits"
    USER_QUEUE = "user_queue"
    QUEUE = "queue"
    BUDGET = "budget"  # the month's GPU budget would be overrun
    RELAX_USED = "relax_used"  # today's relax jobs are used up (or the lane is off)
    RELAX_UNNEEDED = "relax_unneeded"  # credits are left: the relax lane is for when they are spent


class ReservationRefused(Exception):
    """A job that cannot be accepted; nothing was written."""

    def __init__(
        self,
        reason: str,
        *,
        quota: QuotaState | None = None,
        ban_reason: str = "",
        open_jobs: int = 0,
        budget: BudgetState | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.quota = quota
        self.ban_reason = ban_reason
        self.open_jobs = open_jobs
        self.budget = budget


class StoreUnavailable(Exception):
    """The store did not answer (a lock held past the busy timeout, a full disk, I/O errors).

    Nothing of the operation was written; it may be tried again later.
    """


class StoreError(ValueError):
    """An admin change that cannot be made (e.g. taking more bonus than a user has)."""


def cannot_take_back(user_id: str, bonus: int, credits: int) -> StoreError:
    return StoreError(f"{user_id} has {bonus} bonus credits; {-credits} cannot be taken back.")


def unavailable(exc: BaseException) -> BaseException:
    """An operation's own error, with the store's failures (locks, disk) told apart from refusals."""
    if isinstance(exc, sqlite3.OperationalError):
        return StoreUnavailable(f"the database did not answer: {exc}")
    return exc
