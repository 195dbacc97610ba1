"""The service end to end: real broker, real HTTP API emulator, the service as a subprocess."""

from __future__ import annotations

import json
import signal
import threading
import time

import fastavro
import pytest

from consumer.records import Entity
from consumer.sandbox.api import EmulatedApi, Faults
from consumer.sandbox.registry import SchemaRegistryStandIn
from consumer.schemas import schema_text
from tests.integration.conftest import Env, items_by_event_id, wait_until

pytestmark = pytest.mark.integration


def assert_delivered_exactly(api: EmulatedApi, env: Env) -> None:
    """Every produced good event arrived exactly as mapped (extra copies allowed only if
    identical: at-least-once)."""
    got = items_by_event_id(api, env)
    expected = [s for s in env.sent if s.expected is not None]
    missing = [s.event_id for s in expected if s.event_id not in got]
    assert not missing, f"{len(missing)} events never reached the API, e.g. {missing[:3]}"
    for s in expected:
        for item in got[s.event_id]:
            assert item == s.expected, f"{s.event_id}: {item} != {s.expected}"


def test_plain_avro_every_event_arrives_as_mapped_batches_respect_limits_and_offsets_commit(
    env: Env, api: EmulatedApi, start_service
) -> None:
    for entity in Entity:
        env.produce_events(entity, 400, seed=3)
    service = start_service(BATCH_MAX_ITEMS="150", BATCH_MAX_BYTES="40000")
    wait_until(env.all_committed, 60, "committed offsets to reach the end offsets")

    assert_delivered_exactly(api, env)
    assert sum(api.accepted_count(e) for e in Entity) == 1200
    requests = api.requests()
    assert requests, "no request reached the API"
    assert max(r.item_count for r in requests) <= 150
    assert max(r.body_bytes for r in requests) <= 40000
    assert all(r.status == 200 for r in requests)
    # batches fill up: 1200 items need at least 8 requests of 150; linger may add a few more
    assert len(requests) <= 30
    assert env.committed() == env.end_offsets()
    assert service.metric("asapp_consumer_items_accepted_total") == 1200
    assert env.dead_letters(idle_s=0.5) == []
    assert service.stop() == 0


def test_confluent_wire_format_with_registry_and_schema_evolution(
    env: Env, api: EmulatedApi, start_service
) -> None:
    with SchemaRegistryStandIn() as registry:
        ids = {e: registry.register(f"{env.topics[e]}-value", schema_text(e)) for e in Entity}
        for e in Entity:
            env.produce_events(
                e,
                120,
                seed=5,
                schema_id=ids[e],
                schema=fastavro.parse_schema(json.loads(schema_text(e))),
            )
        # A newer producer adds an optional field the reader schema does not know.
        evolved = json.loads(schema_text(Entity.AGENT))
        evolved["fields"].append(
            {"name": "favouriteColour", "type": ["null", "string"], "default": None}
        )
        evolved_id = registry.register(f"{env.topics[Entity.AGENT]}-value", json.dumps(evolved))
        parsed = fastavro.parse_schema(evolved)
        from consumer.sandbox.events import generate

        records = generate(Entity.AGENT, 50, seed=6, start=1000)
        for r in records:
            r["favouriteColour"] = "teal"
        from consumer.sandbox.events import encode_confluent

        env.produce(
            Entity.AGENT,
            [
                (
                    encode_confluent(evolved_id, parsed, r),
                    {k: v for k, v in r.items() if k != "favouriteColour"},
                )
                for r in records
            ],
        )

        service = start_service(SCHEMA_REGISTRY_URL=registry.url)
        wait_until(env.all_committed, 60, "all committed")
        assert_delivered_exactly(api, env)
        assert api.accepted_count() == 3 * 120 + 50
        assert all("favouriteColour" not in i for i in api.items(Entity.AGENT))
        assert service.stop() == 0


def test_second_consumer_joining_mid_stream_loses_nothing(
    env: Env, api: EmulatedApi, start_service
) -> None:
    api.set_faults(Faults(latency_ms=30))
    stop = threading.Event()

    def keep_producing() -> None:
        start = 0
        while not stop.is_set():
            for e in Entity:
                env.produce_events(e, 40, seed=9, start=start)
            start += 40
            time.sleep(0.2)

    producer = threading.Thread(target=keep_producing, daemon=True)
    producer.start()
    first = start_service()
    wait_until(lambda: api.accepted_count() > 300, 30, "the first consumer to deliver")
    second = start_service()
    wait_until(
        lambda: second.metric("asapp_consumer_assigned_partitions") > 0,
        30,
        "the second member to get partitions",
    )
    time.sleep(2)
    stop.set()
    producer.join(10)
    wait_until(env.all_committed, 60, "all committed")
    assert_delivered_exactly(api, env)
    assert (
        first.metric("asapp_consumer_assigned_partitions")
        + second.metric("asapp_consumer_assigned_partitions")
        == 9
    )
    assert first.stop() == 0
    assert second.stop() == 0


def test_sigterm_mid_stream_drains_commits_and_exits_zero(
    env: Env, api: EmulatedApi, start_service
) -> None:
    # 45 batches at 1 s each, one at a time per entity (a lane each): ~15 s of work, far more
    # than the drain window.
    api.set_faults(Faults(latency_ms=1000))
    for e in Entity:
        env.produce_events(e, 1500, seed=11)
    service = start_service(BATCH_MAX_ITEMS="100", MAX_IN_FLIGHT="1", SHUTDOWN_TIMEOUT_S="6")
    wait_until(lambda: api.accepted_count() >= 600, 30, "deliveries to start")
    started = time.monotonic()
    service.signal(signal.SIGTERM)
    assert service.proc.wait(15) == 0
    took = time.monotonic() - started
    assert took < 6 + 1, f"shutdown took {took:.1f}s, bound is 6s"

    committed = env.committed()
    delivered = set(items_by_event_id(api, env))
    assert 0 < sum(committed.values()) < 4500, "stopped mid-stream, with something committed"
    for s in env.sent:
        if s.offset < committed.get((s.topic, s.partition), 0):
            assert s.event_id in delivered, (
                f"{s.topic}[{s.partition}]@{s.offset} committed but never delivered"
            )
    events = [entry.get("event") for entry in service.logs()]
    assert "stop" in events and "stopped" in events


def test_restart_after_sigkill_redelivers_only_uncommitted(
    env: Env, api: EmulatedApi, start_service
) -> None:
    # 36 batches at 600 ms each, one at a time per entity (a lane each): ~7 s of work, so the
    # kill lands mid-stream.
    api.set_faults(Faults(latency_ms=600))
    for e in Entity:
        env.produce_events(e, 1200, seed=13)
    service = start_service(BATCH_MAX_ITEMS="100", MAX_IN_FLIGHT="1")
    wait_until(lambda: sum(env.committed().values()) >= 600, 30, "some offsets to be committed")
    service.kill()
    committed = env.committed()
    before = {e: len(api.items(e)) for e in Entity}
    assert 0 < sum(committed.values()) < 3600

    api.set_faults(Faults())
    restarted = start_service()
    wait_until(env.all_committed, 60, "all committed after the restart")
    by_id = {s.event_id: s for s in env.sent}
    resent = [item for e in Entity for item in api.items(e)[before[e] :]]
    assert resent, "the restarted service delivered nothing"
    for item in resent:
        s = by_id[item["eventId"]]
        assert s.offset >= committed.get((s.topic, s.partition), 0), (
            f"{s.topic}[{s.partition}]@{s.offset} was committed ({committed}) yet sent again"
        )
    assert_delivered_exactly(api, env)
    assert restarted.stop() == 0
