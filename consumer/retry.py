"""Retry policy and the pod-wide request throttle. No I/O; the clock and the sleep are injected.

- :class:`Backoff`: exponential backoff with full jitter (``random(0, min(cap, base * 2**n))``),
  the shape ASAPP advises (429: 1 s, 2 s, 4 s…; 5xx: 250 ms, 500 ms, 1 s…).
- :class:`Throttle`: what every request passes before it is sent, shared by all sender
  threads and all entities:

  * a token bucket at ``rate_rps`` (default 90/s, under ASAPP's 100/s spike arrest);
  * a pod-wide "not before" instant pushed forward by a 429 (``Retry-After`` when the server
    gives one, else the 429 backoff) or by rejected credentials, so concurrent requests do
    not storm a server that already said stop.
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
    """Raised by :meth:`Throttle.acquire` when the caller's cancel event is set."""


class Throttle:
    """Token bucket plus pod-wide pause, safe to share between threads.

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
        self.burst = burst if burst is not None else max(1.0, min(rate_rps, 10.0))
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._stamp = clock()
        self._not_before = 0.0
        self._consecutive_429 = 0

    @property
    def paused_for_s(self) -> float:
        """Seconds left of the pod-wide pause (0 when none)."""
        with self._lock:
            return max(0.0, self._not_before - self._clock())

    def pause(self, seconds: float) -> None:
        """Hold every request for at least ``seconds`` from now."""
        with self._lock:
            self._not_before = max(self._not_before, self._clock() + seconds)

    def rate_limited(self, retry_after_s: float | None, backoff: Backoff) -> float:
        """Record a 429 and pause the pod; returns the pause chosen.

        ``Retry-After`` wins when present; otherwise the 429 backoff for the number of
        consecutive 429s (1 s, 2 s, 4 s, … capped).
        """
        with self._lock:
            attempt = self._consecutive_429
            self._consecutive_429 += 1
        delay = retry_after_s if retry_after_s is not None else backoff.delay(attempt)
        delay = min(max(delay, 0.0), backoff.cap_s)
        self.pause(delay)
        return delay

    def succeeded(self) -> None:
        """A request got an answer that was not a 429: reset the 429 streak."""
        with self._lock:
            self._consecutive_429 = 0

    def _take(self) -> float:
        """Take a token if the pause is over and one is available; else return the wait."""
        with self._lock:
            now = self._clock()
            if now < self._not_before:
                return self._not_before - now
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate_rps)
            self._stamp = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.rate_rps

    def acquire(self, cancel: threading.Event | None = None) -> float:
        """Wait for permission to send one request. Returns seconds waited."""
        cancel = cancel or threading.Event()
        started = self._clock()
        while True:
            if cancel.is_set():
                raise Cancelled
            wait = self._take()
            if wait <= 0:
                return self._clock() - started
            # Wake at least every 100 ms so a cancel or a shortened pause is seen quickly.
            cancel.wait(min(wait, 0.1))
