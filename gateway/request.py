"""The one request type, its inline-flag parser and its one validator.

``/imagine a lighthouse at dusk --ar 16:9 --seed 42 --no text, watermark`` becomes an
:class:`ImageRequest`; every front (Discord, Telegram, web, CLI) and the worker's HTTP input
go through :func:`validate`, so a bad value gets the same sentence wherever it came from.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from gateway.errors import MAX_NUMBER_DIGITS, InvalidRequest, elided, quoted, shown

MAX_PROMPT_CHARS = 1000
MAX_NEGATIVE_CHARS = 500
MIN_SIDE, MAX_SIDE, SIDE_STEP = 256, 1024, 64
MIN_STEPS, MAX_STEPS, DEFAULT_STEPS = 1, 50, 25
MIN_GUIDANCE, MAX_GUIDANCE, DEFAULT_GUIDANCE = 1.0, 20.0, 7.5
MAX_SEED = 2**32 - 1
MIN_IMAGES, MAX_IMAGES = 1, 4
MIN_RATIO, MAX_RATIO = 1 / 4, 4.0
TARGET_PIXELS = 512 * 512
SCHEDULERS = ("dpmpp", "euler", "euler_a", "ddim", "pndm", "lms")
DEFAULT_SCHEDULER = "dpmpp"
KNOWN_FLAGS = ("--ar", "--size", "--seed", "--steps", "--guidance", "--no", "--n", "--strength", "--relax")
#: Flags that take no value.
SWITCHES = ("--relax",)
MIN_STRENGTH, MAX_STRENGTH, DEFAULT_STRENGTH = 0.05, 1.0, 0.6
#: An upscale is the only way past MAX_SIDE: twice the source's sides, up to this.
MAX_UPSCALE_SIDE = 2048
#: What made a request: a prompt alone, or a picture too (an image prompt, an upscale, a variation).
KINDS = ("text", "image", "upscale", "vary")

#: What a number written with more than 20 digits stands for: out of every range, and shown in a
#: sentence as "a number with more than 20 digits" (see :func:`gateway.errors.shown`).
TOO_LONG_NUMBER: int = 10**MAX_NUMBER_DIGITS

_FLAG = re.compile(r"(?:(?<=\s)|^)(?:--|—|–)([A-Za-z][A-Za-z0-9_-]*)")
#: A subdivision flag such as England's: 🏴, tag letters or digits (a Unicode subdivision id such as
#: "gbeng"), then the cancel tag. The only valid emoji tag sequence (UTS #51); tags elsewhere are refused.
_EMOJI_TAG_SEQUENCE = re.compile(
    "\U0001f3f4\ufe0f?[\U000e0030-\U000e0039\U000e0061-\U000e007a]{3,7}\U000e007f"
)


@dataclass(frozen=True)
class ImageRequest:
    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    seed: int | None = None
    num_images: int = 1
    #: The relax lane: no credits, once they are spent; runs only when no paid job waits.
    relax: bool = False
    scheduler: str = DEFAULT_SCHEDULER
    kind: str = "text"
    #: How far img2img may move from ``init_image`` (0 to 1); None for a text prompt.
    strength: float | None = None
    #: The picture img2img starts from, as PNG bytes at the output size; never a URL past the front.
    init_image: bytes | None = field(default=None, compare=False, repr=False)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def denoise_steps(self) -> int:
        """The steps the pipeline really runs: img2img skips the first ``1 - strength`` of them."""
        if self.init_image is None or self.strength is None:
            return self.steps
        return max(1, min(self.steps, int(self.steps * self.strength)))

    def with_seed(self, seed: int | None) -> ImageRequest:
        return replace(self, seed=seed)

    def reroll(self) -> ImageRequest:
        """The same request with a new (random) seed: the re-roll button."""
        return replace(self, seed=None)

    def as_relax(self) -> ImageRequest:
        """The same request in the relax lane (the Relax button under an out-of-credits sentence)."""
        return replace(self, relax=True)

    def variations(self) -> ImageRequest:
        """The same prompt, as many images as a request may ask, each with a new seed."""
        return replace(self, seed=None, num_images=MAX_IMAGES)

    def to_json(self) -> dict[str, Any]:
        """The request as JSON, without the picture's bytes (a job record keeps them nowhere)."""
        data = asdict(self)
        data.pop("extra")
        data.pop("init_image")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageRequest:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k != "extra"}
        return cls(**known)

    def describe(self) -> str:
        """The request as the flags a user would type to get it again."""
        parts = [self.prompt]
        if self.negative_prompt:
            parts.append(f"--no {self.negative_prompt}")
        if (self.width, self.height) != (512, 512):
            parts.append(f"--size {self.width}x{self.height}")
        if self.steps != DEFAULT_STEPS:
            parts.append(f"--steps {self.steps}")
        if self.guidance != DEFAULT_GUIDANCE:
            parts.append(f"--guidance {self.guidance:g}")
        if self.num_images != 1:
            parts.append(f"--n {self.num_images}")
        if self.seed is not None:
            parts.append(f"--seed {self.seed}")
        if self.relax:
            parts.append("--relax")
        return " ".join(parts)


