"""How long a dependency has been failing without a single success: a readiness blocker.

An :class:`Outage` is fed by whoever observes the dependency (the sender for each API answer,
the Kafka consumer's error callback for the broker) and read by ``/readyz`` through
:meth:`Outage.problem`. It imports nothing from the package, so any adapter may feed one.

The rule (documented in the README's Configuration table, ``HEALTH_OUTAGE_S``): not ready once
every observation for longer than ``bound_s`` was a failure. A success ends the outage at
once; so does silence — no failure for ``quiet_s`` — for dependencies that only report
failures (librdkafka says when brokers go down, never when they come back).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Outage:
    """Thread-safe: :meth:`ok` and :meth:`failed` from any thread, :meth:`problem` from the
    health server's. ``what`` names the failure in the reason ("ASAPP API unreachable")."""

    def __init__(
        self,
        what: str,
        *,
        bound_s: float,
        quiet_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.bound_s = bound_s
        self.quiet_s = quiet_s
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None  # first failure after the last success
        self._last: float = 0.0  # latest failure
        self._detail = ""

    def ok(self) -> None:
        """A success: the outage, if any, is over."""
        with self._lock:
            self._since = None

    def failed(self, detail: str) -> None:
        """A failure; ``detail`` (the latest error) is shown in the reason."""
        now = self._clock()
        with self._lock:
            if self._since is None or self._silent(now):
                self._since = now
            self._last = now
            self._detail = detail

    def _silent(self, now: float) -> bool:
        return self.quiet_s is not None and now - self._last > self.quiet_s

    def problem(self) -> str | None:
        """``"<what> for 130s (<latest error>)"`` once failures alone have lasted longer than
        ``bound_s``; None otherwise (including after ``quiet_s`` without a failure)."""
        now = self._clock()
        with self._lock:
            if self._since is None or self._silent(now):
                return None
            lasted = now - self._since
            if lasted <= self.bound_s:
                return None
            return f"{self.what} for {lasted:.0f}s ({self._detail})"
