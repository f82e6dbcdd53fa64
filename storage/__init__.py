"""SQLite storage: users, quotas, the credit ledger, jobs and bans. Imports nothing of the project."""

from storage.db import (
    Database,
    InstanceRecord,
    JobRecord,
    NewJob,
    QuotaState,
    RefusedReason,
    Reservation,
    ReservationRefused,
    StoreError,
    StoreUnavailable,
)

__all__ = [
    "Database",
    "InstanceRecord",
    "JobRecord",
    "NewJob",
    "QuotaState",
    "RefusedReason",
    "Reservation",
    "ReservationRefused",
    "StoreError",
    "StoreUnavailable",
]
