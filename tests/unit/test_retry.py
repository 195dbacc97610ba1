"""Backoff ceilings and jitter; the Throttle's token bucket and pod-wide pause on a fake clock."""

from __future__ import annotations

import random
import threading

import pytest

from consumer.retry import (
    Backoff,
    Cancelled,
    Gate,
    Throttle,
    rate_limited_backoff,
    server_error_backoff,
)


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ClockEvent(threading.Event):
    """A cancel event whose ``wait`` advances the fake clock instead of sleeping; it can set
    itself after ``cancel_after`` waits."""

    def __init__(self, clock: FakeClock, cancel_after: int | None = None) -> None:
        super().__init__()
        self.clock = clock
        self.waits: list[float] = []
        self.cancel_after = cancel_after

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        assert len(self.waits) < 10_000, "acquire() is spinning"
        self.waits.append(timeout)
        self.clock.now += timeout
        if self.cancel_after is not None and len(self.waits) >= self.cancel_after:
            self.set()
        return self.is_set()


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [
        pytest.param(
            server_error_backoff(60.0),
            [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0],
            id="5xx",
        ),
        pytest.param(
            server_error_backoff(3.0), [0.25, 0.5, 1.0, 2.0, 3.0, 3.0], id="5xx-capped-low"
        ),
        pytest.param(rate_limited_backoff(60.0), [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0], id="429"),
        pytest.param(rate_limited_backoff(5.0), [1.0, 2.0, 4.0, 5.0], id="429-capped"),
    ],
)
def test_ceilings(backoff: Backoff, expected: list[float]) -> None:
    assert [backoff.ceiling(n) for n in range(len(expected))] == expected


def test_huge_attempt_does_not_overflow() -> None:
    assert server_error_backoff(60.0).ceiling(10_000) == 60.0


def test_429_backoff_is_not_jittered() -> None:
    backoff = rate_limited_backoff(60.0)
    assert [backoff.delay(n) for n in range(4)] == [1.0, 2.0, 4.0, 8.0]


@pytest.mark.parametrize("seed", range(20))
def test_full_jitter_stays_within_ceiling(seed: int) -> None:
    backoff = Backoff(base_s=0.25, cap_s=10.0, rng=random.Random(seed))
    delays = [backoff.delay(n % 8) for n in range(400)]
    for n, delay in enumerate(delays):
        assert 0.0 <= delay <= backoff.ceiling(n % 8)
    # Full jitter: the spread reaches well below half the ceiling, not just near it.
    top = [d for n, d in enumerate(delays) if n % 8 == 7]
    assert min(top) < backoff.ceiling(7) / 4
    assert max(top) > backoff.ceiling(7) * 3 / 4


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    a = Backoff(base_s=0.25, cap_s=10.0, rng=random.Random(7))
    b = Backoff(base_s=0.25, cap_s=10.0, rng=random.Random(7))
    assert [a.delay(n) for n in range(6)] == [b.delay(n) for n in range(6)]


