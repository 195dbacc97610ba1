"""Nothing lost, nothing wasted: every row of the failure table, driven through the emulated
API's fault injection with the real service and the real broker.

Each test asserts what reached the API, what reached the dead-letter topic (with which
headers), and where offsets were committed.
"""

from __future__ import annotations

import json
import signal
import struct
import time
from typing import Any

import fastavro
import pytest

from consumer.records import Entity
from consumer.sandbox.api import REJECTION, EmulatedApi, Faults, steps
from consumer.sandbox.events import encode_confluent, encode_plain, generate
from consumer.sandbox.registry import SchemaRegistryStandIn
from consumer.schemas import schema_text
from tests.integration.conftest import Env, Sent, items_by_event_id, wait_until

pytestmark = pytest.mark.integration


def check_accounting(env: Env, api: EmulatedApi, dead: list[dict[str, Any]]) -> None:
    """Every produced message is delivered or dead-lettered, never both missing; the DLQ
    record carries the original bytes and the source position."""
    delivered = set(items_by_event_id(api, env))
    by_pos = {(s.topic, s.partition, s.offset): s for s in env.sent}
    dead_pos = set()
    for d in dead:
        h = d["headers"]
        pos = (h["dlq.source.topic"], int(h["dlq.source.partition"]), int(h["dlq.source.offset"]))
        assert pos in by_pos, f"DLQ record for a message never produced: {pos}"
        s = by_pos[pos]
        assert d["value"] == s.value and d["key"] == s.key, (
            "DLQ record must carry the original bytes"
        )
        assert h["dlq.entity"] == s.entity.value
        assert len(h["dlq.error"].encode()) <= 1024
        assert "it-secret" not in json.dumps(h), "a secret reached a DLQ header"
        dead_pos.add(pos)
    for s in env.sent:
        pos = (s.topic, s.partition, s.offset)
        ok = pos in dead_pos or (s.expected is not None and s.event_id in delivered)
        assert ok, f"{pos} neither delivered nor dead-lettered"


def agents(env: Env, n: int, seed: int = 21, partition: int | None = None) -> list[Sent]:
    return env.produce_events(Entity.AGENT, n, seed=seed, partition=partition)


def test_partial_success_delivers_accepted_and_dead_letters_each_rejected_item(
    env: Env, api: EmulatedApi, start_service
) -> None:
    api.set_faults(Faults(reject_rate=0.2, seed=4))
    for e in Entity:
        env.produce_events(e, 200, seed=22)
    service = start_service()
    wait_until(env.all_committed, 60, "all committed")
    rejected = sum(api.stats()["entities"][e.value]["items_rejected"] for e in Entity)
    assert 60 < rejected < 200
    dead = env.dead_letters(expect=rejected)
    assert len(dead) == rejected
    assert {d["headers"]["dlq.reason"] for d in dead} == {"rejected"}
    assert {d["headers"]["dlq.http.status"] for d in dead} == {"200"}
    assert {d["headers"]["dlq.error"] for d in dead} == {REJECTION}
    assert api.accepted_count() + rejected == 600
    check_accounting(env, api, dead)
    # no rejected item was delivered too
    delivered = set(items_by_event_id(api, env))
    by_pos = {(s.topic, s.partition, s.offset): s for s in env.sent}
    for d in dead:
        h = d["headers"]
        s = by_pos[
            (h["dlq.source.topic"], int(h["dlq.source.partition"]), int(h["dlq.source.offset"]))
        ]
        assert s.event_id not in delivered
    assert (
        service.metric("asapp_consumer_items_rejected_total", {"code": "FAIL_BAD_PARAMS"})
        == rejected
    )
    assert service.metric("asapp_consumer_dead_letters_total", {"reason": "rejected"}) == rejected


def test_400_dead_letters_every_item_with_its_error_and_never_resends(
    env: Env, api: EmulatedApi, start_service
) -> None:
    api.set_faults(Faults(reject_rate=1.0, seed=1))
    agents(env, 50)
    start_service()
    wait_until(env.all_committed, 60, "all committed")
    dead = env.dead_letters(expect=50)
    assert len(dead) == 50
    assert {d["headers"]["dlq.http.status"] for d in dead} == {"400"}
    assert {d["headers"]["dlq.reason"] for d in dead} == {"rejected"}
    assert sum(r.item_count for r in api.requests()) == 50, "a 400 batch was resent"
    assert {r.status for r in api.requests()} == {400}
    check_accounting(env, api, dead)


