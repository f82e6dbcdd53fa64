"""SQLite storage: users, quotas, the credit ledger, jobs and bans. Imports nothing of the project."""

from storage.db import Database
from storage.errors import RefusedReason, ReservationRefused, StoreError, StoreUnavailable
from storage.records import BudgetState, InstanceRecord, JobRecord, NewJob, QuotaState, Reservation

__all__ = [
    "BudgetState",
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
