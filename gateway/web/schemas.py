"""The API's shapes for pydantic and the OpenAPI document, and the one handler that turns a body
pydantic refuses into the sentence every front gives.

``POST /api/jobs`` is validated by :class:`JobRequest`: each typed field is checked for its JSON
type, then by the gateway's own validator (:func:`gateway.request.check_field`), so a bad field gets
the sentence its inline flag would get; the ``Field`` bounds are the same ranges, for the document.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo
from pydantic_core import PydanticCustomError

from gateway.errors import InvalidRequest, elided
from gateway.picture import MAX_PICTURE_BYTES
from gateway.request import (
    MAX_GUIDANCE,
    MAX_IMAGES,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    MAX_STRENGTH,
    MIN_GUIDANCE,
    MIN_IMAGES,
    MIN_SIDE,
    MIN_STEPS,
    MIN_STRENGTH,
    SCHEDULERS,
    SIDE_STEP,
    check_field,
)
from gateway.web.views import error_response

BODY_HELP = 'The request body must be a JSON object like {"prompt": "a lighthouse at dusk --ar 16:9"}.'
PROMPT_HELP = (
    'The request needs "prompt": the text of the image you want, with any flags, '
    'e.g. {"prompt": "a lighthouse at dusk --ar 16:9"}.'
)

# --- the job body ---------------------------------------------------------------------------------


def _sentence(kind: str, sentence: str) -> PydanticCustomError:
    """An error whose message is the sentence the client gets ("{" doubled: it is a template)."""
    return PydanticCustomError(kind, sentence.replace("{", "{{").replace("}", "}}"))


def _wrong_type(name: str | None, words: str, value: object) -> PydanticCustomError:
    return _sentence("wrong_type", f'"{name}" must be {words}; got {elided(json.dumps(value))}.')


def _valid_text(name: str | None, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _sentence(
            "wrong_type",
            f'"{name}" contains a character that is not valid text (an unpaired surrogate); remove it.',
        ) from None


def _gateway_check(name: str | None, value: object) -> None:
    try:
        check_field(str(name), value)
    except InvalidRequest as error:
        raise _sentence("invalid_value", str(error)) from None


def _prompt(value: object, info: ValidationInfo) -> object:
    if not isinstance(value, str):
        raise _sentence("wrong_type", PROMPT_HELP)
    _valid_text(info.field_name, value)
    return value


def _text(value: object, info: ValidationInfo) -> object:
    if not isinstance(value, str):
        raise _wrong_type(info.field_name, "text", value)
    _valid_text(info.field_name, value)
    _gateway_check(info.field_name, value)
    return value


def _number(words: str) -> Callable[[object, ValidationInfo], object]:
    whole = words == "a whole number"

    def check(value: object, info: ValidationInfo) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _wrong_type(info.field_name, words, value)
        if whole and isinstance(value, float) and value.is_integer():
            value = int(value)  # 21.0, as some JSON encoders write 21
        _gateway_check(info.field_name, value)
        return value

    return check


_DATA_URI = re.compile(r"data:image/(png|jpeg|webp);base64,", re.IGNORECASE)
DATA_URI_PATTERN = "^data:image/(png|jpeg|webp);base64,[A-Za-z0-9+/]*={0,2}$"
#: The longest ``image`` that can hold a picture of the largest size allowed.
MAX_IMAGE_CHARS = len("data:image/jpeg;base64,") + 4 * -(-MAX_PICTURE_BYTES // 3)


def _picture(value: object, info: ValidationInfo) -> object:
    """A ``data:`` URI's picture as bytes; what the picture holds is checked by gateway.picture."""
    if not isinstance(value, str):
        raise _wrong_type(info.field_name, "a data: URI", value)
    head = _DATA_URI.match(value)
    if head is None:
        raise _sentence(
            "invalid_value",
            '"image" must be a PNG, JPEG or WebP picture as a data: URI, '
            f"like data:image/png;base64,...; got {elided(json.dumps(value[:60]))}.",
        )
    if len(value) > MAX_IMAGE_CHARS:
        megabytes = (len(value) - head.end()) * 3 / 4 / 2**20
        raise _sentence(
            "invalid_value",
            f"The picture is {megabytes:.1f} MB; the limit is {MAX_PICTURE_BYTES // 2**20} MB.",
        )
    try:
        return base64.b64decode(value[head.end() :], validate=True)
    except (binascii.Error, ValueError):
        raise _sentence("invalid_value", '"image" is not valid base64 after "base64,".') from None


Text = BeforeValidator(_text)
WholeNumber = BeforeValidator(_number("a whole number"))
Number = BeforeValidator(_number("a number"))
Side = Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE, multiple_of=SIDE_STEP), WholeNumber]


