"""The real :class:`~consumer.kafka.DeadLetterProducer` against the local broker: a dead
letter the DLQ cannot hold (a ~1.04 MB event, over librdkafka's default ``message.max.bytes``
of 1,000,000, refused synchronously inside ``produce``) is written without its value, pointing
at its source coordinates, and ``on_done`` runs exactly once, from ``poll``/``flush``.

(The local broker does not enforce a topic's ``max.message.bytes``, so refusals in the broker's
delivery report are covered by the unit tests with a fake producer.)"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as KTopicPartition

from consumer.kafka import DLQ_KEY_MAX_BYTES, DeadLetterProducer
from consumer.records import DeadLetter, Entity, Message, Position
from consumer.sandbox.broker import LocalBroker
from consumer.sandbox.produce import create_topics
from consumer.settings import Settings

pytestmark = pytest.mark.integration

HUGE = 1_040_000  # bytes: the oversized event


@pytest.fixture(scope="module")
def bootstrap() -> Iterator[str]:
    with LocalBroker() as broker:
        yield broker.bootstrap_servers


@pytest.fixture
def dlq_topic(bootstrap: str) -> str:
    topic = f"dlq-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [topic], partitions=1)
    return topic


def producer(bootstrap: str, topic: str) -> DeadLetterProducer:
    settings = Settings.from_env(
        {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DLQ_TOPIC": topic},
        require_credentials=False,
    )
    return DeadLetterProducer(settings)


def dead_letter(offset: int, value: bytes, key: bytes = b"agent-1") -> DeadLetter:
    message = Message(
        Position("asapp.metadata.agent", 2, offset), key, value, 1_700_000_000_000, (("t", b"1"),)
    )
    return DeadLetter(message, Entity.AGENT, "validation", "externalAgentId too long")


def read(bootstrap: str, topic: str, expect: int) -> list[dict[str, Any]]:
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"r-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    reader.assign([KTopicPartition(topic, 0, 0)])
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    try:
        while len(out) < expect and time.monotonic() < deadline:
            m = reader.poll(0.2)
            if m is None or m.error():
                continue
            out.append({"key": m.key(), "value": m.value(), "headers": dict(m.headers() or [])})
    finally:
        reader.close()
    return out


class Outcomes:
    def __init__(self) -> None:
        self.calls: list[tuple[int, str | None]] = []
        self.producing = False

    def __call__(self, dl: DeadLetter, error: str | None) -> None:
        assert not self.producing, "on_done ran inside produce"
        self.calls.append((dl.message.position.offset, error))

    def produce(self, dlq: DeadLetterProducer, dl: DeadLetter) -> bool:
        self.producing = True
        try:
            return dlq.produce(dl, self)
        finally:
            self.producing = False


def test_oversized_dead_letter_is_written_without_its_value(bootstrap: str, dlq_topic: str) -> None:
    dlq, done = producer(bootstrap, dlq_topic), Outcomes()
    assert done.produce(dlq, dead_letter(7, b"small value")) is True
    assert done.produce(dlq, dead_letter(8, b"x" * HUGE)) is True
    assert done.produce(dlq, dead_letter(9, b"after it")) is True
    assert done.calls == []
    assert dlq.flush(15) == 0
    assert sorted(done.calls) == [(7, None), (8, None), (9, None)]  # each exactly once
    records = read(bootstrap, dlq_topic, 3)
    assert [r["headers"]["dlq.source.offset"] for r in records] == [
        b"7",
        b"8",
        b"9",
    ]
    small, huge, after = records
    assert small["value"] == b"small value" and "dlq.value.omitted" not in small["headers"]
    assert huge["value"] is None
    assert huge["key"] == b"agent-1"
    assert huge["headers"]["dlq.value.omitted"] == str(HUGE).encode()
    assert huge["headers"]["dlq.source.topic"] == b"asapp.metadata.agent"
    assert huge["headers"]["dlq.source.partition"] == b"2"
    assert huge["headers"]["dlq.reason"] == b"validation"
    assert huge["headers"]["t"] == b"1"
    assert after["value"] == b"after it"
    assert dlq.problem() is None
    dlq.close()


def test_key_alone_too_large_is_cut(bootstrap: str, dlq_topic: str) -> None:
    dlq, done = producer(bootstrap, dlq_topic), Outcomes()
    key = b"k" * HUGE
    assert done.produce(dlq, dead_letter(3, b"v" * 1000, key=key)) is True
    assert dlq.flush(15) == 0
    assert done.calls == [(3, None)]
    (record,) = read(bootstrap, dlq_topic, 1)
    assert record["value"] is None
    assert record["key"] == key[:DLQ_KEY_MAX_BYTES]
    assert record["headers"]["dlq.key.truncated"] == str(HUGE).encode()
    assert record["headers"]["dlq.value.omitted"] == b"1000"
    dlq.close()