def _control_character(text: str, *, allow_newlines: bool) -> str | None:
    """The first control or format character, except ZWJ and the tags of a subdivision flag emoji."""
    for ch in _EMOJI_TAG_SEQUENCE.sub("\U0001f3f4", text):
        if allow_newlines and ch in "\n\t":
            continue
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs") and ch not in "\u200d":
            return ch
    return None


def validate(request: ImageRequest) -> ImageRequest:
    """Check every field against DESIGN.md's ranges; return the request with the prompt trimmed."""
    prompt = request.prompt.strip()
    if not prompt:
        raise InvalidRequest(
            "The prompt is empty: describe the image you want, e.g. `a lighthouse at dusk --ar 16:9`."
        )
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"The prompt is {len(prompt)} characters long; the limit is {MAX_PROMPT_CHARS}.")
    _check_text("prompt", prompt)
    for name in _FIELD_CHECKS:
        if name in ("width", "height") and request.kind == "upscale":
            _check_upscale_side(name, getattr(request, name))
            continue
        check_field(name, getattr(request, name))
    if request.kind not in KINDS:
        raise InvalidRequest(f"Unknown kind of request {shown(request.kind)}.")
    if (request.init_image is None) != (request.kind == "text"):
        raise InvalidRequest("An image prompt, upscale or variation needs its picture.")
    return replace(
        request,
        prompt=prompt,
        negative_prompt=request.negative_prompt.strip(),
        guidance=float(request.guidance),
    )


def check_field(name: str, value: object) -> None:
    """Check one field set apart from the prompt (a web or Discord typed option) with its flag's sentence.

    A front checks its typed options with this before the inline flags may override them, so a bad
    option is refused even when a flag replaces it.
    """
    _FIELD_CHECKS[name](value)


def _check_text(label: str, text: str) -> None:
    bad = _control_character(text, allow_newlines=True)
    if bad is not None:
        raise InvalidRequest(
            f"The {label} contains a control character (U+{ord(bad):04X}); remove it and try again."
        )


def _check_negative(value: object) -> None:
    if not isinstance(value, str):
        raise InvalidRequest(f"The negative prompt (--no) must be text; got {shown(value)}.")
    negative = value.strip()
    _check_text("negative prompt (--no)", negative)
    if len(negative) > MAX_NEGATIVE_CHARS:
        raise InvalidRequest(
            f"The negative prompt (--no) is {len(negative)} characters long; "
            f"the limit is {MAX_NEGATIVE_CHARS}."
        )


def _check_side(side_name: str) -> Callable[[object], None]:
    def check(side: object) -> None:
        if (
            not isinstance(side, int)
            or isinstance(side, bool)
            or not MIN_SIDE <= side <= MAX_SIDE
            or side % SIDE_STEP
        ):
            raise InvalidRequest(
                f"The {side_name} must be a multiple of {SIDE_STEP} from {MIN_SIDE} to {MAX_SIDE}; "
                f"got {shown(side)}."
            )

    return check


def _check_int(flag: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"{flag} must be a whole number from {low} to {high}; got {shown(value)}.")


def _check_seed(seed: object) -> None:
    if seed is not None:
        _check_int("--seed", seed, 0, MAX_SEED)


def _check_guidance(guidance: object) -> None:
    if (
        isinstance(guidance, bool)
        or not isinstance(guidance, (int, float))
        or not MIN_GUIDANCE <= guidance <= MAX_GUIDANCE  # also refuses NaN; before float(): huge ints
    ):
        raise InvalidRequest(
            f"--guidance must be a number from {MIN_GUIDANCE:g} to {MAX_GUIDANCE:g}; got {shown(guidance)}."
        )