class JobRequest(BaseModel):
    """``prompt`` carries the inline flags of DESIGN.md; the other fields are optional typed
    defaults (like the Discord options), and flags in the prompt win over them."""

    model_config = ConfigDict(extra="forbid")

    prompt: Annotated[
        str,
        Field(examples=["a lighthouse at dusk, oil painting --ar 16:9 --seed 42"]),
        BeforeValidator(_prompt),
    ]
    negative_prompt: Annotated[str, Field(description="What to leave out (`--no`)."), Text] | None = None
    width: Side | None = None
    height: Side | None = None
    steps: Annotated[int, Field(ge=MIN_STEPS, le=MAX_STEPS), WholeNumber] | None = None
    guidance: Annotated[float, Field(ge=MIN_GUIDANCE, le=MAX_GUIDANCE), Number] | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED), WholeNumber] | None = None
    num_images: Annotated[int, Field(ge=MIN_IMAGES, le=MAX_IMAGES), WholeNumber] | None = None
    scheduler: Annotated[Literal[SCHEDULERS], Text] | None = None  # type: ignore[valid-type]
    image: (
        Annotated[
            bytes,
            Field(
                description="An image prompt: the picture to start from, PNG, JPEG or WebP of at most "
                "10 MB and 4096x4096, as a data: URI. The output takes its aspect ratio (fitted to "
                "1024x1024) unless `--ar`/`--size`/width/height say otherwise.",
                json_schema_extra={
                    "type": "string",
                    "format": None,
                    "pattern": DATA_URI_PATTERN,
                    "maxLength": MAX_IMAGE_CHARS,
                },
            ),
            BeforeValidator(_picture),
        ]
        | None
    ) = None
    strength: (
        Annotated[
            float,
            Field(
                ge=MIN_STRENGTH,
                le=MAX_STRENGTH,
                description="How far the output may move from `image` (`--strength`); default 0.6.",
            ),
            Number,
        ]
        | None
    ) = None

    def defaults(self) -> dict[str, Any]:
        """The typed fields that were given, for :func:`gateway.request.parse_prompt`."""
        return self.model_dump(exclude={"prompt", "image"}, exclude_none=True)


Strength = Literal["subtle", "strong"]


def _vary_strength(value: object, info: ValidationInfo) -> object:
    if value in ("subtle", "strong"):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _sentence(
            "wrong_type",
            f'"strength" must be "subtle", "strong" or a number from {MIN_STRENGTH:g} to '
            f"{MAX_STRENGTH:g}; got {elided(json.dumps(value))}.",
        )
    _gateway_check("strength", value)
    return float(value)


class VaryRequest(BaseModel):
    """How far a variation moves from its image: subtle (0.35, the default), strong (0.7) or a number."""

    model_config = ConfigDict(extra="forbid")

    strength: Annotated[
        Strength | Annotated[float, Field(ge=MIN_STRENGTH, le=MAX_STRENGTH)],
        BeforeValidator(_vary_strength),
    ] = "subtle"


class UpscaleRequest(BaseModel):
    """An upscale takes no options: twice each side (up to 2048), its image's prompt and seed."""

    model_config = ConfigDict(extra="forbid")


#: Which of a body's problems is told: today's order is unknown fields, then each field's JSON
#: type in field order, then each field's value.
_RANK = {"extra_forbidden": 0, "missing": 1, "wrong_type": 1}


def _known_fields(path: str) -> str:
    """The known fields of the body a route takes (the job's, or an action's)."""
    model: type[BaseModel] = JobRequest
    if path.endswith("/upscale"):
        model = UpscaleRequest
    elif path.endswith("/vary"):
        model = VaryRequest
    known = ", ".join(model.model_fields)
    return f"the known fields are {known}" if known else "this request takes no fields"


def _problem(error: dict[str, Any], path: str) -> str:
    loc = error.get("loc", ())
    kind = error.get("type")
    if kind == "json_invalid" or len(loc) < 2 or loc[0] != "body":
        return BODY_HELP
    name = loc[1]
    if kind == "extra_forbidden":
        return f"Unknown field {elided(json.dumps(name))}; {_known_fields(path)}."
    if kind == "missing" and name == "prompt":
        return PROMPT_HELP
    message = str(error.get("msg", "is not valid"))
    return message if kind in ("wrong_type", "invalid_value") else f'"{name}": {message.rstrip(".")}.'


