"""Retry policy and the pod-wide request throttle. No I/O; the clock and the sleep are injected.

- :class:`Backoff`: exponential backoff with full jitter (``random(0, min(cap, base * 2**n))``),
  the shape ASAPP advises (429: 1 s, 2 s, 4 s…; 5xx: 250 ms, 500 ms, 1 s…).
- :class:`Throttle`: what every request passes before it is sent, shared by all sender
  threads and all entities:

  * a token bucket at ``rate_rps`` (default 90/s, under ASAPP's 100/s spike arrest);
  * a pod-wide "not before" instant pushed forward by a 429 (``Retry-After`` when the server
    gives one, else the 429 backoff), so concurrent requests do not storm a server that
    already said stop. Concurrent 429s of one episode count once (see :class:`Gate`).
- :class:`Gate`: that "not before" instant with its episodes, also used by the sender for the
  pod-wide credentials pause (401, 3xx) and each entity's 403 pause.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Exponential backoff; ``delay(attempt)`` for attempt 0, 1, 2 … is jittered in full."""

    base_s: float
    cap_s: float
    jitter: bool = True
    rng: random.Random = field(default_factory=random.Random)

    def ceiling(self, attempt: int) -> float:
        """The un-jittered delay for ``attempt``: ``min(cap, base * 2**attempt)``."""
        return float(min(self.cap_s, self.base_s * (2.0 ** min(attempt, 32))))

    def delay(self, attempt: int) -> float:
        top = self.ceiling(attempt)
        return self.rng.uniform(0, top) if self.jitter else top


#: ASAPP's advice for 5xx / network errors: 250 ms, 500 ms, 1 s, … (full jitter).
def server_error_backoff(cap_s: float) -> Backoff:
    return Backoff(base_s=0.25, cap_s=cap_s)


#: ASAPP's advice for 429: 1 s, 2 s, 4 s, … (no jitter below the step: the pod waits as one).
def rate_limited_backoff(cap_s: float) -> Backoff:
    return Backoff(base_s=1.0, cap_s=cap_s, jitter=False)


class Cancelled(Exception):
    """Raised by :meth:`Throttle.acquire` and :meth:`Gate.wait` when the cancel event is set."""


@dataclass(frozen=True, slots=True)
class Pause:
    """What :meth:`Gate.hit` made of one "stop" answer (a 429, a 401, a 403)."""

    delay_s: float  # how long requests wait from now
    episode: int  # consecutive episodes so far, 1 for the first
    new: bool  # this answer opened the episode (log it, count its backoff); False: a sibling


def _wait(
    remaining: Callable[[], float], cancel: threading.Event, clock: Callable[[], float]
) -> float:
    """Wait until ``remaining()`` is 0; seconds waited. Raises :class:`Cancelled` on ``cancel``."""
    started = clock()
    while True:
        if cancel.is_set():
            raise Cancelled
        wait = remaining()
        if wait <= 0:
            return clock() - started
        # Wake at least every 100 ms so a cancel or a shortened pause is seen quickly.
        cancel.wait(min(wait, 0.1))


class Gate:
    """A "not before" instant that requests wait for, pushed by episodes of "stop" answers.

    An **episode** opens with the first stop answer to a request sent after the previous
    episode opened; answers to requests that were already on the wire then (concurrent
    siblings) belong to the same episode and never lengthen the streak. So N threads that all
    get a 429 at once pause the pod for 1 s, not 1, 2, 4 … N: the pause grows per episode
    (1 s, 2 s, 4 s) while it keeps coming back after each pause. :meth:`cleared` — a request
    sent after the episode opened got an ordinary answer — ends the streak. Thread-safe.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._not_before = 0.0
        self._episodes = 0
        self._opened_at: float | None = None

    def now(self) -> float:
        """The gate's clock: pass it as ``sent_at`` for a request about to go out."""
        return self._clock()

    @property
    def episodes(self) -> int:
        """Consecutive episodes so far (0 when none is open)."""
        with self._lock:
            return self._episodes

    @property
    def paused_for_s(self) -> float:
        """Seconds left of the pause (0 when none)."""
        with self._lock:
            return max(0.0, self._not_before - self._clock())

    def pause(self, seconds: float) -> None:
        """Hold every request for at least ``seconds`` from now (never shortens a pause)."""
        with self._lock:
            self._not_before = max(self._not_before, self._clock() + seconds)

    def hit(
        self, sent_at: float, delay_for: Callable[[int], float], hint_s: float | None = None
    ) -> Pause:
        """Record a stop answer to a request sent at ``sent_at`` (this gate's clock).

        A new episode pauses for ``hint_s`` when given, else ``delay_for(n)`` with ``n`` the
        number of episodes before it (0, 1, 2 …). A sibling of the open episode only extends
        the pause to its own ``hint_s``.
        """
        with self._lock:
            now = self._clock()
            if self._opened_at is not None and sent_at < self._opened_at:
                if hint_s is not None:
                    self._not_before = max(self._not_before, now + hint_s)
                return Pause(max(0.0, self._not_before - now), self._episodes, new=False)
            delay = hint_s if hint_s is not None else delay_for(self._episodes)
            self._episodes += 1
            self._opened_at = now
            self._not_before = max(self._not_before, now + delay)
            return Pause(delay, self._episodes, new=True)

    def cleared(self, sent_at: float) -> bool:
        """A request sent at ``sent_at`` got an ordinary answer. True when that ends the
        episodes (it was sent after the last one opened); a request older than the episode
        proves nothing."""
        with self._lock:
            if self._opened_at is None or sent_at < self._opened_at:
                return False
            self._episodes = 0
            self._opened_at = None
            return True

    def wait(self, cancel: threading.Event) -> float:
        """Block until the pause is over; returns seconds waited. Raises :class:`Cancelled`."""
        return _wait(lambda: self.paused_for_s, cancel, self._clock)