def test_token_bucket_burst_then_rate() -> None:
    clock = FakeClock()
    throttle = Throttle(rate_rps=4.0, burst=3.0, clock=clock)
    event = ClockEvent(clock)
    assert [throttle.acquire(event) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert event.waits == []
    assert throttle.acquire(event) == 0.25  # one token every 250 ms
    assert throttle.acquire(event) == 0.25
    # Idle for a long time: the bucket refills up to the burst, not beyond.
    clock.now += 100.0
    assert [throttle.acquire(event) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert throttle.acquire(event) == 0.25


def test_requests_per_second_match_the_rate() -> None:
    clock = FakeClock()
    throttle = Throttle(rate_rps=8.0, burst=1.0, clock=clock)  # binary fractions: exact
    event = ClockEvent(clock)
    start = clock.now
    for _ in range(33):
        throttle.acquire(event)
    assert clock.now - start == 4.0


def test_default_burst_is_capped() -> None:
    assert Throttle(rate_rps=90.0).burst == 10.0
    assert Throttle(rate_rps=0.5).burst == 1.0
    assert Throttle(rate_rps=4.0).burst == 4.0


def test_acquire_waits_on_the_clock_for_the_rate() -> None:
    clock = FakeClock()
    throttle = Throttle(rate_rps=5.0, burst=1.0, clock=clock)
    event = ClockEvent(clock)
    assert throttle.acquire(event) == 0.0
    waited = throttle.acquire(event)
    assert waited == pytest.approx(0.2)
    assert all(w <= 0.1 + 1e-9 for w in event.waits)  # wakes at least every 100 ms


def test_acquire_raises_cancelled_when_already_set() -> None:
    throttle = Throttle(rate_rps=1.0, burst=1.0, clock=FakeClock())
    event = threading.Event()
    event.set()
    with pytest.raises(Cancelled):
        throttle.acquire(event)


def test_acquire_raises_cancelled_when_set_while_waiting() -> None:
    clock = FakeClock()
    throttle = Throttle(rate_rps=100.0, clock=clock)
    throttle.pause(30.0)
    event = ClockEvent(clock, cancel_after=3)
    with pytest.raises(Cancelled):
        throttle.acquire(event)
    assert len(event.waits) == 3


def test_acquire_cancelled_from_another_thread_in_real_time() -> None:
    throttle = Throttle(rate_rps=100.0)
    throttle.pause(30.0)
    event = threading.Event()
    timer = threading.Timer(0.05, event.set)
    timer.start()
    try:
        with pytest.raises(Cancelled):
            throttle.acquire(event)
    finally:
        timer.cancel()


def test_retry_after_wins_over_the_backoff() -> None:
    clock = FakeClock()
    throttle = Throttle(rate_rps=100.0, clock=clock)
    backoff = rate_limited_backoff(60.0)
    assert throttle.rate_limited(7.5, backoff).delay_s == 7.5
    assert throttle.paused_for_s == 7.5
    event = ClockEvent(clock)
    assert throttle.acquire(event) == pytest.approx(7.5)
    assert throttle.paused_for_s == 0.0


def test_retry_after_is_capped_and_never_negative() -> None:
    throttle = Throttle(rate_rps=100.0, clock=FakeClock())
    backoff = rate_limited_backoff(10.0)
    assert throttle.rate_limited(3600.0, backoff).delay_s == 10.0
    assert throttle.rate_limited(-5.0, backoff).delay_s == 0.0


def test_consecutive_429s_escalate_and_success_resets() -> None:
    clock = FakeClock()
    throttle = Throttle(rate_rps=100.0, clock=clock)
    backoff = rate_limited_backoff(60.0)
    delays = []
    for _ in range(4):
        sent_at = throttle.now()  # each retry goes out after the last episode opened
        delays.append(throttle.rate_limited(None, backoff, sent_at).delay_s)
        clock.now += 0.5
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert throttle.succeeded(throttle.now()) is True
    assert throttle.rate_limited(None, backoff, throttle.now()).delay_s == 1.0


def test_concurrent_429s_of_one_episode_count_once() -> None:
    """Three requests on the wire together all get a 429: one episode, 1 s; the retries after
    the pause get 429s again: the second episode, 2 s (not 1, 2, 4, 8, 16, 32 per answer)."""
    clock = FakeClock()
    throttle = Throttle(rate_rps=100.0, clock=clock)
    backoff = rate_limited_backoff(60.0)
    sent = throttle.now()
    clock.now += 0.1
    first = [throttle.rate_limited(None, backoff, sent) for _ in range(3)]
    assert [(p.delay_s, p.episode, p.new) for p in first] == [
        (1.0, 1, True),
        (1.0, 1, False),
        (1.0, 1, False),
    ]
    assert throttle.paused_for_s == 1.0
    clock.now += 1.0
    resent = throttle.now()
    clock.now += 0.1
    second = [throttle.rate_limited(None, backoff, resent) for _ in range(3)]
    assert [(p.delay_s, p.episode, p.new) for p in second] == [
        (2.0, 2, True),
        (2.0, 2, False),
        (2.0, 2, False),
    ]


def test_a_success_of_a_request_older_than_the_episode_does_not_end_it() -> None:
    clock = FakeClock()
    throttle = Throttle(rate_rps=100.0, clock=clock)
    backoff = rate_limited_backoff(60.0)
    old = throttle.now()
    clock.now += 0.1
    throttle.rate_limited(None, backoff, throttle.now())
    assert throttle.succeeded(old) is False  # was on the wire before the 429: proves nothing
    clock.now += 1.0
    assert throttle.rate_limited(None, backoff, throttle.now()).delay_s == 2.0


def test_a_sibling_429_with_a_longer_retry_after_extends_the_pause_without_a_new_episode() -> None:
    clock = FakeClock()
    throttle = Throttle(rate_rps=100.0, clock=clock)
    backoff = rate_limited_backoff(60.0)
    sent = throttle.now()
    clock.now += 0.1
    assert throttle.rate_limited(1.0, backoff, sent).new is True
    sibling = throttle.rate_limited(5.0, backoff, sent)
    assert (sibling.new, sibling.episode, sibling.delay_s) == (False, 1, 5.0)
    assert throttle.gate.episodes == 1


def test_gate_wait_returns_after_the_pause_and_raises_when_cancelled() -> None:
    clock = FakeClock()
    gate = Gate(clock)
    assert gate.wait(ClockEvent(clock)) == 0.0
    gate.pause(0.35)
    assert gate.wait(ClockEvent(clock)) == pytest.approx(0.35)
    gate.pause(30.0)
    with pytest.raises(Cancelled):
        gate.wait(ClockEvent(clock, cancel_after=2))


def test_pause_is_never_shortened() -> None:
    clock = FakeClock()
    throttle = Throttle(rate_rps=100.0, clock=clock)
    throttle.pause(5.0)
    throttle.pause(1.0)  # a shorter pause does not cut the longer one
    assert throttle.paused_for_s == 5.0
    clock.now += 2.0
    assert throttle.paused_for_s == 3.0
    assert throttle.acquire(ClockEvent(clock)) == pytest.approx(3.0)
    assert throttle.paused_for_s == 0.0
    assert throttle.acquire(ClockEvent(clock)) == 0.0


def test_pause_holds_every_thread() -> None:
    clock = FakeClock()
    throttle = Throttle(rate_rps=1000.0, clock=clock)
    throttle.rate_limited(2.0, rate_limited_backoff(60.0))
    waits = [throttle.acquire(ClockEvent(clock)) for _ in range(3)]
    # The first caller waits out the pause; the others find it over.
    assert waits[0] == pytest.approx(2.0)
    assert clock.now == pytest.approx(102.0, abs=0.01)
