"""The Kafka boundary against hand-written fakes of the confluent_kafka clients: the
dead-letter producer's contract (``on_done`` exactly once, never inside ``produce``; oversized
dead letters rewritten without their value; ``problem()`` on fatal errors, logged once), the
consumer's error translation and the rate limit on client-wide error lines. No broker."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as KTopicPartition

from consumer.errors import BrokerError, FatalKafkaError
from consumer.kafka import (
    DLQ_KEY_MAX_BYTES,
    DeadLetterProducer,
    KafkaSource,
    RepeatLimiter,
    run_bounded,
)
from consumer.records import DeadLetter, Entity, Message, Position, TopicPartition
from consumer.settings import Settings

SETTINGS = Settings.from_env(
    {"KAFKA_BOOTSTRAP_SERVERS": "b:9092", "ASAPP_API_ID": "id", "ASAPP_API_SECRET": "s"}
)
TOO_LARGE = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Message size too large")
Answer = Callable[[dict[str, Any]], KafkaError | None]


# --------------------------------------------------------------------------- fakes
@dataclass
class FakeProducer:
    """confluent_kafka.Producer stand-in. ``refuse(record)`` may raise inside produce (as
    librdkafka does for a record over message.max.bytes); ``broker(record)`` is the delivery
    report's error (None: acknowledged), served from poll/flush."""

    refuse: Callable[[dict[str, Any]], None] = lambda record: None
    broker: Answer = lambda record: None
    written: list[dict[str, Any]] = field(default_factory=list)
    queued: deque[tuple[dict[str, Any], Callable[..., None]]] = field(default_factory=deque)

    def produce(self, topic: str, *, on_delivery: Callable[..., None], **record: Any) -> None:
        record["topic"] = topic
        self.refuse(record)
        self.written.append(record)
        self.queued.append((record, on_delivery))

    def poll(self, timeout: float = 0) -> int:
        served = 0
        while self.queued:
            record, report = self.queued.popleft()
            report(self.broker(record), None)
            served += 1
        return served

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return len(self.queued)

    def purge(self, **_: Any) -> None:
        self.queued.clear()


def too_large_over(limit: int) -> Callable[[dict[str, Any]], None]:
    def refuse(record: dict[str, Any]) -> None:
        if len(record["value"] or b"") + len(record["key"] or b"") > limit:
            raise KafkaException(TOO_LARGE)

    return refuse


def dead_letter(value: bytes | None = b"v" * 100, key: bytes | None = b"k") -> DeadLetter:
    message = Message(Position("t", 1, 42), key, value, None, (("trace", b"x"),))
    return DeadLetter(message, Entity.AGENT, "validation", "too long")


@dataclass
class Outcomes:
    """Records every on_done call; a call while produce() runs is a contract breach."""

    calls: list[tuple[DeadLetter, str | None]] = field(default_factory=list)
    producing: bool = False

    def __call__(self, dl: DeadLetter, error: str | None) -> None:
        assert not self.producing, "on_done called synchronously inside produce"
        self.calls.append((dl, error))

    def produce(self, dlq: DeadLetterProducer, dl: DeadLetter) -> bool:
        self.producing = True
        try:
            return dlq.produce(dl, self)
        finally:
            self.producing = False


def headers(record: dict[str, Any]) -> dict[str, bytes]:
    return dict(record["headers"])


# --------------------------------------------------------------------------- dead letters
def test_acknowledged_dead_letter_is_reported_once_from_poll() -> None:
    fake = FakeProducer()
    dlq, done, dl = DeadLetterProducer(SETTINGS, producer=fake), Outcomes(), dead_letter()
    assert done.produce(dlq, dl) is True
    assert done.calls == []
    dlq.poll()
    dlq.poll()
    assert done.calls == [(dl, None)]
    assert fake.written[0]["value"] == dl.message.value
    assert "dlq.value.omitted" not in headers(fake.written[0])


