"""``metadata-consumer dlq inspect``: what is in the dead-letter topic, and why.

Contract:

- Reads ``DLQ_TOPIC`` with the reader of ``dlq replay`` (:func:`consumer.replay.scan`): every
  partition from offset 0 with ``assign()`` and a throwaway group, nothing committed, ending
  once every partition reported its end and nothing new arrived for a moment (the local
  broker's high watermark is unreliable, see :data:`consumer.replay.IDLE_S`). Read only.
- Selects by ``--reason`` / ``--entity`` (the ``dlq.reason`` / ``dlq.entity`` headers) and by
  ``--since`` (inclusive) / ``--until`` (exclusive) against the dead letter's own timestamp:
  ISO-8601 (naive = UTC) or relative to now (``90s``, ``30m``, ``2h``, ``7d``, ``1w``).
- Counts the selected dead letters by reason, entity and error class (:func:`error_class`:
  the API's code such as ``FAIL_BAD_PARAMS``, an exception name, or the error's first words),
  and gives the time range of what was selected.
- ``--samples N`` shows the first N selected records: position, time, key, every header, and
  the payload decoded with the service's own decoder for its entity (plain Avro, or the
  registry's framing when ``SCHEMA_REGISTRY_URL`` is set) or why it does not decode. This
  prints payloads: it is an operator's tool, run where the data may be seen.
- ``--json`` prints the same as one JSON document.

Exit codes: 0 done (also when the DLQ is empty), 1 the DLQ could not be read, 2 configuration
or usage error.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

from consumer.decoder import (
    Decoder,
    GuardedRegistry,
    PlainAvroDecoder,
    RegistryAvroDecoder,
    registry_client,
)
from consumer.errors import ConfigError, ConsumerError
from consumer.records import Entity
from consumer.replay import (
    DeadLetterRecord,
    Selection,
    UsageError,
    parse_time_ms,
    scan,
    scan_consumer,
)
from consumer.settings import Settings

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_CODE = re.compile(r"^([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)\b")
_NAME = re.compile(r"^([A-Za-z_][\w.]{0,60}):")


def parse_when(raw: str | None, flag: str, *, now_ms: int | None = None) -> int | None:
    """``--since`` / ``--until`` → epoch ms: ISO-8601 (naive = UTC) or ``<number><s|m|h|d|w>``
    before ``now_ms`` (default: now). None stays None; raises UsageError naming ``flag``."""
    if raw is None:
        return None
    match = _RELATIVE.match(raw)
    if match:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return now - int(float(match.group(1)) * _UNIT_S[match.group(2)] * 1000)
    try:
        return parse_time_ms(raw, flag)
    except UsageError:
        raise UsageError(
            f"{flag} {raw!r} is neither an ISO-8601 time (2024-05-01T12:00:00Z) nor a relative "
            "one (30m, 2h, 7d)"
        ) from None


def error_class(error: str | None) -> str:
    """A bounded label for an error text: the API's error code (``FAIL_BAD_PARAMS: ...`` →
    ``FAIL_BAD_PARAMS``), else a leading name before a colon (``DecodeError: ...`` →
    ``DecodeError``), else the first three words with digits as ``N``; ``(none)`` if empty."""
    text = " ".join((error or "").split())
    if not text:
        return "(none)"
    for pattern in (_CODE, _NAME):
        match = pattern.match(text)
        if match:
            return match.group(1)
    return re.sub(r"\d+", "N", " ".join(text.split(" ")[:3]))


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "backslashreplace")


class Report:
    """Counts and samples of the selected dead letters (fed one record at a time)."""

    def __init__(self, topic: str, samples: int, decoders: dict[Entity, Decoder]) -> None:
        self.topic = topic
        self.scanned = 0
        self.by_reason: Counter[str] = Counter()
        self.by_entity: Counter[str] = Counter()
        self.by_error_class: Counter[str] = Counter()
        self.first_ms: int | None = None
        self.last_ms: int | None = None
        self.samples: list[dict[str, Any]] = []
        self.error: str | None = None
        self._want = samples
        self._decoders = decoders

    @property
    def matched(self) -> int:
        return sum(self.by_reason.values())

    def add(self, r: DeadLetterRecord) -> None:
        self.by_reason[r.header("dlq.reason") or "(none)"] += 1
        self.by_entity[r.header("dlq.entity") or "(none)"] += 1
        self.by_error_class[error_class(r.header("dlq.error"))] += 1
        if r.timestamp_ms is not None:
            ts = r.timestamp_ms
            self.first_ms = ts if self.first_ms is None else min(self.first_ms, ts)
            self.last_ms = ts if self.last_ms is None else max(self.last_ms, ts)
        if len(self.samples) < self._want:
            self.samples.append(self._sample(r))

    def _sample(self, r: DeadLetterRecord) -> dict[str, Any]:
        payload: Any = None
        problem: str | None = None
        entity = next((e for e in Entity if e.value == r.header("dlq.entity")), None)
        if r.omitted_value_bytes is not None:
            problem = f"value omitted from the DLQ ({r.omitted_value_bytes} bytes)"
        elif entity is None or entity not in self._decoders:
            problem = "no decoder: dlq.entity header missing or entity not configured"
        else:
            try:
                payload = self._decoders[entity].decode(r.value)
            except ConsumerError as exc:
                problem = f"does not decode: {type(exc).__name__}: {exc}"
        return {
            "position": r.position,
            "timestamp": _iso(r.timestamp_ms),
            "key": _text(r.key),
            "headers": [[k, _text(v)] for k, v in r.headers],
            "payload": payload,
            "payload_problem": problem,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "scanned": self.scanned,
            "matched": self.matched,
            "first": _iso(self.first_ms),
            "last": _iso(self.last_ms),
            "by_reason": dict(self.by_reason.most_common()),
            "by_entity": dict(self.by_entity.most_common()),
            "by_error_class": dict(self.by_error_class.most_common()),
            "samples": self.samples,
            "error": self.error,
        }

    def text(self) -> str:
        span = ""
        if self.first_ms is not None:
            span = f", {_iso(self.first_ms)} .. {_iso(self.last_ms)}"
        lines = [f"{self.topic}: {self.matched} dead letter(s) selected of {self.scanned}{span}"]
        for title, counts in (
            ("reason", self.by_reason),
            ("entity", self.by_entity),
            ("error class", self.by_error_class),
        ):
            if counts:
                lines.append(f"by {title}:")
                lines += [f"  {n:>8}  {name}" for name, n in counts.most_common()]
        for s in self.samples:
            lines.append(f"sample {s['position']} at {s['timestamp']} key={s['key']!r}")
            lines += [f"  header {k}: {v}" for k, v in s["headers"]]
            if s["payload_problem"] is None:
                lines.append("  payload: " + json.dumps(s["payload"], default=str))
            else:
                lines.append(f"  payload: ({s['payload_problem']})")
        if self.error:
            lines.append(f"incomplete: {self.error}")
        return "\n".join(lines)


def inspect(records: Iterable[DeadLetterRecord], selection: Selection, report: Report) -> Report:
    """Feed every record of ``records`` that ``selection`` matches into ``report``; a read
    failure ends the scan early and is kept in ``report.error``."""
    try:
        for r in records:
            report.scanned += 1
            if selection.matches(r):
                report.add(r)
    except Exception as exc:  # KafkaException or TimeoutError from the scan: reported
        report.error = f"cannot read {report.topic}: {exc}"
    return report


def _decoders(settings: Settings) -> dict[Entity, Decoder]:
    if settings.schema_registry_url:
        client = GuardedRegistry(
            registry_client(settings.schema_registry_url, settings.schema_registry_auth)
        )
        return {e: RegistryAvroDecoder(e, client) for e in Entity}
    return {e: PlainAvroDecoder(e) for e in Entity}


def _selection(args: argparse.Namespace) -> Selection:
    if args.samples < 0:
        raise UsageError(f"--samples {args.samples} must be >= 0")
    now_ms = int(time.time() * 1000)
    since_ms = parse_when(args.since, "--since", now_ms=now_ms)
    until_ms = parse_when(args.until, "--until", now_ms=now_ms)
    if since_ms is not None and until_ms is not None and since_ms >= until_ms:
        raise UsageError(f"--since {args.since!r} is not before --until {args.until!r}")
    return Selection(args.reason, args.entity, since_ms, until_ms)


def main(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Entry point of ``metadata-consumer dlq inspect`` (``args`` as parsed by ``consumer.cli``)."""
    try:
        settings = Settings.from_env(require_credentials=False)
        selection = _selection(args)
    except ConfigError as exc:
        print(f"metadata-consumer: configuration error: {exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"metadata-consumer dlq inspect: {exc}", file=sys.stderr)
        return 2
    try:
        consumer = scan_consumer(settings)
    except Exception as exc:  # KafkaException: librdkafka refused a KAFKA_* property
        print(f"metadata-consumer: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        decoders = _decoders(settings) if args.samples else {}
        report = Report(settings.dlq_topic, args.samples, decoders)
        inspect(scan(consumer, settings.dlq_topic), selection, report)
    finally:
        consumer.close()
    text = json.dumps(report.as_dict(), indent=2, default=str) if args.json else report.text()
    print(text, file=out)
    if report.error:
        print(f"metadata-consumer dlq inspect: {report.error}", file=sys.stderr)
        return 1
    return 0