class Throttle:
    """Token bucket plus the pod-wide 429 pause (a :class:`Gate`), safe to share between threads.

    ``acquire(cancel)`` blocks until the request may go out and returns the seconds waited,
    or raises :class:`Cancelled` if ``cancel`` is set while waiting.
    """

    def __init__(
        self,
        *,
        rate_rps: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate_rps = rate_rps
        # A burst of one second's worth would let N threads fire at once after an idle spell;
        # cap it so the spike stays well under the server's per-second limit.
        self._burst_cap = burst if burst is not None else 10.0
        self.burst = burst if burst is not None else max(1.0, min(rate_rps, 10.0))
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._stamp = clock()
        self.gate = Gate(clock)

    def set_rate(self, rate_rps: float) -> None:
        """Change the request rate (the pacer's share of the group's budget); tokens already
        saved stay, up to the burst of the new rate."""
        rate_rps = max(rate_rps, 0.001)
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate_rps)
            self._stamp = now
            self.rate_rps = rate_rps
            # A twentieth of a second's worth: the pods' bursts together stay well inside the
            # group's spike limit (90/s plus 4.5 leaves room under ASAPP's 100 in any second
            # for pods whose views of each other differ for a moment).
            self.burst = max(1.0, min(rate_rps / 20, self._burst_cap))
            self._tokens = min(self._tokens, self.burst)

    def now(self) -> float:
        """The throttle's clock: the ``sent_at`` of a request that just passed :meth:`acquire`."""
        return self._clock()

    @property
    def paused_for_s(self) -> float:
        """Seconds left of the pod-wide pause (0 when none)."""
        return self.gate.paused_for_s

    def pause(self, seconds: float) -> None:
        """Hold every request for at least ``seconds`` from now."""
        self.gate.pause(seconds)

    def rate_limited(
        self, retry_after_s: float | None, backoff: Backoff, sent_at: float | None = None
    ) -> Pause:
        """Record a 429 to a request sent at ``sent_at`` (default: now) and pause the pod.

        ``Retry-After`` wins when present; otherwise the 429 backoff for the number of
        consecutive episodes (1 s, 2 s, 4 s, … capped). 429s to requests already in flight
        when the episode opened count once (see :class:`Gate`).
        """
        hint = None if retry_after_s is None else min(max(retry_after_s, 0.0), backoff.cap_s)
        when = self._clock() if sent_at is None else sent_at
        return self.gate.hit(when, lambda n: min(backoff.delay(n), backoff.cap_s), hint)

    def succeeded(self, sent_at: float | None = None) -> bool:
        """A request sent at ``sent_at`` (default: now) got an answer that was not a 429:
        True when that ends the 429 episodes."""
        return self.gate.cleared(self._clock() if sent_at is None else sent_at)

    def _take(self) -> float:
        """Take a token if the pause is over and one is available; else return the wait."""
        paused = self.gate.paused_for_s
        if paused > 0:
            return paused
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate_rps)
            self._stamp = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.rate_rps

    def acquire(self, cancel: threading.Event | None = None) -> float:
        """Wait for permission to send one request. Returns seconds waited."""
        return _wait(self._take, cancel or threading.Event(), self._clock)
