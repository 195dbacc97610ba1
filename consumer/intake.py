"""Intake: consumed messages tracked, ingested and routed, in order.

Every consumed message is first tracked by the :class:`~consumer.offsets.OffsetTracker` (a
message at or below its partition's last consumed offset rewinds that partition's tracking),
then run through the pure :class:`~consumer.ingest.Ingest` step, and its result routed: an item
to the :class:`~consumer.dispatch.Dispatcher` (tagged with its tracking generation), a dead
letter to the :class:`~consumer.outbox.DeadLetterOutbox`, a schema-registry wait to the
:class:`~consumer.holds.RegistryHolds` — and every later message of a held partition behind it,
so a partition's order is kept. Owned by the poll loop.

With ingest workers (``INGEST_WORKERS``, :mod:`consumer.workers`) the ingest step of a batch
runs in other processes while the loop goes on: :meth:`Intake.process` tracks the batch and
submits it, and its results are routed later, batch after batch in the order consumed
(:meth:`Intake.collect`), so per-partition order, holds and dead letters are exactly as
in-process. A result whose message is no longer ours when it is routed (its partition was
rewound or released meanwhile) is dropped: the message is read again. At most
``max_pending`` batches are in the workers at once; beyond that ``process`` waits for the
oldest.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from typing import Protocol

from consumer.dispatch import Dispatcher
from consumer.holds import RegistryHolds
from consumer.ingest import Ingest, Result, Unavailable
from consumer.metrics import Metrics
from consumer.offsets import OffsetTracker
from consumer.outbox import DeadLetterOutbox
from consumer.records import DeadLetter, Entity, Item, Message, TopicPartition

log = logging.getLogger(__name__)


class PendingIngest(Protocol):
    """The results of one submitted batch, when the workers have them."""

    def done(self) -> bool:
        """Every result is there (:meth:`result` will not wait)."""
        ...

    def result(self, timeout_s: float | None = None) -> list[Result]:
        """One result per submitted message, in order, as :class:`Ingest` would return them
        in-process. Raises TimeoutError when not done within ``timeout_s``."""
        ...


class IngestWorkers(Protocol):
    """Runs the ingest step elsewhere (:class:`consumer.workers.IngestPool`)."""

    def submit(self, messages: Sequence[Message]) -> PendingIngest:
        """Start ingesting ``messages``; never blocks for long."""
        ...


class Intake:
    """Tracks, ingests and routes consumed messages (see the module docstring)."""

    def __init__(
        self,
        *,
        topic_entities: Mapping[str, Entity],
        ingest: Ingest,
        tracker: OffsetTracker,
        holds: RegistryHolds,
        dispatch: Dispatcher,
        outbox: DeadLetterOutbox,
        metrics: Metrics,
        workers: IngestWorkers | None = None,
        max_pending: int = 3,
    ) -> None:
        self.topic_entities = topic_entities
        self.workers = workers
        self.max_pending = max_pending
        # submitted batches, oldest first: (messages, generation per partition, results)
        self._pending: deque[tuple[list[Message], dict[TopicPartition, int], PendingIngest]] = (
            deque()
        )
        self.ingest = ingest
        self.tracker = tracker
        self.holds = holds
        self.dispatch = dispatch
        self.outbox = outbox
        self.metrics = metrics
        # label lookups cost more than the increment on the hot path: cache the children
        self._mapped = {e: metrics.items_mapped.labels(e.value) for e in Entity}

    def process(self, messages: Sequence[Message]) -> None:
        """Track, ingest and route one consumed batch, in order. Per-batch rather than
        per-message work where it is the same: the held partitions are read once (and kept in
        step with what this batch holds), a partition's generation once (nothing in here
        rewinds or releases a partition after the tracking pass), metrics once per label."""
        if not messages:
            return
        entities = self.topic_entities
        tracker, holds = self.tracker, self.holds
        held = holds.partitions()
        inline = self.workers is None  # else nothing skips the batches still out
        consumed: Counter[str] = Counter()
        fresh: list[Message] = []
        for message in messages:
            pos = message.position
            topic = pos.topic
            if topic not in entities:  # not subscribed: only a misbehaving broker does it
                log.error(
                    "message from unexpected topic %s", pos, extra={"event": "unexpected_topic"}
                )
                continue
            consumed[topic] += 1
            value = message.value
            size = len(value) if value is not None else 0
            try:
                tracker.track(pos, size)
            except ValueError:
                self._rewind(message)
                held = holds.partitions()
                tracker.track(pos, size)
            if pos.tp in held and inline:
                holds.append(message)
            else:  # with batches in the workers, held ones wait for their turn in routing
                fresh.append(message)
        for topic, n in consumed.items():
            self.metrics.messages_consumed.labels(entities[topic].value, topic).inc(n)
        if not fresh:
            return
        if self.workers is None:
            self._route_batch(fresh, self.ingest(fresh), None)
            return
        generations = {tp: tracker.generation(tp) for tp in {m.position.tp for m in fresh}}
        self._pending.append((fresh, generations, self.workers.submit(fresh)))
        if len(self._pending) > self.max_pending:
            self.collect(block=True, keep=self.max_pending)
        else:
            self.collect()

    @property
    def pending(self) -> int:
        """Batches submitted to the workers whose results were not routed yet."""
        return len(self._pending)

    def collect(
        self, *, block: bool = False, keep: int = 0, timeout_s: float | None = None
    ) -> bool:
        """Route the results of submitted batches, oldest first: those that are done, or
        (``block``) every batch but the newest ``keep``, waiting up to ``timeout_s`` for
        in all. Returns whether nothing is left pending."""
        pending = self._pending
        end = None if timeout_s is None else time.monotonic() + timeout_s
        while pending:
            messages, generations, results = pending[0]
            if not results.done() and not (block and len(pending) > keep):
                break
            try:
                batch = results.result(None if end is None else max(0.0, end - time.monotonic()))
            except TimeoutError:
                break
            pending.popleft()
            self._route_batch(messages, batch, generations)
        return not pending

    def _route_batch(
        self,
        fresh: Sequence[Message],
        results: Sequence[Result],
        submitted: Mapping[TopicPartition, int] | None,
    ) -> None:
        """Route one batch's results in order. ``submitted``: the generation each partition
        had when the batch was submitted (None: ingested just now, in-process); a message
        that is no longer tracked in it is skipped."""
        tracker, holds = self.tracker, self.holds
        held = holds.partitions()
        generations: dict[TopicPartition, int] = {}
        mapped: dict[Entity, int] = {}
        add = self.dispatch.add
        try:
            for message, result in zip(fresh, results, strict=True):
                tp = message.position.tp
                if submitted is not None and not tracker.owns(message.position, submitted[tp]):
                    continue  # rewound or released while in the workers: read again
                if tp in held:  # an earlier one of its partition waits
                    holds.append(message)
                elif type(result) is Item:
                    generation = generations.get(tp)
                    if generation is None:
                        generation = generations[tp] = tracker.generation(tp)
                    result.generation = generation
                    mapped[result.entity] = mapped.get(result.entity, 0) + 1
                    add(result)
                elif isinstance(result, Unavailable):
                    self._count_unavailable(message)
                    holds.hold(message, result.error, result.retry_after_s)
                    held.add(tp)
                else:
                    self._route(result)
        finally:
            for entity, n in mapped.items():
                self._mapped[entity].inc(n)

    def _route(self, result: Item | DeadLetter) -> None:
        tp = result.message.position.tp
        generation = self.tracker.generation(tp)
        if isinstance(result, DeadLetter):
            entity = result.entity.value
            if result.reason == "decode":
                self.metrics.decode_failures.labels(entity, "dead_letter").inc()
            elif result.reason == "consume":
                self.metrics.consumer_errors.labels(tp.topic).inc()
            else:
                self.metrics.items_invalid.labels(entity).inc()
            self.outbox.send(result, generation)
            return
        result.generation = generation
        self._mapped[result.entity].inc()
        self.dispatch.add(result)

    def _rewind(self, message: Message) -> None:
        """``message`` is at or below the last consumed offset of its partition (log
        truncation after an unclean leader election, a seek back): restart its tracking there.
        Earlier unfinished messages stay unfinished; later ones are read again."""
        pos = message.position
        forgotten = self.tracker.rewind(pos)
        self.holds.drop_from(message)
        self.metrics.offset_rewinds.labels(pos.topic).inc()
        log.warning(
            "%s consumed again at or below the last consumed offset (log truncation or a "
            "seek back): tracking restarts there, %d unfinished offsets from it forgotten",
            pos,
            forgotten,
            extra={
                "event": "offset_rewind",
                "topic": pos.topic,
                "partition": pos.partition,
                "offset": pos.offset,
            },
        )

    def _count_unavailable(self, message: Message) -> None:
        entity = self.topic_entities[message.position.topic]
        self.metrics.decode_failures.labels(entity.value, "registry_unavailable").inc()

    def retry_held(self) -> None:
        for queue in self.holds.due():
            tp = queue[0].position.tp
            while queue:
                result = self.ingest.one(queue[0])
                if isinstance(result, Unavailable):
                    self._count_unavailable(queue[0])
                    self.holds.retry_head(queue[0], result.error, result.retry_after_s)
                    break
                queue.popleft()
                self._route(result)
            self.holds.settle(tp)
