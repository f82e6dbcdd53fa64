"""What the store hands out: frozen records, each made from a row by column name."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

OPEN_STATUSES = ("queued", "running")
#: A row read by column name: ``sqlite3.Row``, or psycopg's dict row.
Row = sqlite3.Row | Mapping[str, Any]


def by_name(row: Row, names: list[str]) -> list[Any]:
    """The row's values for ``names``, matched by column name (a row in that order already is taken whole)."""
    if row.keys() == names:
        return list(row)
    return [row[name] for name in names]


def columns(record: type[Any]) -> str:
    """The SELECT list of a record: its fields, which are its table's column names."""
    return ", ".join(field.name for field in fields(record))


@dataclass(frozen=True)
class QuotaState:
    user_id: str
    day: str
    allowance: int  # today's daily allowance (override or default)
    used: int  # daily credits used or reserved today
    bonus: int  # bonus credits left (not counting reserved ones)
    reserved: int  # credits held by open jobs
    override: bool  # allowance set by an admin
    unlimited: bool = False

    @property
    def remaining(self) -> int:
        return max(0, self.allowance - self.used) + self.bonus


@dataclass(frozen=True)
class JobRecord:
    id: str
    user_id: str
    request: dict[str, Any]
    status: str
    cost: int
    day: str
    daily: int
    bonus: int
    spent: int
    refunded: int
    seed: int | None
    model: str | None
    error_kind: str | None
    error: str | None
    reply: dict[str, Any] | None
    instance_id: str | None
    gpu_seconds: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    ready_at: float | None = None  # generated; waiting for its delivery
    ready_count: int | None = None  # images made
    delivering_at: float | None = None  # a front claimed the delivery: the images may be out
    notified_at: float | None = None
    relax: int = 0  # 1: a relax-lane job, which costs no credits
    budget_hold_ms: int = 0  # estimated GPU time held against the month's budget while open
    budget_spent_ms: int = 0  # GPU time charged to the month at its end

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @classmethod
    def from_row(cls, row: Row) -> JobRecord:
        values = by_name(row, _JOB_FIELDS)
        request, reply = values[_REQUEST], values[_REPLY]  # JSON text in the table
        values[_REQUEST] = json.loads(request)
        values[_REPLY] = json.loads(reply) if reply else None
        return cls(*values)


@dataclass(frozen=True, kw_only=True)
class NewJob:
    """A job to accept, with the limits it is accepted under."""

    job_id: str
    user_id: str
    cost: int
    day: str
    request: dict[str, Any]
    reply: dict[str, Any] | None
    instance_id: str | None
    now: float
    # the limits
    default_allowance: int
    unlimited: bool
    max_user_open: int
    max_open: int
    # the relax lane and the GPU budget
    relax: bool = False  # costs no credits; allowed once the user's credits are spent
    relax_daily: int = 0  # relax jobs a user may have per day (0: the lane is off)
    budget_hold_ms: int = 0  # the job's estimated GPU time
    budget_ceiling_ms: int | None = None  # the month's ceiling from the settings (None: off)

    @property
    def month(self) -> str:
        return self.day[:7]


@dataclass(frozen=True)
class BudgetState:
    """One UTC month's GPU time: the ceiling in force, what finished jobs used, what open ones hold."""

    month: str
    ceiling_ms: int | None
    spent_ms: int
    held_ms: int
    override: bool  # the ceiling was set by an admin for this month


@dataclass(frozen=True)
class Reservation:
    job: JobRecord
    created: bool  # False: the job id was seen before; nothing was charged again
    position: int  # open jobs ahead of this one, across every process
    quota: QuotaState | None


@dataclass(frozen=True)
class InstanceRecord:
    id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    stopped_at: float | None
    ident: str | None = None

    @classmethod
    def from_row(cls, row: Row) -> InstanceRecord:
        return cls(*by_name(row, _INSTANCE_FIELDS))


_JOB_FIELDS = [field.name for field in fields(JobRecord)]
_REQUEST, _REPLY = _JOB_FIELDS.index("request"), _JOB_FIELDS.index("reply")
_INSTANCE_FIELDS = [field.name for field in fields(InstanceRecord)]
