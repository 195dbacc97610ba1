"""``metadata-consumer check`` end to end, as a subprocess against the local broker and the
emulated API: a passing report (partitions, committed offsets and lag, one API request) and
its failure paths (unreachable broker, missing topic, wrong credentials, configuration
errors), each asserting the exit code and the phrase an operator acts on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as KTopicPartition

from consumer.records import Entity
from consumer.sandbox.api import EmulatedApi
from consumer.sandbox.broker import free_port

from .conftest import Env, service_environment


def check(
    env: dict[str, str], *args: str, timeout_s: float = 30
) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "ASAPP_", "TOPIC_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "consumer", "check", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def rows(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    report = json.loads(result.stdout)
    assert report["exit_code"] == result.returncode
    return list(report["checks"])


def test_a_working_setup_passes_with_partitions_lag_and_one_request(
    env: Env, api: EmulatedApi
) -> None:
    for i in range(6):  # one batch each: the local broker's high watermark counts batches
        env.produce_events(Entity.AGENT, 1, start=i, partition=0)
    committer = Consumer({"bootstrap.servers": env.bootstrap, "group.id": env.group})
    try:
        committer.commit(
            offsets=[KTopicPartition(env.topics[Entity.AGENT], 0, 2)], asynchronous=False
        )
    finally:
        committer.close()
    result = check(service_environment(env, api.url), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    by_check = {r["check"]: r for r in rows(result)}
    assert {r["status"] for r in by_check.values()} <= {"pass", "skip"}
    assert by_check[f"dlq topic {env.dlq}"]["detail"] == "3 partition(s)"
    agent = by_check[f"group {env.group} on {env.topics[Entity.AGENT]}"]["detail"]
    assert agent == "committed on 1/3 partition(s), lag 4"
    assert by_check["api credentials (1 request)"]["status"] == "pass"
    assert len(api.requests()) == 1
    assert api.accepted_count() == 0


def test_no_api_call_sends_nothing_and_the_table_says_so(env: Env, api: EmulatedApi) -> None:
    result = check(service_environment(env, api.url), "--no-api-call")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--no-api-call: no request sent" in result.stdout
    assert "all checks passed" in result.stdout
    assert api.requests() == []


def test_unreachable_broker_fails_within_seconds(env: Env, api: EmulatedApi) -> None:
    dead = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = check(
        service_environment(env, api.url, KAFKA_BOOTSTRAP_SERVERS=dead),
        "--no-api-call",
        "--timeout-s",
        "2",
    )
    assert time.monotonic() - started < 10
    assert result.returncode == 1
    assert f"{dead} not reachable" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_missing_topic_is_named(env: Env, api: EmulatedApi) -> None:
    result = check(
        service_environment(env, api.url, TOPIC_CUSTOMER="it.no-such-topic"), "--no-api-call"
    )
    assert result.returncode == 1
    line = next(x for x in result.stdout.splitlines() if "it.no-such-topic" in x)
    assert "FAIL" in line and "does not exist" in line


@pytest.mark.parametrize(
    ("override", "phrase"),
    [
        pytest.param(
            {"ASAPP_API_SECRET": "wr0ng-s3cret-77"},
            "ASAPP_API_ID / ASAPP_API_SECRET rejected",
            id="secret",
        ),
        pytest.param({"ASAPP_API_ID": "someone-else"}, "HTTP 401", id="id"),
    ],
)
def test_wrong_credentials_fail(
    env: Env, api: EmulatedApi, override: dict[str, str], phrase: str
) -> None:
    result = check(service_environment(env, api.url, **override))
    assert result.returncode == 1
    line = next(x for x in result.stdout.splitlines() if x.startswith("api credentials"))
    assert "FAIL" in line and phrase in line
    assert "wr0ng-s3cret-77" not in result.stdout + result.stderr


def test_configuration_errors_all_at_once_with_did_you_mean() -> None:
    result = check({"BATCH_MAX_ITEMS": "many", "TOPIC_AGENTS": "x", "LOG_FORMAT": "text"})
    assert result.returncode == 2
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "ASAPP_API_ID", "ASAPP_API_SECRET", "BATCH_MAX_ITEMS"):
        assert name in result.stdout
    assert "fix the configuration first" in result.stdout


def test_schema_registry_reachable_and_missing_subjects_warned(env: Env, api: EmulatedApi) -> None:
    from consumer.sandbox.registry import SchemaRegistryStandIn
    from consumer.schemas import reader_schema

    with SchemaRegistryStandIn() as registry:
        registry.register(
            f"{env.topics[Entity.AGENT]}-value", json.dumps(reader_schema(Entity.AGENT))
        )
        result = check(
            service_environment(env, api.url, SCHEMA_REGISTRY_URL=registry.url),
            "--json",
            "--no-api-call",
        )
    assert result.returncode == 0, result.stdout + result.stderr
    by_check = {r["check"]: r for r in rows(result)}
    assert by_check["schema registry"] == {
        "check": "schema registry",
        "status": "pass",
        "detail": "1 subject(s)",
    }
    warned = by_check["registry subjects"]
    assert warned["status"] == "warn"
    assert f"{env.topics[Entity.CUSTOMER]}-value" in warned["detail"]


def test_unreachable_schema_registry_fails(env: Env, api: EmulatedApi) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    result = check(
        service_environment(env, api.url, SCHEMA_REGISTRY_URL=dead),
        "--no-api-call",
        "--timeout-s",
        "2",
    )
    assert result.returncode == 1
    line = next(x for x in result.stdout.splitlines() if x.startswith("schema registry"))
    assert "FAIL" in line and dead in line