def test_409_on_a_batch_is_split_never_delivered_wholesale(
    env: Env, api: EmulatedApi, start_service
) -> None:
    # ASAPP documents 409 ("already persisted") for one entity only: a batch's 409 says nothing
    # about which of its items, so the batch is split and resent, never marked delivered.
    api.set_faults(Faults(sequence=steps(409)))
    sent = agents(env, 30)
    start_service()
    wait_until(env.all_committed, 60, "all committed")
    first, *rest = api.requests()
    assert first.status == 409
    assert all(r.status == 200 for r in rest), "only the first answer was a 409"
    assert len(rest) >= 2, "the 409 batch was not split"
    assert sum(r.item_count for r in rest) == len(sent), "the 409 batch was not resent"
    assert env.dead_letters(idle_s=0.5) == []


def test_409_for_a_single_item_means_already_persisted_and_counts_as_delivered(
    env: Env, api: EmulatedApi, start_service
) -> None:
    api.set_faults(Faults(sequence=steps(409)))
    sent = agents(env, 3)
    start_service(BATCH_MAX_ITEMS="1")
    wait_until(env.all_committed, 60, "all committed")
    statuses = [r.status for r in api.requests()]
    assert statuses.count(409) == 1 and len(statuses) == 3, "a single-item 409 was resent"
    env.acknowledged.update(s.event_id for s in sent)  # what the 409 (and the 200s) tell us
    assert env.dead_letters(idle_s=0.5) == []


def test_413_splits_recursively_and_dead_letters_a_single_oversized_item(
    env: Env, api: EmulatedApi, start_service
) -> None:
    api.max_body_bytes = 6000
    sent = agents(env, 40, partition=0)
    big = generate(Entity.AGENT, 1, seed=99, start=500)[0]
    big["attributes"] = [{"name": f"a{i}", "value": "v" * 1000} for i in range(10)]
    big.pop("eventId", None)
    [oversized] = env.produce(Entity.AGENT, [(encode_plain(Entity.AGENT, big), big)], partition=0)
    sent += agents(env, 10, seed=23, partition=0)
    service = start_service()
    wait_until(env.all_committed, 60, "all committed")
    dead = env.dead_letters(expect=1)
    assert len(dead) == 1
    h = dead[0]["headers"]
    assert (h["dlq.reason"], h["dlq.http.status"], int(h["dlq.source.offset"])) == (
        "http",
        "413",
        oversized.offset,
    )
    statuses = [r.status for r in api.requests()]
    assert statuses.count(413) >= 2 and statuses.count(200) >= 2
    assert api.accepted_count() == 50
    assert service.metric("asapp_consumer_retries_total", {"cause": "413_split"}) >= 1
    check_accounting(env, api, dead)


def test_429_slows_the_whole_pod_and_honours_retry_after(
    env: Env, api: EmulatedApi, start_service
) -> None:
    api.set_faults(Faults(sequence=steps(429), retry_after_s=1.5))
    for e in Entity:
        env.produce_events(e, 100, seed=24)
    service = start_service(RETRY_MAX_BACKOFF_S="10")
    wait_until(env.all_committed, 60, "all committed")
    requests = api.requests()
    first = next(i for i, r in enumerate(requests) if r.status == 429)
    t429 = requests[first].t_monotonic
    later = [r.t_monotonic - t429 for r in requests[first + 1 :]]
    # Requests already on the wire when the 429 arrived may land together with it; every
    # request sent after the pod learned of the 429 waits out Retry-After, whatever its entity.
    assert all(dt < 0.3 or dt >= 1.45 for dt in later), later
    assert any(dt >= 1.45 for dt in later)
    assert env.dead_letters(idle_s=0.5) == []
    assert service.metric("asapp_consumer_retries_total", {"cause": "429"}) >= 1
    assert api.accepted_count() == 300


def test_5xx_timeouts_and_resets_are_retried_without_dead_letters(
    env: Env, api: EmulatedApi, start_service
) -> None:
    api.set_faults(Faults(sequence=steps(503, 500, "reset", "timeout", 502), hang_s=3))
    agents(env, 60)
    service = start_service(HTTP_TIMEOUT_S="1")
    wait_until(env.all_committed, 60, "all committed")
    assert env.dead_letters(idle_s=0.5) == []
    assert api.accepted_count() == 60
    assert service.metric("asapp_consumer_retries_total", {"cause": "5xx"}) >= 3
    assert service.metric("asapp_consumer_retries_total", {"cause": "network"}) >= 2