def test_full_local_queue_returns_false_and_never_reports() -> None:
    def full(record: dict[str, Any]) -> None:
        raise BufferError("Local: Queue full")

    dlq, done = DeadLetterProducer(SETTINGS, producer=FakeProducer(refuse=full)), Outcomes()
    assert done.produce(dlq, dead_letter()) is False
    dlq.poll()
    assert dlq.flush(0) == 0
    assert done.calls == []


@pytest.mark.parametrize(
    ("refuse", "broker", "key", "expected_headers", "key_len"),
    [
        pytest.param(
            too_large_over(50), None, b"k", {"dlq.value.omitted": b"100"}, 1, id="refused-sync"
        ),
        *[
            pytest.param(
                None,
                code,
                b"k",
                {"dlq.value.omitted": b"100"},
                1,
                id=f"broker-{KafkaError(code).name().lower()}",
            )
            for code in (
                KafkaError.MSG_SIZE_TOO_LARGE,
                KafkaError.RECORD_LIST_TOO_LARGE,
                KafkaError.INVALID_RECORD,
            )
        ],
        pytest.param(
            too_large_over(2000),
            None,
            b"K" * 3000,
            {"dlq.value.omitted": b"100", "dlq.key.truncated": b"3000"},
            DLQ_KEY_MAX_BYTES,
            id="key-alone-too-large",
        ),
    ],
)
def test_oversized_dead_letter_is_rewritten_without_its_value(
    refuse: Callable[[dict[str, Any]], None] | None,
    broker: int | None,
    key: bytes,
    expected_headers: dict[str, bytes],
    key_len: int,
) -> None:
    def answer(record: dict[str, Any]) -> KafkaError | None:
        # the broker refuses the full record, takes the value-less one
        return KafkaError(broker) if broker is not None and record["value"] else None

    fake = FakeProducer(refuse=refuse or (lambda r: None), broker=answer)
    dlq, done, dl = DeadLetterProducer(SETTINGS, producer=fake), Outcomes(), dead_letter(key=key)
    assert done.produce(dlq, dl) is True
    assert dlq.flush(1.0) == 0
    assert done.calls == [(dl, None)]  # exactly once, the rewrite's outcome
    last = fake.written[-1]
    assert last["value"] is None
    assert len(last["key"]) == key_len
    assert {k: v for k, v in headers(last).items() if k in expected_headers} == expected_headers
    assert headers(last)["dlq.source.offset"] == b"42"  # still points at the source
    assert headers(last)["trace"] == b"x"


def test_a_rewrite_that_fails_reports_that_failure_once() -> None:
    fake = FakeProducer(broker=lambda r: TOO_LARGE if r["value"] else KafkaError(-185))
    dlq, done, dl = DeadLetterProducer(SETTINGS, producer=fake), Outcomes(), dead_letter()
    done.produce(dlq, dl)
    dlq.flush(1.0)
    assert [(d, (e or "").split(":")[0]) for d, e in done.calls] == [(dl, "_TIMED_OUT")]


def test_other_synchronous_error_is_reported_later_not_inside_produce() -> None:
    def refuse(record: dict[str, Any]) -> None:
        raise KafkaException(KafkaError(KafkaError._UNKNOWN_TOPIC, "no such topic"))

    dlq, done, dl = (
        DeadLetterProducer(SETTINGS, producer=FakeProducer(refuse=refuse)),
        Outcomes(),
        dead_letter(),
    )
    assert done.produce(dlq, dl) is True  # the caller counts it as outstanding
    assert done.calls == []
    dlq.poll()
    assert len(done.calls) == 1 and done.calls[0][0] == dl
    assert "no such topic" in (done.calls[0][1] or "")


def test_fatal_producer_error_sets_problem_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fatal = KafkaError(KafkaError._FATAL, "Fatal error: CLUSTER_AUTHORIZATION_FAILED", fatal=True)
    fake = FakeProducer(broker=lambda r: fatal)
    dlq, done = DeadLetterProducer(SETTINGS, producer=fake), Outcomes()
    assert dlq.problem() is None
    with caplog.at_level(logging.ERROR, logger="consumer.kafka"):
        dlq._on_error(fatal)  # librdkafka's error_cb
        for _ in range(20):
            done.produce(dlq, dead_letter())
        dlq.flush(1.0)
    assert len(done.calls) == 20
    problem = dlq.problem()
    assert problem is not None and "CLUSTER_AUTHORIZATION_FAILED" in problem
    assert len([r for r in caplog.records if r.__dict__.get("event") == "dlq_unwritable"]) == 1


