"""One contract, two sources: the same assertions run against the unit tests' in-memory
:class:`~tests.unit.fakes.FakeSource` and the real :class:`~consumer.kafka.KafkaSource` on the
local broker (as arroyo runs one suite over its local and Kafka backends), so the pipeline's
unit tests rely only on behaviour the real source has: the assign callback, consume (per
partition in offset order), pause/resume (a paused partition's messages are not returned until
it is resumed, and none is skipped), synchronous and asynchronous commits (the asynchronous
result reaches ``on_commit`` from a later ``consume``) and ``committed``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest
from confluent_kafka import Producer

from consumer.kafka import KafkaSource
from consumer.records import Message, Position, TopicPartition
from consumer.sandbox.broker import LocalBroker
from consumer.sandbox.produce import create_topics
from consumer.settings import Settings
from tests.unit.fakes import TIMESTAMP_MS, FakeSource, Rebalance

pytestmark = pytest.mark.integration

PARTITIONS = 2


class Backend(Protocol):
    """What the contract needs of a backend: a fresh source on a fresh topic, a way to
    produce to it, and how long "nothing more arrives" takes to be believable."""

    topic: str

    def source(self) -> Any: ...
    def joined(self, source: Any) -> None: ...
    def produce(self, partition: int, values: list[bytes]) -> list[int]: ...
    def turns(self, *, quiet: bool) -> Iterator[float]: ...


@dataclass
class FakeBackend:
    """The in-memory source: the broker's side (assignment, records) is fed by hand."""

    topic: str = "contract"
    _next: dict[int, int] = field(default_factory=dict)
    _sources: list[FakeSource] = field(default_factory=list)

    def source(self) -> FakeSource:
        self._sources.append(FakeSource(set()))
        return self._sources[-1]

    def joined(self, source: FakeSource) -> None:
        parts = tuple(TopicPartition(self.topic, p) for p in range(PARTITIONS))
        source.feed(Rebalance("assign", parts))

    def produce(self, partition: int, values: list[bytes]) -> list[int]:
        offsets = []
        for value in values:
            offset = self._next.get(partition, 0)
            self._next[partition] = offset + 1
            message = Message(Position(self.topic, partition, offset), b"k", value, TIMESTAMP_MS)
            for s in self._sources:
                s.feed(message)
            offsets.append(offset)
        return offsets

    def turns(self, *, quiet: bool) -> Iterator[float]:
        yield from (0.0, 0.0, 0.0)  # everything fed is served at once


@dataclass
class KafkaBackend:
    """The real source on the local broker; a topic and group per test."""

    bootstrap: str
    topic: str = field(default_factory=lambda: f"contract-{uuid.uuid4().hex[:8]}")
    group: str = field(default_factory=lambda: f"contract-{uuid.uuid4().hex[:8]}")

    def __post_init__(self) -> None:
        create_topics(self.bootstrap, [self.topic], partitions=PARTITIONS)

    def source(self) -> KafkaSource:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_GROUP_ID": self.group,
            # the local broker completes a first JoinGroup after session.timeout.ms / 2
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
        }
        return KafkaSource(Settings.from_env(env, require_credentials=False))

    def joined(self, source: KafkaSource) -> None:
        """The broker assigns by itself."""

    def produce(self, partition: int, values: list[bytes]) -> list[int]:
        producer = Producer({"bootstrap.servers": self.bootstrap, "acks": "all"})
        offsets: list[int] = []
        for value in values:
            producer.produce(
                self.topic,
                key=b"k",
                value=value,
                partition=partition,
                timestamp=TIMESTAMP_MS,
                on_delivery=lambda err, msg: offsets.append(msg.offset()),
            )
        assert producer.flush(15) == 0
        return sorted(offsets)

    def turns(self, *, quiet: bool) -> Iterator[float]:
        deadline = time.monotonic() + (2.0 if quiet else 30.0)
        while time.monotonic() < deadline:
            yield 0.2


@pytest.fixture(scope="module")
def bootstrap() -> Iterator[str]:
    with LocalBroker() as broker:
        yield broker.bootstrap_servers


