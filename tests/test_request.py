"""The inline flag parser and the one validator: every flag of DESIGN.md and every bad input."""

from __future__ import annotations

import math

import pytest

from gateway.errors import InvalidRequest, quoted, shown
from gateway.request import (
    TOO_LONG_NUMBER,
    ImageRequest,
    check_field,
    parse_prompt,
    size_for_aspect_ratio,
    validate,
    whole_number,
)


def test_plain_prompt_takes_the_defaults() -> None:
    req = parse_prompt("  a lighthouse at dusk  ")
    assert req == ImageRequest(prompt="a lighthouse at dusk")
    assert (req.width, req.height, req.steps, req.guidance, req.num_images) == (512, 512, 25, 7.5, 1)
    assert req.seed is None and req.scheduler == "dpmpp"


def test_every_flag_of_the_design_example() -> None:
    req = parse_prompt(
        "a lighthouse at dusk, oil painting --ar 16:9 --seed 42 --steps 30 "
        "--no text, watermark --n 4 --guidance 8"
    )
    assert req.prompt == "a lighthouse at dusk, oil painting"
    assert (req.width, req.height) == (704, 384)
    assert req.seed == 42 and req.steps == 30 and req.num_images == 4 and req.guidance == 8.0
    assert req.negative_prompt == "text, watermark"


@pytest.mark.parametrize(
    ("ratio", "size"),
    [
        ("1:1", (512, 512)),
        ("16:9", (704, 384)),
        ("9:16", (384, 704)),
        ("4:1", (1024, 256)),
        ("1:4", (256, 1024)),
        ("3:2", (576, 384)),
        ("2:3", (384, 576)),
    ],
)
def test_aspect_ratio_keeps_about_512x512_in_multiples_of_64(ratio: str, size: tuple[int, int]) -> None:
    req = parse_prompt(f"a fox --ar {ratio}")
    assert (req.width, req.height) == size
    assert req.width % 64 == 0 and req.height % 64 == 0
    assert 0.6 < req.width * req.height / (512 * 512) < 1.4


def test_size_seed_limits_and_dash_variants() -> None:
    assert (parse_prompt("x --size 1024x256").width, parse_prompt("x --size 768x512").height) == (1024, 512)
    assert parse_prompt("x --seed 0").seed == 0
    assert parse_prompt("x --seed 4294967295").seed == 2**32 - 1
    assert parse_prompt("x —seed 5").seed == 5  # phones turn -- into an em dash
    assert parse_prompt("x --SEED 5").seed == 5
    assert parse_prompt("x --guidance 1").guidance == 1.0
    assert parse_prompt("x --guidance 20").guidance == 20.0
    assert parse_prompt("x --steps 1").steps == 1 and parse_prompt("x --steps 50").steps == 50
    assert parse_prompt("x --n 1").num_images == 1
    assert parse_prompt("a well-known--thing").prompt == "a well-known--thing"