def test_api_outage_pauses_partitions_retries_without_limit_and_loses_nothing(
    env: Env, api: EmulatedApi, start_service
) -> None:
    api.set_faults(Faults(error_rate=1.0))
    for e in Entity:
        env.produce_events(e, 100, seed=25)
    service = start_service(RETRY_MAX_BACKOFF_S="0.5")
    wait_until(
        lambda: service.metric("asapp_consumer_paused_partitions") > 0,
        30,
        "partitions paused during the outage",
    )
    time.sleep(4)  # far more attempts than any bounded retry policy would allow
    assert service.metric("asapp_consumer_retries_total") >= 10
    assert sum(env.committed().values()) == 0
    api.set_faults(Faults())
    wait_until(env.all_committed, 60, "all committed after the outage")
    assert env.dead_letters(idle_s=0.5) == []
    assert api.accepted_count() == 300
    wait_until(
        lambda: service.metric("asapp_consumer_paused_partitions") == 0, 10, "partitions resumed"
    )


def test_rejected_credentials_never_dead_letter_mark_not_ready_and_recover(
    env: Env, api: EmulatedApi, start_service
) -> None:
    api.set_faults(Faults(reject_credentials=True))
    agents(env, 30)
    service = start_service()
    wait_until(
        lambda: service.metric("asapp_consumer_credentials_rejected") == 1,
        30,
        "credentials flagged",
    )
    assert service.get("/readyz").status_code == 503
    assert "credentials" in service.get("/readyz").json()["reason"]
    time.sleep(1)
    assert sum(env.committed().values()) == 0
    api.set_faults(Faults())  # the secret is fixed on ASAPP's side: no restart needed
    wait_until(env.all_committed, 60, "all committed after recovery")
    wait_until(service.ready, 10, "ready again")
    assert env.dead_letters(idle_s=0.5) == []
    auth_logs = [e for e in service.logs() if e.get("event") == "auth_rejected"]
    assert len(auth_logs) == 1, "one clear error, not one per retry"
    assert all("it-secret" not in json.dumps(e) for e in service.logs())
    assert "it-secret" not in service.get("/metrics").text


@pytest.mark.parametrize("status", [pytest.param(404, id="404"), pytest.param(422, id="422")])
def test_other_4xx_dead_letters_with_status_and_excerpt(
    env: Env, api: EmulatedApi, start_service, status: int
) -> None:
    api.set_faults(Faults(sequence=steps(status)))
    first = agents(env, 20, partition=0)
    service = start_service()
    wait_until(lambda: len(env.dead_letters(idle_s=0.3)) >= 20, 30, "the batch to be dead-lettered")
    more = agents(env, 20, seed=26, partition=0)
    wait_until(env.all_committed, 60, "all committed")
    dead = env.dead_letters(expect=20)
    assert len(dead) == 20
    assert {d["headers"]["dlq.http.status"] for d in dead} == {str(status)}
    assert {d["headers"]["dlq.reason"] for d in dead} == {"http"}
    assert all(f"{status}-01" in d["headers"]["dlq.error"] for d in dead)
    delivered = set(items_by_event_id(api, env))
    assert {s.event_id for s in more} <= delivered
    assert not ({s.event_id for s in first} & delivered)
    check_accounting(env, api, dead)
    assert service.metric("asapp_consumer_dead_letters_total", {"reason": "http"}) == 20


def test_malformed_response_is_retried_a_bounded_number_of_times_then_dead_lettered(
    env: Env, api: EmulatedApi, start_service
) -> None:
    api.set_faults(Faults(sequence=steps("malformed", "malformed", "malformed")))
    agents(env, 10, partition=0)
    start_service(MALFORMED_RESPONSE_MAX_ATTEMPTS="3")
    wait_until(env.all_committed, 60, "all committed")
    dead = env.dead_letters(expect=10)
    assert len(dead) == 10
    assert {d["headers"]["dlq.reason"] for d in dead} == {"http"}
    assert all("malformed" in d["headers"]["dlq.error"] for d in dead)
    assert [r.status for r in api.requests()] == [200, 200, 200]
    check_accounting(env, api, dead)


def test_one_malformed_response_is_retried_and_delivered(
    env: Env, api: EmulatedApi, start_service
) -> None:
    api.set_faults(Faults(sequence=steps("malformed")))
    agents(env, 10, partition=0)
    start_service()
    wait_until(env.all_committed, 60, "all committed")
    assert env.dead_letters(idle_s=0.5) == []
    assert api.accepted_count() == 10


