"""``metadata-consumer demo``: the whole service on this machine, no Docker, no network.

Starts the local broker and the emulated ASAPP API (and, for ``--wire-format confluent``, the
schema registry stand-in), creates the topics (the quota ledger compacted), produces realistic
events for each entity (one in ``--bad-every`` deliberately bad, to show dead-lettering), runs
the real service until every message is delivered or dead-lettered and committed, then prints a
summary. Exit status 0 when every produced message is accounted for.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, KafkaException
from confluent_kafka import TopicPartition as KTopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from consumer import logs
from consumer.records import Entity
from consumer.sandbox.api import EmulatedApi
from consumer.sandbox.broker import LocalBroker
from consumer.sandbox.produce import create_topics, produce_events, register_schemas
from consumer.service import build_service, install_signal_handlers
from consumer.settings import DEFAULT_TOPICS, Settings

DLQ_TOPIC = "asapp.metadata.dlq"
#: The quota ledger: the service's default QUOTA_TOPIC.
QUOTA_TOPIC = "asapp.metadata.quota"
#: The ledger's production configuration (consumer.kafka.QuotaLedger's docstring); the local
#: broker accepts it on create.
QUOTA_TOPIC_CONFIG = {"cleanup.policy": "compact,delete", "retention.ms": "172800000"}
PARTITIONS = 3
API_ID, API_SECRET = "demo-app", "demo-secret-value"


def committed_offsets(bootstrap: str, topics: list[str], group: str) -> dict[str, int]:
    """The group's committed offset per ``topic[partition]`` (0 when none)."""
    probe = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        parts = [KTopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
        return {
            f"{c.topic}[{c.partition}]": max(c.offset, 0) for c in probe.committed(parts, timeout=5)
        }
    finally:
        probe.close()


def create_quota_topic(bootstrap: str, timeout_s: float = 15.0) -> None:
    """Create the compacted quota ledger topic (one partition; an existing one is fine)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = NewTopic(QUOTA_TOPIC, num_partitions=1, replication_factor=1, config=QUOTA_TOPIC_CONFIG)
    for fut in admin.create_topics([topic], request_timeout=timeout_s).values():
        try:
            fut.result(timeout=timeout_s)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"cannot create topic {QUOTA_TOPIC}: {exc}") from exc


def count_dead_letters(bootstrap: str, idle_s: float = 1.0) -> dict[str, int]:
    """Dead-letter records per ``dlq.reason`` header, read from the DLQ topic.

    The local broker's high watermark is the base offset of the last batch + 1, so "the end"
    is: every partition reported EOF and then nothing arrived for ``idle_s`` (bounded at 20 s).
    """
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "demo-dlq-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    counts: dict[str, int] = {}
    try:
        reader.assign([KTopicPartition(DLQ_TOPIC, p, 0) for p in range(PARTITIONS)])
        reached: set[int] = set()
        start = last = time.monotonic()
        while time.monotonic() - start < 20:
            if len(reached) == PARTITIONS and time.monotonic() - last >= idle_s:
                break
            m = reader.poll(0.2)
            if m is None:
                continue
            last = time.monotonic()
            reached.add(int(m.partition() or 0))
            if m.error():
                continue
            raw = dict(m.headers() or []).get("dlq.reason") or b"?"
            reason = raw.decode() if isinstance(raw, bytes) else raw
            counts[reason] = counts.get(reason, 0) + 1
    finally:
        reader.close()
    return counts


@dataclass(slots=True)
class _Progress:
    done: bool = False
    timed_out: bool = False


def run_demo(
    *, events: int, wire_format: str, bad_every: int, timeout_s: float, hold_s: float
) -> int:
    logs.setup("text", os.environ.get("LOG_LEVEL", "INFO").upper())
    workdir = Path(tempfile.mkdtemp(prefix="metadata-consumer-demo-"))
    registry = None
    with (
        LocalBroker(log_path=workdir / "broker.log") as broker,
        EmulatedApi(api_id=API_ID, api_secret=API_SECRET) as api,
    ):
        bootstrap = broker.bootstrap_servers
        print(f"local broker on {bootstrap}; emulated ASAPP API on {api.url}")
        topics = list(DEFAULT_TOPICS.values())
        create_topics(bootstrap, [*topics, DLQ_TOPIC], partitions=PARTITIONS)
        create_quota_topic(bootstrap)
        schema_ids = None
        if wire_format == "confluent":
            from consumer.sandbox.registry import SchemaRegistryStandIn

            registry = SchemaRegistryStandIn().start()
            schema_ids = register_schemas(registry.url)
            print(f"schema registry stand-in on {registry.url}: ids {[*schema_ids.values()]}")
        started = time.monotonic()
        produced = produce_events(
            bootstrap, count=events, schema_ids=schema_ids, bad_every=bad_every
        )
        print(
            f"produced {produced.total} events ({sum(produced.bad.values())} deliberately bad) "
            f"in {time.monotonic() - started:.1f}s ({wire_format} Avro)"
        )
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_GROUP_ID": "asapp-metadata-consumer-demo",
            # The local broker completes a first JoinGroup after session.timeout.ms / 2.
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "ASAPP_API_BASE_URL": api.url,
            "ASAPP_API_ID": API_ID,
            "ASAPP_API_SECRET": API_SECRET,
            "DLQ_TOPIC": DLQ_TOPIC,
            "QUOTA_TOPIC": QUOTA_TOPIC,
            "BATCH_LINGER_MS": "250",
            "METRICS_PORT": os.environ.get("METRICS_PORT", "0"),
            "METRICS_HOST": "127.0.0.1",
            "LOG_FORMAT": "text",
        }
        if registry is not None:
            env["SCHEMA_REGISTRY_URL"] = registry.url
        settings = Settings.from_env(env)
        service = build_service(settings)
        install_signal_handlers(service.pipeline)
        print(f"service metrics on http://127.0.0.1:{service.health.port}/metrics")
        progress = _Progress()
        expected = produced.total
        high = {k: v for k, v in produced.end_offsets.items()}
        high.update({k: 0 for k in committed_offsets(bootstrap, topics, "unused") if k not in high})
        run_started = time.monotonic()

        def watch() -> None:
            deadline = run_started + timeout_s
            while not service.pipeline.stopping:
                finished = service.pipeline.delivered_items + service.pipeline.dead_lettered
                if finished >= expected:
                    committed = committed_offsets(bootstrap, topics, settings.group_id)
                    if all(committed.get(k, 0) >= v for k, v in high.items()):
                        progress.done = True
                        break
                if time.monotonic() > deadline:
                    progress.timed_out = True
                    break
                time.sleep(0.25)
            if progress.done and hold_s > 0:
                print(f"all delivered; serving metrics {hold_s:.0f}s more")
                time.sleep(hold_s)
            service.pipeline.request_stop()

        watcher = threading.Thread(target=watch, name="demo-watch", daemon=True)
        watcher.start()
        service.run()
        elapsed = time.monotonic() - run_started
        committed = committed_offsets(bootstrap, topics, settings.group_id)
        dead = count_dead_letters(bootstrap)
        stats = api.stats()
        if registry is not None:
            registry.stop()

    accepted = {e: stats["entities"][e.value]["items_accepted"] for e in Entity}
    requests = stats["requests"]
    good = sum(produced.good.values())
    ok = (
        progress.done
        and sum(accepted.values()) == good
        and sum(dead.values()) == sum(produced.bad.values())
        and high == committed
    )
    print("\n=== demo summary ===")
    for e in Entity:
        t = DEFAULT_TOPICS[e]
        print(
            f"{e.value:<13} produced {produced.good[t] + produced.bad[t]:>6}  "
            f"accepted by API {accepted[e]:>6}  (bad on purpose: {produced.bad[t]})"
        )
    print(f"dead-lettered   {sum(dead.values())} by reason {dead}")
    print(f"API requests    {requests} ({good / max(requests, 1):.0f} items/request on average)")
    print(f"committed       {'== end offsets' if high == committed else f'{committed} != {high}'}")
    print(f"time            {elapsed:.1f}s from start to everything committed")
    print("result          " + ("OK: every event delivered or dead-lettered" if ok else "FAILED"))
    sys.stdout.flush()
    return 0 if ok else 1