@pytest.fixture(params=["fake", "kafka"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "fake":
        return FakeBackend()
    return KafkaBackend(request.getfixturevalue("bootstrap"))


@dataclass
class Subscribed:
    """A source subscribed to the backend's topic, recording what its callbacks saw."""

    backend: Backend
    source: Any
    assigned: list[set[TopicPartition]] = field(default_factory=list)
    commits: list[tuple[str | None, dict[TopicPartition, int]]] = field(default_factory=list)
    got: list[Message] = field(default_factory=list)

    def tp(self, partition: int) -> TopicPartition:
        return TopicPartition(self.backend.topic, partition)

    def consume(
        self, until: Callable[[], bool] = lambda: False, *, quiet: bool = False
    ) -> list[Message]:
        """Consume until ``until()`` holds (or, with ``quiet``, for the quiet period);
        returns what this call got."""
        start = len(self.got)
        for timeout_s in self.backend.turns(quiet=quiet):
            self.got += self.source.consume(100, timeout_s)
            if not quiet and until():
                break
        return self.got[start:]

    def offsets(self, messages: list[Message], partition: int) -> list[int]:
        return [m.position.offset for m in messages if m.position.partition == partition]


@pytest.fixture
def subscribed(backend: Backend) -> Iterator[Subscribed]:
    source = backend.source()
    sub = Subscribed(backend, source)
    source.subscribe(
        [backend.topic],
        on_assign=lambda tps: sub.assigned.append(set(tps)),
        on_revoke=lambda tps: None,
        on_lost=lambda tps: None,
        on_commit=lambda error, done: sub.commits.append((error, done)),
    )
    backend.joined(source)
    yield sub
    assert source.close(10.0)


def test_assign_callback_then_messages_in_offset_order(subscribed: Subscribed) -> None:
    b = subscribed.backend
    zero = b.produce(0, [b"a0", b"a1", b"a2"])
    one = b.produce(1, [b"b0", b"b1"])
    got = subscribed.consume(lambda: len(subscribed.got) >= 5)
    assert subscribed.assigned == [{subscribed.tp(0), subscribed.tp(1)}]
    assert subscribed.offsets(got, 0) == zero
    assert subscribed.offsets(got, 1) == one
    assert [m.value for m in got if m.position.partition == 0] == [b"a0", b"a1", b"a2"]
    assert all(m.key == b"k" and m.error is None for m in got)
    assert all(m.timestamp_ms == TIMESTAMP_MS for m in got)
    assert all(m.position.topic == b.topic for m in got)


def test_paused_partition_returns_nothing_until_resumed(subscribed: Subscribed) -> None:
    b = subscribed.backend
    first = b.produce(0, [b"a0", b"a1"]) + b.produce(1, [b"b0"])
    subscribed.consume(lambda: len(subscribed.got) >= len(first))
    subscribed.source.pause([subscribed.tp(0)])
    later_zero = b.produce(0, [b"a2", b"a3"])
    later_one = b.produce(1, [b"b1"])
    while_paused = subscribed.consume(quiet=True)
    assert subscribed.offsets(while_paused, 0) == []
    assert subscribed.offsets(while_paused, 1) == later_one
    subscribed.source.resume([subscribed.tp(0)])
    resumed = subscribed.consume(lambda: len(subscribed.offsets(subscribed.got, 0)) >= 4)
    assert subscribed.offsets(resumed, 0) == later_zero  # picks up where it was, none skipped


def test_sync_commit_and_committed(subscribed: Subscribed) -> None:
    b = subscribed.backend
    offsets = b.produce(0, [b"a0", b"a1", b"a2"])
    subscribed.consume(lambda: len(subscribed.got) >= 3)
    tp0, tp1 = subscribed.tp(0), subscribed.tp(1)
    assert subscribed.source.committed([tp0, tp1], 10.0) == {tp0: None, tp1: None}
    assert subscribed.source.commit({tp0: offsets[1] + 1}, 10.0) == {tp0: offsets[1] + 1}
    assert subscribed.source.committed([tp0, tp1], 10.0) == {tp0: offsets[1] + 1, tp1: None}
    assert subscribed.commits == []  # a synchronous commit is not reported to on_commit


def test_async_commit_result_reaches_on_commit_from_a_later_consume(
    subscribed: Subscribed,
) -> None:
    b = subscribed.backend
    offsets = b.produce(0, [b"a0", b"a1"])
    subscribed.consume(lambda: len(subscribed.got) >= 2)
    tp0 = subscribed.tp(0)
    subscribed.source.commit_async({tp0: offsets[-1] + 1})
    assert subscribed.commits == []  # not before a consume serves it
    subscribed.consume(lambda: bool(subscribed.commits))
    assert subscribed.commits == [(None, {tp0: offsets[-1] + 1})]
    assert subscribed.source.committed([tp0], 10.0) == {tp0: offsets[-1] + 1}
