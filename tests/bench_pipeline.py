"""The pipeline benchmark's data, its bare-loop ceiling and its table (``make bench``).

The data is the performance issue's: agent events of 22 fields each (every field set, unicode
names), about 562 bytes of plain Avro, produced on 3 partitions. :func:`records` builds them,
:func:`produce` writes them (with the producer's own timestamps, so end-to-end latency can be
read from the API's receipts).

The ceiling is the cheapest loop that does the same work without the service: consume →
fastavro → map → orjson, no HTTP, no commits, one thread. ``python tests/bench_pipeline.py
ceiling BOOTSTRAP TOPIC N`` runs it in a process of its own and prints one JSON line (events/s,
CPU seconds, peak RSS), so its figures are not mixed with the producer's or the test's.

:func:`table` prints the rows of the integration benchmark (tests/integration/test_bench.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro
import orjson
from confluent_kafka import Consumer, Producer

from consumer.mapping import to_item
from consumer.records import Entity
from consumer.schemas import reader_schema

_NAMES = ("José", "Zoë", "Łukasz", "Søren", "Ana-Lucía", "Jürgen", "Chloé", "Ömer", "Renée")
_LAST = ("Müller", "García-Peña", "Nørgaard", "Kowalczyk", "Dubois", "Çelik", "Šimůnek")
_LOCATIONS = ("São Paulo", "Zürich", "Kraków", "Montréal", "Malmö", "Reykjavík")
_GROUPS = ("Équipe Facturation", "Servicio Técnico", "Kundenservice Süd", "Støtte Nord")
_BIO = (
    "spricht fließend Deutsch und Français, schätzt ruhige Schichten",
    "habla español y português, prefiere turnos de mañana",
    "parle français et italiano, aime les dossiers complexes",
)
_SKILLS = "Facturación, résolution de problèmes, Kündigungsschutz, Beschwerden"
_EPOCH = datetime(2020, 1, 1, tzinfo=UTC)


def record(i: int) -> dict[str, Any]:
    """Agent event ``i``: every one of the schema's 22 fields set, valid for the API."""
    rng = random.Random(i)
    first, last = rng.choice(_NAMES), rng.choice(_LAST)
    sup_first, sup_last = rng.choice(_NAMES), rng.choice(_LAST)
    return {
        "externalAgentId": f"agent-{i:08d}",
        "eventId": f"bench-{i:08d}-{rng.getrandbits(32):08x}",
        "startTs": _EPOCH + timedelta(milliseconds=rng.randrange(5 * 365 * 86_400_000)),
        "lobId": str(rng.randint(100, 9999)),
        "lobName": rng.choice(("manufacturing", "retail", "telecom", "banking")),
        "groupId": f"group{rng.randint(1, 99)}",
        "groupName": rng.choice(_GROUPS),
        "agentName": f"{first} {last}",
        "agentLocation": rng.choice(_LOCATIONS),
        "supervisorId": str(rng.randint(3000, 3999)),
        "supervisorName": f"{sup_first} {sup_last}",
        "languages": rng.sample(("en-US", "es-US", "fr-CA", "de-DE", "pt-BR"), 3),
        "concurrency": rng.randint(1, 6),
        "categoryLabel": rng.choice(("Tier-1-Service", "Tier-2-Escalation", "Billing")),
        "accountAccessLevel": rng.choice(("Standard", "High-Profile", "Supervisor")),
        "ranking": rng.randint(0, 100),
        "vendor": rng.choice(("Acme BPO", "In-house", "GlobalServe")),
        "jobTitle": rng.choice(("Customer-Service", "Booking-Manager", "Tech-Agent")),
        "jobRole": rng.choice(("support", "booking", "technical")),
        "workShift": rng.choice(("morning", "afternoon", "night")),
        "emailAddress": f"agent.{i}.{rng.getrandbits(24):06x}@example.com",
        "attributes": [
            {"name": "région", "value": rng.choice(("Île-de-France", "Bayern", "Sjælland"))},
            {"name": "tenure_band", "value": rng.choice(("0-1y", "1-3y", "3y+"))},
            {"name": "notes", "value": f"Prefers {rng.choice(_LOCATIONS)} desk, ✓ certified"},
            {
                "name": "skills",
                "value": "Facturación, résolution de problèmes, Kündigungsschutz, Beschwerden",
            },
            {"name": "bio", "value": f"{first} {last} — {rng.choice(_GROUPS)}, {_BIO[i % 3]}"},
            {"name": "timezone", "value": rng.choice(("Europe/Zürich", "America/São_Paulo"))},
        ],
    }


