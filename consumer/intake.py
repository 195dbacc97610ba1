"""Intake: consumed messages tracked, ingested and routed, in order.

Every consumed message is first tracked by the :class:`~consumer.offsets.OffsetTracker` (a
message at or below its partition's last consumed offset rewinds that partition's tracking),
then run through the pure :class:`~consumer.ingest.Ingest` step, and its result routed: an item
to the :class:`~consumer.dispatch.Dispatcher` (tagged with its tracking generation), a dead
letter to the :class:`~consumer.outbox.DeadLetterOutbox`, a schema-registry wait to the
:class:`~consumer.holds.RegistryHolds` — and every later message of a held partition behind it,
so a partition's order is kept. Owned by the poll loop.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence

from consumer.dispatch import Dispatcher
from consumer.holds import RegistryHolds
from consumer.ingest import Ingest, Unavailable
from consumer.metrics import Metrics
from consumer.offsets import OffsetTracker
from consumer.outbox import DeadLetterOutbox
from consumer.records import DeadLetter, Entity, Item, Message, TopicPartition

log = logging.getLogger(__name__)


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
    ) -> None:
        self.topic_entities = topic_entities
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
            if pos.tp in held:
                holds.append(message)
            else:
                fresh.append(message)
        for topic, n in consumed.items():
            self.metrics.messages_consumed.labels(entities[topic].value, topic).inc(n)
        generations: dict[TopicPartition, int] = {}
        mapped: dict[Entity, int] = {}
        add = self.dispatch.add
        try:
            for message, result in zip(fresh, self.ingest(fresh), strict=True):
                tp = message.position.tp
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
