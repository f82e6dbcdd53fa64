"""The Cog prediction protocol as Imagine speaks it: input fields, outputs, prediction ids.

Shared by the worker (``backend/worker/``), the ``http`` backend and the ``replicate``
backend, so the three agree on field names (those of the public Stable Diffusion models on
Replicate), on defaults and ranges (the request's, through :func:`gateway.request.validate`)
and on how images travel (PNG data URIs).

Img2img (image prompts, upscale, vary) takes the input names of Replicate's Stable Diffusion
img2img models: ``image`` (the picture, a ``data:`` URI) and ``prompt_strength`` (0 to 1), plus
``imagine_kind`` (``image``, ``upscale`` or ``vary``), which only the worker reads: an upscale
may be up to 2048 a side. A URL in ``image`` is refused: nothing fetches a URL a caller names.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from gateway.errors import InvalidRequest, quoted, shown
from gateway.request import (
    DEFAULT_SCHEDULER,
    DEFAULT_STRENGTH,
    KINDS,
    MAX_SIDE,
    MAX_UPSCALE_SIDE,
    ImageRequest,
    check_field,
    validate,
)

INPUT_FIELDS = (
    "prompt",
    "negative_prompt",
    "width",
    "height",
    "num_outputs",
    "num_inference_steps",
    "guidance_scale",
    "scheduler",
    "seed",
    "image",
    "prompt_strength",
    "imagine_kind",
)
#: The fields a Replicate model is sent: all but Imagine's own.
REPLICATE_FIELDS = tuple(name for name in INPUT_FIELDS if name != "imagine_kind")

#: The scheduler names of Replicate's Stable Diffusion models, and Imagine's for each.
REPLICATE_SCHEDULERS: dict[str, str] = {
    "dpmpp": "DPMSolverMultistep",
    "euler": "K_EULER",
    "euler_a": "K_EULER_ANCESTRAL",
    "ddim": "DDIM",
    "pndm": "PNDM",
    "lms": "KLMS",
}
_SCHEDULER_ALIASES = {v.lower(): k for k, v in REPLICATE_SCHEDULERS.items()}

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DATA_URI = re.compile(r"data:image/png;base64,(?P<data>[A-Za-z0-9+/=\s]*)\Z")
_PICTURE_URI = re.compile(
    r"data:(?P<type>[a-z]+/[A-Za-z0-9.+-]+)?(?:;[A-Za-z0-9=._-]+)*?;base64,(?P<data>[A-Za-z0-9+/=\s]*)\Z"
)
#: A picture of MAX_PICTURE_BYTES as base64, with room for line breaks; longer is refused unread.
MAX_PICTURE_URI_CHARS = 4 * (10 * 1024 * 1024 // 3 + 1) * 77 // 76 + 256
_PREDICTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")


def request_to_input(request: ImageRequest, *, replicate_names: bool = False) -> dict[str, Any]:
    """The prediction input for ``request`` (scheduler named Replicate's way if asked)."""
    scheduler = REPLICATE_SCHEDULERS.get(request.scheduler, request.scheduler)
    data: dict[str, Any] = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "width": request.width,
        "height": request.height,
        "num_outputs": request.num_images,
        "num_inference_steps": request.steps,
        "guidance_scale": request.guidance,
        "scheduler": scheduler if replicate_names else request.scheduler,
    }
    if request.seed is not None:
        data["seed"] = request.seed
    if request.init_image is not None:
        data["image"] = png_data_uri(request.init_image)
        data["prompt_strength"] = request.strength
        if not replicate_names:
            data["imagine_kind"] = request.kind
    return data


def request_from_input(data: object) -> ImageRequest:
    """A validated request from a prediction's ``input``; :class:`InvalidRequest` says what is wrong."""
    if not isinstance(data, Mapping):
        raise InvalidRequest('The body must be a JSON object like {"input": {"prompt": "a red fox"}}.')
    unknown = sorted(str(k) for k in data if k not in INPUT_FIELDS)
    if unknown:
        raise InvalidRequest(
            f"Unknown input field {quoted(unknown[0])}; the known fields are {', '.join(INPUT_FIELDS)}."
        )
    if "prompt" not in data:
        raise InvalidRequest('The input needs a "prompt": describe the image you want.')
    for name in ("prompt", "negative_prompt", "scheduler"):
        if name in data and not isinstance(data[name], str):
            raise InvalidRequest(f"The {name.replace('_', ' ')} must be text; got {shown(data[name])}.")
    scheduler = str(data.get("scheduler", DEFAULT_SCHEDULER))
    defaults = ImageRequest(prompt="")
    seed = data.get("seed")
    request = ImageRequest(
        prompt=data["prompt"],
        negative_prompt=data.get("negative_prompt") or "",
        width=_whole(data.get("width", defaults.width)),
        height=_whole(data.get("height", defaults.height)),
        steps=_whole(data.get("num_inference_steps", defaults.steps)),
        guidance=data.get("guidance_scale", defaults.guidance),
        seed=None if seed is None else _whole(seed),
        num_images=_whole(data.get("num_outputs", defaults.num_images)),
        scheduler=_SCHEDULER_ALIASES.get(scheduler.lower(), scheduler),
    )
    if "image" in data:
        request = _with_picture(request, data)
    elif "prompt_strength" in data or "imagine_kind" in data:
        name = "prompt_strength" if "prompt_strength" in data else "imagine_kind"
        raise InvalidRequest(f'The input has "{name}" but no "image": send the picture as a data: URI.')
    return validate(request)


