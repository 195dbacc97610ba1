"""``metadata-consumer dlq inspect`` end to end, as a subprocess against the local broker:
counts by reason, entity and error class, time filters (relative and ISO-8601), samples
with headers and the payload decoded by the service's decoder, JSON, and its failure paths
(a missing DLQ topic, a bad time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import Producer

from consumer.records import Entity
from consumer.sandbox.events import encode_plain, generate

from .conftest import Env

HOUR_MS = 3_600_000


def inspect(env: Env, *args: str, dlq: str | None = None) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "ASAPP_", "TOPIC_"))
    }
    variables = {
        "KAFKA_BOOTSTRAP_SERVERS": env.bootstrap,
        "DLQ_TOPIC": dlq or env.dlq,
        **{f"TOPIC_{e.name}": t for e, t in env.topics.items()},
    }
    return subprocess.run(
        [sys.executable, "-m", "consumer", "dlq", "inspect", *args],
        env={**clean, **variables},
        capture_output=True,
        text=True,
        timeout=40,
    )


def headers(env: Env, entity: Entity, reason: str, error: str, offset: int) -> list[Any]:
    return [
        ("trace", b"abc"),
        ("dlq.source.topic", env.topics[entity].encode()),
        ("dlq.source.partition", b"0"),
        ("dlq.source.offset", str(offset).encode()),
        ("dlq.reason", reason.encode()),
        ("dlq.error", error.encode()),
        ("dlq.entity", entity.value.encode()),
    ]


@pytest.fixture
def dead_letters(env: Env) -> Env:
    """Four dead letters: two rejected agents (valid payloads, API codes), one undecodable
    conversation, and one customer validation failure dead-lettered three hours ago."""
    now = int(time.time() * 1000)
    agent = encode_plain(Entity.AGENT, generate(Entity.AGENT, 1, seed=3)[0])
    customer = encode_plain(Entity.CUSTOMER, generate(Entity.CUSTOMER, 1, seed=3)[0])
    rows = [
        (Entity.AGENT, "rejected", "FAIL_BAD_PARAMS: ERROR: agent id", agent, now),
        (Entity.AGENT, "rejected", "FAIL_BAD_PARAMS: ERROR: name too long", agent, now),
        (Entity.CONVERSATION, "decode", "DecodeError: bad record at byte 3", b"\x00junk", now),
        (
            Entity.CUSTOMER,
            "validation",
            "field attributes has 11 items",
            customer,
            now - 3 * HOUR_MS,
        ),
    ]
    producer = Producer({"bootstrap.servers": env.bootstrap})
    for i, (entity, reason, error, value, ts) in enumerate(rows):
        producer.produce(
            env.dlq,
            key=f"k{i}".encode(),
            value=value,
            headers=headers(env, entity, reason, error, i),
            timestamp=ts,
            partition=i % 3,
        )
    assert producer.flush(10) == 0
    return env


def test_counts_and_decoded_samples_as_json(dead_letters: Env) -> None:
    result = inspect(dead_letters, "--json", "--samples", "4")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["scanned"], report["matched"]) == (4, 4)
    assert report["by_reason"] == {"rejected": 2, "decode": 1, "validation": 1}
    assert report["by_entity"] == {"agent": 2, "conversation": 1, "customer": 1}
    assert report["by_error_class"] == {
        "FAIL_BAD_PARAMS": 2,
        "DecodeError": 1,
        "field attributes has": 1,
    }
    samples = {s["key"]: s for s in report["samples"]}
    assert samples["k0"]["payload"]["externalAgentId"]
    assert ["dlq.reason", "rejected"] in samples["k0"]["headers"]
    assert ["trace", "abc"] in samples["k0"]["headers"]
    assert samples["k2"]["payload"] is None
    assert samples["k2"]["payload_problem"].startswith("does not decode: DecodeError")


@pytest.mark.parametrize(
    ("args", "matched", "reasons"),
    [
        pytest.param(["--since", "1h"], 3, {"rejected": 2, "decode": 1}, id="since-relative"),
        pytest.param(["--until", "2h"], 1, {"validation": 1}, id="until-relative"),
        pytest.param(["--reason", "rejected"], 2, {"rejected": 2}, id="reason"),
        pytest.param(["--entity", "customer", "--since", "1d"], 1, {"validation": 1}, id="entity"),
    ],
)
def test_filters(dead_letters: Env, args: list[str], matched: int, reasons: dict[str, int]) -> None:
    result = inspect(dead_letters, "--json", *args)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["scanned"], report["matched"]) == (4, matched)
    assert report["by_reason"] == reasons


def test_iso_since_and_text_report(dead_letters: Env) -> None:
    an_hour_ago = datetime.fromtimestamp(time.time() - 3600, UTC).isoformat()
    result = inspect(dead_letters, "--since", an_hour_ago, "--samples", "3")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"{dead_letters.dlq}: 3 dead letter(s) selected of 4" in out
    assert "by error class:" in out and "FAIL_BAD_PARAMS" in out
    assert "header dlq.error: FAIL_BAD_PARAMS" in out
    assert '"externalAgentId"' in out


def test_missing_dlq_topic_exits_1(env: Env) -> None:
    result = inspect(env, dlq="it.no-such-dlq")
    assert result.returncode == 1
    assert "cannot read it.no-such-dlq" in result.stderr


def test_bad_time_exits_2(env: Env) -> None:
    result = inspect(env, "--since", "yesterday")
    assert result.returncode == 2
    assert "--since 'yesterday' is neither an ISO-8601 time" in result.stderr