@pytest.mark.parametrize(
    "code",
    [
        pytest.param(KafkaError.TOPIC_AUTHORIZATION_FAILED, id="topic-acl"),
        pytest.param(KafkaError.CLUSTER_AUTHORIZATION_FAILED, id="cluster-acl"),
    ],
)
def test_authorization_failure_is_a_problem_until_a_write_succeeds(code: int) -> None:
    denied = [True]
    fake = FakeProducer(broker=lambda r: KafkaError(code) if denied[0] else None)
    dlq, done = DeadLetterProducer(SETTINGS, producer=fake), Outcomes()
    done.produce(dlq, dead_letter())
    dlq.poll()
    assert dlq.problem() is not None and KafkaError(code).name() in (dlq.problem() or "")
    denied[0] = False
    done.produce(dlq, dead_letter())
    dlq.poll()
    assert dlq.problem() is None
    assert [e is None for _, e in done.calls] == [False, True]


def test_transient_delivery_error_is_not_a_problem() -> None:
    fake = FakeProducer(broker=lambda r: KafkaError(KafkaError._MSG_TIMED_OUT))
    dlq, done = DeadLetterProducer(SETTINGS, producer=fake), Outcomes()
    done.produce(dlq, dead_letter())
    dlq.poll()
    assert dlq.problem() is None
    assert done.calls[0][1] is not None


# --------------------------------------------------------------------------- consumer
@dataclass
class FakeKMessage:
    """confluent_kafka.Message stand-in (an error event when ``err`` is set)."""

    err: KafkaError | None = None
    topic_: str | None = "t"
    partition_: int | None = 0
    offset_: int | None = 5
    value_: bytes | None = b"v"

    def error(self) -> KafkaError | None:
        return self.err

    def topic(self) -> str | None:
        return self.topic_

    def partition(self) -> int | None:
        return self.partition_

    def offset(self) -> int | None:
        return self.offset_

    def key(self) -> bytes | None:
        return b"k"

    def value(self) -> bytes | None:
        return self.value_

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)

    def headers(self) -> list[tuple[str, bytes]] | None:
        return None


@dataclass
class FakeConsumer:
    """confluent_kafka.Consumer stand-in: serves ``batches``; ``fail`` makes calls raise."""

    batches: deque[list[FakeKMessage]] = field(default_factory=deque)
    fail: BaseException | None = None

    def consume(self, num_messages: int, timeout: float) -> list[FakeKMessage]:
        if self.fail is not None:
            raise self.fail
        return self.batches.popleft() if self.batches else []

    def _maybe_fail(self) -> None:
        if self.fail is not None:
            raise self.fail

    def commit(self, offsets: list[KTopicPartition], asynchronous: bool) -> Any:
        self._maybe_fail()
        return offsets

    def committed(self, parts: list[KTopicPartition], timeout: float) -> list[KTopicPartition]:
        self._maybe_fail()
        return parts

    def pause(self, parts: list[KTopicPartition]) -> None:
        self._maybe_fail()

    resume = pause


def source(*batches: list[FakeKMessage]) -> tuple[KafkaSource, FakeConsumer]:
    fake = FakeConsumer(deque(batches))
    return KafkaSource(SETTINGS, consumer=fake), fake


