"""What the API answers, as JSON: a job's view, the quota, and the error shape every refusal shares."""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi.responses import Response

from gateway.errors import Banned, Busy, ImagineError, InvalidRequest, NotAllowed, OutOfCredits
from gateway.jobs import Job, JobStatus
from gateway.messages import next_reset, queue_text, result_caption
from gateway.pickup import Waiting
from storage import QuotaState

NO_STORE = {"Cache-Control": "no-store"}


class JSON(Response):
    """Compact ASCII JSON: cheap to make, and never fails on odd characters."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode()


def error_response(
    status: int,
    message: str,
    kind: str,
    *,
    retry_after: float | None = None,
    headers: dict[str, str] | None = None,
) -> JSON:
    all_headers = dict(NO_STORE)
    if retry_after is not None:
        all_headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    if headers:
        all_headers.update(headers)
    return JSON({"error": message, "kind": kind}, status_code=status, headers=all_headers)


def refusal(error: ImagineError, now: float) -> JSON:
    """The HTTP answer for a gateway error raised before anything was charged."""
    if isinstance(error, InvalidRequest):
        return error_response(400, str(error), error.kind)
    if isinstance(error, Banned | NotAllowed):
        return error_response(403, str(error), error.kind)
    if isinstance(error, OutOfCredits):
        return error_response(429, str(error), error.kind, retry_after=error.resets_at.timestamp() - now)
    if isinstance(error, Busy):
        return error_response(429, str(error), error.kind, retry_after=error.retry_after)
    return error_response(400, str(error), error.kind)


def tag(job: Job) -> str:
    """Changes whenever the job does: a client passes it back as ``after`` to wait for news."""
    return f"{job.status.value}.{job.position}.{job.step}"


def _message(job: Job, waiting: Waiting | None) -> str:
    if waiting is not None and waiting.refund_error is not None:
        return waiting.refund_error
    if job.status is JobStatus.QUEUED:
        return queue_text(job.position)
    if job.status is JobStatus.RUNNING:
        return f"Making your image… step {job.step} of {job.total_steps}."
    if job.status is JobStatus.SUCCEEDED:
        return "Done."
    return str(job.error) if job.error is not None else "The job failed; its credits were refunded."


def job_created(job: Job) -> dict[str, Any]:
    return {"id": job.id, "status": job.status.value, "position": job.position, "tag": tag(job)}


def job_view(job: Job, waiting: Waiting | None, stored: int = 0) -> dict[str, Any]:
    """The job as JSON; ``stored``: images on disk of a job this process no longer follows."""
    request = job.request
    result = job.result
    status = job.status.value
    error = str(job.error) if job.error is not None else None
    refunded = bool(job.error is not None and job.error.refunded)
    images: list[str] = []
    expired = False
    if waiting is not None and waiting.refund_error is not None:
        status, error, refunded = "failed", waiting.refund_error, True
    elif job.status is JobStatus.SUCCEEDED:
        count = result.image_count if waiting is not None and result is not None else stored
        if count:
            images = [f"/api/jobs/{job.id}/images/{i}.png" for i in range(count)]
        else:
            expired = True
    if result is not None:
        seeds = list(result.seeds)
    elif request.seed is not None:
        seeds = [request.seed + i for i in range(request.num_images)]
    else:
        seeds = []
    return {
        "id": job.id,
        "status": status,
        "position": job.position if job.status is JobStatus.QUEUED else 0,
        "progress": round(job.progress, 4),
        "step": job.step,
        "total_steps": job.total_steps,
        "message": _message(job, waiting),
        "images": images,
        "expired": expired,
        "error": error,
        "refunded": refunded,
        "prompt": request.prompt,
        "request": request.describe(),
        "width": request.width,
        "height": request.height,
        "seeds": seeds,
        "caption": result_caption(result) if result is not None and images else None,
        "credits_left": result.credits_left if result is not None else job.credits_left,
        "notes": list(result.notes) if result is not None else [],
        "tag": tag(job) if waiting is None or waiting.refund_error is None else "refunded",
    }


def quota_view(user_id: str, state: QuotaState, text: str, now: float) -> dict[str, Any]:
    return {
        "user": user_id,
        "allowance": state.allowance,
        "used": state.used,
        "bonus": state.bonus,
        "reserved": state.reserved,
        "remaining": state.remaining,
        "unlimited": state.unlimited,
        "override": state.override,
        "resets_at": next_reset(now).isoformat().replace("+00:00", "Z"),
        "text": text,
    }
