"""The interfaces the poll loop talks to, with their contracts (arroyo's ``abstract.py`` style).

Only the composition root (:mod:`consumer.service`) builds the real implementations
(:class:`~consumer.kafka.KafkaSource`, :class:`~consumer.kafka.DeadLetterProducer`,
:class:`~consumer.sender.Sender`); unit tests pass hand-written fakes (``tests/unit/fakes.py``),
and a contract test runs one suite against the fake source and the real one.

Threading: every method here is called from the poll-loop thread only, and every callback a
port takes is invoked on that thread (from inside :meth:`Source.consume`, or
:meth:`DeadLetters.poll` / :meth:`DeadLetters.flush`), except the sender's completion queue,
which sender threads fill and the loop drains.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from consumer.decoder import Decoder
from consumer.records import Batch, Completion, DeadLetter, Entity, Message, TopicPartition

__all__ = ["DeadLetters", "Decoder", "Mapper", "SenderLike", "Source", "Validator"]

PartitionsCallback = Callable[[list[TopicPartition]], None]
CommitCallback = Callable[[str | None, dict[TopicPartition, int]], None]
DeadLetterDone = Callable[[DeadLetter, str | None], None]


class Validator(Protocol):
    def error(self, item: Mapping[str, Any]) -> str | None:
        """Why ``item`` breaks the API's constraints, or None when it is valid. Never raises
        for any item shape."""
        ...

    def encode(self, item: Mapping[str, Any]) -> bytes:
        """The valid item's compact JSON; raises :class:`~consumer.errors.ValidationError`
        (with the :meth:`error` reason, or why JSON cannot carry it) and nothing else."""
        ...


class Mapper(Protocol):
    def __call__(
        self, entity: Entity, record: Mapping[str, Any], *, topic: str, partition: int, offset: int
    ) -> dict[str, Any]:
        """The API item for a decoded record. Raises
        :class:`~consumer.errors.ValidationError` when the record cannot be mapped."""
        ...


class Source(Protocol):
    """A group consumer over the entity topics (offsets committed by us only)."""

    def subscribe(
        self,
        topics: Iterable[str],
        *,
        on_assign: PartitionsCallback,
        on_revoke: PartitionsCallback,
        on_lost: PartitionsCallback,
        on_commit: CommitCallback | None = None,
    ) -> None:
        """Join the group. Rebalance callbacks and asynchronous commit results are served from
        inside a later :meth:`consume`. ``on_revoke`` may still commit the revoked
        partitions; ``on_lost`` partitions already belong to someone else."""
        ...

    def consume(self, max_messages: int, timeout_s: float) -> list[Message]:
        """Up to ``max_messages`` messages, ascending offsets per partition, waiting at most
        ``timeout_s`` for the first. A consumer error at a message's position comes back as a
        :class:`~consumer.records.Message` with ``error`` set (never skipped); broker-level
        errors are logged. Raises :class:`~consumer.errors.FatalKafkaError` when the client is
        unusable."""
        ...

    def pause(self, tps: Iterable[TopicPartition]) -> None:
        """Stop fetching ``tps``: no message of theirs is returned until :meth:`resume`. The
        flag survives a rebalance (so a released partition must be resumed first)."""
        ...

    def resume(self, tps: Iterable[TopicPartition]) -> None:
        """Fetch ``tps`` again from where their consumption stopped."""
        ...

    def commit(
        self, offsets: Mapping[TopicPartition, int], timeout_s: float
    ) -> dict[TopicPartition, int]:
        """Commit ``offsets`` (next offsets to read) synchronously within ``timeout_s``;
        returns what was committed. Raises :class:`~consumer.errors.BrokerError` when the
        commit failed or did not finish in time."""
        ...

    def commit_async(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Start a commit; its result reaches ``on_commit`` from a later :meth:`consume`.
        Raises :class:`~consumer.errors.BrokerError` when it cannot even be started."""
        ...

    def high_watermark(self, tp: TopicPartition) -> int | None:
        """The partition's end offset as last seen (no broker round trip); None if unknown."""
        ...

    def committed(
        self, tps: Iterable[TopicPartition], timeout_s: float
    ) -> dict[TopicPartition, int | None]:
        """The group's committed offsets (None where nothing is committed). Raises
        :class:`~consumer.errors.BrokerError` on failure or timeout."""
        ...

    def partitions_total(self, topics: Iterable[str], timeout_s: float) -> int | None:
        """How many partitions ``topics`` have together, or None when unknown (never
        raises): this pod's fallback share of the group's request budget is its share of
        them."""
        ...

    def close(self, timeout_s: float) -> bool:
        """Leave the group within ``timeout_s``; False when it did not finish in time."""
        ...


class DeadLetters(Protocol):
    """The dead-letter topic's producer."""

    def produce(self, dl: DeadLetter, on_done: DeadLetterDone) -> bool:
        """Queue one dead letter. False when the local queue is full (nothing queued: try
        again later). Otherwise ``on_done(dl, error_or_None)`` runs exactly once, later, from
        :meth:`poll` or :meth:`flush` — never from inside ``produce``. A dead letter too large
        for the topic is written without its value (header ``dlq.value.omitted``)."""
        ...

    def poll(self) -> None:
        """Serve delivery reports without waiting."""
        ...

    def flush(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for outstanding writes; returns how many remain."""
        ...


class SenderLike(Protocol):
    """Sender threads: one lane per entity, so one entity's failing endpoint holds only its own
    batches. Every submitted batch comes back on :attr:`completions` exactly once, each item in
    exactly one of ``delivered``, ``dead`` or ``abandoned``; ``batch.retrying`` is True while it
    waits to be retried; a set ``batch.cancel`` makes it give up (unsent items abandoned)."""

    completions: queue.Queue[Completion]

    def submit(self, batch: Batch) -> None:
        """Queue a closed batch for its entity's lane."""
        ...

    def has_capacity(self, entity: Entity | None = None) -> bool:
        """Whether a batch of ``entity`` (any entity when None) submitted now would be sent at
        once by a free thread."""
        ...

    def stop(self) -> None:
        """Let the threads exit once their queues are drained (does not wait)."""
        ...
