"""``produce``, ``produce-samples``, ``schemas check`` and ``dlq replay --revalidate`` end to end,
as the real CLI in a subprocess against the shared local broker, with their failure paths
(a bad JSON line, an unreachable broker, a bad argument, an incompatible schema)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as KTopicPartition

from consumer.decoder import PlainAvroDecoder
from consumer.mapping import to_item
from consumer.records import Entity
from consumer.sandbox.broker import free_port
from consumer.sandbox.events import encode_plain, generate
from consumer.schemas import schema_text

from .conftest import PARTITIONS, Env

pytestmark = pytest.mark.integration


def cli(*args: str, env: Env | None = None, stdin: str | None = None, **variables: str) -> Any:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "ASAPP_", "TOPIC_"))
    }
    if env is not None:
        clean.update(
            {
                "KAFKA_BOOTSTRAP_SERVERS": env.bootstrap,
                "DLQ_TOPIC": env.dlq,
                **{f"TOPIC_{e.name}": t for e, t in env.topics.items()},
            }
        )
    clean.update(variables)
    return subprocess.run(
        [sys.executable, "-m", "consumer", *args],
        env=clean,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def read_topic(bootstrap: str, topic: str, expect: int) -> list[tuple[int, bytes, bytes]]:
    """``(partition, key, value)`` of the first ``expect`` records of ``topic``."""
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"r-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    reader.assign([KTopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    out: list[tuple[int, bytes, bytes]] = []
    deadline = time.monotonic() + 15
    try:
        while len(out) < expect and time.monotonic() < deadline:
            m = reader.poll(0.2)
            if m is not None and not m.error():
                out.append((m.partition(), m.key(), m.value()))
    finally:
        reader.close()
    return out


LINES = [
    {"externalAgentId": "agent1", "agentName": "Jane Doe", "startTs": "2022-07-08T11:15:53.237Z"},
    {"externalAgentId": "agent2", "eventId": "e-2", "concurrency": 3},
    {"externalAgentId": "agent1", "agentName": "Jane D."},
]


def test_produce_json_lines_keyed_by_entity_id_and_reports_bad_lines(
    env: Env, tmp_path: Path
) -> None:
    path = tmp_path / "agents.jsonl"
    text = "\n".join(json.dumps(x) for x in LINES[:2]) + "\n{broken\n"
    text += json.dumps({"externalAgentId": "has space"}) + "\n" + json.dumps(LINES[2]) + "\n"
    path.write_text(text)
    done = cli("produce", "--entity", "agent", str(path), env=env)
    assert done.returncode == 1, done.stderr
    assert "line 3: not JSON" in done.stderr
    assert "line 4: externalAgentId: does not match" in done.stderr
    assert done.stdout.startswith(f"produced 3 ({env.topics[Entity.AGENT]}=3); 5 read, 2 bad")
    got = read_topic(env.bootstrap, env.topics[Entity.AGENT], 3)
    decoder = PlainAvroDecoder(Entity.AGENT)
    items = {
        key: to_item(Entity.AGENT, decoder.decode(v), topic="t", partition=0, offset=0)
        for _, key, v in got
    }
    assert set(items) == {b"agent1", b"agent2"}
    assert items[b"agent2"]["eventId"] == "e-2" and items[b"agent2"]["concurrency"] == 3
    partitions = {key: p for p, key, _ in got if key == b"agent1"}
    assert len(partitions) == 1  # both versions of agent1 on one partition


def test_produce_dry_run_and_stdin_contact_nothing() -> None:
    lines = "\n".join(json.dumps(x) for x in LINES) + "\n"
    # no KAFKA_BOOTSTRAP_SERVERS at all: a dry run needs no cluster
    done = cli("produce", "--entity", "agent", "--dry-run", "-", stdin=lines)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("dry run: 3 read, 0 bad, 3 valid")


def test_produce_generate_with_a_rate(env: Env) -> None:
    done = cli("produce", "--generate", "5", "--entity", "customer", "--rate", "50", env=env)
    assert done.returncode == 0, done.stderr
    assert f"produced 5 ({env.topics[Entity.CUSTOMER]}=5)" in done.stdout
    assert len(read_topic(env.bootstrap, env.topics[Entity.CUSTOMER], 5)) == 5


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        pytest.param(
            ["produce", "--entity", "agent", "-"], "cannot reach the Kafka cluster", id="produce"
        ),
        pytest.param(
            ["produce-samples", "--bootstrap-servers", "{dead}", "--count", "3"],
            "cannot reach the Kafka cluster",
            id="samples",
        ),
    ],
)
def test_an_unreachable_broker_is_a_clear_error_within_seconds(
    args: list[str], phrase: str
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = cli(
        *[a.replace("{dead}", dead) for a in args],
        "--timeout-s" if args[0] == "produce" else "--seed",
        "2" if args[0] == "produce" else "1",
        stdin="{}\n",
        KAFKA_BOOTSTRAP_SERVERS=dead,
    )
    assert done.returncode == 1, done.stderr
    assert phrase in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert time.monotonic() - started < 10


def test_produce_to_a_missing_topic_and_bad_usage(env: Env) -> None:
    done = cli(
        "produce", "--entity", "agent", "--topic", "no.such.topic", "-", env=env, stdin="{}\n"
    )
    assert done.returncode == 1 and "topic no.such.topic does not exist" in done.stderr
    usage = cli("produce", "--entity", "agent", "--rate", "0", "-", env=env)
    assert usage.returncode == 2 and "--rate 0 must be > 0" in usage.stderr
    samples = cli("produce-samples", "--bootstrap-servers", env.bootstrap, "--count", "-3")
    assert samples.returncode == 2 and "--count: -3 must be >= 0" in samples.stderr


def test_schemas_check_current_and_an_incompatible_candidate(tmp_path: Path) -> None:
    ok = cli("schemas", "check")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count("ok ") == 3
    schema = copy.deepcopy(json.loads(schema_text(Entity.AGENT)))
    for f in schema["fields"]:
        if f["name"] == "concurrency":
            f["type"] = ["null", "long"]
    schema["fields"].append({"name": "nickname", "type": ["null", "string"], "default": None})
    path = tmp_path / "agent-v2.avsc"
    path.write_text(json.dumps(schema))
    bad = cli("schemas", "check", str(path), "--json")
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    candidate = report["schemas"][-1]
    assert candidate["entity"] == "agent" and report["ok"] is False
    assert candidate["incompatibilities"] == [
        "concurrency: the candidate writes long, the current reads null, int"
    ]
    assert candidate["problems"] == [
        "nickname: the API has no such field (its values would never be sent)"
    ]
    missing = cli("schemas", "check", str(tmp_path / "nope.avsc"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_replay_revalidate_skips_what_would_bounce(env: Env) -> None:
    good = generate(Entity.AGENT, 1, seed=5)[0]
    bad = {**good, "externalAgentId": "has spaces/and slashes!"}
    producer = Producer({"bootstrap.servers": env.bootstrap})
    for i, record in enumerate((good, bad)):
        producer.produce(
            env.dlq,
            key=f"k{i}".encode(),
            value=encode_plain(Entity.AGENT, record),
            partition=0,
            headers=[
                ("dlq.source.topic", env.topics[Entity.AGENT].encode()),
                ("dlq.reason", b"validation"),
                ("dlq.entity", b"agent"),
                ("dlq.error", b"externalAgentId: does not match"),
            ],
        )
    assert producer.flush(10) == 0
    dry = cli("dlq", "replay", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "warning: 1 selected record(s) would fail the service's checks again" in dry.stderr
    done = cli("dlq", "replay", "--revalidate", "--execute", env=env)
    assert done.returncode == 0, done.stderr
    assert f"would fail again {env.dlq}[0]@1: validation: externalAgentId" in done.stdout
    assert "would fail again 1 (skipped)" in done.stdout
    assert "replayed 1" in done.stdout
    replayed = read_topic(env.bootstrap, env.topics[Entity.AGENT], 1)
    assert [key for _, key, _ in replayed] == [b"k0"]


def test_emulate_api_help_shows_its_defaults() -> None:
    done = cli("emulate-api", "--help")
    assert done.returncode == 0
    assert "(default: 8080)" in done.stdout and "default: sandbox-api-id" in done.stdout
    assert "examples:" in done.stdout


def test_produce_with_the_registry_framing_registers_and_frames(env: Env) -> None:
    from consumer.decoder import RegistryAvroDecoder, registry_client
    from consumer.sandbox.registry import SchemaRegistryStandIn

    lines = "\n".join(json.dumps(x) for x in LINES) + "\n"
    with SchemaRegistryStandIn() as registry:
        done = cli(
            "produce", "--entity", "agent", "-", env=env, stdin=lines,
            SCHEMA_REGISTRY_URL=registry.url,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert registry.subjects() == [f"{env.topics[Entity.AGENT]}-value"]
        got = read_topic(env.bootstrap, env.topics[Entity.AGENT], 3)
        assert all(value[0] == 0 for _, _, value in got)  # the magic byte, then the id
        decoder = RegistryAvroDecoder(Entity.AGENT, registry_client(registry.url, None))
        names = sorted(str(decoder.decode(v).get("agentName")) for _, _, v in got)
        assert names == ["Jane D.", "Jane Doe", "None"]
