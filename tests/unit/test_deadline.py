"""Deadline: one bound handed out step by step; no step can eat a later step's reserve."""

from __future__ import annotations

import pytest

from consumer.deadline import Deadline
from tests.unit.fakes import FakeClock


@pytest.mark.parametrize(
    "elapsed, reserve, cap, expected",
    [
        pytest.param(0.0, 2.0, 5.0, 5.0, id="cap-binds"),
        pytest.param(0.0, 2.0, 9.0, 8.0, id="reserve-binds"),
        pytest.param(7.5, 2.0, 5.0, 0.5, id="late-step-gets-what-is-left"),
        pytest.param(9.0, 2.0, 5.0, 0.0, id="never-negative"),
    ],
)
def test_budget_keeps_the_reserve_of_later_steps(
    elapsed: float, reserve: float, cap: float, expected: float
) -> None:
    clock = FakeClock()
    deadline = Deadline(10.0, clock=clock)
    clock.advance(elapsed)
    assert deadline.budget(cap, reserve) == pytest.approx(expected)


def test_until_keeps_the_reserve_but_grants_the_floor() -> None:
    clock = FakeClock(100.0)
    deadline = Deadline(2.0, clock=clock)
    assert deadline.until(1.0) == pytest.approx(101.0)
    assert deadline.until(5.0, floor_s=0.5) == pytest.approx(100.5)


def test_a_bound_counted_from_an_earlier_start() -> None:
    clock = FakeClock(100.0)
    deadline = Deadline(5.0, clock=clock, started=97.0)
    assert deadline.remaining() == pytest.approx(2.0)
    assert deadline.elapsed() == pytest.approx(3.0)
