"""The only confluent_kafka user: the group consumer and the dead-letter producer.

Error boundary: every ``KafkaException`` (and every ``KafkaError`` handed to a callback) is
translated here, so no caller imports confluent_kafka to handle an error:

- a Kafka call that failed or did not finish in its bound (commit, committed offsets, pause,
  resume, a consume the client refused) → :class:`~consumer.errors.BrokerError` (retry later);
- a fatal client error (``err.fatal()``: a fenced static member, an idempotent producer that
  lost its ACL...) → :class:`~consumer.errors.FatalKafkaError` (restart the process);
- a rejected configuration → :class:`~consumer.errors.ConfigError` naming its ``KAFKA_*``
  variable;
- an error librdkafka reports for one record of a partition (a corrupt or undecompressable
  record) → a :class:`~consumer.records.Message` with ``error`` set at that position, so the
  pipeline dead-letters it instead of committing past it;
- client-wide conditions (transport errors, all brokers down) → log lines, at most one per
  distinct text per :data:`REPEAT_INTERVAL_S` with a repeat count (librdkafka reports a
  refused connection about 20 times a second).

Everything that can block on a broker is bounded here: commits run with a timeout (a
synchronous commit against an unreachable broker otherwise blocks for about
``session.timeout.ms``, longer than Kubernetes' grace period), and so do close and flush.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import Message as KMessage
from confluent_kafka import TopicPartition as KTopicPartition

from consumer.errors import BrokerError, ConfigError, FatalKafkaError
from consumer.outage import Outage
from consumer.records import DeadLetter, Message, Position, TopicPartition
from consumer.settings import SECRET_MARKERS, Settings

log = logging.getLogger(__name__)
#: librdkafka's own log lines and client-wide error events (rate limited, see RepeatLimiter).
client_log = logging.getLogger("consumer.kafka.client")

PartitionsCallback = Callable[[list[TopicPartition]], None]
#: ``(error or None, {partition: committed offset})`` for every finished commit.
CommitCallback = Callable[[str | None, dict[TopicPartition, int]], None]
#: ``(dead letter, error or None)``: the final outcome of one :meth:`DeadLetterProducer.produce`.
DoneCallback = Callable[[DeadLetter, str | None], None]

#: One log line per distinct client error text per this many seconds.
REPEAT_INTERVAL_S = 30.0
#: A dead letter's key is cut to this many bytes when even the value-less record is too large.
DLQ_KEY_MAX_BYTES = 1024

#: librdkafka properties the KIP-848 ``consumer`` group protocol rejects at client creation
#: ("... is not supported for `group.protocol=consumer`"): the broker owns them there.
CLASSIC_ONLY_PROPERTIES = (
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
)


def redacted(config: Mapping[str, Any]) -> dict[str, Any]:
    """librdkafka config with secret-looking values replaced, safe to log."""
    return {
        k: ("***" if any(m in k.lower() for m in SECRET_MARKERS) else v) for k, v in config.items()
    }


def common_config(settings: Settings) -> dict[str, Any]:
    """Connection properties shared by the consumer and the producer (security, etc.)."""
    return {"bootstrap.servers": settings.bootstrap_servers, **settings.kafka_properties}


def _variable(prop: str) -> str:
    return "KAFKA_" + prop.upper().replace(".", "_")


def consumer_config(settings: Settings) -> dict[str, Any]:
    """The consumer's librdkafka config. Offsets are ours to commit; a new group starts at the
    earliest retained offset (as Kafka Connect sinks do). ``KAFKA_*`` overrides win except for
    the properties the commit invariant depends on.

    With ``KAFKA_GROUP_PROTOCOL=consumer`` (KIP-848) the assignor is the broker's (choose one
    with ``KAFKA_GROUP_REMOTE_ASSIGNOR``) and none of :data:`CLASSIC_ONLY_PROPERTIES` is set.
    Raises ConfigError when one of them is set by a ``KAFKA_*`` variable under that protocol.
    """
    kip848 = str(settings.kafka_properties.get("group.protocol", "classic")).lower() == "consumer"
    config: dict[str, Any] = {
        "auto.offset.reset": "earliest",
        "max.poll.interval.ms": 300000,
        # librdkafka prefetches up to 64 MiB by default; 16 MiB (tens of thousands of events)
        # keeps the pipeline fed and the pod's memory predictable.
        "queued.max.messages.kbytes": 16384,
        "client.id": "asapp-metadata-consumer",
    }
    if not kip848:
        config["partition.assignment.strategy"] = "range"
    else:
        for prop in CLASSIC_ONLY_PROPERTIES:
            if prop in settings.kafka_properties:
                raise ConfigError(
                    f"{_variable(prop)} is a classic group protocol property; with "
                    "KAFKA_GROUP_PROTOCOL=consumer the broker defines it (group.consumer.*), "
                    f"remove {_variable(prop)}"
                )
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


def _kafka_error(exc: BaseException) -> KafkaError | None:
    arg = exc.args[0] if exc.args else None
    return arg if isinstance(arg, KafkaError) else None


def _text(err: KafkaError | None, exc: BaseException | None = None) -> str:
    """``NAME: description`` of a librdkafka error (or the exception's text)."""
    return f"{err.name()}: {err.str()}" if err is not None else str(exc)


def _config_error(exc: KafkaException) -> ConfigError:
    """librdkafka refused the configuration: name the variable the property came from."""
    err = _kafka_error(exc)
    message = err.str() if err is not None else str(exc)
    hint = ""
    match = re.search(r'property:? "([^"]+)"|`([a-z.]+)` is not supported', message)
    if match:
        hint = f" (set by {_variable(match.group(1) or match.group(2))})"
    return ConfigError(f"the Kafka client rejected the configuration: {message}{hint}")


def translate(exc: BaseException, what: str) -> BrokerError | FatalKafkaError:
    """A confluent_kafka exception (or our bound's timeout) as this package's error: fatal
    client errors become FatalKafkaError, everything else BrokerError. Raise it ``from exc``."""
    if isinstance(exc, BrokerError | FatalKafkaError):
        return exc
    err = _kafka_error(exc)
    text = err.str() if err is not None else str(exc)
    if err is not None and err.fatal():
        return FatalKafkaError(f"{what}: fatal Kafka client error: {text}")
    return BrokerError(f"{what} failed: {text}")


_NUMBERS = re.compile(r"\d+")


class RepeatLimiter:
    """Lets one log line per distinct text through per ``interval_s``; counts the others and
    appends the count to the next line let through ("repeated N times in the last Ns").

    Texts differing only in numbers ("after 0ms", "after 1ms") count as the same text. Usable
    as confluent_kafka's ``logger`` (it calls :meth:`log`). Thread-safe: librdkafka logs from
    its own threads.
    """

    _MAX_KEYS = 512

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_s: float = REPEAT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[int, str], tuple[float, int]] = {}

    def log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        """``logging.Logger.log``, rate limited per distinct formatted text."""
        text = msg % args if args else msg
        key = (level, _NUMBERS.sub("#", text))
        now = self._clock()
        with self._lock:
            first, suppressed = self._seen.get(key, (None, 0))
            if first is not None and now - first < self._interval_s:
                self._seen[key] = (first, suppressed + 1)
                return
            if len(self._seen) >= self._MAX_KEYS:
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self._interval_s}
            self._seen[key] = (now, 0)
        extra = dict(kwargs.pop("extra", None) or {})
        if suppressed and first is not None:
            text += f" (repeated {suppressed} times in the last {now - first:.0f}s)"
            extra["repeated"] = suppressed
        self._logger.log(level, "%s", text, extra=extra, **kwargs)


