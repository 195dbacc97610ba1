"""``metadata-consumer produce``: API-shaped JSON Lines (or sample events) → Avro → the entity's
topic. The backfill tool.

Contract:

- Input: one JSON object per line, shaped like one item of the API's request for the entity
  (``{"externalAgentId": "agent1", "startTs": "2022-07-08T11:15:53.237Z", ...}``), from a file
  or ``-`` (stdin). Blank lines are skipped and not counted.
- Each line is checked the way the consumer will check the event: the API's own constraints
  (:func:`consumer.validation.validator_for`: unknown fields, types, patterns, lengths, enums,
  formats), then the Avro schema (:func:`consumer.avro_encode.encode_plain`: e.g. an ``int``
  beyond 32 bits). A line that fails either is reported as ``line N: <reason>`` on stderr and
  not produced; the others are.
- :func:`to_record` is the inverse of :func:`consumer.mapping.to_item`: ``startTs`` (an
  ISO-8601 string, any offset) becomes an aware UTC ``datetime`` (timestamp-millis: digits
  below the millisecond are dropped, as the consumer would drop them), ``null`` values are
  left out (the schema's default), everything else is copied. An item without ``eventId``
  gets the consumer's fallback id (``<topic>-<partition>-<offset>``) on delivery.
- Records are produced to the entity's topic (the first ``TOPIC_<ENTITY>`` name, or
  ``--topic``) keyed by the entity id (:func:`kafka_key`: the API's required id fields joined
  by ``/``), so every event of one entity lands on one partition, in file order. Plain Avro,
  or the registry framing when ``SCHEMA_REGISTRY_URL`` is set (our schema's id under
  ``<topic>-value``, registered when the subject lacks it).
- ``--generate N`` produces N sample events per entity (all three, or ``--entity``'s), which
  always pass; the generator is the sandbox's and is handed in by the CLI.
- ``--rate N`` paces the producer at N events/s at most; ``--dry-run`` checks and counts every
  line and contacts nothing (no broker, no registry).
- The cluster is asked first, within ``--timeout-s``: no answer is a clear error, a missing
  topic too (nothing produced). A progress line is drawn on stderr when it is a terminal.
- The summary goes to stdout: one line of text, or with ``--json`` one JSON object
  (:func:`summary_json`: counts per topic and every bad line with its number and reason).

Exit codes: 0 every line produced (acknowledged) or valid (dry run); 1 a line was bad or not
acknowledged, the cluster did not answer, the topic is missing or the registry refused the
schema; 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TextIO

from consumer.avro_encode import SchemaRefused, encode_confluent, encode_plain, registered_id
from consumer.errors import ConfigError, ConsumerError, ValidationError
from consumer.ingest import ID_FIELDS
from consumer.mapping import FIELDS, to_item
from consumer.records import Entity
from consumer.schemas import reader_schema
from consumer.settings import Settings
from consumer.validation import validator_for

EXIT_OK, EXIT_BAD, EXIT_USAGE = 0, 1, 2
#: Bound of the cluster and registry questions asked before producing, seconds.
DEFAULT_TIMEOUT_S = 5.0
#: Bound of waiting for the last acknowledgements, seconds.
FLUSH_TIMEOUT_S = 30.0
#: A record's reason is cut to this many characters in the report.
MAX_REASON_CHARS = 300
_PROGRESS_EVERY_S = 0.25

#: A sample generator: ``(entity, n) -> n Avro-shaped records`` (the sandbox's ``generate``).
Generator = Callable[[Entity, int], list[dict[str, Any]]]

_DATE_TIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


class UsageError(ValueError):
    """A bad command-line value; the message names the flag."""


def parse_date_time(value: str) -> datetime:
    """An RFC 3339 date-time (``2022-07-08T11:15:53.237517000Z``, any offset, any number of
    fraction digits) → aware UTC ``datetime`` (microseconds kept). Raises ValidationError."""
    match = _DATE_TIME.match(value)
    if match is None:
        raise ValidationError(f"startTs: {value[:40]!r} is not an ISO-8601 date-time")
    y, mo, d, h, mi, s, frac, _z, sign, oh, om = match.groups()
    try:
        offset = timedelta(hours=int(oh or 0), minutes=int(om or 0))
        tz = timezone(-offset if sign == "-" else offset)
        micros = int((frac or "0")[:6].ljust(6, "0"))
        parsed = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), micros, tz)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise ValidationError(f"startTs: {value[:40]!r} is out of range: {exc}") from exc


def to_record(entity: Entity, item: Mapping[str, Any]) -> dict[str, Any]:
    """The Avro record for one API item (the inverse of ``to_item``, see the module doc).
    ``item`` must already satisfy the API's schema. Raises ValidationError for a ``startTs``
    that cannot be a timestamp."""
    record: dict[str, Any] = {}
    for name in FIELDS[entity]:
        value = item.get(name)
        if value is None:
            continue
        record[name] = parse_date_time(value) if name == "startTs" else value
    return record


def kafka_key(entity: Entity, item: Mapping[str, Any]) -> bytes:
    """The record key: the API's required id fields of ``entity``, joined by ``/`` (no id
    pattern allows it), e.g. ``agent1`` or ``issue1/cust_7`` for a customer."""
    return "/".join(str(item.get(name)) for name in ID_FIELDS[entity]).encode()


@dataclass(frozen=True, slots=True)
class Prepared:
    """One event ready to produce."""

    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line (or generated record) that is not produced, and why."""

    line: int
    reason: str


