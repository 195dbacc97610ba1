from __future__ import annotations

import pytest

from consumer.outage import Outage


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _outage(clock: Clock, quiet_s: float | None = None) -> Outage:
    return Outage("broker unreachable", bound_s=120.0, quiet_s=quiet_s, clock=clock)


@pytest.mark.parametrize(
    "steps, expected",
    [
        pytest.param([], None, id="never-failed"),
        pytest.param([("fail", 0), ("wait", 120)], None, id="at-the-bound"),
        pytest.param(
            [("fail", 0), ("wait", 121)], "broker unreachable for 121s (e0)", id="past-the-bound"
        ),
        pytest.param(
            [("fail", 0), ("wait", 100), ("fail", 1), ("wait", 30)],
            "broker unreachable for 130s (e1)",
            id="latest-detail-first-failure-time",
        ),
        pytest.param([("fail", 0), ("wait", 100), ("ok", 0), ("wait", 100)], None, id="ok-ends"),
        pytest.param(
            [("fail", 0), ("wait", 100), ("ok", 0), ("fail", 1), ("wait", 100)],
            None,
            id="ok-restarts-the-count",
        ),
    ],
)
def test_problem_after_failures_alone_outlast_the_bound(
    steps: list[tuple[str, int]], expected: str | None
) -> None:
    clock = Clock()
    outage = _outage(clock)
    for step, n in steps:
        if step == "fail":
            outage.failed(f"e{n}")
        elif step == "ok":
            outage.ok()
        else:
            clock.now += n
    assert outage.problem() == expected


def test_silence_ends_an_outage_that_only_reports_failures() -> None:
    clock = Clock()
    outage = _outage(clock, quiet_s=30.0)
    for _ in range(13):  # a failure every 10 s for 130 s
        outage.failed("_ALL_BROKERS_DOWN")
        clock.now += 10
    assert outage.problem() == "broker unreachable for 130s (_ALL_BROKERS_DOWN)"
    clock.now += 25  # 35 s since the last failure
    assert outage.problem() is None
    outage.failed("_TRANSPORT")  # a new outage starts counting afresh
    clock.now += 60
    assert outage.problem() is None
