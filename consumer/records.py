"""Value types that travel through the pipeline. Imports nothing from the package.

Offsets travel with the data: every item knows the Kafka position it came from, so whatever
finishes an item (delivery or dead letter) can tell the offset tracker which message is done.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field


class Entity(enum.StrEnum):
    """The three kinds of metadata ASAPP ingests; the value is the settings/topic suffix."""

    AGENT = "agent"
    CONVERSATION = "conversation"
    CUSTOMER = "customer"

    @property
    def endpoint(self) -> str:
        """Path of the entity's batch endpoint."""
        return _ENDPOINTS[self]


_ENDPOINTS = {
    Entity.AGENT: "/metadata-ingestion/v1/many-agent-metadata",
    Entity.CONVERSATION: "/metadata-ingestion/v1/many-convo-metadata",
    Entity.CUSTOMER: "/metadata-ingestion/v1/many-customer-metadata",
}


@dataclass(frozen=True, slots=True, order=True)
class TopicPartition:
    """A Kafka partition."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]"


#: One TopicPartition per (topic, partition) seen in a Position: the key every per-partition
#: map is looked up with for every message, built once (a dict lookup by an identical key
#: skips ``__eq__``). Bounded by the partitions this process ever consumed.
_INTERNED: dict[tuple[str, int], TopicPartition] = {}


def interned(topic: str, partition: int) -> TopicPartition:
    """The shared TopicPartition of ``(topic, partition)`` (equal to a new one, only cheaper)."""
    tp = _INTERNED.get((topic, partition))
    if tp is None:
        tp = _INTERNED.setdefault((topic, partition), TopicPartition(topic, partition))
    return tp


@dataclass(frozen=True, slots=True)
class Position:
    """Where a message sits: its ``offset``; the offset to commit after it is ``next_offset``.
    ``tp`` is its partition (interned, set on construction: read several times per message)."""

    topic: str
    partition: int
    offset: int
    tp: TopicPartition = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tp", interned(self.topic, self.partition))

    @property
    def next_offset(self) -> int:
        return self.offset + 1

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True, slots=True)
class Message:
    """A consumed Kafka message, reduced to what the pipeline and the DLQ need."""

    position: Position
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None
    headers: tuple[tuple[str, bytes], ...] = ()
    #: A consumer error librdkafka reported for this very position (e.g. a corrupt record):
    #: the message cannot be read, so it is dead-lettered (reason ``consume``) rather than
    #: skipped, which would let the commit pass it.
    error: str | None = None


@dataclass(slots=True)
class Item:
    """One API item (already mapped and validated) and the message it came from.

    ``body`` is the item serialized as JSON, computed once so batching by bytes is exact; the
    decoded dict is not kept (it would double the memory of every buffered message).
    """

    entity: Entity
    event_id: str
    body: bytes
    message: Message
    generation: int = 0  # assignment generation of its partition when it was consumed
    #: The entity's identity (the API's required id fields joined): versions of one key reach
    #: the API in offset order (see :mod:`consumer.dispatch`).
    key: str = ""
    #: Older versions of the same key this item replaced while waiting (``BATCH_COALESCE``):
    #: they are finished together with it.
    superseded: list[Item] = field(default_factory=list)

    @property
    def position(self) -> Position:
        return self.message.position


@dataclass(slots=True)
class Batch:
    """Items of one entity that go out in one request. ``close_reason`` says why it closed."""

    entity: Entity
    items: list[Item] = field(default_factory=list)
    body_bytes: int = 0
    opened_at: float = 0.0
    close_reason: str = ""
    generation: int = 0  # assignment generation the items were consumed in
    cancel: threading.Event = field(default_factory=threading.Event)  # give up (revoke/stop)
    retrying: bool = False  # set by the sender while the batch waits to be retried

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that can never succeed, with why. ``reason`` is one of ``decode``,
    ``validation``, ``rejected``, ``http``; ``error`` is the human-readable cause."""

    message: Message
    entity: Entity
    reason: str
    error: str
    http_status: int | None = None


@dataclass(slots=True)
class Completion:
    """What became of a batch: handed from a sender thread back to the poll loop.

    Every item of the batch is in exactly one of ``delivered``, ``dead`` or ``abandoned``
    (abandoned: given up on revoke/shutdown, neither delivered nor dead-lettered, so its
    offset must not be committed).
    """

    batch: Batch
    delivered: list[Item] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    abandoned: list[Item] = field(default_factory=list)
    acked_at: float = 0.0