class Encoder:
    """Checks and encodes the events of one entity for one topic (see the module doc).

    ``schema_id`` switches to the registry framing. Pure; raises nothing but ValidationError.
    """

    def __init__(self, entity: Entity, topic: str, schema_id: int | None = None) -> None:
        self.entity = entity
        self.topic = topic
        self._validator = validator_for(entity)
        self._schema_id = schema_id

    def _encode(self, record: Mapping[str, Any]) -> bytes:
        if self._schema_id is None:
            return encode_plain(self.entity, record)
        return encode_confluent(self._schema_id, reader_schema(self.entity), record)

    def item(self, line: int, item: Any) -> Prepared:
        """An API-shaped item (a parsed JSON line) → the event."""
        if not isinstance(item, dict):
            raise ValidationError(f"not a JSON object but {_json_type(item)}")
        reason = self._validator.error(item)
        if reason is not None:
            raise ValidationError(reason)
        return Prepared(kafka_key(self.entity, item), self._encode(to_record(self.entity, item)))

    def record(self, line: int, record: Mapping[str, Any]) -> Prepared:
        """An Avro-shaped record (a generated one) → the event, checked as the consumer will:
        mapped (at a stand-in position) and validated."""
        item = to_item(self.entity, record, topic=self.topic, partition=0, offset=line)
        reason = self._validator.error(item)
        if reason is not None:
            raise ValidationError(reason)
        return Prepared(kafka_key(self.entity, item), self._encode(record))


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def json_lines(stream: Iterable[str]) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` per non-blank line; a line that is not JSON yields a
    :class:`BadLine` as its value."""
    for number, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            yield number, json.loads(text)
        except ValueError as exc:
            yield number, BadLine(number, f"not JSON: {exc}")


class Pacer:
    """At most ``rate`` events per second (None: no limit), from the first :meth:`wait` on.
    ``clock`` and ``sleep`` are injectable for tests."""

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._rate = rate
        self._clock = clock
        self._sleep = sleep
        self._start: float | None = None
        self._sent = 0

    def wait(self) -> None:
        """Return when the next event may go."""
        if self._rate is None:
            return
        now = self._clock()
        if self._start is None:
            self._start = now
        due = self._start + self._sent / self._rate
        if due > now:
            self._sleep(due - now)
        self._sent += 1


class Sink:
    """Where prepared events go: the cluster (an :class:`consumer.kafka.EventProducer`), or
    nowhere in a dry run (``producer`` None)."""

    def __init__(self, producer: Any | None) -> None:
        self.producer = producer

    def send(self, topic: str, event: Prepared) -> None:
        if self.producer is not None:
            self.producer.produce(topic, event.key, event.value)


@dataclass(slots=True)
class Tally:
    """Counts of one run, per topic."""

    lines: int = 0
    sent: dict[str, int] = field(default_factory=dict)
    bad: list[BadLine] = field(default_factory=list)


class Progress:
    """One progress line on ``out``, redrawn at most every 0.25 s, only when ``out`` is a
    terminal (never in a pipe or a log)."""

    def __init__(self, out: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self._out = out
        self._on = bool(getattr(out, "isatty", lambda: False)())
        self._clock = clock
        self._start = clock()
        self._last = 0.0

    def update(self, tally: Tally, *, final: bool = False) -> None:
        if not self._on:
            return
        now = self._clock()
        if not final and now - self._last < _PROGRESS_EVERY_S:
            return
        self._last = now
        sent = sum(tally.sent.values())
        rate = sent / max(now - self._start, 1e-9)
        line = f"\r{tally.lines} lines, {sent} queued, {len(tally.bad)} bad, {rate:,.0f}/s"
        self._out.write(line + ("\n" if final else ""))
        self._out.flush()


def run(
    sources: Iterable[tuple[Encoder, Iterable[tuple[int, Any]], bool]],
    sink: Sink,
    *,
    pacer: Pacer,
    err: TextIO,
    progress: Progress,
) -> Tally:
    """Check, encode and send every event of ``sources`` (``(encoder, (number, value) pairs,
    is_json)``; JSON values are API items, others Avro records); each bad one is reported on
    ``err`` as ``line N: reason`` (``record N`` for generated ones)."""
    tally = Tally()
    for encoder, values, is_json in sources:
        tally.sent.setdefault(encoder.topic, 0)
        what = "line" if is_json else "record"
        for number, value in values:
            tally.lines += 1
            try:
                if isinstance(value, BadLine):
                    raise ValidationError(value.reason)
                event = encoder.item(number, value) if is_json else encoder.record(number, value)
                pacer.wait()
                sink.send(encoder.topic, event)
            except ConsumerError as exc:  # ValidationError, or BrokerError for one record
                reason = " ".join(str(exc).split())[:MAX_REASON_CHARS]
                tally.bad.append(BadLine(number, reason))
                print(f"{what} {number}: {reason}", file=err)
            else:
                tally.sent[encoder.topic] += 1
            progress.update(tally)
    progress.update(tally, final=True)
    return tally


def _settings(dry_run: bool) -> Settings:
    env = dict(os.environ)
    if dry_run and not env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip():
        env["KAFKA_BOOTSTRAP_SERVERS"] = "unused-in-a-dry-run:9092"
    return Settings.from_env(env, require_credentials=False)


def _check_args(args: argparse.Namespace) -> None:
    if args.rate is not None and not args.rate > 0:
        raise UsageError(f"--rate {args.rate:g} must be > 0 (events per second)")
    if args.generate is not None:
        if args.generate < 0:
            raise UsageError(f"--generate {args.generate} must be >= 0")
        if args.file is not None:
            raise UsageError("give a FILE or --generate N, not both")
        if args.topic is not None and args.entity is None:
            raise UsageError("--topic needs --entity with --generate (one topic per entity)")
    elif args.file is None or args.entity is None:
        raise UsageError("give --entity and a FILE (- for stdin), or --generate N")
    if args.timeout_s <= 0:
        raise UsageError(f"--timeout-s {args.timeout_s:g} must be > 0")


def _summary(tally: Tally, *, dry_run: bool, unacked: int, elapsed_s: float) -> str:
    sent = sum(tally.sent.values())
    topics = ", ".join(f"{t}={n}" for t, n in tally.sent.items()) or "none"
    head = f"{tally.lines} read, {len(tally.bad)} bad"
    if dry_run:
        return f"dry run: {head}, {sent} valid ({topics}); nothing produced"
    rate = sent / elapsed_s if elapsed_s > 0 else 0.0
    tail = f", {unacked} not acknowledged" if unacked else ""
    return f"produced {sent - unacked} ({topics}); {head}{tail}; {elapsed_s:.1f}s, {rate:,.0f}/s"


def summary_json(tally: Tally, *, dry_run: bool, unacked: int, elapsed_s: float) -> dict[str, Any]:
    """``produce --json``'s summary: ``read`` (lines or records), ``produced`` (acknowledged;
    0 in a dry run), ``valid`` (would be produced), ``per_topic`` (sent or valid per topic),
    ``bad`` (``[{"line", "reason"}]``), ``not_acknowledged``, ``dry_run``, ``elapsed_s``."""
    sent = sum(tally.sent.values())
    return {
        "dry_run": dry_run,
        "read": tally.lines,
        "produced": 0 if dry_run else sent - unacked,
        "valid": sent,
        "per_topic": dict(tally.sent),
        "bad": [{"line": b.line, "reason": b.reason} for b in tally.bad],
        "not_acknowledged": unacked,
        "elapsed_s": round(elapsed_s, 3),
    }


def main(args: argparse.Namespace, *, generator: Generator | None = None) -> int:
    """Entry point of ``metadata-consumer produce`` (``args`` as parsed by ``consumer.cli``;
    ``generator`` is required with ``--generate``)."""
    from consumer.decoder import registry_client
    from consumer.kafka import EventProducer, event_producer_config

    prog = "metadata-consumer produce"
    try:
        _check_args(args)
        settings = _settings(bool(args.dry_run))
    except UsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    entities = [Entity(args.entity)] if args.entity else list(Entity)
    topics = {e: args.topic or settings.topics[e][0] for e in entities}
    stream: TextIO | None = None
    producer: Any = None
    try:
        if not args.dry_run:
            producer = EventProducer(event_producer_config(settings), timeout_s=args.timeout_s)
            for topic in topics.values():
                if producer.partitions(topic) == 0:
                    print(
                        f"{prog}: topic {topic} does not exist (nothing produced)", file=sys.stderr
                    )
                    return EXIT_BAD
        schema_ids: dict[Entity, int | None] = dict.fromkeys(entities)
        if settings.schema_registry_url:
            client: Any = None
            if not args.dry_run:
                client = registry_client(
                    settings.schema_registry_url,
                    settings.schema_registry_auth,
                    timeout_s=args.timeout_s,
                    max_retries=0,
                )
            for e in entities:
                schema_ids[e] = 0 if client is None else registered_id(client, e, topics[e])
        if args.generate is not None:
            if generator is None:
                raise UsageError("--generate needs the sandbox's sample generator")
            n = int(args.generate)
            sources: list[tuple[Encoder, Iterable[tuple[int, Any]], bool]] = [
                (Encoder(e, topics[e], schema_ids[e]), enumerate(generator(e, n), 1), False)
                for e in entities
            ]
        else:
            entity = entities[0]
            # errors="replace": an undecodable byte is a JSON error on its line, not a crash
            stream = (
                sys.stdin
                if args.file == "-"
                else open(args.file, encoding="utf-8", errors="replace")  # noqa: SIM115
            )
            sources = [
                (Encoder(entity, topics[entity], schema_ids[entity]), json_lines(stream), True)
            ]
        started = time.monotonic()
        tally = run(
            sources,
            Sink(producer),
            pacer=Pacer(args.rate),
            err=sys.stderr,
            progress=Progress(sys.stderr),
        )
        unacked = 0
        if producer is not None:
            producer.flush(FLUSH_TIMEOUT_S)
            unacked = producer.failed
            for error in producer.errors:
                print(f"{prog}: not acknowledged: {error}", file=sys.stderr)
        elapsed = time.monotonic() - started
        if getattr(args, "json", False):
            report = summary_json(
                tally, dry_run=bool(args.dry_run), unacked=unacked, elapsed_s=elapsed
            )
            print(json.dumps(report))
        else:
            print(_summary(tally, dry_run=bool(args.dry_run), unacked=unacked, elapsed_s=elapsed))
        return EXIT_BAD if tally.bad or unacked else EXIT_OK
    except UsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"{prog}: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except SchemaRefused as exc:
        print(f"{prog}: {exc} (nothing produced)", file=sys.stderr)
        return EXIT_BAD
    except ConfigError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConsumerError as exc:  # BrokerError (no cluster), RegistryUnavailable
        print(f"{prog}: {exc} (nothing produced)", file=sys.stderr)
        return EXIT_BAD
    finally:
        if stream is not None and stream is not sys.stdin:
            stream.close()