def test_typed_options_are_defaults_that_flags_override() -> None:
    req = parse_prompt("a fox --steps 10", steps=40, seed=3, negative_prompt="blur")
    assert (req.steps, req.seed, req.negative_prompt) == (10, 3, "blur")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "The prompt is empty: describe the image you want, e.g. `a lighthouse at dusk --ar 16:9`."),
        (
            "   --seed 3",
            "The prompt is empty: describe the image you want, e.g. `a lighthouse at dusk --ar 16:9`.",
        ),
        ("x" * 1001, "The prompt is 1001 characters long; the limit is 1000."),
        ("a fox\x07", "The prompt contains a control character (U+0007); remove it and try again."),
        ("a fox\u202e", "The prompt contains a control character (U+202E); remove it and try again."),
        ("a fox\ud800", "The prompt contains a control character (U+D800); remove it and try again."),
        (
            "a fox --no bad\x1b",
            "The negative prompt (--no) contains a control character (U+001B); remove it and try again.",
        ),
        ("a fox --no " + "y" * 501, "The negative prompt (--no) is 501 characters long; the limit is 500."),
        (
            "a fox --style raw",
            "Unknown flag --style; the known flags are "
            "--ar, --size, --seed, --steps, --guidance, --no, --n, --strength, --relax.",
        ),
        ("a fox --relax please", "--relax takes no value; put it after the prompt, e.g. `a fox --relax`."),
        ("a fox --relax --relax", "--relax is given twice; give it once."),
        ("a fox --steps 0", "--steps must be a whole number from 1 to 50; got 0."),
        ("a fox --steps 51", "--steps must be a whole number from 1 to 50; got 51."),
        ("a fox --steps ten", "--steps takes a whole number from 1 to 50; got 'ten'."),
        ("a fox --steps 2.5", "--steps takes a whole number from 1 to 50; got '2.5'."),
        ("a fox --seed -1", "--seed takes a whole number from 0 to 4294967295; got '-1'."),
        ("a fox --seed 4294967296", "--seed must be a whole number from 0 to 4294967295; got 4294967296."),
        ("a fox --n 5", "--n must be a whole number from 1 to 4; got 5."),
        ("a fox --n 0", "--n must be a whole number from 1 to 4; got 0."),
        ("a fox --guidance 0.5", "--guidance must be a number from 1 to 20; got 0.5."),
        ("a fox --guidance 21", "--guidance must be a number from 1 to 20; got 21."),
        ("a fox --guidance nan", "--guidance takes a number from 1 to 20; got 'nan'."),
        ("a fox --guidance 1e1", "--guidance takes a number from 1 to 20; got '1e1'."),
        ("a fox --ar 5:1", "--ar must be from 1:4 to 4:1; got 5:1."),
        ("a fox --ar 0:1", "--ar takes a ratio like 16:9, from 1:4 to 4:1; got '0:1'."),
        ("a fox --ar wide", "--ar takes a ratio like 16:9, from 1:4 to 4:1; got 'wide'."),
        ("a fox --size 500x500", "--size sides must be multiples of 64 from 256 to 1024; got 500x500."),
        ("a fox --size 2048x512", "--size sides must be multiples of 64 from 256 to 1024; got 2048x512."),
        (
            "a fox --size big",
            "--size takes WIDTHxHEIGHT like 768x512, each side a multiple of 64 from 256 to 1024; got 'big'.",
        ),
        ("a fox --ar 1:1 --size 512x512", "Use either --ar or --size, not both."),
        ("a fox --seed 1 --seed 2", "--seed is given twice; give it once."),
        ("a fox --seed", "--seed needs a value; see /help for examples."),
        (
            "a fox --seed 42 and a hat",
            "--seed takes one value; got '42 and a hat'. Put the prompt before the flags.",
        ),
    ],
)
def test_bad_input_gets_one_clear_sentence(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_prompt(text)
    assert str(caught.value) == message


def test_validator_checks_requests_built_without_the_parser() -> None:
    with pytest.raises(
        InvalidRequest, match=r"^The width must be a multiple of 64 from 256 to 1024; got 300\.$"
    ):
        validate(ImageRequest(prompt="x", width=300))
    with pytest.raises(InvalidRequest, match=r"^Unknown scheduler 'magic'; the known schedulers are dpmpp"):
        validate(ImageRequest(prompt="x", scheduler="magic"))
    with pytest.raises(InvalidRequest, match="--steps must be a whole number"):
        validate(ImageRequest(prompt="x", steps=True))


def test_round_trip_through_json_and_flags() -> None:
    req = parse_prompt("a fox --size 768x512 --seed 9 --steps 12 --guidance 6.5 --n 2 --no blur")
    assert ImageRequest.from_json(req.to_json()) == req
    assert parse_prompt(req.describe()) == req


def test_aspect_ratio_helper_clamps_to_the_side_limits() -> None:
    assert size_for_aspect_ratio(4, 1) == (1024, 256)
    assert size_for_aspect_ratio(1, 1) == (512, 512)


# --- bounded sentences: huge numbers and long values ----------------------------------------------

HUGE = "9" * 5000  # past Python's 4,300-digit int() limit


@pytest.mark.parametrize(
    ("flag", "sentence"),
    [
        ("--seed", "--seed must be a whole number from 0 to 4294967295"),
        ("--steps", "--steps must be a whole number from 1 to 50"),
        ("--n", "--n must be a whole number from 1 to 4"),
        ("--guidance", "--guidance must be a number from 1 to 20"),
    ],
)
@pytest.mark.parametrize("digits", [HUGE, "1" * 21, "0" * 30 + "5"])
def test_a_number_past_20_digits_gets_the_range_sentence(flag: str, sentence: str, digits: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_prompt(f"a fox {flag} {digits}")
    assert str(caught.value) == f"{sentence}; got a number with more than 20 digits."


def test_twenty_digits_are_still_read_as_a_number() -> None:
    with pytest.raises(InvalidRequest, match=r"got 99999999999999999999\.$"):
        parse_prompt("a fox --seed " + "9" * 20)
    assert parse_prompt("a fox --seed " + "0" * 19 + "7").seed == 7


def test_whole_number_never_reads_a_huge_string() -> None:
    assert whole_number(" -12 ") == -12 and whole_number("+3") == 3
    assert whole_number("1.5") is None and whole_number("1_000") is None and whole_number("") is None
    assert whole_number(HUGE) == TOO_LONG_NUMBER and whole_number("-" + HUGE) == -TOO_LONG_NUMBER


LONG = "x" * 3000


@pytest.mark.parametrize(
    "text",
    [
        f"a fox --{'y' * 900}",
        f"a fox --seed 1 {LONG}",
        f"a fox --steps {LONG}",
        f"a fox --n {LONG}",
        f"a fox --guidance {LONG}",
        f"a fox --ar {LONG}",
        f"a fox --size {LONG}",
        f"a fox --seed {'1' * 3000}x",
        f"a fox --guidance 1.{'0' * 3000}",
        f"a fox --size {'6' * 3000}x512",
        f"a fox --ar 1:{'1' * 3000}",
    ],
)
def test_error_sentences_quote_at_most_40_characters(text: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_prompt(text)
    message = str(caught.value)
    assert len(message) < 300, message
    assert not any(run * 41 in message for run in "xy10"), message


def test_values_built_without_the_parser_are_shown_short() -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate(ImageRequest(prompt="x", scheduler="s" * 5000))
    assert str(caught.value).startswith("Unknown scheduler '" + "s" * 40 + "…';")
    with pytest.raises(InvalidRequest, match=r"got a number with more than 20 digits\.$"):
        validate(ImageRequest(prompt="x", seed=10**5000))
    with pytest.raises(InvalidRequest, match=r"^--guidance .* got a number with more than 20 digits\.$"):
        validate(ImageRequest(prompt="x", guidance=10**400))  # too large for a float
    for guidance in (math.nan, math.inf):
        with pytest.raises(
            InvalidRequest, match=r"^--guidance must be a number from 1 to 20; got (nan|inf)\.$"
        ):
            validate(ImageRequest(prompt="x", guidance=guidance))
    with pytest.raises(
        InvalidRequest, match=r"^The height must be a multiple of 64 .*; got \[0, 1, 2, 3, 4, 5, \.\.\.]\.$"
    ):
        validate(ImageRequest(prompt="x", height=list(range(5000))))  # type: ignore[arg-type]


def test_shown_and_quoted_keep_every_value_short() -> None:
    assert quoted("a" * 41) == "'" + "a" * 40 + "…'"
    assert quoted("short\x07") == "'short\\x07'"
    assert shown(-(10**20)) == "a number with more than 20 digits"
    assert shown(10**20 - 1) == "99999999999999999999"
    assert shown(21.5) == "21.5" and shown(None) == "None"
    assert len(shown({"k" * 100: ["v" * 100] * 100})) <= 41


# --- typed options are checked even when a flag overrides them ------------------------------------


@pytest.mark.parametrize(
    ("text", "defaults", "flag_text"),
    [
        ("a fox --steps 20", {"steps": 999}, "a fox --steps 999"),
        ("a fox --seed 1", {"seed": -1}, None),
        ("a fox --n 2", {"num_images": 9}, "a fox --n 9"),
        ("a fox --guidance 7", {"guidance": 99}, "a fox --guidance 99"),
        ("a fox --size 512x512", {"width": 100}, None),
        ("a fox --no blur", {"negative_prompt": "n" * 501}, "a fox --no " + "n" * 501),
        ("a fox", {"scheduler": "magic"}, None),
        ("a fox --steps 20", {"steps": 21.5}, None),
    ],
)
def test_a_typed_option_out_of_range_is_refused_though_a_flag_overrides_it(
    text: str, defaults: dict[str, object], flag_text: str | None
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_prompt(text, **defaults)
    if flag_text is not None:  # the same sentence the flag would get
        with pytest.raises(InvalidRequest) as by_flag:
            parse_prompt(flag_text)
        assert str(caught.value) == str(by_flag.value)


def test_check_field_names_the_flag() -> None:
    with pytest.raises(InvalidRequest, match=r"^--steps must be a whole number from 1 to 50; got 21\.5\.$"):
        check_field("steps", 21.5)
    check_field("seed", None)
    check_field("steps", 20)


# --- subdivision flag emoji -----------------------------------------------------------------------


def _tags(code: str) -> str:
    return "".join(chr(0xE0000 + ord(ch)) for ch in code)


BLACK_FLAG, CANCEL_TAG = "\U0001f3f4", "\U000e007f"
ENGLAND, SCOTLAND, WALES = (BLACK_FLAG + _tags(code) + CANCEL_TAG for code in ("gbeng", "gbsct", "gbwls"))


def test_subdivision_flags_are_emoji_not_control_characters() -> None:
    req = parse_prompt(f"a pub sign with {ENGLAND}, {SCOTLAND} and {WALES} --no {WALES}")
    assert req.prompt == f"a pub sign with {ENGLAND}, {SCOTLAND} and {WALES}"
    assert req.negative_prompt == WALES
    assert parse_prompt(f"{BLACK_FLAG}\ufe0f{_tags('usca')}{CANCEL_TAG} sunset").prompt.endswith("sunset")


@pytest.mark.parametrize(
    ("text", "code"),
    [
        (f"a fox {_tags('gbeng')}", "E0067"),  # tags with no flag before them
        (f"a fox {BLACK_FLAG}{_tags('gbeng')}", "E0067"),  # no cancel tag
        (f"a fox {CANCEL_TAG}", "E007F"),
        (f"a fox \u2764{_tags('gbeng')}{CANCEL_TAG}", "E0067"),  # a base other than the black flag
        (f"a fox {BLACK_FLAG}{_tags('GBENG')}{CANCEL_TAG}", "E0047"),  # capital tag letters
        (f"a fox {BLACK_FLAG}{_tags('g b')}{CANCEL_TAG}", "E0067"),  # a tag space
        (f"a fox {BLACK_FLAG}{_tags('gbengland')}{CANCEL_TAG}", "E0067"),  # longer than a subdivision id
        (f"a fox \U000e0001{_tags('en')}", "E0001"),  # the deprecated language tag
        ("a fox \u200b", "200B"),
        ("a fox \ufeff", "FEFF"),
    ],
)
def test_tag_characters_outside_a_flag_are_still_refused(text: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_prompt(text)
    assert str(caught.value) == (
        f"The prompt contains a control character (U+{code}); remove it and try again."
    )
