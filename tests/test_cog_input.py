"""The worker's prediction input: a bad field or value is quoted short in the 422 reason."""

from __future__ import annotations

import pytest

from gateway.cog import request_from_input
from gateway.errors import InvalidRequest


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