def _check_strength(strength: object) -> None:
    if strength is None:
        return
    if (
        isinstance(strength, bool)
        or not isinstance(strength, (int, float))
        or not MIN_STRENGTH <= strength <= MAX_STRENGTH
    ):
        raise InvalidRequest(
            f"--strength must be a number from {MIN_STRENGTH:g} to {MAX_STRENGTH:g}; got {shown(strength)}."
        )


def _check_upscale_side(side_name: str, side: object) -> None:
    if not isinstance(side, int) or isinstance(side, bool) or not MIN_SIDE <= side <= MAX_UPSCALE_SIDE:
        raise InvalidRequest(
            f"An upscaled image's {side_name} must be from {MIN_SIDE} to {MAX_UPSCALE_SIDE}; "
            f"got {shown(side)}."
        )


def _check_scheduler(scheduler: object) -> None:
    if scheduler not in SCHEDULERS:
        raise InvalidRequest(
            f"Unknown scheduler {shown(scheduler)}; the known schedulers are {', '.join(SCHEDULERS)}."
        )


_FIELD_CHECKS: dict[str, Callable[[object], None]] = {
    "negative_prompt": _check_negative,
    "width": _check_side("width"),
    "height": _check_side("height"),
    "steps": lambda steps: _check_int("--steps", steps, MIN_STEPS, MAX_STEPS),
    "num_images": lambda n: _check_int("--n", n, MIN_IMAGES, MAX_IMAGES),
    "seed": _check_seed,
    "guidance": _check_guidance,
    "scheduler": _check_scheduler,
    "strength": _check_strength,
}


def size_for_aspect_ratio(w: float, h: float) -> tuple[int, int]:
    """About 512x512 pixels in the ratio ``w:h``, each side a multiple of 64.

    Of the sizes whose area is within 0.7x-1.4x of 512x512, the one closest in ratio wins
    (ties: closest in area), so 3:2 is 576x384 and 16:9 is 704x384.
    """
    ratio = w / h
    sides = range(MIN_SIDE, MAX_SIDE + 1, SIDE_STEP)

    def score(size: tuple[int, int]) -> float:
        return abs(math.log(size[0] / size[1] / ratio)) + 0.1 * abs(
            math.log(size[0] * size[1] / TARGET_PIXELS)
        )

    candidates = [(cw, ch) for cw in sides for ch in sides if 0.7 <= cw * ch / TARGET_PIXELS <= 1.4]
    return min(candidates, key=score)


def whole_number(raw: str) -> int | None:
    """``raw`` (digits with an optional sign) as a number, or None; past 20 digits, :data:`TOO_LONG_NUMBER`.

    int() of a huge string is slow and refused past 4,300 digits; no field takes such a number anyway.
    """
    match = re.fullmatch(r"([+-]?)(\d+)", raw.strip())
    if match is None:
        return None
    if len(match[2]) > MAX_NUMBER_DIGITS:
        return -TOO_LONG_NUMBER if match[1] == "-" else TOO_LONG_NUMBER
    return int(match[0])


def _parse_int(flag: str, raw: str, low: int, high: int) -> int:
    value = whole_number(raw) if re.fullmatch(r"[+]?\d+", raw) else None
    if value is None:
        raise InvalidRequest(f"{flag} takes a whole number from {low} to {high}; got {quoted(raw)}.")
    _check_int(flag, value, low, high)
    return value


def _parse_float(flag: str, raw: str, low: float, high: float) -> float:
    if not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)", raw):
        raise InvalidRequest(f"{flag} takes a number from {low:g} to {high:g}; got {quoted(raw)}.")
    if sum(ch.isdigit() for ch in raw) > MAX_NUMBER_DIGITS:
        raise InvalidRequest(
            f"{flag} must be a number from {low:g} to {high:g}; got {shown(TOO_LONG_NUMBER)}."
        )
    value = float(raw)
    if not low <= value <= high:
        raise InvalidRequest(f"{flag} must be a number from {low:g} to {high:g}; got {raw}.")
    return value


def _parse_ratio(raw: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d{1,4})\s*[:x/]\s*(\d{1,4})", raw)
    if not match or int(match[1]) == 0 or int(match[2]) == 0:
        raise InvalidRequest(f"--ar takes a ratio like 16:9, from 1:4 to 4:1; got {quoted(raw)}.")
    w, h = int(match[1]), int(match[2])
    if not MIN_RATIO <= w / h <= MAX_RATIO:
        raise InvalidRequest(f"--ar must be from 1:4 to 4:1; got {w}:{h}.")
    return size_for_aspect_ratio(w, h)