def _with_picture(request: ImageRequest, data: Mapping[str, Any]) -> ImageRequest:
    """The request as img2img from ``data["image"]``, sized as asked or as the picture (fitted)."""
    from gateway.picture import fit_size, read_picture, resized  # Pillow, only for a picture

    kind = data.get("imagine_kind", "image")
    if kind not in KINDS or kind == "text":
        raise InvalidRequest(
            f"imagine_kind must be one of {', '.join(k for k in KINDS if k != 'text')}; got {shown(kind)}."
        )
    strength = data.get("prompt_strength", DEFAULT_STRENGTH)
    check_field("strength", strength)
    picture = read_picture(picture_from_uri(data["image"]))
    if "width" in data or "height" in data:
        # Every field checked before the picture is resized to a size the caller chose.
        validate(replace(request, kind=kind, strength=strength, init_image=b""))
        size = (request.width, request.height)
    else:
        limit = MAX_UPSCALE_SIDE if kind == "upscale" else MAX_SIDE
        size = fit_size(picture.width, picture.height, limit)
    return replace(
        request,
        kind=kind,
        width=size[0],
        height=size[1],
        strength=float(strength),
        init_image=resized(picture, size),
    )


def picture_from_uri(uri: object) -> bytes:
    """The bytes of the ``image`` input (a base64 ``data:`` URI); one sentence for anything else."""
    if not isinstance(uri, str):
        raise InvalidRequest(f"The image must be a data: URI as text; got {shown(uri)}.")
    if uri.lower().startswith(("http://", "https://", "ftp://", "file:")):
        raise InvalidRequest(
            "The worker does not fetch pictures from URLs; send the picture itself in "
            '"image" as a data:image/png;base64,... URI.'
        )
    if len(uri) > MAX_PICTURE_URI_CHARS:  # refused before decoding, with read_picture's sentence
        from gateway.picture import MAX_PICTURE_BYTES

        raise InvalidRequest(
            f"The picture is {len(uri) * 3 / 4 / 2**20:.1f} MB; the limit is {MAX_PICTURE_BYTES // 2**20} MB."
        )
    match = _PICTURE_URI.match(uri)
    if match is None:
        raise InvalidRequest(
            f"The image must be a data:image/png;base64,... URI (PNG, JPEG or WebP); got {shown(uri)}."
        )
    try:
        return base64.b64decode("".join(match["data"].split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("The image's base64 is damaged; encode the picture again.") from None


def _whole(value: Any) -> Any:
    """``512.0`` is 512 (some JSON encoders write whole numbers so); anything else is left to validate."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def png_from_data_uri(uri: object) -> bytes:
    """The PNG bytes of a data URI; ``ValueError`` for anything that is not one."""
    if not isinstance(uri, str):
        raise ValueError("an output is not a string")
    match = _DATA_URI.match(uri)
    if match is None:
        raise ValueError("an output is not a PNG data URI")
    try:
        png = base64.b64decode(match["data"], validate=False)
    except (binascii.Error, ValueError):
        raise ValueError("an output is not valid base64") from None
    if not png.startswith(PNG_SIGNATURE):
        raise ValueError("an output is not a PNG")
    return png


def prediction_id(job_id: str) -> str:
    """A URL-safe prediction id that is the same for the same job (so a retried PUT is idempotent)."""
    return "imagine-" + hashlib.sha256(job_id.encode("utf-8")).hexdigest()[:32]


def is_prediction_id(text: str) -> bool:
    return _PREDICTION_ID.match(text) is not None


def safe_reason(text: object, limit: int = 300) -> str:
    """Text from another service, fit to show a user: one line, printable, bounded."""
    line = " ".join(str(text).split())
    line = "".join(ch for ch in line if ch.isprintable())
    if len(line) > limit:
        line = line[: limit - 1].rstrip() + "…"
    return line.rstrip(".") or "no reason given"
