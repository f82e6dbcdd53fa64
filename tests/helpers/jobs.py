"""A job to reserve straight through the store, for tests that drive ``storage.Database`` by hand."""

from __future__ import annotations

from typing import Any

from storage import NewJob


def new_job(
    job_id: str,
    *,
    user_id: str = "cli:a",
    cost: int = 1,
    day: str = "2026-11-26",
    now: float = 1.0,
    prompt: str = "x",
    **limits: Any,
) -> NewJob:
    """``job_id`` for ``user_id`` on ``day``; ``limits`` override the rest of :class:`NewJob`."""
    fields: dict[str, Any] = {
        "default_allowance": 25,
        "unlimited": False,
        "max_user_open": 10,
        "max_open": 100,
        "instance_id": None,
        "reply": None,
    }
    fields.update(limits)
    return NewJob(
        job_id=job_id,
        user_id=user_id,
        request={"prompt": prompt, "seed": 1},
        cost=cost,
        day=day,
        now=now,
        **fields,
    )
