"""Fair turns by user: the order of service, unit by unit and through the real service on SQLite."""

from __future__ import annotations

import random
from collections import deque

import pytest

from gateway.jobs import Job
from gateway.request import ImageRequest
from gateway.turns import FairTurns, estimated_cost


def job(name: str, *, size: int = 512, n: int = 1, steps: int = 25) -> Job:
    """A job called ``user:k`` of user ``user``."""
    user = name.split(":")[0]
    request = ImageRequest("x", width=size, height=size, steps=steps, num_images=n, seed=1)
    return Job(id=name, user_id=user, request=request)


def ids(jobs: list[Job]) -> list[str]:
    return [j.id for j in jobs]


def pop_all(turns: FairTurns) -> list[str]:
    taken = []
    while turns:
        taken.append(turns.pop().id)
    return taken


def reference_drr(arrivals: list[Job], quantum: float) -> list[str]:
    """Deficit round robin as the paper writes it, one round at a time (no skipping)."""
    lanes: dict[str, deque[Job]] = {}
    for j in arrivals:
        lanes.setdefault(j.user_id, deque()).append(j)
    deficit = dict.fromkeys(lanes, 0.0)
    rotation = deque(lanes)
    served: list[str] = []
    while rotation:
        user = rotation.popleft()
        deficit[user] += quantum
        lane = lanes[user]
        while lane and estimated_cost(lane[0].request) <= deficit[user]:
            deficit[user] -= estimated_cost(lane[0].request)
            served.append(lane.popleft().id)
        if lane:
            rotation.append(user)
    return served


# --- the estimate ----------------------------------------------------------------------------


def test_the_estimate_counts_pixels_steps_and_images() -> None:
    assert estimated_cost(job("a:1").request) == 1.0
    assert estimated_cost(job("a:1", size=1024, n=4).request) == 16.0
    assert estimated_cost(job("a:1", steps=50).request) == 2.0
    img2img = ImageRequest("x", strength=0.5, init_image=b"png", seed=1)
    assert estimated_cost(img2img) == 0.48  # 12 of its 25 steps run


# --- the order of service ----------------------------------------------------------------------


def test_a_user_alone_runs_back_to_back_in_arrival_order() -> None:
    turns = FairTurns()
    for k in range(5):
        turns.put(job(f"a:{k}", n=1 + k % 4))
    assert pop_all(turns) == ["a:0", "a:1", "a:2", "a:3", "a:4"]


def test_a_backlog_takes_turns_with_newcomers() -> None:
    turns = FairTurns()
    for k in range(1, 5):
        turns.put(job(f"heavy:{k}"))
    for user in ("b", "c"):
        turns.put(job(f"{user}:1"))
    assert ids(turns.order()) == ["heavy:1", "b:1", "c:1", "heavy:2", "heavy:3", "heavy:4"]
    assert pop_all(turns) == ["heavy:1", "b:1", "c:1", "heavy:2", "heavy:3", "heavy:4"]


def test_big_jobs_get_the_same_gpu_time_per_round_as_small_ones() -> None:
    """Four-image jobs (cost 4) against single images (cost 1): one big job per four small ones."""
    turns = FairTurns()
    for k in range(1, 4):
        turns.put(job(f"big:{k}", n=4))
    for k in range(1, 13):
        turns.put(job(f"small:{k}"))
    order = pop_all(turns)
    assert order[:10] == [
        "small:1", "small:2", "small:3", "big:1",
        "small:4", "small:5", "small:6", "small:7", "big:2",
        "small:8",
    ]  # fmt: skip
    served = {"big": 0.0, "small": 0.0}
    for name in order[:-3]:  # while both wait, neither is ahead by more than one big job
        served[name.split(":")[0]] += 4.0 if name.startswith("big") else 1.0
        assert abs(served["big"] - served["small"]) <= 4.0


def test_the_order_matches_round_by_round_drr_for_any_mix() -> None:
    rng = random.Random(14)
    for quantum in (0.5, 1.0, 3.0):
        for _ in range(50):
            arrivals = [
                job(
                    f"u{rng.randrange(6)}:{k}",
                    size=rng.choice((256, 512, 768, 1024)),
                    n=rng.randint(1, 4),
                    steps=rng.choice((5, 25, 50)),
                )
                for k in range(rng.randint(1, 40))
            ]
            turns = FairTurns(quantum)
            for j in arrivals:
                turns.put(j)
            expected = reference_drr(arrivals, quantum)
            assert ids(turns.order()) == expected
            assert pop_all(turns) == expected


def test_the_predicted_order_is_what_pop_takes_while_jobs_come_and_go() -> None:
    rng = random.Random(2)
    turns = FairTurns()
    waiting: list[Job] = []
    for k in range(400):
        action = rng.random()
        if action < 0.5 or not waiting:
            new = job(f"u{rng.randrange(8)}:{k}", n=rng.randint(1, 4))
            turns.put(new)
            waiting.append(new)
        elif action < 0.6:
            gone = waiting.pop(rng.randrange(len(waiting)))
            assert gone in turns
            turns.remove(gone)
            assert gone not in turns
        else:
            predicted = turns.order()
            assert sorted(ids(predicted)) == sorted(ids(waiting))
            taken = turns.pop()
            assert taken is predicted[0]
            waiting.remove(taken)
        assert len(turns) == len(waiting)


def test_a_user_with_nothing_waiting_leaves_no_state() -> None:
    turns = FairTurns()
    a1, b1, b2 = job("a:1"), job("b:1"), job("b:2")
    for j in (a1, b1, b2):
        turns.put(j)
    turns.remove(b1)
    turns.remove(b2)
    assert list(turns._lanes) == ["a"] and list(turns._rotation) == ["a"]
    assert turns.pop() is a1
    assert not turns._lanes and not turns._rotation and len(turns) == 0
    with pytest.raises(IndexError):
        turns.pop()
    with pytest.raises(ValueError):
        turns.remove(a1)
