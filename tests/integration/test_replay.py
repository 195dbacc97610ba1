"""``metadata-consumer dlq replay`` against a real local broker, run as the real CLI.

Each test gets its own broker (it starts in milliseconds), so no test sees another's replays.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from consumer.records import Entity
from consumer.sandbox.broker import LocalBroker
from consumer.sandbox.produce import create_topics
from consumer.settings import DEFAULT_TOPICS

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DLQ = "asapp.metadata.dlq"
AGENT = DEFAULT_TOPICS[Entity.AGENT]
CONVERSATION = DEFAULT_TOPICS[Entity.CONVERSATION]
CUSTOMER = DEFAULT_TOPICS[Entity.CUSTOMER]
SOURCES = sorted(DEFAULT_TOPICS.values())
#: Dead-lettered at T0 + i hours (the DLQ record's own timestamp).
T0 = datetime(2024, 5, 1, tzinfo=UTC)
LONG_ERROR = "externalAgentId does not match ^[a-zA-Z0-9_-]+$ " * 10

Headers = list[tuple[str, str | bytes | None]]


@dataclass(frozen=True)
class Letter:
    """One hand-made dead letter: what the service would have written."""

    key: bytes
    value: bytes
    original: Headers
    source_topic: str | None
    reason: str
    entity: str
    error: str
    offset: int = -1

    def headers(self) -> Headers:
        dlq: Headers = []
        if self.source_topic is not None:
            dlq += [
                ("dlq.source.topic", self.source_topic.encode()),
                ("dlq.source.partition", b"0"),
                ("dlq.source.offset", b"7"),
            ]
        dlq += [
            ("dlq.reason", self.reason.encode()),
            ("dlq.error", self.error.encode()),
            ("dlq.entity", self.entity.encode()),
            ("dlq.source.timestamp", b"1714521600000"),
        ]
        if self.reason in ("http", "rejected"):
            dlq.append(("dlq.http.status", b"400"))
        return [*self.original, *dlq]


LETTERS = [
    Letter(b"agent-1", b"PAYLOAD-a1\x00\xff", [("traceparent", b"00-ab-01"), ("empty", None)],
           AGENT, "validation", "agent", LONG_ERROR),
    Letter(b"agent-2", b"PAYLOAD-a2", [], AGENT, "decode", "agent", "bad magic byte"),
    Letter(b"conv-1", b"PAYLOAD-c1", [], CONVERSATION, "validation", "conversation",
           "externalConversationId too long"),
    Letter(b"agent-3", b"PAYLOAD-a3", [("origin", b"crm"), ("origin", b"etl")],
           AGENT, "validation", "agent", "startTs out of range"),
    Letter(b"agent-4", b"PAYLOAD-a4", [], AGENT, "http", "agent", "HTTP 400 from API"),
    Letter(b"agent-5", b"PAYLOAD-a5", [], None, "validation", "agent", "no source header"),
    Letter(b"conv-2", b"PAYLOAD-c2", [], CONVERSATION, "rejected", "conversation",
           "item rejected: bad status"),
]  # fmt: skip


@pytest.fixture
def broker() -> Iterator[tuple[str, list[Letter]]]:
    """A fresh broker whose DLQ holds :data:`LETTERS` (with their DLQ offsets filled in)."""
    with LocalBroker() as b:
        bootstrap = b.bootstrap_servers
        create_topics(bootstrap, [DLQ, *SOURCES], partitions=1)
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
        offsets: dict[bytes, int] = {}

        def delivered(err: KafkaError | None, msg: object) -> None:
            assert err is None, err
            offsets[msg.key()] = msg.offset()  # type: ignore[attr-defined]

        for i, letter in enumerate(LETTERS):
            ts = int((T0 + timedelta(hours=i)).timestamp() * 1000)
            producer.produce(
                DLQ,
                key=letter.key,
                value=letter.value,
                headers=letter.headers(),
                timestamp=ts,
                partition=0,
                on_delivery=delivered,
            )
        assert producer.flush(15) == 0
        del producer  # an open client connection makes the broker's shutdown take 5 s
        letters = [
            Letter(**{**letter.__dict__, "offset": offsets[letter.key]}) for letter in LETTERS
        ]
        yield bootstrap, letters


def cli(*args: str, bootstrap: str | None) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KAFKA_", "TOPIC_", "DLQ_", "ASAPP_"))
    }
    if bootstrap is not None:
        env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    env["PYTHONIOENCODING"] = "utf-8"
    return subprocess.run(
        [sys.executable, "-m", "consumer", "dlq", "replay", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
    )


def read_all(bootstrap: str, topics: list[str], idle_s: float = 1.0) -> dict[str, list[object]]:
    """Every message of ``topics`` (1 partition each). The local broker's high watermark is
    unreliable (base offset of the last batch + 1), so "the end" is: every partition reported
    EOF once and then nothing arrived for ``idle_s``; bounded at 20 s overall."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "test-replay-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(t, 0, OFFSET_BEGINNING) for t in topics])
    out: dict[str, list[object]] = {t: [] for t in topics}
    reached: set[str] = set()
    start = last = time.monotonic()
    try:
        while not (len(reached) == len(topics) and time.monotonic() - last >= idle_s):
            assert time.monotonic() - start < 20, f"no end of {topics} within 20 s"
            m = consumer.poll(0.2)
            if m is None:
                continue
            last = time.monotonic()
            topic, err = str(m.topic()), m.error()
            reached.add(topic)
            if err is None:
                out[topic].append(m)
            else:
                assert err.code() == KafkaError._PARTITION_EOF, err
    finally:
        consumer.close()
    return out


