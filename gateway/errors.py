"""Every outcome a user can meet, as one typed set.

Each error's ``str()`` is the one user-facing sentence that every front shows as it is.
Errors raised before a job is accepted cost nothing; the ones a job ends in after it was
accepted (``refunded = True``) say that the credits came back.
"""

from __future__ import annotations

import reprlib
from datetime import datetime
from typing import ClassVar

#: An error sentence quotes at most this much of a bad value, so that it fits any chat message
#: (Discord 2,000 characters, Telegram 4,096) whatever the user typed.
MAX_QUOTED_CHARS = 40
#: A number written with more digits than this is out of every range: it is never given to int()
#: (slow on huge strings, and refused past 4,300 digits) and is shown as words, not digits.
MAX_NUMBER_DIGITS = 20


class ImagineError(Exception):
    """Base of every user-facing outcome."""

    kind: ClassVar[str] = "error"
    refunded: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidRequest(ImagineError):
    """A prompt, flag, option or command argument that cannot be used."""

    kind = "invalid"


class OutOfCredits(ImagineError):
    kind = "out_of_credits"

    def __init__(self, message: str, *, resets_at: datetime, relax_offer: bool = False) -> None:
        super().__init__(message)
        self.resets_at = resets_at
        self.relax_offer = relax_offer  # the relax lane is open: a front may offer a "Relax" button


class BudgetSpent(OutOfCredits):
    """The bot's GPU budget for the month is used up (``IMAGINE_MONTHLY_BUDGET``)."""

    kind = "budget"


class Busy(ImagineError):
    """Too many jobs queued (for this user or overall), or the backend is unavailable."""

    kind = "busy"

    def __init__(self, message: str, *, retry_after: float = 10.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Banned(ImagineError):
    kind = "banned"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class NotAllowed(ImagineError):
    """An admin command from someone who is not an admin."""

    kind = "not_allowed"


class JobFailed(ImagineError):
    """An accepted job that ended without images; its credits were refunded."""

    kind = "failed"
    refunded = True


class BackendFailed(JobFailed):
    kind = "backend_failed"


class TimedOut(JobFailed):
    kind = "timed_out"


class SafetyBlocked(JobFailed):
    kind = "safety_blocked"


class Cancelled(JobFailed):
    kind = "cancelled"


class DeliveryRefused(JobFailed):
    """The job may no longer be delivered: it was refunded (here or by another process) meanwhile."""

    kind = "fenced"


class AmbiguousDelivery(Exception):
    """Raised by a front inside :meth:`Conversation.delivery` when the platform may have taken the
    images despite the error (a timeout after the upload, a 5xx): they are charged, never refunded."""


class BackendError(Exception):
    """Raised by a backend; the service turns it into :class:`BackendFailed` with a refund.

    ``reason`` is safe to show a user: backends never put secrets or raw bodies in it.
    """

    def __init__(self, reason: str, *, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class BackendUnavailable(BackendError):
    """The backend refuses work right now (circuit open, worker down); nothing is charged."""

    def __init__(self, reason: str, *, retry_after: float = 30.0) -> None:
        super().__init__(reason, retryable=True)
        self.retry_after = retry_after


def elided(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """At most ``limit`` characters of ``text``, with ``…`` where the rest was cut."""
    return text if len(text) <= limit else text[:limit] + "…"


def quoted(text: str) -> str:
    """A bad value as a sentence quotes it: cut to 40 characters, control characters escaped."""
    return repr(elided(text))


def shown(value: object) -> str:
    """Any bad value (a number, text, a list from JSON) as a sentence shows it, short whatever it is."""
    if isinstance(value, str):
        return quoted(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**MAX_NUMBER_DIGITS:
        return f"a number with more than {MAX_NUMBER_DIGITS} digits"
    return elided(reprlib.repr(value))


def credits_word(n: int) -> str:
    return f"{n} credit" if n == 1 else f"{n} credits"
