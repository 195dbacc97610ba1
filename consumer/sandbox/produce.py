"""Produce sample events to the entity topics (demo, tests, ``metadata-consumer produce-samples``).

Never imported by the service.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from consumer.errors import ConsumerError
from consumer.kafka import EventProducer
from consumer.records import Entity
from consumer.sandbox.events import encode_confluent, encode_plain, generate
from consumer.schemas import reader_schema, schema_text
from consumer.settings import DEFAULT_TOPICS


def create_topics(
    bootstrap: str, topics: Sequence[str], *, partitions: int = 3, timeout_s: float = 15.0
) -> None:
    """Create ``topics`` (existing ones are fine)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics],
        request_timeout=timeout_s,
    )
    for topic, fut in futures.items():
        try:
            fut.result(timeout=timeout_s)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc):
                raise RuntimeError(f"cannot create topic {topic}: {exc}") from exc


def bad_value(rng: random.Random, entity: Entity, i: int, confluent_id: int | None) -> bytes:
    """A message that can never succeed: garbage bytes, or an event breaking the API's rules."""
    if i % 2 == 0:
        return (
            b"\x00\x00" if confluent_id is not None else bytes(rng.randrange(256) for _ in range(7))
        )
    record = generate(entity, 1, seed=rng.randrange(1 << 30))[0]
    id_field = "externalAgentId" if entity is Entity.AGENT else "externalConversationId"
    record[id_field] = "has spaces/and slashes!"  # breaks the id pattern: pre-flight rejects it
    if confluent_id is not None:
        return encode_confluent(confluent_id, reader_schema(entity), record)
    return encode_plain(entity, record)


@dataclass(slots=True)
class Produced:
    """What was produced: per topic, how many good and bad messages."""

    good: dict[str, int] = field(default_factory=dict)
    bad: dict[str, int] = field(default_factory=dict)
    #: ``topic[partition]`` → one past the last acknowledged offset. Taken from the delivery
    #: reports because the local broker's high watermark is unreliable (it reports the base
    #: offset of the last record batch + 1).
    end_offsets: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.good.values()) + sum(self.bad.values())


def produce_events(
    bootstrap: str,
    *,
    count: int,
    topics: Mapping[Entity, str] | None = None,
    schema_ids: Mapping[Entity, int] | None = None,
    bad_every: int = 0,
    seed: int = 7,
    start: int = 0,
) -> Produced:
    """Produce ``count`` events per entity (every ``bad_every``-th one bad), keyed by entity id.

    ``schema_ids`` switches to the Confluent wire format with those registry ids.
    """
    topics = topics or DEFAULT_TOPICS
    rng = random.Random(seed)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    out = Produced()
    errors: list[str] = []

    def delivered(err: object, msg: object) -> None:
        if err is not None:
            errors.append(str(err))
            return
        key = f"{msg.topic()}[{msg.partition()}]"  # type: ignore[attr-defined]
        out.end_offsets[key] = max(out.end_offsets.get(key, 0), msg.offset() + 1)  # type: ignore[attr-defined]

    for entity, topic in topics.items():
        sid = schema_ids.get(entity) if schema_ids else None
        good = bad = 0
        for i, record in enumerate(generate(entity, count, seed=seed, start=start)):
            if bad_every and i % bad_every == bad_every - 1:
                value = bad_value(rng, entity, bad, sid)
                bad += 1
            else:
                schema = reader_schema(entity)
                value = (
                    encode_confluent(sid, schema, record)
                    if sid is not None
                    else encode_plain(entity, record)
                )
                good += 1
            key = str(
                record.get("externalAgentId") or record.get("externalConversationId") or i
            ).encode()
            while True:
                try:
                    producer.produce(topic, key=key, value=value, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
        out.good[topic] = good
        out.bad[topic] = bad
    remaining = producer.flush(30)
    if remaining or errors:
        raise RuntimeError(
            f"{remaining + len(errors)} sample events were not acknowledged by the broker: "
            f"{errors[:3]}"
        )
    return out


def register_schemas(registry_url: str) -> dict[Entity, int]:
    """Register our schemas under ``<topic>-value`` subjects; returns the ids."""
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    client = SchemaRegistryClient({"url": registry_url})
    return {
        e: client.register_schema(f"{DEFAULT_TOPICS[e]}-value", Schema(schema_text(e), "AVRO"))
        for e in Entity
    }


def _non_negative(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


#: How long ``produce-samples`` waits for the cluster to answer before giving up, seconds.
REACH_TIMEOUT_S = 5.0


def main(argv: Sequence[str]) -> int:
    """``metadata-consumer produce-samples`` (``produce --generate`` with flags instead of the
    environment). Exit codes: 0 produced, 1 the broker did not answer or did not acknowledge,
    2 usage error (a negative ``--count``...)."""
    parser = argparse.ArgumentParser(
        prog="metadata-consumer produce-samples",
        description="Produce realistic sample events to the default entity topics.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n  metadata-consumer produce-samples --bootstrap-servers 127.0.0.1:9092 "
            "--count 100 --create-topics\n\nexit codes:\n  0  produced\n"
            "  1  the broker did not answer or acknowledge\n  2  usage error"
        ),
    )
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--count", type=_non_negative, default=1000, help="events per entity")
    parser.add_argument("--schema-registry-url", help="Confluent wire format via this registry")
    parser.add_argument("--bad-every", type=_non_negative, default=0)
    parser.add_argument("--create-topics", action="store_true")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    prog = parser.prog
    try:
        probe = EventProducer(
            {"bootstrap.servers": args.bootstrap_servers}, timeout_s=REACH_TIMEOUT_S
        )
        probe.partitions(DEFAULT_TOPICS[Entity.AGENT])  # raises BrokerError within the bound
        probe.flush(0)
    except ConsumerError as exc:
        print(f"{prog}: {exc} (nothing produced)", file=sys.stderr)
        return 1
    try:
        if args.create_topics:
            create_topics(args.bootstrap_servers, [*DEFAULT_TOPICS.values(), "asapp.metadata.dlq"])
        ids = register_schemas(args.schema_registry_url) if args.schema_registry_url else None
        produced = produce_events(
            args.bootstrap_servers,
            count=args.count,
            schema_ids=ids,
            bad_every=args.bad_every,
            seed=args.seed,
        )
    except Exception as exc:  # an operator's tool: one line, no traceback
        print(f"{prog}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"produced {produced.total} events: good={produced.good} bad={produced.bad}")
    sys.stdout.flush()
    return 0