def _assert_no_payloads(text: str) -> None:
    assert "PAYLOAD" not in text


def test_dry_run_lists_selected_records_and_produces_nothing(
    broker: tuple[str, list[Letter]],
) -> None:
    bootstrap, letters = broker
    done = cli(bootstrap=bootstrap)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    would = [ln for ln in lines if ln.startswith("would replay ")]
    expected = [lt for lt in letters if lt.source_topic is not None]
    assert [ln.split(" (")[0] for ln in would] == [
        f"would replay {DLQ}[0]@{lt.offset} → {lt.source_topic}" for lt in expected
    ]
    first = would[0]
    assert f"(reason=validation, error={LONG_ERROR[:40]}" in first
    assert LONG_ERROR.strip() not in first and first.endswith("…)")  # truncated
    assert f"skipped {DLQ}[0]@{letters[5].offset}: no dlq.source.topic header" in lines
    assert lines[-1].startswith(f"{DLQ}: scanned 7, selected 6, skipped 1; dry run")
    _assert_no_payloads(done.stdout + done.stderr)
    assert all(not ms for ms in read_all(bootstrap, SOURCES).values())


def test_dry_run_filters_by_time_range_naive_is_utc(broker: tuple[str, list[Letter]]) -> None:
    bootstrap, letters = broker
    done = cli("--since", "2024-05-01T02:00:00", "--until", "2024-05-01T05:00:00+01:00",
               "--entity", "agent", bootstrap=bootstrap)  # fmt: skip
    assert done.returncode == 0, done.stderr
    # hours 2..3 (05:00+01:00 is 04:00Z, exclusive); of those, agent: index 3 only
    assert [ln.split(" → ")[0] for ln in done.stdout.splitlines() if "would" in ln] == [
        f"would replay {DLQ}[0]@{letters[3].offset}"
    ]


def test_execute_replays_exactly_the_matching_records(broker: tuple[str, list[Letter]]) -> None:
    bootstrap, letters = broker
    done = cli("--reason", "validation", "--entity", "agent", "--execute", bootstrap=bootstrap)
    assert done.returncode == 0, done.stdout + done.stderr
    _assert_no_payloads(done.stdout + done.stderr)
    assert f"skipped {DLQ}[0]@{letters[5].offset}: no dlq.source.topic header" in done.stdout
    assert done.stdout.splitlines()[-1] == (
        f"{DLQ}: scanned 7, selected 2, skipped 1; replayed 2 ({AGENT}=2), failed 0"
    )
    got = read_all(bootstrap, SOURCES)
    assert not got[CONVERSATION] and not got[CUSTOMER]
    wanted = [letters[0], letters[3]]
    assert [(m.key(), m.value(), m.headers()) for m in got[AGENT]] == [  # type: ignore[attr-defined]
        (lt.key, lt.value, [*lt.original, ("dlq.replayed.from", f"{DLQ}[0]@{lt.offset}".encode())])
        for lt in wanted
    ]


def test_since_in_the_future_selects_nothing(broker: tuple[str, list[Letter]]) -> None:
    bootstrap, _ = broker
    done = cli("--since", "2999-01-01T00:00:00Z", "--execute", bootstrap=bootstrap)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith(f"{DLQ}: scanned 7, selected 0, skipped 0;")
    assert "replaying" not in done.stdout


def test_bad_since_exits_2_naming_the_flag() -> None:
    done = cli("--since", "last tuesday", bootstrap="127.0.0.1:1")
    assert done.returncode == 2
    assert "--since 'last tuesday' is not an ISO-8601 time" in done.stderr
    assert done.stdout == ""


def test_missing_bootstrap_servers_exits_2_naming_it() -> None:
    done = cli(bootstrap=None)
    assert done.returncode == 2
    assert done.stderr.startswith("metadata-consumer: configuration error: ")
    assert "KAFKA_BOOTSTRAP_SERVERS" in done.stderr


# --------------------------------------------------------------------------- omitted values
SOURCE_VALUES = [b"SRC-0" * 10, b"SRC-1" * 300, b"SRC-2" * 20]


