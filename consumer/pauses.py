"""Which assigned partitions are paused, kept in step with the consumer's own pause flags.

Two reasons to pause, decided each loop turn:

- *backpressure*: every assigned partition pauses once ``max_messages`` or ``max_bytes`` of
  consumed messages are unfinished, until both are below 80 % (hysteresis, so the loop does not
  flap at the limit);
- *per partition*: the loop names the partitions that must wait (held for the registry, a dead
  letter failed, a batch being retried).

librdkafka keeps a partition's pause flag across a rebalance, so a released partition that was
paused is resumed while it is still ours (:meth:`Pauses.release`), and a newly assigned one is
told its state at the next turn (pause/resume only apply once the assignment is in effect).
"""

from __future__ import annotations

from collections.abc import Iterable

from consumer.metrics import Metrics
from consumer.ports import Source
from consumer.records import TopicPartition


class Pauses:
    """The pause state of the assigned partitions. Owned by the poll loop."""

    def __init__(
        self, *, source: Source, metrics: Metrics, max_messages: int, max_bytes: int
    ) -> None:
        self._source = source
        self._gauge = metrics.paused_partitions
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._paused: set[TopicPartition] = set()
        self._fresh: set[TopicPartition] = set()  # assigned, state not yet told to the consumer
        self.throttled = False  # backpressure: everything paused

    def assigned(self, tps: Iterable[TopicPartition]) -> None:
        self._fresh.update(tps)

    def update(
        self,
        assigned: set[TopicPartition],
        waiting: set[TopicPartition],
        *,
        pending: int,
        pending_bytes: int,
    ) -> None:
        """Pause ``waiting`` (or everything under backpressure), resume the rest."""
        max_n, max_b = self._max_messages, self._max_bytes
        if pending >= max_n or pending_bytes >= max_b:
            self.throttled = True
        elif pending < max_n * 0.8 and pending_bytes < max_b * 0.8:
            self.throttled = False
        want = set(assigned) if self.throttled else waiting & assigned
        to_pause = want - self._paused
        to_resume = (self._paused | (self._fresh & assigned)) - want
        self._fresh.clear()
        if to_pause:
            self._source.pause(to_pause)
        if to_resume:
            self._source.resume(to_resume)
        self._paused = want
        self._gauge.set(len(want))

    def release(self, tps: set[TopicPartition]) -> None:
        """``tps`` are being released: resume those paused while they are still ours."""
        paused = self._paused & tps
        if paused:
            self._source.resume(paused)
        self._paused -= tps
        self._fresh -= tps