def test_poison_messages_between_good_ones_are_dead_lettered_and_the_partition_moves(
    env: Env, api: EmulatedApi, start_service
) -> None:
    good = generate(Entity.CUSTOMER, 4, seed=27)
    truncated = encode_plain(Entity.CUSTOMER, good[1])[:-3]
    values: list[tuple[bytes, Any]] = [
        (encode_plain(Entity.CUSTOMER, good[0]), good[0]),
        (b"\xff\xfe not avro at all", None),
        (encode_plain(Entity.CUSTOMER, good[2]), good[2]),
        (truncated, None),
        (b"", None),
        (encode_plain(Entity.CUSTOMER, good[3]), good[3]),
    ]
    env.produce(Entity.CUSTOMER, values, partition=1)
    start_service()
    wait_until(env.all_committed, 60, "all committed")
    dead = env.dead_letters(expect=3)
    assert len(dead) == 3
    assert {d["headers"]["dlq.reason"] for d in dead} == {"decode"}
    assert api.accepted_count() == 3
    check_accounting(env, api, dead)


def test_registry_format_bad_messages_are_dead_lettered(
    env: Env, api: EmulatedApi, start_service
) -> None:
    with SchemaRegistryStandIn() as registry:
        sid = registry.register(f"{env.topics[Entity.AGENT]}-value", schema_text(Entity.AGENT))
        schema = fastavro.parse_schema(json.loads(schema_text(Entity.AGENT)))
        recs = generate(Entity.AGENT, 3, seed=28)
        good = [encode_confluent(sid, schema, r) for r in recs]
        values: list[tuple[bytes, Any]] = [
            (good[0], recs[0]),
            (b"\x01" + good[1][1:], None),  # wrong magic byte
            (b"\x00" + struct.pack(">I", 9999) + good[1][5:], None),  # unknown schema id: 404
            (good[1][:7], None),  # truncated body
            (good[2], recs[2]),
        ]
        env.produce(Entity.AGENT, values, partition=2)
        start_service(SCHEMA_REGISTRY_URL=registry.url)
        wait_until(env.all_committed, 60, "all committed")
    dead = env.dead_letters(expect=3)
    assert len(dead) == 3
    assert {d["headers"]["dlq.reason"] for d in dead} == {"decode"}
    errors = " | ".join(d["headers"]["dlq.error"] for d in dead)
    assert "magic" in errors and "9999" in errors
    assert api.accepted_count() == 2
    check_accounting(env, api, dead)


def test_registry_outage_pauses_and_retries_never_dead_letters(
    env: Env, api: EmulatedApi, start_service
) -> None:
    with SchemaRegistryStandIn() as registry:
        sid = registry.register(f"{env.topics[Entity.AGENT]}-value", schema_text(Entity.AGENT))
        env.produce_events(
            Entity.AGENT,
            40,
            seed=29,
            schema_id=sid,
            schema=fastavro.parse_schema(json.loads(schema_text(Entity.AGENT))),
        )
        registry.fail_all(True, status=503)
        service = start_service(SCHEMA_REGISTRY_URL=registry.url, RETRY_MAX_BACKOFF_S="0.5")
        wait_until(
            lambda: (
                service.metric(
                    "asapp_consumer_decode_failures_total", {"reason": "registry_unavailable"}
                )
                >= 2
            ),
            30,
            "registry retries",
        )
        wait_until(lambda: service.metric("asapp_consumer_paused_partitions") > 0, 10, "paused")
        assert api.accepted_count() == 0
        registry.fail_all(False)
        wait_until(env.all_committed, 60, "all committed after the registry recovered")
    assert env.dead_letters(idle_s=0.5) == []
    assert api.accepted_count() == 40


def test_preflight_validation_dead_letters_locally_without_spending_a_request(
    env: Env, api: EmulatedApi, start_service
) -> None:
    recs = generate(Entity.CONVERSATION, 6, seed=30)
    bad_id = dict(recs[1], externalConversationId="has space")
    too_many = dict(recs[2], attributes=[{"name": f"n{i}", "value": "v"} for i in range(11)])
    bad_enum = dict(recs[3], deviceType="TOASTER")
    values = [
        (encode_plain(Entity.CONVERSATION, recs[0]), recs[0]),
        (encode_plain(Entity.CONVERSATION, bad_id), None),
        (encode_plain(Entity.CONVERSATION, too_many), None),
        (encode_plain(Entity.CONVERSATION, bad_enum), None),
        (encode_plain(Entity.CONVERSATION, recs[4]), recs[4]),
    ]
    env.produce(Entity.CONVERSATION, values, partition=0)
    service = start_service()
    wait_until(env.all_committed, 60, "all committed")
    dead = env.dead_letters(expect=3)
    assert {d["headers"]["dlq.reason"] for d in dead} == {"validation"}
    errors = " | ".join(d["headers"]["dlq.error"] for d in dead)
    assert "externalConversationId" in errors and "attributes" in errors and "deviceType" in errors
    assert sum(r.item_count for r in api.requests()) == 2, "invalid items must not be sent"
    assert service.metric("asapp_consumer_items_invalid_total") == 3
    check_accounting(env, api, dead)