@pytest.fixture
def omitted() -> Iterator[tuple[str, list[int]]]:
    """A fresh broker: three source records on the agent topic, and three DLQ records written
    without their value pointing at them: one that matches (@1), one whose recorded size does
    not (@2), one past the end of the partition (@50). Yields the bootstrap and DLQ offsets."""
    with LocalBroker() as b:
        bootstrap = b.bootstrap_servers
        create_topics(bootstrap, [DLQ, *SOURCES], partitions=1)
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
        for i, value in enumerate(SOURCE_VALUES):
            producer.produce(AGENT, key=f"agent-{i}".encode(), value=value, partition=0)
        assert producer.flush(15) == 0
        dlq_offsets: list[int] = []

        def delivered(err: KafkaError | None, msg: object) -> None:
            assert err is None, err
            dlq_offsets.append(msg.offset())  # type: ignore[attr-defined]

        for source_offset, size in ((1, len(SOURCE_VALUES[1])), (2, 7), (50, 10)):
            producer.produce(
                DLQ,
                key=f"agent-{source_offset}".encode(),
                value=None,
                partition=0,
                headers=[
                    ("trace", b"t-1"),
                    ("dlq.source.topic", AGENT.encode()),
                    ("dlq.source.partition", b"0"),
                    ("dlq.source.offset", str(source_offset).encode()),
                    ("dlq.reason", b"validation"),
                    ("dlq.error", b"too long"),
                    ("dlq.entity", b"agent"),
                    ("dlq.value.omitted", str(size).encode()),
                ],
                on_delivery=delivered,
            )
        assert producer.flush(15) == 0
        del producer
        yield bootstrap, sorted(dlq_offsets)


def test_omitted_value_is_fetched_from_the_source_while_retained(
    omitted: tuple[str, list[int]],
) -> None:
    bootstrap, (matches, resized, missing) = omitted
    done = cli("--execute", bootstrap=bootstrap)
    assert done.returncode == 1, done.stdout + done.stderr  # two records could not be replayed
    lines = done.stdout.splitlines()
    assert any(
        ln.startswith(f"replaying {DLQ}[0]@{matches} → {AGENT}")
        and "value fetched from the source topic" in ln
        for ln in lines
    ), lines
    assert any(
        ln.startswith(f"cannot replay {DLQ}[0]@{resized}: its value (7 bytes) was omitted")
        and f"{AGENT}[0]@2 is no longer the dead-lettered record" in ln
        for ln in lines
    ), lines
    # past the end: the local broker neither serves it nor reports the partition's end
    assert any(
        ln.startswith(f"cannot replay {DLQ}[0]@{missing}:") and f"{AGENT}[0]@50 " in ln
        for ln in lines
    ), lines
    assert lines[-1] == (
        f"{DLQ}: scanned 3, selected 3, skipped 0; values: fetched from source 1, no longer "
        f"retained 1, unreadable 1; replayed 1 ({AGENT}=1), failed 2"
    )
    _assert_no_payloads(done.stdout + done.stderr)
    agent = read_all(bootstrap, [AGENT])[AGENT]
    assert len(agent) == 4
    replayed = agent[-1]
    assert replayed.value() == SOURCE_VALUES[1]  # type: ignore[attr-defined]
    assert replayed.key() == b"agent-1"  # type: ignore[attr-defined]
    assert replayed.headers() == [  # type: ignore[attr-defined]
        ("trace", b"t-1"),
        ("dlq.replayed.from", f"{DLQ}[0]@{matches}".encode()),
    ]


def test_dry_run_says_which_omitted_values_are_still_retained(
    omitted: tuple[str, list[int]],
) -> None:
    bootstrap, (matches, resized, missing) = omitted
    done = cli(bootstrap=bootstrap)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [ln.split(" ")[0:3] for ln in lines[:-1]] == [
        ["would", "replay", f"{DLQ}[0]@{matches}"],
        ["cannot", "replay", f"{DLQ}[0]@{resized}:"],
        ["cannot", "replay", f"{DLQ}[0]@{missing}:"],
    ]
    assert "values: fetched from source 1, no longer retained 1, unreadable 1; dry" in lines[-1]
    assert read_all(bootstrap, [AGENT])[AGENT].__len__() == 3  # nothing produced


class _Watermarks:
    """A consumer stand-in whose partition starts at ``low`` (older records deleted)."""

    def __init__(self, low: int) -> None:
        self.low = low
        self.assigned: list[object] = []

    def get_watermark_offsets(self, tp: object, timeout: float) -> tuple[int, int]:
        return self.low, self.low + 10

    def assign(self, parts: list[object]) -> None:
        self.assigned.append(parts)


def test_offset_below_the_low_watermark_is_no_longer_retained() -> None:
    from consumer.replay import DeadLetterRecord, SourceFetcher

    record = DeadLetterRecord(
        DLQ, 0, 3, None, b"k", None,
        (("dlq.source.topic", AGENT.encode()), ("dlq.source.partition", b"0"),
         ("dlq.source.offset", b"4"), ("dlq.value.omitted", b"100")),
    )  # fmt: skip
    fake = _Watermarks(low=9)
    got = SourceFetcher(fake).fetch(record)
    assert got.value is None and got.gone
    assert got.problem == f"{AGENT}[0]@4 is no longer retained (low watermark 9)"
    assert fake.assigned == []  # no fetch attempted
