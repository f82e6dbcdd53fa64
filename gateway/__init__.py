"""The gateway: request parsing, quotas, the job queue, backends. Imports no torch and no front."""

from gateway.backend import Backend, GenerationResult, create_backend, register_backend
from gateway.errors import (
    BackendError,
    BackendFailed,
    BackendUnavailable,
    Banned,
    Busy,
    Cancelled,
    DeliveryRefused,
    ImagineError,
    InvalidRequest,
    JobFailed,
    NotAllowed,
    OutOfCredits,
    SafetyBlocked,
    TimedOut,
)
from gateway.jobs import Job, JobResult, JobStatus, JobUpdate
from gateway.request import ImageRequest, parse_prompt, validate
from gateway.service import ImagineService, parse_user
from gateway.settings import Secret, Settings, SettingsError
from storage import JobRecord, QuotaState

__all__ = [
    "Backend",
    "BackendError",
    "BackendFailed",
    "BackendUnavailable",
    "Banned",
    "Busy",
    "Cancelled",
    "DeliveryRefused",
    "GenerationResult",
    "ImageRequest",
    "ImagineError",
    "ImagineService",
    "InvalidRequest",
    "Job",
    "JobFailed",
    "JobRecord",
    "JobResult",
    "JobStatus",
    "JobUpdate",
    "NotAllowed",
    "OutOfCredits",
    "QuotaState",
    "SafetyBlocked",
    "Secret",
    "Settings",
    "SettingsError",
    "TimedOut",
    "create_backend",
    "parse_prompt",
    "parse_user",
    "register_backend",
    "validate",
]