def test_dead_letter_topic_unwritable_holds_the_partition_and_never_skips(
    env: Env, api: EmulatedApi, start_service
) -> None:
    recs = generate(Entity.AGENT, 3, seed=31)
    values: list[tuple[bytes, Any]] = [
        (encode_plain(Entity.AGENT, recs[0]), recs[0]),
        (b"poison", None),
        (encode_plain(Entity.AGENT, recs[1]), recs[1]),
    ]
    sent = env.produce(Entity.AGENT, values, partition=0)
    env.produce_events(Entity.CUSTOMER, 20, seed=32)
    # The broker refuses this topic name: every dead-letter write fails.
    service = start_service(DLQ_TOPIC="it unwritable dlq!")
    wait_until(
        lambda: service.metric("asapp_consumer_dlq_write_failures_total") >= 2,
        30,
        "DLQ write failures",
    )
    poison = sent[1]
    time.sleep(1.5)
    committed = env.committed()
    assert committed[(poison.topic, poison.partition)] == poison.offset, (
        "committed past an unwritten dead letter"
    )
    other = [tp for tp in env.end_offsets() if tp[0] == env.topics[Entity.CUSTOMER]]
    assert all(committed[tp] == env.end_offsets()[tp] for tp in other), (
        "other partitions must keep moving"
    )
    assert any(e.get("event") == "dlq_write_failed" for e in service.logs())
    assert service.stop() == 0
    # With a writable DLQ the poison message is dead-lettered and the partition completes.
    start_service()
    wait_until(env.all_committed, 60, "all committed")
    dead = env.dead_letters(expect=1)
    assert len(dead) == 1 and int(dead[0]["headers"]["dlq.source.offset"]) == poison.offset


def test_rebalance_while_a_batch_is_in_backoff_loses_nothing(
    env: Env, api: EmulatedApi, start_service
) -> None:
    api.set_faults(Faults(error_rate=1.0))
    for e in Entity:
        env.produce_events(e, 60, seed=33)
    first = start_service(REVOKE_TIMEOUT_S="2", RETRY_MAX_BACKOFF_S="0.5")
    wait_until(lambda: first.metric("asapp_consumer_retries_total") >= 3, 30, "batches in backoff")
    second = start_service(REVOKE_TIMEOUT_S="2", RETRY_MAX_BACKOFF_S="0.5")
    wait_until(lambda: second.metric("asapp_consumer_assigned_partitions") > 0, 30, "the rebalance")
    assert sum(env.committed().values()) == 0, "nothing was delivered, nothing may be committed"
    api.set_faults(Faults())
    wait_until(env.all_committed, 60, "all committed")
    assert env.dead_letters(idle_s=0.5) == []
    expected = {s.event_id for s in env.sent}
    assert expected <= set(items_by_event_id(api, env))
    assert any(e.get("event") == "revoke" for e in first.logs())
    assert first.proc.poll() is None and second.proc.poll() is None, "a member died"
    assert first.metric("asapp_consumer_assigned_partitions") > 0
    assert first.stop() == 0 and second.stop() == 0


def test_sigterm_during_a_long_429_backoff_drains_within_the_bound_and_commits_only_delivered(
    env: Env, api: EmulatedApi, start_service
) -> None:
    api.set_faults(Faults(sequence=steps(429), retry_after_s=60))
    agents(env, 40)
    service = start_service(RETRY_MAX_BACKOFF_S="120", SHUTDOWN_TIMEOUT_S="5")
    wait_until(lambda: any(r.status == 429 for r in api.requests()), 30, "the 429")
    time.sleep(0.5)
    started = time.monotonic()
    service.signal(signal.SIGTERM)
    assert service.proc.wait(10) == 0
    assert time.monotonic() - started < 5 + 1
    assert sum(env.committed().values()) == 0, "nothing was delivered"
    assert env.dead_letters(idle_s=0.5) == []
    assert len(api.requests()) == 1
    # the next run delivers everything
    api.set_faults(Faults())
    start_service()
    wait_until(env.all_committed, 60, "all committed")
    assert api.accepted_count() == 40
