"""The worker's side of the Cog prediction protocol: the body it takes and the JSON it answers.

:mod:`gateway.cog` holds what the worker shares with the ``http`` and ``replicate`` backends
(input field names, reading an input into an :class:`~gateway.request.ImageRequest`, PNG data
URIs); this module holds what only the worker serves: the OpenAPI shapes, the fields a body may
carry, the states a prediction ends in, and how a response is encoded (once, as it is served).
The routes read and check the body by hand, so a too-big body is refused before parsing and a bad
field gets the gateway's own sentence; these models describe it in the OpenAPI document.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from gateway.cog import MAX_PICTURE_URI_CHARS
from gateway.request import (
    DEFAULT_GUIDANCE,
    DEFAULT_SCHEDULER,
    DEFAULT_STRENGTH,
    MAX_IMAGES,
    MAX_SEED,
    MAX_UPSCALE_SIDE,
)

#: A prompt and a few numbers fit in 64 KiB, and so do the headers.
MAX_HEADER_BYTES = 64 * 1024
#: The largest picture (10 MB) as a base64 data: URI, and the rest of the input.
MAX_BODY_BYTES = MAX_PICTURE_URI_CHARS + 64 * 1024
BODY_FIELDS = ("id", "input", "created_at")
TERMINAL = frozenset({"succeeded", "failed", "canceled"})


class PredictionInput(BaseModel):
    prompt: str = Field(description="What to draw; up to 1000 characters.")
    negative_prompt: str = Field("", description="What to avoid; up to 500 characters.")
    width: int = Field(
        512,
        ge=256,
        le=MAX_UPSCALE_SIDE,
        description="A multiple of 64 up to 1024 (an upscale: up to 2048). With an image: "
        "its size fitted to 1024x1024 when width and height are left out.",
    )
    height: int = Field(512, ge=256, le=MAX_UPSCALE_SIDE, description="As width.")
    num_outputs: int = Field(1, ge=1, le=MAX_IMAGES)
    num_inference_steps: int = Field(25, ge=1, le=50)
    guidance_scale: float = Field(DEFAULT_GUIDANCE, ge=1, le=20)
    scheduler: str = Field(
        DEFAULT_SCHEDULER,
        description="dpmpp, euler, euler_a, ddim, pndm, lms (or Replicate's names: DPMSolverMultistep, ...)",
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Random when left out.")
    image: str | None = Field(
        None,
        description="img2img: the picture as a data:image/png;base64,... URI (PNG, JPEG or WebP, "
        "at most 10 MB and 4096x4096). URLs are refused.",
    )
    prompt_strength: float = Field(
        DEFAULT_STRENGTH, ge=0.05, le=1, description="With image: how far to move from the picture."
    )
    imagine_kind: str = Field(
        "image",
        description="With image: image (an image prompt), upscale (up to 2048 a side) or vary.",
    )


class PredictionRequest(BaseModel):
    id: str | None = Field(None, description="Makes POST idempotent too; PUT takes it from the path.")
    input: PredictionInput


class PredictionResponse(BaseModel):
    id: str
    status: str = Field(
        description="succeeded, failed or canceled; starting or processing in a 202 (Prefer: respond-async)"
    )
    input: dict[str, Any]
    output: list[str] | None = Field(description="PNG images as data URIs")
    error: str | None
    logs: str = ""
    metrics: dict[str, float]
    seed: int | None
    seeds: list[int]
    blocked: int = Field(0, description="images withheld by the safety checker")
    prompt_truncated: bool
    model: str
    created_at: str
    started_at: str | None
    completed_at: str | None


class ErrorResponse(BaseModel):
    detail: str


def request_schema() -> dict[str, Any]:
    """The body of ``POST /predictions`` and ``PUT /predictions/{id}`` for the OpenAPI document."""
    return {
        "type": "object",
        "required": ["input"],
        "properties": {
            "id": {"type": "string", "description": "Makes POST idempotent too; PUT takes it from the path."},
            "input": PredictionInput.model_json_schema(),
        },
    }


def encode_json(content: Any) -> bytes:
    """JSON as Starlette's ``JSONResponse`` writes it, so a kept body is served byte for byte."""
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode()


def iso(timestamp: float | None) -> str | None:
    """A wall-clock time as Cog writes it (ISO 8601, UTC, ``Z``)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def quote(value: str, limit: int = 40) -> str:
    """A value a client sent (an id, a host) as a sentence quotes it: at most ``limit`` characters."""
    return repr(value if len(value) <= limit else value[:limit] + "...")