async def invalid_request(request: Request, exc: Exception) -> Response:
    """The one 400 for input FastAPI refuses: the sentence of the first problem, as every front says it."""
    assert isinstance(exc, RequestValidationError)
    errors = sorted(exc.errors(), key=lambda error: _RANK.get(error.get("type", ""), 2))
    problem = _problem(errors[0], request.url.path) if errors else BODY_HELP
    return error_response(400, problem, "invalid")


# --- what the routes answer (for the document; the routes write these shapes in views.py) --------


class JobCreated(BaseModel):
    id: str = Field(examples=["web:4f0c8b0e-3c1d-4b53-9b8e-0d6f1f0a2b3c"])
    status: Literal["queued", "running", "succeeded", "failed"]
    position: int = Field(description="Jobs ahead of this one.")
    tag: str = Field(description="Pass it as `after` to GET /api/jobs/{id} to wait for news at once.")


class JobView(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    position: int = Field(description="Jobs ahead of this one while queued; 0 otherwise.")
    progress: float = Field(ge=0, le=1)
    step: int
    total_steps: int
    message: str = Field(description="The job's state in words, as the chat bots say it.")
    images: list[str] = Field(description="URLs of the PNGs, downloadable for a limited time.")
    expired: bool = Field(description="The job succeeded but its images are no longer kept.")
    error: str | None = Field(description="Why the job failed, in one sentence.")
    refunded: bool = Field(description="The job's credits were given back.")
    prompt: str
    request: str = Field(description="The request as prompt and flags, to make it again.")
    width: int
    height: int
    seeds: list[int]
    caption: str | None
    credits_left: int | None
    notes: list[str]
    tag: str = Field(description="Changes whenever the job does; pass it as `after` to wait for news.")


class Quota(BaseModel):
    user: str
    allowance: int
    used: int
    bonus: int
    reserved: int
    remaining: int
    unlimited: bool
    override: bool
    resets_at: str
    text: str


class Health(BaseModel):
    status: Literal["ok", "degraded", "stopping"] = Field(
        description="`degraded` (503) while the database does not answer."
    )
    backend: str
    available: bool
    queue: int


class ErrorBody(BaseModel):
    error: str = Field(description="One sentence that names the problem; show it as it is.")
    kind: str = Field(description="invalid, out_of_credits, busy, rate_limited, banned, blocked, ...")


_DESCRIBED = {
    400: "The input cannot be used (nothing was charged).",
    403: "The address is blocked or the user is banned.",
    404: "No such web job, or no such image of it.",
    409: "The Idempotency-Key was used for a different request.",
    410: "The image is no longer kept.",
    413: "The body is too large.",
    415: "The body is not JSON.",
    429: "Out of credits, too many jobs in progress, too many requests, or busy; see Retry-After.",
    503: "Imagine is stopping, or its database does not answer; see Retry-After.",
    "4XX": "Any other refusal, in the same shape; bad input is always a 400 with a sentence.",
}


def errors(*statuses: int | str) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route, each in the :class:`ErrorBody` shape."""
    return {status: {"model": ErrorBody, "description": _DESCRIBED[status]} for status in statuses}


# The routes read their parameters themselves: GET /api/jobs/{job_id} is polled, and FastAPI's
# parameter machinery costs more than the rest of that request; the Idempotency-Key is checked with
# the head of POST /api/jobs, before its body is read (limits.py). They are described here.
IDEMPOTENCY_KEY_PARAMETER: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Send the same key again (e.g. after a network error) to get the same job instead "
    "of a second one; 1 to 255 visible ASCII characters.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
}
JOB_ID_PARAMETER: dict[str, Any] = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "description": "The id POST /api/jobs answered, `web:<uuid>`.",
    "schema": {"type": "string"},
}
IMAGE_NAME_PARAMETER: dict[str, Any] = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "`0.png` for the first image, `1.png` for the second, ...",
    "schema": {"type": "string", "pattern": "^[0-9]{1,2}[.]png$"},
}
IMAGE_INDEX_PARAMETER: dict[str, Any] = {
    "name": "n",
    "in": "path",
    "required": True,
    "description": "Which image of the job: 0 for the first, 1 for the second, ...",
    "schema": {"type": "string", "pattern": "^[0-9]{1,2}$"},
}
POLL_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "wait",
        "in": "query",
        "required": False,
        "description": "Seconds to wait for news (long polling); 0 answers at once.",
        "schema": {"type": "number", "minimum": 0, "maximum": 30, "default": 0},
    },
    {
        "name": "after",
        "in": "query",
        "required": False,
        "description": "The `tag` last seen: wait until the job moves on from it. News comes at most "
        "every half second while the job runs, and at once when it finishes.",
        "schema": {"type": "string", "maxLength": 100},
    },
]
