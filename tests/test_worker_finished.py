"""backend/finished.py: the worker's kept results, within a byte budget and an age, on a fake clock."""

from __future__ import annotations

import random

import pytest

from backend.finished import Finished, FinishedPredictions


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def finished(prediction_id: str, size: int, at: float) -> Finished:
    return Finished(prediction_id, {"prompt": "a fox"}, "succeeded", b"x" * size, at)


def test_the_kept_bytes_never_exceed_the_budget_and_the_newest_stays() -> None:
    rng = random.Random(7)
    kept = FinishedPredictions(max_bytes=10_000, max_age=300)
    for i in range(500):
        size = rng.choice([1, 100, 2_500, 9_999, 10_000])
        kept.add(finished(f"p{i}", size, kept.clock()))
        assert kept.bytes <= 10_000
        assert kept.get(f"p{i}") is not None  # the newest always fits (each is within the budget)
    assert kept.bytes == sum(len(f.body) for f in kept._kept.values())


def test_the_oldest_go_first() -> None:
    kept = FinishedPredictions(max_bytes=300, max_age=300)
    for name in ("a", "b", "c", "d"):
        kept.add(finished(name, 100, kept.clock()))
    assert [kept.get(n) is not None for n in "abcd"] == [False, True, True, True]
    assert (len(kept), kept.bytes) == (3, 300)


def test_past_the_age_they_are_forgotten() -> None:
    clock = Clock()
    kept = FinishedPredictions(max_bytes=10_000, max_age=300, clock=clock)
    kept.add(finished("early", 100, clock()))
    clock.now += 200
    kept.add(finished("later", 100, clock()))
    clock.now += 100.5
    assert kept.get("early") is None and kept.get("later") is not None
    assert (len(kept), kept.bytes) == (1, 100)
    clock.now += 1000
    kept.prune()
    assert (len(kept), kept.bytes) == (0, 0)


def test_one_larger_than_the_budget_is_not_kept_and_drops_nothing() -> None:
    kept = FinishedPredictions(max_bytes=1_000)
    kept.add(finished("small", 500, kept.clock()))
    kept.add(finished("huge", 1_001, kept.clock()))
    assert kept.get("huge") is None and kept.get("small") is not None and kept.bytes == 500


def test_the_same_id_again_replaces_the_first() -> None:
    kept = FinishedPredictions(max_bytes=1_000)
    kept.add(finished("same", 600, kept.clock()))
    kept.add(finished("same", 700, kept.clock()))
    assert (len(kept), kept.bytes) == (1, 700)


def test_a_negative_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        FinishedPredictions(max_bytes=-1)
