"""Offset commits and lag: what the tracker says may be committed, sent to the group.

Regular commits are asynchronous (one outstanding at a time; its result comes back through
:meth:`Committer.on_commit`, served from inside the consumer's poll), so a slow or unreachable
broker never stalls the loop. Final commits (revoke, shutdown) are synchronous and bounded.
Offsets only move forward: a failed commit is logged, counted and redone by the next one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from consumer.errors import BrokerError
from consumer.metrics import Metrics
from consumer.offsets import OffsetTracker
from consumer.ports import Source
from consumer.records import TopicPartition

log = logging.getLogger(__name__)


class Committer:
    """Commits the tracker's committable offsets for the partitions ``assigned()`` returns."""

    def __init__(
        self,
        *,
        source: Source,
        tracker: OffsetTracker,
        metrics: Metrics,
        assigned: Callable[[], set[TopicPartition]],
        commit_timeout_s: float,
        commit_interval_s: float,
        lag_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._tracker = tracker
        self._metrics = metrics
        self._assigned = assigned
        self.commit_timeout_s = commit_timeout_s
        self._commit_interval_s = commit_interval_s
        self._lag_interval_s = lag_interval_s
        self._clock = clock
        self._async_commit_at: float | None = None
        self._next_commit = 0.0
        self._next_lag = 0.0

    def when_due(self) -> None:
        """Commit and refresh the lag gauges when their intervals have passed."""
        now = self._clock()
        if now >= self._next_commit:
            self._next_commit = now + self._commit_interval_s
            self.commit()
        if now >= self._next_lag:
            self._next_lag = now + self._lag_interval_s
            self.update_lag()

    def commit(
        self,
        *,
        only: set[TopicPartition] | None = None,
        final: bool = False,
        timeout_s: float | None = None,
    ) -> bool:
        """Commit every partition whose committable offset advanced.

        Regular commits are asynchronous (one outstanding at a time, its result arrives in
        :meth:`on_commit`), so a slow or unreachable broker never stalls the loop. ``final``
        commits (revoke, shutdown) are synchronous and bounded by ``timeout_s``. A failure is
        logged and retried later: offsets only ever move forward."""
        offsets = {
            tp: o
            for tp, o in self._tracker.to_commit().items()
            if tp in self._assigned() and (only is None or tp in only)
        }
        if not offsets:
            return True
        started = self._clock()
        try:
            if not final:
                pending = self._async_commit_at
                if pending is not None and started - pending < self.commit_timeout_s:
                    return True
                self._async_commit_at = started
                self._source.commit_async(offsets)
                return True
            done = self._source.commit(offsets, timeout_s or self.commit_timeout_s)
        except (BrokerError, TimeoutError) as exc:  # try again next time
            self._async_commit_at = None
            self._commit_failed(exc, final)
            return False
        self._metrics.commit_duration.observe(self._clock() - started)
        self._committed(done)
        log.info(
            "committed",
            extra={"event": "commit", "offsets": {str(t): o for t, o in done.items()}},
        )
        return True

    def on_commit(self, error: str | None, done: dict[TopicPartition, int]) -> None:
        """Result of an asynchronous commit, served by the consumer from within its poll."""
        sent_at, self._async_commit_at = self._async_commit_at, None
        if sent_at is not None:
            self._metrics.commit_duration.observe(self._clock() - sent_at)
        if error is not None:
            self._commit_failed(error, False)
        if done:
            self._committed(done)

    def _committed(self, done: Mapping[TopicPartition, int]) -> None:
        self._metrics.commits.labels("ok").inc()
        for tp, offset in done.items():
            if tp in self._assigned():  # a late answer for a released partition is history
                self._tracker.mark_committed(tp, offset)
                self._metrics.committed_offset.labels(tp.topic, str(tp.partition)).set(offset)

    def _commit_failed(self, error: object, final: bool) -> None:
        self._metrics.commits.labels("failed").inc()
        log.warning("commit failed: %s", error, extra={"event": "commit_failed", "final": final})

    def update_lag(self) -> None:
        unknown = [tp for tp in self._assigned() if self._tracker.committed(tp) is None]
        if unknown:
            try:
                for tp, offset in self._source.committed(unknown, 2.0).items():
                    if offset is not None:
                        self._tracker.mark_committed(tp, offset)
            except (BrokerError, TimeoutError) as exc:  # best effort; commits report failures
                log.debug("committed offsets unavailable: %s", exc)
        for tp in self._assigned():
            high = self._source.high_watermark(tp)
            committed = self._tracker.committed(tp)
            if high is None or committed is None:
                continue
            self._metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                max(0, high - committed)
            )
