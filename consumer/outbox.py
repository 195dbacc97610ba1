"""The dead-letter outbox: every dead letter from being decided until the DLQ acknowledges it.

Contract:

- :meth:`DeadLetterOutbox.send` hands a dead letter to the producer; ``on_written(dl,
  generation)`` runs once the DLQ acknowledged it (only then may its offset be committed).
- A write that fails is retried after a backoff, never skipped; its partition is *blocked*
  (paused by the loop) until that very dead letter is written. One log line per failure
  episode, not per record; the recovery is logged too.
- A local queue that is full is tried again 100 ms later.
- A dead letter whose position is still waiting for an acknowledgement (its partition was
  released and assigned back meanwhile) is not written a second time: the pending write
  finishes the new one too.
- :meth:`forget` drops what is not yet handed to the producer for released partitions; writes
  already in the producer stay known until their acknowledgement, for the rule above.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

from consumer.metrics import Metrics
from consumer.ports import DeadLetters
from consumer.records import DeadLetter, Position, TopicPartition
from consumer.retry import Backoff, server_error_backoff

log = logging.getLogger(__name__)

Written = Callable[[DeadLetter, int], None]


class DeadLetterOutbox:
    """Owns every dead letter not yet acknowledged. Used from the poll-loop thread only."""

    def __init__(
        self,
        *,
        producer: DeadLetters,
        on_written: Written,
        metrics: Metrics,
        max_backoff_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._producer = producer
        self._on_written = on_written
        self._metrics = metrics
        self._clock = clock
        self._backoff: Backoff = server_error_backoff(min(30.0, max_backoff_s))
        #: written to the producer, not yet answered: position → generations waiting on it
        self._pending: dict[Position, list[int]] = {}
        self._retry: deque[tuple[float, DeadLetter, int]] = deque()
        #: offsets per partition whose write failed and is not yet rewritten
        self._blocked: dict[TopicPartition, set[int]] = {}
        self._failures = 0
        self._live: set[TopicPartition] = set()  # partitions whose writes count (assigned)

    # ------------------------------------------------------------------ sending
    def send(self, dl: DeadLetter, generation: int) -> None:
        """Dead-letter ``dl`` (logged with its position and reason)."""
        pos = dl.message.position
        log.warning(
            "dead-lettering %s: %s: %s",
            pos,
            dl.reason,
            dl.error,
            extra={
                "event": "dead_letter",
                "topic": pos.topic,
                "partition": pos.partition,
                "offset": pos.offset,
                "reason": dl.reason,
                "entity": dl.entity.value,
                "http_status": dl.http_status,
            },
        )
        self._live.add(pos.tp)
        waiting = self._pending.get(pos)
        if waiting is not None:  # the same message's earlier write is still in the producer
            waiting.append(generation)
            return
        self._write(dl, generation)

    def _write(self, dl: DeadLetter, generation: int) -> None:
        pos = dl.message.position
        if self._producer.produce(dl, self._done):
            self._pending.setdefault(pos, []).append(generation)
        else:  # local queue full: try again shortly
            self._retry.append((self._clock() + 0.1, dl, generation))

    def _done(self, dl: DeadLetter, error: str | None) -> None:
        pos = dl.message.position
        generations = self._pending.pop(pos, [])
        tp = pos.tp
        if error is None:
            self._metrics.dead_letters.labels(dl.entity.value, dl.reason).inc()
            for generation in generations:
                self._on_written(dl, generation)
            blocked = self._blocked.get(tp)
            if blocked is not None:
                blocked.discard(pos.offset)
                if not blocked:
                    del self._blocked[tp]
                    if not self._blocked:
                        self._recovered()
            return
        self._metrics.dlq_failures.inc()
        self._failures += 1
        delay = self._backoff.delay(min(self._failures, 10))
        if self._failures == 1:
            log.error(
                "dead-letter write failed for %s (%s); partition held, retrying every few "
                "seconds (one line per episode)",
                pos,
                error,
                extra={
                    "event": "dlq_write_failed",
                    "topic": pos.topic,
                    "partition": pos.partition,
                    "offset": pos.offset,
                },
            )
        if tp in self._live and generations:
            # Held until this very dead letter is written, whatever happens to others.
            self._blocked.setdefault(tp, set()).add(pos.offset)
            self._retry.append((self._clock() + delay, dl, generations[-1]))

    def _recovered(self) -> None:
        if self._failures:
            log.info(
                "dead-letter topic writable again after %d failed writes",
                self._failures,
                extra={"event": "dlq_recovered", "failures": self._failures},
            )
        self._failures = 0

    # ------------------------------------------------------------------ loop duties
    def poll(self) -> None:
        """Serve acknowledgements and rewrite what is due."""
        self._producer.poll()
        if not self._retry:
            return
        now = self._clock()
        if self._retry[0][0] > now and all(t > now for t, _, _ in self._retry):
            return
        due = [(d, g) for t, d, g in self._retry if t <= now]
        self._retry = deque(r for r in self._retry if r[0] > now)
        for dl, generation in due:
            self._write(dl, generation)

    def flush(self, timeout_s: float) -> None:
        """Give outstanding writes up to ``timeout_s``, then serve their acknowledgements."""
        self._producer.flush(timeout_s)
        self.poll()

    def blocked(self) -> set[TopicPartition]:
        """Partitions held until a failed dead letter of theirs is written."""
        return set(self._blocked)

    def settled(self, tps: Iterable[TopicPartition] | None = None) -> bool:
        """No dead letter of ``tps`` (all partitions when None) is waiting to be written or
        acknowledged."""
        if tps is None:
            return not self._retry and not any(p.tp in self._live for p in self._pending)
        wanted = set(tps) & self._live
        return not any(p.tp in wanted for p in self._pending) and not any(
            d.message.position.tp in wanted for _, d, _ in self._retry
        )

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Released partitions: drop their rewrites and holds (their messages are read again
        by whoever owns them next); writes in the producer stay known until answered."""
        gone = set(tps)
        self._live -= gone
        self._retry = deque(r for r in self._retry if r[1].message.position.tp not in gone)
        for tp in gone:
            self._blocked.pop(tp, None)
