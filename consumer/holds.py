"""Registry holds: messages waiting for the schema registry, per partition, in order.

When a message cannot be decoded because the registry is unreachable, it and every later
message of its partition are held here (the partition is paused) and tried again after a
backoff (the registry's ``Retry-After`` when it gave one). Holding keeps each partition's order:
nothing of a held partition reaches a batch before the held head does.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

from consumer.records import Message, TopicPartition
from consumer.retry import Backoff, server_error_backoff

log = logging.getLogger(__name__)


class RegistryHolds:
    """Held messages per partition with their retry time. Owned by the poll loop."""

    def __init__(
        self, *, max_backoff_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._backoff: Backoff = server_error_backoff(max_backoff_s)
        self._queues: dict[TopicPartition, deque[Message]] = {}
        self._until: dict[TopicPartition, float] = {}
        self._attempts: dict[TopicPartition, int] = {}

    def __contains__(self, tp: TopicPartition) -> bool:
        return tp in self._queues

    def partitions(self) -> set[TopicPartition]:
        """Partitions with held messages (they stay paused)."""
        return set(self._queues)

    def hold(self, message: Message, error: str, retry_after_s: float | None) -> float:
        """Hold ``message`` as the head of its partition's queue and schedule the next try;
        returns the delay chosen."""
        self._queues[message.position.tp] = deque([message])
        return self.retry_head(message, error, retry_after_s)

    def retry_head(self, message: Message, error: str, retry_after_s: float | None) -> float:
        """The held head (still) cannot be decoded: back off further; returns the delay."""
        pos = message.position
        tp = pos.tp
        attempt = self._attempts.get(tp, 0)
        self._attempts[tp] = attempt + 1
        delay = max(retry_after_s or 0.0, self._backoff.delay(attempt), 0.05)
        self._until[tp] = self._clock() + delay
        log.warning(
            "schema registry unavailable at %s: %s; partition paused, retry in %.2fs",
            pos,
            error,
            delay,
            extra={
                "event": "registry_unavailable",
                "topic": pos.topic,
                "partition": pos.partition,
                "offset": pos.offset,
            },
        )
        return delay

    def append(self, message: Message) -> None:
        """A later message of a held partition: queue it behind the head."""
        self._queues[message.position.tp].append(message)

    def drop_from(self, message: Message) -> None:
        """Forget held messages at or after ``message``'s offset (its partition rewound)."""
        pos = message.position
        queue = self._queues.get(pos.tp)
        if queue is None:
            return
        kept = deque(m for m in queue if m.position.offset < pos.offset)
        if kept:
            self._queues[pos.tp] = kept
        else:
            self.forget([pos.tp])

    def due(self) -> list[deque[Message]]:
        """The queues whose retry time has come (the caller pops what it could ingest and
        calls :meth:`settle`)."""
        now = self._clock()
        return [q for tp, q in self._queues.items() if self._until.get(tp, 0.0) <= now]

    def settle(self, tp: TopicPartition) -> None:
        """Drop ``tp``'s queue if it was emptied: the registry answered again."""
        if tp in self._queues and not self._queues[tp]:
            self.forget([tp])
            log.info(
                "schema registry reachable again; %s resumes",
                tp,
                extra={"event": "registry_recovered"},
            )

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Drop everything held for ``tps`` (released: they will be read again)."""
        for tp in tps:
            self._queues.pop(tp, None)
            self._until.pop(tp, None)
            self._attempts.pop(tp, None)
