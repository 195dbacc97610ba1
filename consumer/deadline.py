"""One time budget handed out step by step (quix-streams' ``Deadline`` is the model).

Revoke and shutdown each run several bounded steps (drain, commit, close) inside one bound. A
:class:`Deadline` is created once with the whole bound; each step asks what it may still spend,
keeping what the later steps reserved, so no step can eat the next one's share and the total
never exceeds the bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Deadline:
    """``total_s`` from ``started`` (now when None), on ``clock``."""

    def __init__(
        self,
        total_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        started: float | None = None,
    ) -> None:
        self._clock = clock
        self.started = clock() if started is None else started
        self.end = self.started + total_s

    def remaining(self) -> float:
        """Seconds left of the whole bound (never negative)."""
        return max(0.0, self.end - self._clock())

    def until(self, reserve_s: float = 0.0, *, floor_s: float = 0.0) -> float:
        """The clock time the current step may run to, keeping ``reserve_s`` for the steps
        after it; at least ``floor_s`` after the start (a step that must get a moment)."""
        return max(self.started + floor_s, self.end - reserve_s)

    def budget(self, cap_s: float, reserve_s: float = 0.0) -> float:
        """Seconds the current step may spend: at most ``cap_s``, keeping ``reserve_s``."""
        return max(0.0, min(cap_s, self.end - reserve_s - self._clock()))

    def elapsed(self) -> float:
        return self._clock() - self.started
