"""Pictures a user sends, and the image actions made from a delivered image.

Every front hands the bytes it received (never a URL) to :func:`read_picture`: PNG, JPEG or WebP,
at most 10 MB and 4096x4096 (checked from the header, before a pixel is decoded, so a decompression
bomb costs nothing), EXIF orientation applied, transparency flattened on white, and re-encoded as
PNG. A bad picture is one :class:`InvalidRequest` sentence, and nothing is charged.

The actions of DESIGN.md's "Image actions" are requests built here: an image prompt
(:func:`image_prompt`), an upscale (:func:`upscale`: 2x each side up to 2048, Lanczos, then img2img
at 0.3 with the same prompt and seed) and a variation (:func:`vary`: img2img at 0.35 or 0.7 with a
new seed).
"""

from __future__ import annotations

import io
import threading
import warnings
from dataclasses import dataclass, replace

from PIL import Image, ImageOps, UnidentifiedImageError

from gateway.errors import InvalidRequest
from gateway.request import (
    DEFAULT_STRENGTH,
    MAX_SIDE,
    MAX_UPSCALE_SIDE,
    MIN_SIDE,
    SIDE_STEP,
    ImageRequest,
)

MAX_PICTURE_BYTES = 10 * 1024 * 1024
MAX_PICTURE_SIDE = 4096
FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP"}
UPSCALE_STRENGTH = 0.3
VARY_SUBTLE, VARY_STRONG = 0.35, 0.7
DECODES_AT_ONCE = 2
_decoding = threading.BoundedSemaphore(DECODES_AT_ONCE)


@dataclass(frozen=True)
class Picture:
    png: bytes
    width: int
    height: int


def read_picture(data: bytes) -> Picture:
    """The picture as RGB PNG bytes, or one sentence saying what is wrong with it.

    At most :data:`DECODES_AT_ONCE` pictures are decoded at a time, whichever front sent them: a
    4096x4096 picture takes about 50 MB while it is worked on, so memory stays bounded however many
    arrive together (the others wait their turn on their own threads).
    """
    if len(data) > MAX_PICTURE_BYTES:
        raise too_big(len(data))
    with _decoding:
        return _decode(data)


def _decode(data: bytes) -> Picture:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=list(FORMATS))
            width, height = opened.size
            if width > MAX_PICTURE_SIDE or height > MAX_PICTURE_SIDE:
                raise InvalidRequest(
                    f"The picture is {width}x{height}; the limit is {MAX_PICTURE_SIDE}x{MAX_PICTURE_SIDE}."
                )
            opened.load()
    except UnidentifiedImageError:
        raise InvalidRequest("The picture must be a PNG, JPEG or WebP image.") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidRequest(
            f"The picture claims more pixels than {MAX_PICTURE_SIDE}x{MAX_PICTURE_SIDE}; send a smaller one."
        ) from None
    except (OSError, SyntaxError, ValueError):
        raise InvalidRequest("The picture is damaged or cut off; send it again.") from None
    image: Image.Image = ImageOps.exif_transpose(opened)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        image = flat
    image = image.convert("RGB")
    return Picture(_png(image), image.width, image.height)


def too_big(size: int) -> InvalidRequest:
    """The sentence for a picture of ``size`` bytes, also for a front that stops a download early."""
    return InvalidRequest(
        f"The picture is {size / 2**20:.1f} MB; the limit is {MAX_PICTURE_BYTES // 2**20} MB."
    )


def fit_size(width: int, height: int, limit: int = MAX_SIDE) -> tuple[int, int]:
    """The picture's aspect ratio fitted inside ``limit`` x ``limit``, each side a multiple of 64."""
    return scaled(width, height, min(limit / width, limit / height), limit)


def scaled(width: int, height: int, scale: float, limit: int) -> tuple[int, int]:
    """``width`` x ``height`` times ``scale``, each side a multiple of 64 from 256 to ``limit``."""

    def side(value: float) -> int:
        return max(MIN_SIDE, min(limit, round(value * scale / SIDE_STEP) * SIDE_STEP))

    return side(width), side(height)


def resized(picture: Picture, size: tuple[int, int]) -> bytes:
    """The picture at ``size`` (Lanczos), as PNG."""
    with Image.open(io.BytesIO(picture.png)) as image:
        if image.size == size:
            return picture.png
        return _png(image.convert("RGB").resize(size, Image.Resampling.LANCZOS))


def image_prompt(request: ImageRequest, data: bytes, *, keep_size: bool) -> ImageRequest:
    """A user's picture plus a prompt: img2img at ``--strength`` (0.6 by default).

    The output takes the picture's aspect ratio fitted to 1024x1024, unless ``keep_size`` (the user
    gave ``--ar`` or ``--size``).
    """
    picture = read_picture(data)
    size = (request.width, request.height) if keep_size else fit_size(picture.width, picture.height)
    return replace(
        request,
        kind="image",
        width=size[0],
        height=size[1],
        strength=request.strength if request.strength is not None else DEFAULT_STRENGTH,
        init_image=resized(picture, size),
    )


def upscale(source: ImageRequest, png: bytes, seed: int) -> ImageRequest:
    """One image of a result at twice each side (up to 2048), refined with its own prompt and seed."""
    return _act(
        source, png, "upscale", grow=2.0, limit=MAX_UPSCALE_SIDE, seed=seed, strength=UPSCALE_STRENGTH
    )


def vary(source: ImageRequest, png: bytes, *, strong: bool = False) -> ImageRequest:
    """One image of a result, varied: the composition kept (subtle) or loosened (strong), a new seed."""
    strength = VARY_STRONG if strong else VARY_SUBTLE
    return _act(source, png, "vary", grow=1.0, limit=MAX_SIDE, seed=None, strength=strength)


def _act(
    source: ImageRequest, png: bytes, kind: str, *, grow: float, limit: int, seed: int | None, strength: float
) -> ImageRequest:
    """One image at up to ``grow`` times its sides (within ``limit``), img2img at ``strength``."""
    picture = read_picture(png)
    w, h = picture.width, picture.height
    size = scaled(w, h, min(grow, limit / w, limit / h), limit)
    return replace(
        source,
        kind=kind,
        width=size[0],
        height=size[1],
        seed=seed,
        num_images=1,
        strength=strength,
        init_image=resized(picture, size),
    )


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False, compress_level=1)
    return out.getvalue()


ACTIONS = ("upscale", "vary", "vary_strong")


def action_request(source: ImageRequest, png: bytes, action: str, index: int) -> ImageRequest:
    """The request a button (U2, V1, Vary strong) asks for: image ``index`` of a result whose request
    was ``source``, given that image's PNG as the platform serves it back."""
    if action == "upscale":
        seed = (source.seed or 0) + index
        return upscale(source, png, seed=seed)
    if action in ("vary", "vary_strong"):
        return vary(source, png, strong=action == "vary_strong")
    raise InvalidRequest(f"Unknown image action {action!r}; the actions are {', '.join(ACTIONS)}.")
