"""The prediction input: a bad field or value is quoted short in the 422 reason; pictures round-trip."""

from __future__ import annotations

import pytest

from gateway.cog import REPLICATE_FIELDS, request_from_input, request_to_input
from gateway.errors import InvalidRequest
from gateway.fake_backend import solid_png
from gateway.picture import vary
from gateway.request import ImageRequest, parse_prompt, validate


@pytest.mark.parametrize(
    "data",
    [
        {"prompt": "a fox", "z" * 5000: 1},
        {"prompt": ["z" * 5000]},
        {"prompt": "a fox", "scheduler": {"z" * 5000: "z" * 5000}},
        {"prompt": "a fox", "scheduler": "z" * 5000},
        {"prompt": "a fox", "num_inference_steps": 10**5000},
        {"prompt": "a fox", "guidance_scale": 10**400},  # too large for a float
    ],
)
def test_the_reason_quotes_at_most_40_characters(data: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        request_from_input(data)
    assert len(str(caught.value)) < 300, str(caught.value)
    assert "z" * 41 not in str(caught.value)


def test_a_whole_float_is_still_a_number() -> None:
    assert request_from_input({"prompt": "a fox", "num_inference_steps": 12.0}).steps == 12


def test_an_image_request_round_trips_through_the_input() -> None:
    request = vary(
        validate(ImageRequest(prompt="a fox", seed=4)), solid_png(512, 512, (9, 8, 7)), strong=True
    )
    data = request_to_input(request)
    assert data["image"].startswith("data:image/png;base64,")
    assert (data["prompt_strength"], data["imagine_kind"]) == (0.7, "vary")
    back = request_from_input(data)
    assert back.init_image == request.init_image
    assert (back.kind, back.strength, back.width, back.height) == ("vary", 0.7, 512, 512)
    assert back.denoise_steps == request.denoise_steps


def test_replicate_gets_image_and_prompt_strength_but_not_imagines_kind() -> None:
    request = parse_prompt("a fox --strength 0.5", image=solid_png(256, 256, (1, 2, 3)))
    data = request_to_input(request, replicate_names=True)
    assert set(data) - set(request_to_input(ImageRequest(prompt="a fox"))) == {"image", "prompt_strength"}
    assert set(data) <= set(REPLICATE_FIELDS)


def test_a_text_request_sends_no_image_fields() -> None:
    assert not {"image", "prompt_strength", "imagine_kind"} & set(request_to_input(ImageRequest("a fox")))