@pytest.mark.parametrize(
    ("event", "becomes_message"),
    [
        pytest.param(FakeKMessage(KafkaError(KafkaError._BAD_MSG, "CRC")), True, id="corrupt"),
        pytest.param(FakeKMessage(KafkaError(KafkaError._BAD_COMPRESSION)), True, id="lz4"),
        pytest.param(FakeKMessage(KafkaError(KafkaError._PARTITION_EOF)), False, id="eof"),
        pytest.param(
            FakeKMessage(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)),
            False,
            id="fetch-error-at-fetch-position",
        ),
        pytest.param(
            FakeKMessage(KafkaError(KafkaError._TRANSPORT), topic_=None, partition_=-1),
            False,
            id="no-partition",
        ),
        pytest.param(
            FakeKMessage(KafkaError(KafkaError._BAD_MSG), offset_=-1001), False, id="no-offset"
        ),
    ],
)
def test_consumer_error_for_one_record_is_returned_at_its_position(
    event: FakeKMessage, becomes_message: bool
) -> None:
    src, _ = source([FakeKMessage(offset_=4), event, FakeKMessage(offset_=6)])
    got = src.consume(10, 0.1)
    offsets = [m.position.offset for m in got]
    assert offsets == ([4, 5, 6] if becomes_message else [4, 6])
    if becomes_message:
        bad = got[1]
        assert bad.value is None and bad.error is not None
        assert bad.position == Position("t", 0, 5)
    assert all(m.error is None for m in got if m.position.offset != 5)


def test_fatal_consumer_error_raises_fatal_kafka_error() -> None:
    fatal = KafkaError(KafkaError._FATAL, "fenced", fatal=True)
    src, _ = source([FakeKMessage(fatal, topic_=None, partition_=-1)])
    with pytest.raises(FatalKafkaError, match="fenced"):
        src.consume(10, 0.1)


def test_fatal_error_event_from_error_cb_raises_at_next_consume() -> None:
    src, _ = source([FakeKMessage()])
    src._on_error(KafkaError(KafkaError._FATAL, "static member fenced", fatal=True))
    with pytest.raises(FatalKafkaError, match="static member fenced"):
        src.consume(10, 0.1)


TP = TopicPartition("t", 0)
FAILURE = KafkaException(KafkaError(KafkaError._TIMED_OUT, "coordinator unavailable"))


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s: s.commit({TP: 5}, 1.0), id="commit"),
        pytest.param(lambda s: s.commit_async({TP: 5}), id="commit-async"),
        pytest.param(lambda s: s.committed([TP], 1.0), id="committed"),
        pytest.param(lambda s: s.pause([TP]), id="pause"),
        pytest.param(lambda s: s.resume([TP]), id="resume"),
        pytest.param(lambda s: s.consume(1, 0.1), id="consume"),
    ],
)
def test_kafka_exceptions_become_broker_errors(call: Callable[[KafkaSource], Any]) -> None:
    src, fake = source()
    fake.fail = FAILURE
    with pytest.raises(BrokerError, match="coordinator unavailable") as caught:
        call(src)
    assert caught.value.__cause__ is FAILURE


def test_bounded_call_that_does_not_finish_is_a_broker_error() -> None:
    import threading

    release = threading.Event()
    ok, value = run_bounded(release.wait, 0.01, "commit")
    release.set()
    assert ok is False
    assert isinstance(value, BrokerError) and "did not finish" in str(value)


# --------------------------------------------------------------------------- rate limit
class ListLogger(logging.Logger):
    def __init__(self) -> None:
        super().__init__("test", logging.DEBUG)
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def _log(self, level: int, msg: object, args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        self.lines.append((str(msg) % args if args else str(msg), kwargs.get("extra") or {}))


def test_repeated_client_errors_are_one_line_per_30s_with_a_count() -> None:
    now = [0.0]
    out = ListLogger()
    limiter = RepeatLimiter(out, clock=lambda: now[0])
    for i in range(600):  # 20 a second for 30 s: librdkafka reconnecting
        limiter.log(
            logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#c-1", f"refused (after {i % 2}ms)"
        )
        now[0] += 0.05
    limiter.log(logging.ERROR, "other error")
    limiter.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#c-1", "refused (after 0ms)")
    texts = [t for t, _ in out.lines]
    assert texts[0] == "FAIL [rdkafka#c-1] refused (after 0ms)"
    assert texts[1] == "other error"
    assert texts[2].startswith("FAIL [rdkafka#c-1] refused (after 0ms) (repeated 599 times")
    assert out.lines[2][1]["repeated"] == 599
    assert len(texts) == 3
