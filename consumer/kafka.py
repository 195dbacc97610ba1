"""The only confluent_kafka user: the group consumer and the dead-letter producer.

Everything that can block on a broker is bounded here: commits run with a timeout (a
synchronous commit against an unreachable broker otherwise blocks for about
``session.timeout.ms``, longer than Kubernetes' grace period), and so do close and flush.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import Message as KMessage
from confluent_kafka import TopicPartition as KTopicPartition

from consumer.errors import ConfigError
from consumer.records import DeadLetter, Message, Position, TopicPartition
from consumer.settings import SECRET_MARKERS, Settings

log = logging.getLogger(__name__)

PartitionsCallback = Callable[[list[TopicPartition]], None]
#: ``(error or None, {partition: committed offset})`` for every finished commit.
CommitCallback = Callable[[str | None, dict[TopicPartition, int]], None]


def redacted(config: Mapping[str, Any]) -> dict[str, Any]:
    """librdkafka config with secret-looking values replaced, safe to log."""
    return {
        k: ("***" if any(m in k.lower() for m in SECRET_MARKERS) else v) for k, v in config.items()
    }


def common_config(settings: Settings) -> dict[str, Any]:
    """Connection properties shared by the consumer and the producer (security, etc.)."""
    return {"bootstrap.servers": settings.bootstrap_servers, **settings.kafka_properties}


def consumer_config(settings: Settings) -> dict[str, Any]:
    """The consumer's librdkafka config. Offsets are ours to commit; a new group starts at the
    earliest retained offset (as Kafka Connect sinks do). ``KAFKA_*`` overrides win except for
    the properties the commit invariant depends on."""
    config: dict[str, Any] = {
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "range",
        "max.poll.interval.ms": 300000,
        # librdkafka prefetches up to 64 MiB by default; 16 MiB (tens of thousands of events)
        # keeps the pipeline fed and the pod's memory predictable.
        "queued.max.messages.kbytes": 16384,
        "client.id": "asapp-metadata-consumer",
    }
    config.update(common_config(settings))
    config.update(
        {
            "group.id": settings.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
        }
    )
    return config


def producer_config(settings: Settings) -> dict[str, Any]:
    """The dead-letter producer: idempotent, acks=all, bounded delivery time."""
    config: dict[str, Any] = {
        "enable.idempotence": True,
        "acks": "all",
        "message.timeout.ms": 30000,
        "linger.ms": 5,
        "client.id": "asapp-metadata-consumer-dlq",
    }
    # Consumer-only properties would make the producer warn; pass only shared ones.
    config.update(
        {
            k: v
            for k, v in common_config(settings).items()
            if not k.startswith(_CONSUMER_ONLY_PREFIXES)
        }
    )
    return config


#: librdkafka properties that only a consumer understands (prefixes).
_CONSUMER_ONLY_PREFIXES = (
    "auto.",
    "session.",
    "heartbeat.",
    "max.poll",
    "fetch.",
    "partition.assignment",
    "group.",
    "isolation.level",
    "max.partition.fetch",
    "queued.",
    "check.crcs",
    "enable.partition.eof",
    "allow.auto.create.topics",
    "coordinator.query",
    "offset.store",
    "consume.callback",
)


def _config_error(exc: KafkaException) -> ConfigError:
    """librdkafka refused the configuration: name the variable the property came from."""
    message = str(exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else exc)
    hint = ""
    match = re.search(r'property:? "([^"]+)"', message)
    if match:
        hint = f" (set by KAFKA_{match.group(1).upper().replace('.', '_')})"
    return ConfigError(f"the Kafka client rejected the configuration: {message}{hint}")


def _tp(ktp: KTopicPartition) -> TopicPartition:
    return TopicPartition(ktp.topic, ktp.partition)


def _ktp(tp: TopicPartition, offset: int | None = None) -> KTopicPartition:
    if offset is None:
        return KTopicPartition(tp.topic, tp.partition)
    return KTopicPartition(tp.topic, tp.partition, offset)


def to_message(m: KMessage) -> Message:
    """confluent_kafka.Message → our value type."""
    ts_type, ts = m.timestamp()
    headers = m.headers()
    key, value = m.key(), m.value()
    return Message(
        position=Position(str(m.topic()), int(m.partition() or 0), int(m.offset() or 0)),
        key=key.encode() if isinstance(key, str) else key,
        value=value.encode() if isinstance(value, str) else value,
        timestamp_ms=ts if ts_type != 0 and ts >= 0 else None,
        headers=tuple((k, v.encode() if isinstance(v, str) else (v or b"")) for k, v in headers)
        if isinstance(headers, list)
        else (),
    )


def run_bounded(fn: Callable[[], Any], timeout_s: float, what: str) -> tuple[bool, Any]:
    """Run ``fn`` in a daemon thread; give up waiting after ``timeout_s``.

    Returns (finished, result-or-exception). A call that outlives the bound keeps running in
    its thread (librdkafka calls can't be interrupted) but no longer holds the caller.
    """
    box: list[Any] = []

    def target() -> None:
        try:
            box.append((True, fn()))
        except Exception as exc:  # reported to the caller, not swallowed
            box.append((False, exc))

    thread = threading.Thread(target=target, name=f"bounded-{what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not box:
        return False, TimeoutError(f"{what} did not finish within {timeout_s:.1f}s")
    ok, value = box[0]
    return ok, value


class KafkaSource:
    """A group consumer over the entity topics. Not thread-safe except :meth:`commit`."""

    def __init__(self, settings: Settings, *, consumer: Any = None) -> None:
        self.config = consumer_config(settings)
        self._on_commit_listener: CommitCallback | None = None
        try:
            self._consumer = (
                consumer
                if consumer is not None
                else Consumer({**self.config, "on_commit": self._on_commit}, logger=log)
            )
        except KafkaException as exc:
            raise _config_error(exc) from exc
        self._commit_lock = threading.Lock()

    def _on_commit(self, err: KafkaError | None, partitions: list[KTopicPartition]) -> None:
        listener = self._on_commit_listener
        if listener is None:
            return
        if err is not None:
            listener(str(err), {})
            return
        failed = [p for p in partitions if p.error is not None]
        done = {_tp(p): p.offset for p in partitions if p.error is None and p.offset >= 0}
        listener(str(failed[0].error) if failed else None, done)

    def subscribe(
        self,
        topics: Iterable[str],
        *,
        on_assign: PartitionsCallback,
        on_revoke: PartitionsCallback,
        on_lost: PartitionsCallback,
        on_commit: CommitCallback | None = None,
    ) -> None:
        self._on_commit_listener = on_commit
        self._consumer.subscribe(
            list(topics),
            on_assign=lambda _c, ps: on_assign([_tp(p) for p in ps]),
            on_revoke=lambda _c, ps: on_revoke([_tp(p) for p in ps]),
            on_lost=lambda _c, ps: on_lost([_tp(p) for p in ps]),
        )

    def consume(self, max_messages: int, timeout_s: float) -> list[Message]:
        """Up to ``max_messages`` messages; broker-side errors are logged, never raised."""
        out: list[Message] = []
        for m in self._consumer.consume(num_messages=max_messages, timeout=timeout_s):
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", err, extra={"event": "consumer_error"})
                    if err.fatal():
                        raise KafkaException(err)
                continue
            out.append(to_message(m))
        return out

    def pause(self, tps: Iterable[TopicPartition]) -> None:
        parts = [_ktp(tp) for tp in tps]
        if parts:
            self._consumer.pause(parts)

    def resume(self, tps: Iterable[TopicPartition]) -> None:
        parts = [_ktp(tp) for tp in tps]
        if parts:
            self._consumer.resume(parts)

    def commit(
        self, offsets: Mapping[TopicPartition, int], timeout_s: float
    ) -> dict[TopicPartition, int]:
        """Commit ``offsets`` synchronously within ``timeout_s``. Returns what was committed;
        raises KafkaException / TimeoutError when the commit failed or did not finish."""
        parts = [_ktp(tp, off) for tp, off in offsets.items()]
        if not parts:
            return {}
        if not self._commit_lock.acquire(timeout=timeout_s):
            raise TimeoutError("a previous commit is still running")
        try:
            ok, result = run_bounded(
                lambda: self._consumer.commit(offsets=parts, asynchronous=False),
                timeout_s,
                "commit",
            )
        finally:
            self._commit_lock.release()
        if not ok:
            raise result
        done: dict[TopicPartition, int] = {}
        for p in result or parts:
            if p.error is not None:
                raise KafkaException(p.error)
            done[_tp(p)] = p.offset
        return done

    def commit_async(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Start a commit without waiting; its result reaches the ``on_commit`` callback from
        a later :meth:`consume`. Raises KafkaException when it cannot even be started."""
        parts = [_ktp(tp, off) for tp, off in offsets.items()]
        if parts:
            self._consumer.commit(offsets=parts, asynchronous=True)

    def committed(
        self, tps: Iterable[TopicPartition], timeout_s: float
    ) -> dict[TopicPartition, int | None]:
        """The group's committed offsets (None where nothing is committed)."""
        parts = self._consumer.committed([_ktp(tp) for tp in tps], timeout=timeout_s)
        return {
            _tp(p): (p.offset if p.offset != OFFSET_INVALID and p.offset >= 0 else None)
            for p in parts
        }

    def high_watermark(self, tp: TopicPartition) -> int | None:
        """The partition's high watermark as last seen by fetches (no broker round trip)."""
        try:
            _low, high = self._consumer.get_watermark_offsets(_ktp(tp), cached=True)
        except KafkaException:
            return None
        return high if high is not None and high >= 0 else None

    def close(self, timeout_s: float) -> bool:
        """Leave the group within ``timeout_s``; False when it did not finish in time."""
        ok, value = run_bounded(self._consumer.close, timeout_s, "close")
        if not ok:
            log.warning("consumer close: %s", value, extra={"event": "close_failed"})
        return ok


def dead_letter_headers(dl: DeadLetter) -> list[tuple[str, bytes]]:
    """Original headers first, then the ``dlq.*`` context (never a secret: only the message's
    own position, the reason, the error text and the HTTP status)."""
    pos = dl.message.position
    headers = [(k, v) for k, v in dl.message.headers if not k.startswith("dlq.")]
    headers += [
        ("dlq.source.topic", pos.topic.encode()),
        ("dlq.source.partition", str(pos.partition).encode()),
        ("dlq.source.offset", str(pos.offset).encode()),
        ("dlq.reason", dl.reason.encode()),
        ("dlq.error", dl.error.encode("utf-8")[:1024].decode("utf-8", "ignore").encode("utf-8")),
        ("dlq.entity", dl.entity.value.encode()),
    ]
    if dl.message.timestamp_ms is not None:
        headers.append(("dlq.source.timestamp", str(dl.message.timestamp_ms).encode()))
    if dl.http_status is not None:
        headers.append(("dlq.http.status", str(dl.http_status).encode()))
    return headers


class DeadLetterProducer:
    """Writes dead letters; ``on_done(dead_letter, error_or_None)`` runs in :meth:`poll`."""

    def __init__(self, settings: Settings, *, producer: Any = None) -> None:
        self.topic = settings.dlq_topic
        self.config = producer_config(settings)
        try:
            self._producer = producer if producer is not None else Producer(self.config, logger=log)
        except KafkaException as exc:
            raise _config_error(exc) from exc

    def produce(self, dl: DeadLetter, on_done: Callable[[DeadLetter, str | None], None]) -> bool:
        """Queue one dead letter. False when the local queue is full (try again later)."""

        def report(err: KafkaError | None, _msg: KMessage) -> None:
            on_done(dl, None if err is None else str(err))

        try:
            self._producer.produce(
                self.topic,
                key=dl.message.key,
                value=dl.message.value,
                headers=list(dead_letter_headers(dl)),
                on_delivery=report,
            )
        except BufferError:
            return False
        except KafkaException as exc:
            on_done(dl, str(exc))
        return True

    def poll(self) -> None:
        self._producer.poll(0)

    def flush(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for outstanding dead letters; returns how many remain."""
        return int(self._producer.flush(timeout_s))

    def close(self) -> None:
        """Drop whatever is still unacknowledged (its offsets were not committed, so it will be
        dead-lettered again after restart) so the producer's teardown cannot block exit."""
        self._producer.purge(in_queue=True, in_flight=True, blocking=False)
        self._producer.flush(0)