def _tp(ktp: KTopicPartition) -> TopicPartition:
    return TopicPartition(ktp.topic, ktp.partition)


def _ktp(tp: TopicPartition, offset: int | None = None) -> KTopicPartition:
    if offset is None:
        return KTopicPartition(tp.topic, tp.partition)
    return KTopicPartition(tp.topic, tp.partition, offset)


def to_message(m: KMessage) -> Message:
    """confluent_kafka.Message → our value type (the hot path: one call per message, so
    positional arguments and no work for the usual bytes key/value and absent headers)."""
    ts_type, ts = m.timestamp()
    headers = m.headers()
    key, value = m.key(), m.value()
    topic, partition, offset = m.topic(), m.partition(), m.offset()
    return Message(
        Position(
            topic if type(topic) is str else str(topic),
            partition if type(partition) is int else int(partition or 0),
            offset if type(offset) is int else int(offset or 0),
        ),
        key.encode() if isinstance(key, str) else key,
        value.encode() if isinstance(value, str) else value,
        ts if ts_type != 0 and ts >= 0 else None,
        ()
        if headers is None
        else tuple((k, v.encode() if isinstance(v, str) else (v or b"")) for k, v in headers)
        if isinstance(headers, list)
        else (),
    )


def run_bounded(fn: Callable[[], Any], timeout_s: float, what: str) -> tuple[bool, Any]:
    """Run ``fn`` in a daemon thread; give up waiting after ``timeout_s``.

    Returns (finished, result-or-exception); past the bound the exception is a BrokerError. A
    call that outlives the bound keeps running in its thread (librdkafka calls can't be
    interrupted) but no longer holds the caller.
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
        return False, BrokerError(f"{what} did not finish within {timeout_s:.1f}s")
    ok, value = box[0]
    return ok, value


def _codes(*names: str) -> frozenset[int]:
    return frozenset(int(getattr(KafkaError, n)) for n in names if hasattr(KafkaError, n))


#: Consumer error events that carry a partition (and the fetch position) but describe the
#: partition's or the fetcher's state, not one unreadable record: the record at that offset is
#: fetched later, so dead-lettering it would be wrong. They are logged (rate limited).
_NOT_A_RECORD = _codes(
    "_PARTITION_EOF",
    "_AUTO_OFFSET_RESET",
    "OFFSET_OUT_OF_RANGE",
    "OFFSET_NOT_AVAILABLE",
    "UNKNOWN_TOPIC_OR_PART",
    "UNKNOWN_TOPIC_ID",
    "_UNKNOWN_TOPIC",
    "_UNKNOWN_PARTITION",
    "TOPIC_AUTHORIZATION_FAILED",
    "GROUP_AUTHORIZATION_FAILED",
    "NOT_LEADER_FOR_PARTITION",
    "LEADER_NOT_AVAILABLE",
    "REPLICA_NOT_AVAILABLE",
    "KAFKA_STORAGE_ERROR",
    "FENCED_LEADER_EPOCH",
    "UNKNOWN_LEADER_EPOCH",
    "_TRANSPORT",
    "_ALL_BROKERS_DOWN",
    "_TIMED_OUT",
    "REQUEST_TIMED_OUT",
    "NETWORK_EXCEPTION",
    "_MAX_POLL_EXCEEDED",
)


def error_message(m: KMessage) -> Message | None:
    """A consumer error event as the Message at its position, or None when the event is not
    about one record (no topic, partition or offset, or a code in :data:`_NOT_A_RECORD`)."""
    err = m.error()
    topic, partition, offset = m.topic(), m.partition(), m.offset()
    if err is None or not topic or partition is None or partition < 0:
        return None
    if offset is None or offset < 0 or err.code() in _NOT_A_RECORD:
        return None
    return Message(
        position=Position(str(topic), int(partition), int(offset)),
        key=None,
        value=None,
        timestamp_ms=None,
        error=f"{err.name()}: {err.str()}",
    )


#: Client-wide errors that mean no broker can be reached (feed the broker outage).
_BROKER_DOWN = _codes("_ALL_BROKERS_DOWN", "_TRANSPORT", "_RESOLVE", "_AUTHENTICATION", "_SSL")


class KafkaSource:
    """A group consumer over the entity topics: the pipeline's ``Source``.

    Every method runs on the caller's (the poll loop's) thread; only :meth:`commit` may also
    be called from another thread. The rebalance and commit callbacks given to
    :meth:`subscribe` run inside :meth:`consume`, as librdkafka serves them from its poll.
    Errors are this package's (see the module docstring), never confluent_kafka's.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        consumer: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Raises ConfigError when librdkafka rejects the configuration."""
        self.config = consumer_config(settings)
        self._partitions_total: tuple[tuple[str, ...], float, int | None] | None = None
        self._on_commit_listener: CommitCallback | None = None
        self._client_log = RepeatLimiter(client_log, clock=clock)
        self._fatal: str | None = None
        # librdkafka reports brokers going down, never coming back: silence for 30 s (it
        # retries at least every reconnect.backoff.max.ms, 10 s) or a message ends an outage.
        self._broker_outage = Outage(
            "Kafka brokers unreachable", bound_s=settings.health_outage_s, quiet_s=30.0, clock=clock
        )
        try:
            self._consumer = (
                consumer
                if consumer is not None
                else Consumer(
                    {**self.config, "on_commit": self._on_commit, "error_cb": self._on_error},
                    logger=self._client_log,
                )
            )
        except KafkaException as exc:
            raise _config_error(exc) from exc
        self._commit_lock = threading.Lock()

    def broker_problem(self) -> str | None:
        """A readiness blocker: why the pod is not ready when the brokers have been
        unreachable for longer than ``HEALTH_OUTAGE_S`` (see :class:`~consumer.outage.Outage`);
        None otherwise. Thread-safe."""
        return self._broker_outage.problem()

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's client-wide error events (served from consume)."""
        if err.code() in _BROKER_DOWN:
            self._broker_outage.failed(err.name())
        if err.fatal():
            if self._fatal is None:
                self._fatal = f"{err.name()}: {err.str()}"
                log.error(
                    "fatal Kafka consumer error: %s", self._fatal, extra={"event": "kafka_fatal"}
                )
            return
        self._client_log.log(
            logging.WARNING,
            "Kafka consumer error: %s: %s",
            err.name(),
            err.str(),
            extra={"event": "consumer_error", "code": err.name()},
        )

    def _on_commit(self, err: KafkaError | None, partitions: list[KTopicPartition]) -> None:
        listener = self._on_commit_listener
        if listener is None:
            return
        if err is not None:
            listener(_text(err), {})
            return
        failed = [p for p in partitions if p.error is not None]
        done = {_tp(p): p.offset for p in partitions if p.error is None and p.offset >= 0}
        listener(_text(failed[0].error) if failed else None, done)

    def subscribe(
        self,
        topics: Iterable[str],
        *,
        on_assign: PartitionsCallback,
        on_revoke: PartitionsCallback,
        on_lost: PartitionsCallback,
        on_commit: CommitCallback | None = None,
    ) -> None:
        """Join the group for ``topics``. ``on_assign`` / ``on_revoke`` / ``on_lost`` get the
        partitions of each rebalance and ``on_commit(error, committed)`` the result of every
        asynchronous commit, all from inside a later :meth:`consume`. A partition is released
        (its fetch position and pause flag forgotten) when ``on_revoke``/``on_lost`` returns.
        Raises BrokerError when the subscription is refused."""
        self._on_commit_listener = on_commit
        try:
            self._consumer.subscribe(
                list(topics),
                on_assign=lambda _c, ps: on_assign([_tp(p) for p in ps]),
                on_revoke=lambda _c, ps: on_revoke([_tp(p) for p in ps]),
                on_lost=lambda _c, ps: on_lost([_tp(p) for p in ps]),
            )
        except KafkaException as exc:
            raise translate(exc, "subscribe") from exc

    def consume(self, max_messages: int, timeout_s: float) -> list[Message]:
        """Up to ``max_messages`` messages of unpaused assigned partitions, in offset order per
        partition, waiting at most about ``timeout_s`` for the first.

        A consumer error for one record (a real topic, partition and offset: a corrupt or
        undecompressable record) comes back as a Message at that position with ``error`` set
        and no key or value, so it is dead-lettered, never skipped. Client-wide errors
        (transport, all brokers down) and partition-state errors are logged, rate limited.
        Raises FatalKafkaError on a fatal client error, BrokerError when the client refuses.
        """
        try:
            batch = self._consumer.consume(num_messages=max_messages, timeout=timeout_s)
        except KafkaException as exc:
            raise translate(exc, "consume") from exc
        if self._fatal is not None:
            raise FatalKafkaError(f"fatal Kafka consumer error: {self._fatal}")
        out: list[Message] = []
        for m in batch:
            err = m.error()
            if err is None:
                out.append(to_message(m))
                continue
            if err.fatal():
                raise FatalKafkaError(
                    f"fatal Kafka consumer error: {err.name()}: {err.str()}"
                ) from KafkaException(err)
            record = error_message(m)
            if record is not None:
                pos = record.position
                log.error(
                    "consumer error for %s: %s; dead-lettering it",
                    pos,
                    record.error,
                    extra={
                        "event": "consumer_error",
                        "topic": pos.topic,
                        "partition": pos.partition,
                        "offset": pos.offset,
                        "code": err.name(),
                    },
                )
                out.append(record)
            elif err.code() != KafkaError._PARTITION_EOF:
                where = f"{m.topic()}[{m.partition()}]: " if m.topic() else ""
                self._client_log.log(
                    logging.WARNING,
                    "Kafka consumer error: %s%s: %s",
                    where,
                    err.name(),
                    err.str(),
                    extra={"event": "consumer_error", "code": err.name()},
                )
        if out:  # a fetch came back: a broker is reachable
            self._broker_outage.ok()
        return out

    def pause(self, tps: Iterable[TopicPartition]) -> None:
        """Stop fetching ``tps``: :meth:`consume` returns none of their messages until
        :meth:`resume`, after which they continue right after the last message returned (none
        is skipped; librdkafka drops its prefetched ones and fetches them again). Raises
        BrokerError."""
        parts = [_ktp(tp) for tp in tps]
        if parts:
            try:
                self._consumer.pause(parts)
            except KafkaException as exc:
                raise translate(exc, "pause") from exc

    def resume(self, tps: Iterable[TopicPartition]) -> None:
        """Fetch ``tps`` again from where they were paused. Raises BrokerError."""
        parts = [_ktp(tp) for tp in tps]
        if parts:
            try:
                self._consumer.resume(parts)
            except KafkaException as exc:
                raise translate(exc, "resume") from exc

    def commit(
        self, offsets: Mapping[TopicPartition, int], timeout_s: float
    ) -> dict[TopicPartition, int]:
        """Commit ``offsets`` (next offsets to read) synchronously within ``timeout_s``.

        Returns what was committed (all of ``offsets``). Raises BrokerError when the commit
        failed for any partition or did not finish in time (it may still complete later; a
        later commit of higher offsets supersedes it either way)."""
        parts = [_ktp(tp, off) for tp, off in offsets.items()]
        if not parts:
            return {}
        if not self._commit_lock.acquire(timeout=timeout_s):
            raise BrokerError("commit: a previous commit is still running")
        try:
            ok, result = run_bounded(
                lambda: self._consumer.commit(offsets=parts, asynchronous=False),
                timeout_s,
                "commit",
            )
        finally:
            self._commit_lock.release()
        if not ok:
            raise translate(result, "commit") from result
        done: dict[TopicPartition, int] = {}
        for p in result or parts:
            if p.error is not None:
                raise BrokerError(f"commit of {p.topic}[{p.partition}] failed: {p.error.str()}")
            done[_tp(p)] = p.offset
        return done

    def commit_async(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Start committing ``offsets`` without waiting; the result reaches the ``on_commit``
        callback from a later :meth:`consume` (exactly once per call). Raises BrokerError
        when the commit cannot even be started."""
        parts = [_ktp(tp, off) for tp, off in offsets.items()]
        if parts:
            try:
                self._consumer.commit(offsets=parts, asynchronous=True)
            except KafkaException as exc:
                raise translate(exc, "commit") from exc

    def committed(
        self, tps: Iterable[TopicPartition], timeout_s: float
    ) -> dict[TopicPartition, int | None]:
        """The group's committed offsets, asked of the broker within ``timeout_s`` (None
        where nothing is committed). Raises BrokerError on failure or timeout."""
        try:
            parts = self._consumer.committed([_ktp(tp) for tp in tps], timeout=timeout_s)
        except KafkaException as exc:
            raise translate(exc, "committed offsets") from exc
        out: dict[TopicPartition, int | None] = {}
        for p in parts:
            if p.error is not None:
                raise BrokerError(f"committed offset of {p.topic}[{p.partition}]: {p.error.str()}")
            out[_tp(p)] = p.offset if p.offset != OFFSET_INVALID and p.offset >= 0 else None
        return out

    def high_watermark(self, tp: TopicPartition) -> int | None:
        """The partition's high watermark as last seen by fetches (no broker round trip);
        None when not known yet. Never raises."""
        try:
            _low, high = self._consumer.get_watermark_offsets(_ktp(tp), cached=True)
        except KafkaException:
            return None
        return high if high is not None and high >= 0 else None

    def partitions_total(self, topics: Iterable[str], timeout_s: float) -> int | None:
        """How many partitions ``topics`` have together (a bounded metadata request at most
        once a minute; the last answer in between); None when the metadata does not answer or
        lacks a topic. Never raises."""
        wanted = tuple(topics)
        cached = self._partitions_total
        if cached is not None and cached[0] == wanted and time.monotonic() < cached[1]:
            return cached[2]
        try:
            meta = self._consumer.list_topics(timeout=timeout_s)
        except KafkaException:
            return cached[2] if cached is not None and cached[0] == wanted else None
        counts = [len(meta.topics[t].partitions) for t in wanted if t in meta.topics]
        total = sum(counts) if len(counts) == len(wanted) and all(counts) else None
        # partitions change rarely: one metadata request a minute at most
        self._partitions_total = (wanted, time.monotonic() + 60.0, total)
        return total

    def close(self, timeout_s: float) -> bool:
        """Leave the group within ``timeout_s``; False when it failed or did not finish in
        time (logged). Never raises."""
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


#: The DLQ cannot hold the record: refused by the client (message.max.bytes) or the broker.
_TOO_LARGE = _codes("MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE", "INVALID_RECORD")
#: Writing can never succeed until an operator acts: the pod is not ready meanwhile.
_NOT_PERMITTED = _codes("CLUSTER_AUTHORIZATION_FAILED", "TOPIC_AUTHORIZATION_FAILED")


class _Write:
    """One dead letter's current form. Stage 0: as consumed; 1: without its value; 2: also
    with the key cut to :data:`DLQ_KEY_MAX_BYTES`."""

    __slots__ = ("dl", "on_done", "stage")

    def __init__(self, dl: DeadLetter, on_done: DoneCallback, stage: int = 0) -> None:
        self.dl, self.on_done, self.stage = dl, on_done, stage

    def smaller(self) -> _Write | None:
        """The next smaller form, None when nothing is left to cut."""
        m = self.dl.message
        if self.stage == 0 and m.value:
            return _Write(self.dl, self.on_done, 1)
        if self.stage < 2 and m.key is not None and len(m.key) > DLQ_KEY_MAX_BYTES:
            return _Write(self.dl, self.on_done, 2)
        return None

    def record(self) -> dict[str, Any]:
        m = self.dl.message
        headers = dead_letter_headers(self.dl)
        key, value = m.key, m.value
        if self.stage >= 1 and value:
            headers.append(("dlq.value.omitted", str(len(value)).encode()))
            value = None
        if self.stage >= 2 and key is not None and len(key) > DLQ_KEY_MAX_BYTES:
            headers.append(("dlq.key.truncated", str(len(key)).encode()))
            key = key[:DLQ_KEY_MAX_BYTES]
        return {"key": key, "value": value, "headers": headers}


class DeadLetterProducer:
    """Writes dead letters to ``DLQ_TOPIC``: the pipeline's ``DeadLetters``.

    Contract of :meth:`produce` ``(dl, on_done)``:

    - returns False when the local queue is full: nothing was queued and ``on_done`` will not
      be called for this call; the caller tries again later;
    - otherwise returns True and ``on_done(dl, error_or_None)`` is called **exactly once**,
      always later from :meth:`poll` or :meth:`flush` (never inside ``produce``), with None
      once the broker acknowledged the record.

    A dead letter the DLQ cannot hold (the client refuses it synchronously with
    ``MSG_SIZE_TOO_LARGE``, or the broker in the delivery report: message too large, record
    list too large, invalid record) is written again without its value, with header
    ``dlq.value.omitted`` = the value's size in bytes, and if that is still too large with
    its key cut to :data:`DLQ_KEY_MAX_BYTES` (``dlq.key.truncated`` = the key's size), so the
    partition moves on and the record still points at its source coordinates (``dlq replay``
    fetches the value from there). Only the last rewrite's outcome reaches ``on_done``.

    :meth:`problem` is the reason the DLQ cannot be written until an operator acts (a fatal
    producer error such as a missing idempotence ACL, or an authorization failure), logged
    once when it starts; readiness reports it. An authorization problem clears with the next
    acknowledged write; a fatal one lasts until restart.

    Not thread-safe: produce, poll and flush are called from the poll loop only.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        producer: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Raises ConfigError when librdkafka rejects the configuration."""
        self.topic = settings.dlq_topic
        self.config = producer_config(settings)
        self._clock = clock
        self._client_log = RepeatLimiter(client_log, clock=clock)
        self._problem: str | None = None
        self._fatal = False
        # outcomes decided inside produce(), handed to on_done at the next poll/flush
        self._reports: deque[tuple[_Write, str | None]] = deque()
        # smaller rewrites a full local queue refused inside a delivery report
        self._rewrites: deque[_Write] = deque()
        try:
            self._producer = (
                producer
                if producer is not None
                else Producer({**self.config, "error_cb": self._on_error}, logger=self._client_log)
            )
        except KafkaException as exc:
            raise _config_error(exc) from exc

    # ------------------------------------------------------------------ health
    def problem(self) -> str | None:
        """Why dead letters cannot be written (for readiness), or None."""
        return self._problem

    def _note(self, err: KafkaError | None) -> None:
        if err is None:
            return
        fatal = err.fatal() or err.code() == KafkaError._FATAL
        if not fatal and err.code() not in _NOT_PERMITTED:
            return
        if self._fatal:
            return
        reason = f"dead-letter producer: {_text(err)}"
        if fatal:
            self._fatal = True
            reason += " (fatal: restart needed)"
        if self._problem is None or fatal:
            log.error(
                "%s; dead letters cannot be written, pod not ready",
                reason,
                extra={"event": "dlq_unwritable", "code": err.name()},
            )
        self._problem = reason

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's client-wide error events (served from poll/flush)."""
        if err.fatal() or err.code() in _NOT_PERMITTED:
            self._note(err)
            return
        self._client_log.log(
            logging.WARNING,
            "Kafka producer error: %s: %s",
            err.name(),
            err.str(),
            extra={"event": "producer_error", "code": err.name()},
        )

    # ------------------------------------------------------------------ writing
    def produce(self, dl: DeadLetter, on_done: DoneCallback) -> bool:
        """Queue one dead letter; see the class docstring for the contract."""
        return self._send(_Write(dl, on_done))

    def _send(self, write: _Write) -> bool:
        """Queue ``write`` (smaller forms while the client says it is too large). False only
        when the local queue is full; any other refusal is reported at the next poll."""
        current: _Write | None = write
        while current is not None:
            w = current
            try:
                self._producer.produce(self.topic, **w.record(), on_delivery=self._report(w))
                return True
            except BufferError:
                return False
            except KafkaException as exc:
                err = _kafka_error(exc)
                current = w.smaller() if err is not None and err.code() in _TOO_LARGE else None
                if current is not None:
                    self._omitting(w, _text(err, exc))
                    continue
                self._note(err)
                self._reports.append((w, _text(err, exc)))
                return True
        return True  # pragma: no cover - the loop always returns

    def _report(self, w: _Write) -> Callable[[KafkaError | None, KMessage], None]:
        return lambda err, _msg: self._delivered(w, err)

    def _omitting(self, w: _Write, error: str) -> None:
        pos = w.dl.message.position
        log.warning(
            "dead letter of %s is too large for %s (%s); writing it %s",
            pos,
            self.topic,
            error,
            "without its value" if w.stage == 0 else "with its key cut",
            extra={
                "event": "dlq_value_omitted" if w.stage == 0 else "dlq_key_truncated",
                "topic": pos.topic,
                "partition": pos.partition,
                "offset": pos.offset,
            },
        )

    def _delivered(self, w: _Write, err: KafkaError | None) -> None:
        """Delivery report of one write (runs inside poll/flush)."""
        if err is None:
            if self._problem is not None and not self._fatal:
                log.info("dead-letter topic writable again", extra={"event": "dlq_writable"})
                self._problem = None
            w.on_done(w.dl, None)
            return
        smaller = w.smaller() if err.code() in _TOO_LARGE else None
        if smaller is not None:
            self._omitting(w, _text(err))
            if not self._send(smaller):
                self._rewrites.append(smaller)
            return
        self._note(err)
        w.on_done(w.dl, _text(err))

    def _settle(self) -> None:
        """Retry rewrites a full queue refused, then hand out synchronous outcomes."""
        for _ in range(len(self._rewrites)):
            w = self._rewrites.popleft()
            if not self._send(w):
                self._rewrites.appendleft(w)
                break
        while self._reports:
            w, error = self._reports.popleft()
            w.on_done(w.dl, error)

    def poll(self) -> None:
        """Serve delivery reports: every ``on_done`` due runs now. Never blocks."""
        self._producer.poll(0)
        self._settle()

    def flush(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for outstanding dead letters, serving their reports;
        returns how many are still without an outcome."""
        deadline = self._clock() + timeout_s
        while True:
            self._settle()
            remaining = int(self._producer.flush(max(0.0, deadline - self._clock())))
            self._settle()
            left = remaining + len(self._rewrites)
            if left == 0 or self._clock() >= deadline:
                return left

    def close(self) -> None:
        """Drop whatever is still unacknowledged (its offsets were not committed, so it will be
        dead-lettered again after restart) so the producer's teardown cannot block exit."""
        self._rewrites.clear()
        self._producer.purge(in_queue=True, in_flight=True, blocking=False)
        self._producer.flush(0)


# --------------------------------------------------------------------------- operator checks
# Read-only cluster questions for ``metadata-consumer check``: does the cluster answer, which
# topics exist with how many partitions, where is the group and how far behind. Nothing here
# joins the group or commits: ``committed()`` on a consumer that never subscribed only reads.


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """One topic as the cluster's metadata describes it: ``partitions`` is 0 when ``error``
    says why the topic is unusable (e.g. ``UNKNOWN_TOPIC_OR_PART`` for a missing topic)."""

    name: str
    partitions: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """The group's committed offset (None: nothing committed yet) and the partition's end
    offset (None: not readable within the bound) for one partition."""

    topic: str
    partition: int
    committed: int | None
    end: int | None

    @property
    def lag(self) -> int | None:
        """Messages past the committed offset (all of them when nothing is committed)."""
        if self.end is None:
            return None
        return max(0, self.end - (self.committed or 0))


class ClusterProbe:
    """A consumer client in ``settings.group_id`` that never subscribes: it reads metadata,
    committed offsets and watermarks only, each call bounded by ``timeout_s``.

    Raises ConfigError (naming the ``KAFKA_*`` variable) when librdkafka refuses the
    configuration; the methods raise BrokerError when the cluster does not answer in time.
    Client errors (a refused connection...) are kept, not logged: :attr:`last_error`.
    """

    def __init__(self, settings: Settings, *, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self.last_error: str | None = None
        config: dict[str, Any] = {
            **common_config(settings),
            "group.id": settings.group_id,
            "client.id": "asapp-metadata-consumer-check",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "socket.connection.setup.timeout.ms": max(1000, int(timeout_s * 1000)),
            "error_cb": self._on_error,
            "logger": _SILENT,
        }
        try:
            self._consumer = Consumer(config)
        except KafkaException as exc:
            raise _config_error(exc) from exc

    def _on_error(self, err: KafkaError) -> None:
        self.last_error = _text(err)

    def _failed(self, exc: BaseException, what: str) -> BrokerError:
        error = translate(exc, what)
        detail = f" (last client error: {self.last_error})" if self.last_error else ""
        return BrokerError(f"{error}{detail}")

    def describe_topics(self, topics: Iterable[str]) -> tuple[int, dict[str, TopicInfo]]:
        """``(number of brokers, {topic: TopicInfo})`` for ``topics``. Raises BrokerError when
        no broker answers within the bound."""
        try:
            meta = self._consumer.list_topics(timeout=self._timeout_s)
        except KafkaException as exc:
            raise self._failed(exc, "reading the cluster metadata") from exc
        out: dict[str, TopicInfo] = {}
        for name in topics:
            t = meta.topics.get(name)
            if t is None:
                out[name] = TopicInfo(name, 0, "UNKNOWN_TOPIC_OR_PART: the topic does not exist")
            elif t.error is not None:
                out[name] = TopicInfo(name, 0, _text(t.error))
            else:
                out[name] = TopicInfo(name, len(t.partitions))
        return len(meta.brokers), out

    def group_offsets(self, topics: Mapping[str, int]) -> list[PartitionLag]:
        """Committed offset and end offset of every partition of ``topics`` (name →
        partition count), in topic and partition order. Raises BrokerError when the group
        coordinator does not answer in time; an end offset that cannot be read is None."""
        parts = [KTopicPartition(t, p) for t, n in sorted(topics.items()) for p in range(n)]
        if not parts:
            return []
        try:
            committed = self._consumer.committed(parts, timeout=self._timeout_s)
        except KafkaException as exc:
            raise self._failed(exc, "reading the group's committed offsets") from exc
        out: list[PartitionLag] = []
        for c in committed:
            try:
                _low, high = self._consumer.get_watermark_offsets(
                    KTopicPartition(c.topic, c.partition), timeout=self._timeout_s
                )
                end: int | None = int(high)
            except KafkaException:
                end = None  # reported as unknown lag, not as a failed group
            offset = int(c.offset) if c.offset >= 0 else None
            out.append(PartitionLag(c.topic, c.partition, offset, end))
        return out

    def close(self) -> None:
        self._consumer.close()


#: librdkafka's log lines during a check: the error callback keeps the one that matters.
_SILENT = logging.getLogger("consumer.kafka.check")
_SILENT.addHandler(logging.NullHandler())
_SILENT.propagate = False


# --------------------------------------------------------------------------- quota ledger
# The group's shared request ledger (issue "API economy"): each pod writes its count for the
# UTC day to a compacted topic and reads everyone's. See QuotaLedger's docstring.

import json  # noqa: E402  (this section's own imports; the top of the file is shared)

from consumer.quota import MemberRecord  # noqa: E402

#: The ledger topic's default name (``QUOTA_TOPIC``).
DEFAULT_QUOTA_TOPIC = "asapp.metadata.quota"
#: Most pods one ledger remembers (the oldest records are forgotten beyond it).
LEDGER_MAX_MEMBERS = 4096
#: Records read per consume call of the ledger's reader.
_LEDGER_BATCH = 500


def ledger_key(group: str, day: str, pod: str) -> bytes:
    """A ledger record's key: ``<group>|<day>|<pod>`` (compaction keeps the last per key)."""
    return f"{group}|{day}|{pod}".encode()


def ledger_value(group: str, record: MemberRecord) -> bytes:
    """A ledger record's value: the MemberRecord's fields plus ``group``, as JSON."""
    return json.dumps(
        {
            "group": group,
            "pod": record.pod,
            "day": record.day,
            "requests": record.requests,
            "demand": record.demand,
            "ts": record.ts,
        },
        separators=(",", ":"),
    ).encode()


def parse_ledger_value(value: bytes) -> tuple[str, MemberRecord] | None:
    """``(group, MemberRecord)`` from a ledger value, None when it is not one."""
    try:
        raw = json.loads(value)
        if not isinstance(raw, dict):
            return None
        group, pod, day = raw["group"], raw["pod"], raw["day"]
        requests, demand, ts = raw["requests"], raw["demand"], raw["ts"]
        if not (isinstance(group, str) and isinstance(pod, str) and isinstance(day, str)):
            return None
        if isinstance(requests, bool) or not isinstance(requests, int) or requests < 0:
            return None
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (demand, ts)):
            return None
        return group, MemberRecord(pod, day, requests, float(demand), float(ts))
    except (ValueError, KeyError, TypeError, RecursionError):
        return None


def _ledger_client_config(settings: Settings) -> dict[str, Any]:
    """Connection properties without the group-consumer ones (the ledger joins no group)."""
    return {
        k: v
        for k, v in common_config(settings).items()
        if not k.startswith(_CONSUMER_ONLY_PREFIXES)
    }


class QuotaLedger:
    """The group's request ledger on a compacted Kafka topic: the pacer's ``Ledger``.

    Records: key ``<group>|<day>|<pod>``, value JSON ``{"group", "pod", "day", "requests",
    "demand", "ts"}`` (:func:`ledger_value`). Every pod writes its own records and reads the
    whole topic, so the day's usage is the sum over the group's pods and survives restarts (a
    vanished pod's requests stay spent; a restarted pod with a new name adds a new key).

    The topic (``QUOTA_TOPIC``, default :data:`DEFAULT_QUOTA_TOPIC`) must exist: the ledger
    never produces to a topic the metadata does not list, so a broker that auto-creates topics
    cannot make it a plain (uncompacted) one. Recommended configuration::

        partitions: 1                      # a few records per pod and day; one is plenty
        cleanup.policy: compact,delete     # the last record per key, and old days dropped
        retention.ms: 172800000            # 2 days: today's and yesterday's records
        segment.ms: 3600000                # lets compaction and deletion act within hours

    ACLs: Read and Describe on the topic, Write on the topic, IdempotentWrite on the cluster
    (the writer is idempotent); no group ACL (the reader joins no group and commits nothing,
    its ``group.id`` is only required by the client).

    Contract:

    - :meth:`publish` stores the record as this pod's latest and returns at once; a background
      thread writes the latest unwritten record every ``publish_interval_s`` and once more on
      :meth:`close` (bounded by its ``timeout_s``).
    - :meth:`members` is the latest record per pod of this group (any day: the caller filters
      by day; records of other groups are ignored), this pod's own once it was read back, or
      None while the ledger is not known to be read: before the reader first caught up with
      the topic's end, when it has not caught up with an end it queried for more than
      ``stale_after_s`` (transient broker errors are tolerated that long), when the topic does
      not exist or reading it is refused, or when the last write failed.
    - :meth:`problem` says why (None when healthy). The first problem of an episode is logged
      once as a warning, the recovery once as info.
    - Nothing raises out of publish, members or problem; every broker call is bounded.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        group: str,
        pod: str,
        topic: str = DEFAULT_QUOTA_TOPIC,
        clock: Callable[[], float] = time.time,
        publish_interval_s: float = 2.0,
        stale_after_s: float = 15.0,
        timeout_s: float = 5.0,
    ) -> None:
        """Starts the background thread. Raises ConfigError when librdkafka rejects the
        configuration."""
        self.group, self.pod, self.topic = group, pod, topic
        self._clock = clock
        self._interval_s = publish_interval_s
        self._stale_after_s = stale_after_s
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._write_now = threading.Event()
        self._latest: MemberRecord | None = None
        self._unwritten = False
        self._members: dict[str, MemberRecord] = {}
        self._read_at: float | None = None  # everything the topic held at this time was read
        self._target: tuple[float, dict[int, int]] | None = None  # (when, end offset)
        self._next: dict[int, int] = {}  # partition -> next offset to read
        self._assigned: set[int] = set()
        self._missing: str | None = None  # the topic does not exist / metadata failed
        self._read_error: str | None = None  # reading is refused (authorization)
        self._last_error: str | None = None  # the last transient failure, for the stale reason
        self._write_error: str | None = None
        self._problem: str | None = "quota ledger not read yet"
        self._episode = False  # a warning was logged for the current problem
        self._started_at = clock()
        self._client_log = RepeatLimiter(client_log)
        base = _ledger_client_config(settings)
        try:
            self._producer = Producer(
                {
                    **base,
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 0,
                    "message.timeout.ms": max(1000, int(timeout_s * 2000)),
                    "client.id": "asapp-metadata-consumer-quota",
                    "error_cb": self._on_error,
                },
                logger=self._client_log,
            )
            self._consumer = Consumer(
                {
                    **base,
                    "group.id": f"{group}.quota-ledger",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "auto.offset.reset": "earliest",
                    "client.id": "asapp-metadata-consumer-quota",
                    "error_cb": self._on_error,
                },
                logger=self._client_log,
            )
        except KafkaException as exc:
            raise _config_error(exc) from exc
        self._thread = threading.Thread(target=self._run, name="quota-ledger", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the Ledger protocol
    def publish(self, record: MemberRecord) -> None:
        """Make ``record`` (a MemberRecord of this pod) the next one written. Never blocks."""
        with self._lock:
            first = self._latest is None
            self._latest = record
            self._unwritten = True
        if first:  # the group learns of a new pod as soon as it can, not an interval later
            self._write_now.set()

    def members(self) -> Mapping[str, MemberRecord] | None:
        """The latest record per pod of this group, or None (see the class docstring)."""
        with self._lock:
            if self._current_problem_locked() is not None:
                return None
            return dict(self._members)

    def problem(self) -> str | None:
        """Why :meth:`members` is None, or None when the ledger is healthy."""
        with self._lock:
            return self._current_problem_locked()

    def close(self) -> None:
        """Stop the thread after a final write of the latest record (bounded by
        ``timeout_s``), then release the clients."""
        self._stop.set()
        self._thread.join(self._timeout_s * 3 + 1.0)
        if self._thread.is_alive():
            log.warning(
                "quota ledger did not stop within its bound; its last record may be unwritten",
                extra={"event": "quota_ledger_close_timeout", "topic": self.topic},
            )
            return
        run_bounded(self._consumer.close, self._timeout_s, "closing the quota ledger reader")

    # ------------------------------------------------------------------ state
    def _current_problem_locked(self) -> str | None:
        if self._missing is not None:
            return self._missing
        if self._write_error is not None:
            return self._write_error
        if self._read_error is not None:
            return self._read_error
        if self._read_at is None:
            return "quota ledger not read yet"
        age = self._clock() - self._read_at
        if age > self._stale_after_s:
            last = f" (last error: {self._last_error})" if self._last_error else ""
            return f"quota ledger {self.topic} not read for {age:.0f}s{last}"
        return None

    def _review(self) -> None:
        """Log the start (warning) and the end (info) of a problem episode, once each."""
        with self._lock:
            problem = self._current_problem_locked()
            started = (
                self._read_at is not None
                or self._missing is not None
                or self._clock() - self._started_at > self._stale_after_s
            )
            previous, self._problem = self._problem, problem
        if problem is not None and not self._episode:
            if problem == "quota ledger not read yet" and not started:
                return  # start-up, not a problem yet
            self._episode = True
            log.warning(
                "quota ledger unusable: %s; pacing falls back to this pod's safe share",
                problem,
                extra={"event": "quota_ledger_unusable", "topic": self.topic},
            )
        elif problem is None and previous is not None and self._episode:
            self._episode = False
            log.info(
                "quota ledger usable again", extra={"event": "quota_ledger_ok", "topic": self.topic}
            )

    def _on_error(self, err: KafkaError) -> None:
        """Client-wide errors (served from the thread's poll/consume): logged, rate limited."""
        self._client_log.log(
            logging.WARNING,
            "quota ledger client error: %s: %s",
            err.name(),
            err.str(),
            extra={"event": "quota_ledger_client_error", "code": err.name()},
        )
        if err.code() in _NOT_PERMITTED or err.fatal():
            with self._lock:
                self._write_error = f"quota ledger {self.topic}: {_text(err)}"

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        next_cycle = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_cycle or self._write_now.is_set():
                    self._write_now.clear()
                    next_cycle = time.monotonic() + self._interval_s
                    self._cycle()
                self._read(min(0.2, self._interval_s))
                self._review()
            except Exception as exc:  # the thread must outlive any surprise; reported, not lost
                with self._lock:
                    self._last_error = f"quota ledger {self.topic}: {exc}"
                self._client_log.log(
                    logging.WARNING,
                    "quota ledger cycle failed: %s",
                    exc,
                    extra={"event": "quota_ledger_error"},
                )
                self._stop.wait(min(1.0, self._interval_s))
        self._final_write()

    def _cycle(self) -> None:
        """Metadata (assign new partitions), the end offsets to catch up with, one write."""
        partitions = self._partitions()
        if partitions is None:
            return
        if partitions - self._assigned:
            new = sorted(partitions - self._assigned)
            self._consumer.incremental_assign(
                [KTopicPartition(self.topic, p, -2) for p in new]  # OFFSET_BEGINNING
            )
            self._assigned |= set(new)
        if self._target is None:
            ends = self._ends(partitions)
            if ends is not None:
                self._target = ends
        self._write()

    def _partitions(self) -> set[int] | None:
        try:
            meta = self._consumer.list_topics(self.topic, timeout=self._timeout_s)
        except KafkaException as exc:
            with self._lock:
                self._last_error = f"{translate(exc, 'reading the ledger metadata')}"
            return None
        t = meta.topics.get(self.topic)
        missing: str | None = None
        if t is None or (
            t.error is not None and t.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
        ):
            missing = f"quota ledger topic {self.topic} does not exist (create it, compacted)"
        elif t.error is not None:
            missing = f"quota ledger topic {self.topic}: {_text(t.error)}"
        elif not t.partitions:
            missing = f"quota ledger topic {self.topic} has no partitions"
        with self._lock:
            self._missing = missing
        return None if missing is not None else set(t.partitions) if t is not None else None

    def _ends(self, partitions: set[int]) -> tuple[float, dict[int, int]] | None:
        """``(now, {partition: end offset})``; also moves each unread partition's next offset
        to its low watermark (records below it were deleted)."""
        when = self._clock()
        ends: dict[int, int] = {}
        for p in sorted(partitions):
            try:
                low, high = self._consumer.get_watermark_offsets(
                    KTopicPartition(self.topic, p), timeout=self._timeout_s, cached=False
                )
            except KafkaException as exc:
                with self._lock:
                    self._last_error = f"{translate(exc, f'reading {self.topic}[{p}] offsets')}"
                return None
            self._next[p] = max(self._next.get(p, 0), int(low))
            ends[p] = int(high)
        return when, ends

    def _read(self, timeout_s: float) -> None:
        """Consume what arrived; mark the ledger read once the target end offsets are reached."""
        if not self._assigned:
            self._stop.wait(timeout_s)
            return
        for m in self._consumer.consume(_LEDGER_BATCH, timeout=timeout_s):
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    reason = f"quota ledger {self.topic}: {_text(err)}"
                    with self._lock:
                        if err.code() in _NOT_PERMITTED:
                            self._read_error = reason  # until a read succeeds
                        else:
                            self._last_error = reason  # tolerated up to stale_after_s
                continue
            p, offset = int(m.partition() or 0), int(m.offset() or 0)
            self._next[p] = max(self._next.get(p, 0), offset + 1)
            self._apply(m.key(), m.value())
        target = self._target
        if target is not None and all(self._next.get(p, 0) >= end for p, end in target[1].items()):
            self._target = None
            with self._lock:
                self._read_at = max(self._read_at or target[0], target[0])
                self._read_error = self._last_error = None

    def _apply(self, key: bytes | str | None, value: bytes | str | None) -> None:
        """Keep the record if it is this group's and newer than the pod's last one."""
        if value is None:
            return  # a tombstone: the key's day is over for compaction; nothing to keep
        parsed = parse_ledger_value(value.encode() if isinstance(value, str) else value)
        if parsed is None:
            self._client_log.log(
                logging.WARNING,
                "quota ledger %s: ignoring a record that is not a ledger record (key %r)",
                self.topic,
                key,
                extra={"event": "quota_ledger_bad_record", "topic": self.topic},
            )
            return
        group, record = parsed
        if group != self.group:
            return
        with self._lock:
            old = self._members.get(record.pod)
            if old is None or (record.day, record.ts) >= (old.day, old.ts):
                self._members[record.pod] = record
            if len(self._members) > LEDGER_MAX_MEMBERS:
                oldest = min(self._members.values(), key=lambda r: (r.day, r.ts))
                del self._members[oldest.pod]

    def _write(self) -> None:
        """Queue the latest unwritten record (only to an existing topic) and serve reports."""
        with self._lock:
            # only to a topic the metadata listed: never let a write auto-create it
            writable = self._missing is None and bool(self._assigned)
            record = self._latest if self._unwritten and writable else None
            self._unwritten = self._unwritten and record is None
        if record is not None:
            try:
                self._producer.produce(
                    self.topic,
                    key=ledger_key(self.group, record.day, record.pod),
                    value=ledger_value(self.group, record),
                    on_delivery=self._delivered,
                )
            except (BufferError, KafkaException) as exc:
                with self._lock:
                    self._write_error = f"quota ledger {self.topic}: write: {exc}"
                    self._unwritten = True
        self._producer.poll(0)

    def _delivered(self, err: KafkaError | None, _msg: KMessage) -> None:
        with self._lock:
            if err is None:
                self._write_error = None
            else:
                self._write_error = f"quota ledger {self.topic}: write: {_text(err)}"
                self._unwritten = True  # the latest is written again next cycle

    def _final_write(self) -> None:
        """On close: write the latest record once more if unwritten, flush within the bound."""
        try:
            if self._missing is None:
                self._write()
            self._producer.flush(self._timeout_s)
        except Exception as exc:  # at close, a lost final record is logged, not raised
            log.warning(
                "quota ledger final write failed: %s",
                exc,
                extra={"event": "quota_ledger_close_failed", "topic": self.topic},
            )


# --------------------------------------------------------------------------- event producer
# ``metadata-consumer produce`` (backfill, sample events) and ``produce-samples``: events to
# the entity topics. Unlike the dead-letter producer it answers "can I reach the cluster and
# does the topic exist" first, within seconds, so an operator's typo is a clear error and
# not thirty seconds of librdkafka retries.

#: ``client.id`` of the event producer.
EVENT_PRODUCER_CLIENT_ID = "asapp-metadata-consumer-produce"


def event_producer_config(settings: Settings) -> dict[str, Any]:
    """The event producer's librdkafka config: the DLQ producer's (idempotent, acks=all, the
    shared ``KAFKA_*`` connection properties) with its own ``client.id`` and a longer linger
    for throughput."""
    return {**producer_config(settings), "client.id": EVENT_PRODUCER_CLIENT_ID, "linger.ms": 20}


class EventProducer:
    """Produces keyed events and counts their acknowledgements (callbacks run in ``poll``).

    - :meth:`partitions` reads the topic's partition count from the cluster metadata
      (listing all topics, which never auto-creates one) within ``timeout_s``; raises
      BrokerError naming the bootstrap servers and the last client error when no broker
      answers; returns 0 when the topic does not exist.
    - :meth:`produce` queues one record, waiting for room when the local queue is full.
    - :meth:`flush` waits up to its bound; records still unacknowledged then are purged and
      counted in :attr:`failed`, so closing never blocks.
    - librdkafka's own log lines are not printed; the latest client error is kept in
      :attr:`last_error`, the first delivery errors in :attr:`errors`.

    Raises ConfigError (naming the ``KAFKA_*`` variable) when librdkafka refuses ``config``.
    """

    def __init__(self, config: Mapping[str, Any], *, timeout_s: float = 5.0) -> None:
        self._timeout_s = timeout_s
        self._bootstrap = str(config.get("bootstrap.servers", ""))
        self.last_error: str | None = None
        self.delivered = 0
        self.failed = 0
        self.errors: list[str] = []
        full: dict[str, Any] = {
            "socket.connection.setup.timeout.ms": max(1000, int(timeout_s * 1000)),
            **config,
            "error_cb": self._on_error,
            "logger": _SILENT,
        }
        try:
            self._producer = Producer(full)
        except KafkaException as exc:
            raise _config_error(exc) from exc

    def _on_error(self, err: KafkaError) -> None:
        self.last_error = _text(err)

    def partitions(self, topic: str) -> int:
        """The topic's partition count, 0 when the cluster does not have it (see class doc)."""
        try:
            meta = self._producer.list_topics(timeout=self._timeout_s)
        except KafkaException as exc:
            detail = f" (last client error: {self.last_error})" if self.last_error else ""
            raise BrokerError(
                f"cannot reach the Kafka cluster at {self._bootstrap} within "
                f"{self._timeout_s:g}s{detail}"
            ) from exc
        t = meta.topics.get(topic)
        return 0 if t is None or t.error is not None else len(t.partitions)

    def _delivered(self, err: KafkaError | None, _msg: KMessage) -> None:
        if err is None:
            self.delivered += 1
            return
        self.failed += 1
        if len(self.errors) < 5:
            self.errors.append(_text(err))

    def produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Queue one record for ``topic`` (partitioned by ``key``); raises BrokerError when
        librdkafka refuses it (e.g. larger than ``message.max.bytes``)."""
        while True:
            try:
                self._producer.produce(topic, key=key, value=value, on_delivery=self._delivered)
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.05)
            except KafkaException as exc:
                raise translate(exc, f"producing to {topic}") from exc
        self._producer.poll(0)

    def poll(self) -> None:
        """Serve delivery callbacks without waiting."""
        self._producer.poll(0)

    def flush(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for every acknowledgement; returns how many records were
        still unacknowledged (purged and counted as failed)."""
        remaining = int(self._producer.flush(timeout_s))
        if remaining:
            self._producer.purge(in_queue=True, in_flight=True, blocking=False)
            self._producer.flush(0)
            self.failed += remaining
            if self.last_error and len(self.errors) < 5:
                self.errors.append(self.last_error)
        return remaining