def _parse_size(raw: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d{1,5})\s*[x×*]\s*(\d{1,5})", raw.lower())
    if not match:
        raise InvalidRequest(
            f"--size takes WIDTHxHEIGHT like 768x512, each side a multiple of {SIDE_STEP} "
            f"from {MIN_SIDE} to {MAX_SIDE}; got {quoted(raw)}."
        )
    w, h = int(match[1]), int(match[2])
    for side in (w, h):
        if not MIN_SIDE <= side <= MAX_SIDE or side % SIDE_STEP:
            raise InvalidRequest(
                f"--size sides must be multiples of {SIDE_STEP} from {MIN_SIDE} to {MAX_SIDE}; got {w}x{h}."
            )
    return w, h


def parse_prompt(text: str, *, image: bytes | None = None, **defaults: Any) -> ImageRequest:
    """Parse ``prompt text --flag value ...`` into a validated :class:`ImageRequest`.

    ``defaults`` are fields set another way (a front's typed options); flags in the text win, but
    each default is checked first, so a bad option is refused even when a flag replaces it.
    ``image`` (the bytes a user sent) makes it an image prompt: the picture is checked, and sized
    like its input (fitted to 1024x1024) unless ``--ar``/``--size`` say otherwise.
    """
    if not isinstance(text, str):
        raise InvalidRequest("The prompt must be text.")
    for name, value in defaults.items():
        check_field(name, value)
    matches = list(_FLAG.finditer(text))
    prompt = text[: matches[0].start()] if matches else text
    fields: dict[str, Any] = dict(defaults)
    seen: set[str] = set()
    for i, match in enumerate(matches):
        flag = "--" + match[1].lower()
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        value = text[match.end() : end].strip()
        if flag not in KNOWN_FLAGS:
            raise InvalidRequest(
                f"Unknown flag {elided(flag)}; the known flags are {', '.join(KNOWN_FLAGS)}."
            )
        if flag in seen or (flag in ("--ar", "--size") and {"--ar", "--size"} & seen):
            other = flag if flag in seen else ({"--ar", "--size"} & seen).pop()
            if other == flag:
                raise InvalidRequest(f"{flag} is given twice; give it once.")
            raise InvalidRequest("Use either --ar or --size, not both.")
        seen.add(flag)
        if flag in SWITCHES:
            if value:
                raise InvalidRequest(f"{flag} takes no value; put it after the prompt, e.g. `a fox {flag}`.")
            fields["relax"] = True
            continue
        if not value:
            raise InvalidRequest(f"{flag} needs a value; see /help for examples.")
        if flag != "--no" and len(value.split()) > 1:
            raise InvalidRequest(
                f"{flag} takes one value; got {quoted(value)}. Put the prompt before the flags."
            )
        if flag == "--ar":
            fields["width"], fields["height"] = _parse_ratio(value)
        elif flag == "--size":
            fields["width"], fields["height"] = _parse_size(value)
        elif flag == "--seed":
            fields["seed"] = _parse_int(flag, value, 0, MAX_SEED)
        elif flag == "--steps":
            fields["steps"] = _parse_int(flag, value, MIN_STEPS, MAX_STEPS)
        elif flag == "--guidance":
            fields["guidance"] = _parse_float(flag, value, MIN_GUIDANCE, MAX_GUIDANCE)
        elif flag == "--no":
            fields["negative_prompt"] = value
        elif flag == "--n":
            fields["num_images"] = _parse_int(flag, value, MIN_IMAGES, MAX_IMAGES)
        elif flag == "--strength":
            fields["strength"] = _parse_float(flag, value, MIN_STRENGTH, MAX_STRENGTH)
    if image is None:
        if "strength" in fields:
            raise InvalidRequest(
                "--strength sets how far an image prompt moves from its picture; attach a picture to use it."
            )
        return validate(ImageRequest(prompt=prompt, **fields))
    from gateway.picture import image_prompt  # Pillow, only for requests that carry a picture

    sized = "--ar" in seen or "--size" in seen or "width" in defaults or "height" in defaults
    return validate(image_prompt(ImageRequest(prompt=prompt, **fields), image, keep_size=sized))
