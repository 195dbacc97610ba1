"""``metadata-consumer dlq replay``: re-publish dead letters to the topics they came from.

Contract:

- Reads the whole dead-letter topic (``DLQ_TOPIC``), every partition from offset 0, with
  ``assign()`` and a throwaway group id: nothing is ever committed, so the tool changes no
  consumer group's position and can be run any number of times.
- Selects records by ``--reason`` / ``--entity`` (the ``dlq.reason`` / ``dlq.entity`` headers)
  and by ``--since`` (inclusive) / ``--until`` (exclusive), compared with the dead-letter
  record's own Kafka timestamp, i.e. when it was dead-lettered. ISO-8601; naive means UTC. A
  record without a timestamp never matches a time filter. ``--limit N`` stops after N
  selected records.
- Dry run (the default) prints one line per record that would be replayed and a summary; it
  never creates a producer.
- ``--execute`` produces each selected record to its ``dlq.source.topic`` (and to its
  ``dlq.source.partition`` when present, so the key lands where the original did) with the
  original key and value bytes, the original headers minus every ``dlq.*`` header, plus
  ``dlq.replayed.from: <dlq topic>[<partition>]@<offset>``. It waits (bounded) for the
  broker's acknowledgements and exits 1 if any record was not acknowledged.
- Records without ``dlq.source.topic`` are reported and skipped (never a failure).
- A dead letter written without its value (header ``dlq.value.omitted``: it was too large for
  the DLQ) gets its key and value from the source topic, read at ``dlq.source.partition`` /
  ``dlq.source.offset`` (assign + seek, bounded by :data:`FETCH_TIMEOUT_S`), while the source
  still retains it, in dry runs too. When it no longer does (the offset is below the low
  watermark, or the record found there is not the one dead-lettered: another offset, size or
  key), the record is reported ``cannot replay ... no longer retained`` and not produced; the
  summary counts both (``values: fetched from source N, no longer retained M``, plus
  ``unreadable K`` for reads that failed or timed out) and with ``--execute`` each record not
  replayed for this counts as failed.
- Delivery is at-least-once: replaying twice replays twice (the DLQ is not modified or
  marked). A replayed event keeps its ``eventId`` only when the event carries its own;
  otherwise the service derives the fallback ``eventId`` from the message's position, and the
  replayed copy's new offset gives it a new one. A replayed event also arrives after any newer
  event for the same key, so the API may see an older state last.
- Prints positions, reasons, error texts (truncated) and counts only: never payloads, never
  configuration values (which may hold secrets).

- Every selected record is checked as the service will check it again (:class:`Revalidator`:
  decoded with the service's decoder for its ``dlq.entity``, mapped, validated against the
  API's constraints). With ``--revalidate`` a record that fails again is reported ``would
  fail again`` and skipped (counted in the summary, not a failure); without it a warning on
  stderr says how many of the selected records would bounce back to the DLQ. A
  record that cannot be checked (no entity header, the registry unreachable) is replayed
  (counted ``unchecked`` with ``--revalidate``). A record rejected by the API itself
  (``rejected``/``http``) passes these checks: only the API can say whether it would again.

Exit codes: 0 done, 1 replay or broker failure, 2 configuration or usage error.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TextIO

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import Message as KMessage
from confluent_kafka import TopicPartition as KTopicPartition

from consumer.decoder import (
    Decoder,
    GuardedRegistry,
    PlainAvroDecoder,
    RegistryAvroDecoder,
    registry_client,
)
from consumer.errors import ConfigError, DeadLetterError, RegistryUnavailable
from consumer.kafka import common_config, producer_config
from consumer.mapping import to_item
from consumer.records import Entity
from consumer.settings import Settings
from consumer.validation import validator_for

Header = tuple[str, bytes | None]

#: How long the DLQ must stay silent before we call its end reached. The local broker's high
#: watermark is unreliable (base offset of the last batch + 1), so we never compare offsets
#: with it; partition-EOF events only tell us the fetcher has reached each partition at all.
IDLE_S = 1.5
#: Upper bound on the whole scan, however busy the DLQ is.
SCAN_TIMEOUT_S = 300.0
#: Upper bound on waiting for the broker to acknowledge the replayed records.
DELIVERY_TIMEOUT_S = 30.0
#: Upper bound on fetching one omitted value from its source topic.
FETCH_TIMEOUT_S = 10.0
METADATA_TIMEOUT_S = 10.0
ERROR_CHARS = 120


class UsageError(ValueError):
    """A bad command-line value; the message names the flag and the expected form."""


def parse_time_ms(raw: str | None, flag: str) -> int | None:
    """ISO-8601 → epoch milliseconds (naive = UTC); None stays None. Raises UsageError."""
    if raw is None:
        return None
    try:
        parsed = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise UsageError(
            f"{flag} {raw!r} is not an ISO-8601 time (e.g. 2024-05-01T12:00:00Z or 2024-05-01)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """One record read from the DLQ: its own position and timestamp, and the bytes to replay."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]

    @classmethod
    def from_kafka(cls, m: KMessage) -> DeadLetterRecord:
        ts_type, ts = m.timestamp()
        raw = m.headers() or []
        pairs = raw.items() if isinstance(raw, dict) else raw
        return cls(
            topic=str(m.topic()),
            partition=int(m.partition() or 0),
            offset=int(m.offset() or 0),
            timestamp_ms=ts if ts_type != 0 and ts >= 0 else None,
            key=m.key(),
            value=m.value(),
            headers=tuple((k, v.encode() if isinstance(v, str) else v) for k, v in pairs),
        )

    @property
    def position(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` as text (None when absent or empty)."""
        found = [v for k, v in self.headers if k == name and v]
        return found[-1].decode("utf-8", "replace") if found else None

    @property
    def source_partition(self) -> int | None:
        return self.int_header("dlq.source.partition")

    @property
    def source_offset(self) -> int | None:
        return self.int_header("dlq.source.offset")

    @property
    def omitted_value_bytes(self) -> int | None:
        """The original value's size when the dead letter was written without it."""
        return self.int_header("dlq.value.omitted")

    def int_header(self, name: str) -> int | None:
        raw = self.header(name)
        return int(raw) if raw is not None and raw.isdigit() else None

    def replay_headers(self) -> list[Header]:
        """Original headers (every ``dlq.*`` dropped) plus ``dlq.replayed.from``."""
        kept = [(k, v) for k, v in self.headers if not k.startswith("dlq.")]
        return [*kept, ("dlq.replayed.from", self.position.encode())]


@dataclass(frozen=True, slots=True)
class Selection:
    """The filters of one run; :meth:`matches` is the whole selection rule."""

    reason: str | None = None
    entity: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def matches(self, r: DeadLetterRecord) -> bool:
        if self.reason is not None and r.header("dlq.reason") != self.reason:
            return False
        if self.entity is not None and r.header("dlq.entity") != self.entity:
            return False
        if self.since_ms is None and self.until_ms is None:
            return True
        if r.timestamp_ms is None:
            return False
        if self.since_ms is not None and r.timestamp_ms < self.since_ms:
            return False
        return self.until_ms is None or r.timestamp_ms < self.until_ms


def scan(
    consumer: Any, topic: str, *, idle_s: float = IDLE_S, timeout_s: float = SCAN_TIMEOUT_S
) -> Iterator[DeadLetterRecord]:
    """Every record of ``topic`` from offset 0, in per-partition order.

    Ends once every partition has reported a message or EOF and nothing has arrived for
    ``idle_s`` (see :data:`IDLE_S` for why not the high watermark). Raises KafkaException when
    the topic is missing or the broker reports a fatal error, TimeoutError past ``timeout_s``.
    """
    meta = consumer.list_topics(topic, timeout=METADATA_TIMEOUT_S).topics.get(topic)
    if meta is None or meta.error is not None:
        raise KafkaException(meta.error if meta is not None else f"no metadata for {topic}")
    partitions = sorted(meta.partitions)
    consumer.assign([KTopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    reached: set[int] = set()
    start = last = time.monotonic()
    while True:
        now = time.monotonic()
        if len(reached) == len(partitions) and now - last >= idle_s:
            return
        if now - start > timeout_s:
            raise TimeoutError(f"reading {topic} did not finish within {timeout_s:.0f}s")
        m = consumer.poll(0.2)
        if m is None:
            continue
        err = m.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                reached.add(int(m.partition() or 0))
                last = time.monotonic()
            elif err.fatal():
                raise KafkaException(err)
            else:
                print(f"warning: {topic}: {err.str()}", file=sys.stderr)
            continue
        reached.add(int(m.partition() or 0))
        yield DeadLetterRecord.from_kafka(m)
        # After the caller is done with it: time spent producing is not the topic being idle.
        last = time.monotonic()


@dataclass(frozen=True, slots=True)
class Fetched:
    """The source record of a value-less dead letter, or why it cannot be had (``problem``)."""

    key: bytes | None = None
    value: bytes | None = None
    problem: str | None = None
    #: True when the problem is that the source no longer holds the record (retention,
    #: compaction, a rewritten log); False for a read that failed or timed out.
    gone: bool = True


class SourceFetcher:
    """Reads single records of the source topics by position (assign + seek, bounded).

    ``consumer`` must have ``enable.partition.eof`` on (see :func:`scan_consumer`): the end of
    a partition reached before the offset means the record is not there.
    """

    def __init__(self, consumer: Any, *, timeout_s: float = FETCH_TIMEOUT_S) -> None:
        self._consumer = consumer
        self._timeout_s = timeout_s

    def fetch(self, r: DeadLetterRecord) -> Fetched:
        """The record ``r`` was dead-lettered from, checked to be the same one: its offset,
        its value's size (``dlq.value.omitted``) and its key (or the cut key's prefix and
        size). Never raises: a failure to read is a ``problem``."""
        topic, partition, offset = r.header("dlq.source.topic"), r.source_partition, r.source_offset
        if topic is None or partition is None or offset is None:
            return Fetched(
                problem="no dlq.source.partition/offset header to find it by", gone=False
            )
        where = f"{topic}[{partition}]@{offset}"
        try:
            low, _high = self._consumer.get_watermark_offsets(
                KTopicPartition(topic, partition), timeout=METADATA_TIMEOUT_S
            )
            if offset < low:
                return Fetched(problem=f"{where} is no longer retained (low watermark {low})")
            self._consumer.assign([KTopicPartition(topic, partition, offset)])
            return self._read(r, where, offset)
        except KafkaException as exc:
            return Fetched(problem=f"cannot read {where}: {exc}", gone=False)

    def _read(self, r: DeadLetterRecord, where: str, offset: int) -> Fetched:
        deadline = time.monotonic() + self._timeout_s
        while time.monotonic() < deadline:
            m = self._consumer.poll(0.2)
            if m is None:
                continue
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    return Fetched(problem=f"{where} is not in the source topic (end reached)")
                if err.fatal():
                    raise KafkaException(err)
                continue
            found = int(m.offset() or 0)
            if found < offset:
                continue
            if found > offset:
                return Fetched(
                    problem=f"{where} is no longer retained (the partition continues at {found})"
                )
            return self._checked(r, where, m.key(), m.value())
        return Fetched(
            problem=f"{where} could not be read within {self._timeout_s:.0f}s", gone=False
        )

    @staticmethod
    def _checked(
        r: DeadLetterRecord, where: str, key: bytes | None, value: bytes | None
    ) -> Fetched:
        size = len(value or b"")
        if r.omitted_value_bytes is not None and size != r.omitted_value_bytes:
            return Fetched(
                problem=f"{where} is no longer the dead-lettered record "
                f"(value of {size} bytes, expected {r.omitted_value_bytes})"
            )
        cut = r.int_header("dlq.key.truncated")
        same_key = (
            key == r.key
            if cut is None
            else key is not None and len(key) == cut and key.startswith(r.key or b"")
        )
        if not same_key:
            return Fetched(problem=f"{where} is no longer the dead-lettered record (other key)")
        return Fetched(key=key, value=value)


def scan_consumer(settings: Settings) -> Consumer:
    """A consumer that belongs to no real group and never commits (used with assign only)."""
    config: dict[str, Any] = {**common_config(settings)}
    config.update(
        {
            "group.id": f"metadata-consumer-dlq-replay-{uuid.uuid4().hex}",
            "client.id": "asapp-metadata-consumer-dlq-replay",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    return Consumer(config)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Would a record pass the service's checks again? ``failure`` is the reason it would
    not; ``unchecked`` says why it could not be checked (then ``failure`` is None)."""

    failure: str | None = None
    unchecked: str | None = None


class Revalidator:
    """Decode, map and validate a dead letter's value as the service would (its ``ingest``
    step, at the record's source position). Never raises for a record's content."""

    def __init__(self, decoders: dict[Entity, Decoder]) -> None:
        self._decoders = decoders

    @classmethod
    def for_settings(cls, settings: Settings) -> Revalidator:
        """The service's decoders: registry framing when ``SCHEMA_REGISTRY_URL`` is set."""
        if settings.schema_registry_url:
            client = GuardedRegistry(
                registry_client(settings.schema_registry_url, settings.schema_registry_auth)
            )
            return cls({e: RegistryAvroDecoder(e, client) for e in Entity})
        return cls({e: PlainAvroDecoder(e) for e in Entity})

    def __call__(self, r: DeadLetterRecord) -> Verdict:
        raw = r.header("dlq.entity")
        entity = next((e for e in Entity if e.value == raw), None)
        if entity is None or entity not in self._decoders:
            return Verdict(unchecked="no dlq.entity header")
        try:
            record = self._decoders[entity].decode(r.value)
            item = to_item(
                entity,
                record,
                topic=r.header("dlq.source.topic") or "",
                partition=r.source_partition or 0,
                offset=r.source_offset or 0,
            )
            reason = validator_for(entity).error(item)
        except RegistryUnavailable as exc:
            return Verdict(unchecked=f"registry unavailable: {exc}")
        except DeadLetterError as exc:  # DecodeError, ValidationError from mapping
            return Verdict(failure=f"{exc.reason}: {exc}")
        return Verdict(failure=None if reason is None else f"validation: {reason}")


def _oneline(text: str | None) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= ERROR_CHARS else flat[: ERROR_CHARS - 1] + "…"


class Replayer:
    """Produces selected records and tracks their acknowledgements (callbacks run in poll)."""

    def __init__(self, producer: Any, out: TextIO) -> None:
        self._producer = producer
        self._out = out
        self.queued = 0
        self.delivered: Counter[str] = Counter()
        self.failed = 0

    def send(self, r: DeadLetterRecord, target: str) -> None:
        def report(err: KafkaError | None, _msg: KMessage) -> None:
            if err is None:
                self.delivered[target] += 1
            else:
                self.failed += 1
                print(f"failed {r.position} → {target}: {err.str()}", file=self._out)

        kwargs: dict[str, Any] = {}
        if r.source_partition is not None:
            kwargs["partition"] = r.source_partition
        while True:
            try:
                self._producer.produce(
                    target,
                    key=r.key,
                    value=r.value,
                    headers=r.replay_headers(),
                    on_delivery=report,
                    **kwargs,
                )
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.1)
            except KafkaException as exc:
                self.failed += 1
                print(f"failed {r.position} → {target}: {exc}", file=self._out)
                return
        self.queued += 1
        self._producer.poll(0)

    def finish(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for acknowledgements; unacknowledged ones count as failed
        and are purged so the producer's teardown cannot block exit. Returns that count."""
        remaining = int(self._producer.flush(timeout_s))
        if remaining:
            self._producer.purge(in_queue=True, in_flight=True, blocking=False)
            self._producer.flush(0)
            print(f"{remaining} record(s) not acknowledged within {timeout_s:.0f}s", file=self._out)
        return remaining


def run(
    settings: Settings,
    selection: Selection,
    *,
    execute: bool,
    limit: int,
    records: Iterator[DeadLetterRecord],
    producer: Any = None,
    fetcher: SourceFetcher | None = None,
    out: TextIO = sys.stdout,
    delivery_timeout_s: float = DELIVERY_TIMEOUT_S,
    revalidator: Callable[[DeadLetterRecord], Verdict] | None = None,
    revalidate: bool = False,
    err: TextIO | None = None,
) -> int:
    """Select from ``records``, print or replay them, print the summary; returns the exit code.

    ``producer`` is required when ``execute`` is true and never touched otherwise; ``fetcher``
    reads the values of dead letters written without one (without it, such a record cannot
    be replayed and is reported so); ``revalidator`` checks each selected record and, with
    ``revalidate``, records that would fail again are skipped (module doc).
    """
    scanned = selected = skipped = fetched = gone = unreadable = 0
    bounce = unchecked = 0
    replayer = Replayer(producer, out) if execute else None
    scan_error: str | None = None
    try:
        for r in records:
            scanned += 1
            if not selection.matches(r):
                continue
            target = r.header("dlq.source.topic")
            if target is None:
                skipped += 1
                print(f"skipped {r.position}: no dlq.source.topic header", file=out)
                continue
            selected += 1
            detail = f"reason={r.header('dlq.reason')}, error={_oneline(r.header('dlq.error'))}"
            if r.omitted_value_bytes is not None:
                source = (
                    fetcher.fetch(r)
                    if fetcher is not None
                    else Fetched(problem="no source reader given", gone=False)
                )
                if source.problem is not None:
                    gone += source.gone
                    unreadable += not source.gone
                    print(
                        f"cannot replay {r.position}: its value ({r.omitted_value_bytes} bytes) "
                        f"was omitted from the DLQ and {source.problem}",
                        file=out,
                    )
                    continue
                fetched += 1
                r = replace(r, key=source.key, value=source.value)
                detail += ", value fetched from the source topic"
            verdict = revalidator(r) if revalidator is not None else None
            if verdict is not None and verdict.unchecked is not None:
                unchecked += 1
            if verdict is not None and verdict.failure is not None:
                bounce += 1
                if revalidate:
                    print(
                        f"would fail again {r.position}: {_oneline(verdict.failure)} (skipped)",
                        file=out,
                    )
                    continue
            if replayer is None:
                print(f"would replay {r.position} → {target} ({detail})", file=out)
            else:
                print(f"replaying {r.position} → {target} ({detail})", file=out)
                replayer.send(r, target)
            if limit and selected >= limit:
                print(f"stopping at --limit {limit}", file=out)
                break
    except (KafkaException, TimeoutError) as exc:
        # Still wait for and report what was already queued before failing the run.
        scan_error = f"cannot read {settings.dlq_topic}: {exc}"
        print(f"metadata-consumer dlq replay: {scan_error}", file=sys.stderr)
    head = f"{settings.dlq_topic}: scanned {scanned}, selected {selected}, skipped {skipped}"
    if fetched or gone or unreadable:
        head += f"; values: fetched from source {fetched}, no longer retained {gone}"
        head += f", unreadable {unreadable}" if unreadable else ""
    if revalidate:
        head += f"; revalidated: would fail again {bounce} (skipped)"
        head += f", unchecked {unchecked}" if unchecked else ""
    if scan_error is not None:
        head += " (incomplete: read failed)"
    if bounce and not revalidate:
        print(
            f"warning: {bounce} selected record(s) would fail the service's checks again and "
            "bounce back to the DLQ (add --revalidate to skip them)",
            file=err or sys.stderr,
        )
    if replayer is None:
        print(f"{head}; dry run, nothing produced (add --execute to replay)", file=out)
        return 1 if scan_error else 0
    unacked = replayer.finish(delivery_timeout_s)
    failed = replayer.failed + unacked + gone + unreadable
    per_topic = ", ".join(f"{t}={n}" for t, n in sorted(replayer.delivered.items())) or "none"
    print(
        f"{head}; replayed {sum(replayer.delivered.values())} ({per_topic}), failed {failed}",
        file=out,
    )
    return 1 if failed or scan_error else 0


def _selection(args: argparse.Namespace) -> Selection:
    if args.limit is not None and args.limit < 0:
        raise UsageError(f"--limit {args.limit} must be >= 0 (0: no limit)")
    since_ms = parse_time_ms(args.since, "--since")
    until_ms = parse_time_ms(args.until, "--until")
    if since_ms is not None and until_ms is not None and since_ms >= until_ms:
        raise UsageError(f"--since {args.since!r} is not before --until {args.until!r}")
    return Selection(args.reason, args.entity, since_ms, until_ms)


def main(args: argparse.Namespace) -> int:
    """Entry point of ``metadata-consumer dlq replay`` (``args`` as parsed by ``consumer.cli``)."""
    try:
        settings = Settings.from_env(require_credentials=False)
    except ConfigError as exc:
        print(f"metadata-consumer: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        selection = _selection(args)
    except UsageError as exc:
        print(f"metadata-consumer dlq replay: {exc}", file=sys.stderr)
        return 2
    if isinstance(sys.stdout, io.TextIOWrapper):
        # The report uses "→" and "…"; a non-UTF-8 terminal must not turn that into a crash.
        sys.stdout.reconfigure(errors="backslashreplace")
    consumer: Any = None
    source: Any = None
    producer: Any = None
    try:
        # All raise KafkaException on a bad KAFKA_* property (the message names it).
        consumer = scan_consumer(settings)
        source = scan_consumer(settings)
        if args.execute:
            producer = Producer(
                {**producer_config(settings), "client.id": "asapp-metadata-consumer-dlq-replay"}
            )
    except KafkaException as exc:
        print(f"metadata-consumer: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        return run(
            settings,
            selection,
            execute=bool(args.execute),
            limit=int(args.limit or 0),
            records=scan(consumer, settings.dlq_topic),
            producer=producer,
            fetcher=SourceFetcher(source),
            revalidator=Revalidator.for_settings(settings),
            revalidate=bool(getattr(args, "revalidate", False)),
        )
    finally:
        consumer.close()
        source.close()