def encode(rec: Mapping[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, reader_schema(Entity.AGENT), dict(rec))
    return buf.getvalue()


def values(n: int, start: int = 0) -> list[bytes]:
    """The encoded events ``start .. start + n - 1``."""
    return [encode(record(i)) for i in range(start, start + n)]


def produce(
    bootstrap: str,
    topic: str,
    payloads: Sequence[bytes],
    *,
    rate_per_s: float | None = None,
) -> dict[tuple[int, int], int]:
    """Write ``payloads`` round-robin over the partitions (at ``rate_per_s`` when given);
    returns the end offset of every partition written."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.num.messages": 10000}
    )
    ends: dict[tuple[int, int], int] = {}

    def report(err: Any, msg: Any) -> None:
        assert err is None, err
        key = (0, msg.partition())
        ends[key] = max(ends.get(key, 0), msg.offset() + 1)

    started = time.monotonic()
    for i, value in enumerate(payloads):
        if rate_per_s is not None:
            lag = started + i / rate_per_s - time.monotonic()
            if lag > 0:
                time.sleep(lag)
        while True:
            try:
                producer.produce(topic, key=f"k{i}".encode(), value=value, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0
    return {p: end for (_, p), end in ends.items()}


def ceiling(bootstrap: str, topic: str, n: int) -> dict[str, float]:
    """Consume ``n`` events of ``topic`` from the start and do the ingest work on each (decode,
    map, serialise) in one thread, as fast as it goes. CPU time is this process's."""
    schema = reader_schema(Entity.AGENT)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"ceiling-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    reader = fastavro.schemaless_reader
    seen = 0
    out = 0
    started = cpu0 = None
    while seen < n:
        batch = consumer.consume(1000, 1.0)
        if not batch:
            continue
        if started is None:
            started, cpu0 = time.monotonic(), time.process_time()
        for m in batch:
            if m.error() is not None:
                continue
            rec = reader(io.BytesIO(m.value()), schema, None)
            item = to_item(
                Entity.AGENT, rec, topic=topic, partition=m.partition(), offset=m.offset()
            )
            out += len(orjson.dumps(item))
            seen += 1
    assert started is not None and cpu0 is not None
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu0
    consumer.close()
    return {"events": seen, "seconds": elapsed, "cpu_s": cpu, "rss_mib": peak_rss_mib(os.getpid())}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (and its reaped children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return int(next(ln for ln in status if ln.startswith("VmHWM")).split()[1]) / 1024


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (the service's ingest workers)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def tree_cpu_seconds(pid: int) -> float:
    """:func:`cpu_seconds` of ``pid`` plus its live children's."""
    total = cpu_seconds(pid)
    for child in children(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(child)
    return total


def tree_peak_rss_mib(pid: int) -> float:
    """Peak RSS of ``pid`` plus each live child's peak (an upper bound of the tree's)."""
    total = peak_rss_mib(pid)
    for child in children(pid):
        with contextlib.suppress(OSError, StopIteration):
            total += peak_rss_mib(child)
    return total


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


COLUMNS = (
    "pipeline",
    "drain ev/s",
    "CPU s/100k",
    "peak RSS MiB",
    "items/req",
    "p99 steady s",
    "ev/s ÷ ceil",
    "CPU ÷ ceil",
)


def table(rows: Sequence[Mapping[str, Any]], out: Callable[[str], None] = print) -> None:
    """Print ``rows`` (name, events_per_s, cpu_per_100k, rss_mib, items_per_request, p99_s)
    with their ratios to the first row, the ceiling."""
    ceil = rows[0]

    def cell(value: Any, fmt: str) -> str:
        return "—" if value is None else format(value, fmt)

    lines = [COLUMNS]
    for r in rows:
        lines.append(
            (
                r["name"],
                cell(r.get("events_per_s"), ",.0f"),
                cell(r.get("cpu_per_100k"), ".2f"),
                cell(r.get("rss_mib"), ".0f"),
                cell(r.get("items_per_request"), ".0f"),
                cell(r.get("p99_s"), ".3f"),
                cell(r["events_per_s"] / ceil["events_per_s"], ".2f"),
                cell(r["cpu_per_100k"] / ceil["cpu_per_100k"], ".2f"),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    out("")
    for k, line in enumerate(lines):
        out("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if k == 0:
            out("|" + "|".join("-" * (w + 2) for w in widths) + "|")


#: Profile categories: the innermost frame matching one of these (substring of the frame)
#: names the sample's category. Order matters only within one frame.
_CATEGORIES = (
    ("prometheus_client", "metrics"),
    ("accept (<string>", "fast accept (validation.py)"),
    ("read (<string>", "Avro decode"),  # the decoder's fast reader
    ("__eq__ (<string>", "value objects (records.py)"),  # dataclass-generated methods
    ("__hash__ (<string>", "value objects (records.py)"),
    ("__init__ (<string>", "value objects (records.py)"),
    ("(<string>", "JSON Schema (fastjsonschema)"),
    ("fastjsonschema", "JSON Schema (fastjsonschema)"),
    ("consumer/validation.py", "validation.py (+ orjson)"),
    ("fastavro", "Avro decode"),
    ("consumer/decoder.py", "Avro decode"),
    ("consumer/mapping.py", "mapping"),
    ("consumer/records.py", "value objects (records.py)"),
    ("dataclasses", "value objects (records.py)"),
    ("consumer/offsets.py", "offset tracking"),
    ("to_message", "consume + wrap (kafka.py)"),
    ("consumer/kafka.py", "consume + wrap (kafka.py)"),
    ("consumer/dispatch.py", "dispatch + batching"),
    ("consumer/batcher.py", "dispatch + batching"),
    ("_complete", "completions"),
    ("_drain_completions", "completions"),
    ("consumer/ingest.py", "ingest step (own lines)"),
    ("consumer/pipeline.py", "loop (own lines)"),
)


def breakdown(path: str) -> dict[str, dict[str, int]]:
    """Samples per thread, per category, of a py-spy ``--format raw --threads`` file."""
    out: dict[str, dict[str, int]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1]
        thread = "poll loop" if thread == "MainThread" else thread.rstrip("0123456789_-")
        category = "other"
        for frame in reversed(frames[1:]):
            if frame.startswith("_A") and "(<string>" in frame:  # the accept's array loops
                hit: str | None = "fast accept (validation.py)"
            else:
                hit = next((c for key, c in _CATEGORIES if key in frame), None)
            if hit is not None:
                category = hit
                break
        per = out.setdefault(thread, {})
        per[category] = per.get(category, 0) + int(count)
    return out


def print_breakdown(path: str) -> None:
    data = breakdown(path)
    total = sum(sum(v.values()) for v in data.values())
    for thread, per in sorted(data.items(), key=lambda kv: -sum(kv[1].values())):
        n = sum(per.values())
        print(f"{thread}: {n} samples, {100 * n / total:.0f} % of all")
        if n < total / 20:
            continue
        for category, k in sorted(per.items(), key=lambda kv: -kv[1]):
            print(f"    {100 * k / n:5.1f} %  {category}")


def main(argv: Sequence[str]) -> int:
    if len(argv) == 4 and argv[0] == "ceiling":
        print(json.dumps(ceiling(argv[1], argv[2], int(argv[3]))))
        return 0
    if len(argv) == 2 and argv[0] == "breakdown":
        print_breakdown(argv[1])
        return 0
    print("usage: bench_pipeline.py ceiling BOOTSTRAP TOPIC N | breakdown FILE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
