"""Readiness under long outages (HEALTH_OUTAGE_S), the start line and METRICS_HOST, as wired by
the composition root: the broker outage fed by KafkaSource, the API outage fed by the sender."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from confluent_kafka import KafkaError
from prometheus_client import CollectorRegistry

from consumer.health import HealthServer, Probe
from consumer.kafka import KafkaSource
from consumer.logs import JsonFormatter, TextFormatter
from consumer.metrics import Metrics
from consumer.outage import Outage
from consumer.records import Batch, Entity
from consumer.retry import Throttle
from consumer.sender import Credentials, Sender
from consumer.service import effective_settings
from consumer.settings import Settings
from consumer.sink import ApiSink, Kind, Outcome

SETTINGS = Settings.from_env(
    {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "ASAPP_API_ID": "app-id",
        "ASAPP_API_SECRET": "s3cret-value",
        "SCHEMA_REGISTRY_URL": "http://registry.test:8081",
        "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "reg-user:reg-pass",
        "KAFKA_SASL_PASSWORD": "kafka-pass",
        "KAFKA_SASL_USERNAME": "kafka-user",
        "HEALTH_OUTAGE_S": "120",
    }
)


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


class FakeMessage:
    """One fetched record, the parts to_message reads."""

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return "asapp.metadata.agent"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 1

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v"

    def timestamp(self) -> tuple[int, int]:
        return (0, -1)

    def headers(self) -> None:
        return None


class FakeConsumer:
    def __init__(self) -> None:
        self.batches: list[list[FakeMessage]] = []

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        return self.batches.pop(0) if self.batches else []


def _down() -> KafkaError:
    return KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")


def test_broker_unreachable_past_the_bound_blocks_readiness_until_a_fetch() -> None:
    clock, fake = Clock(), FakeConsumer()
    src = KafkaSource(SETTINGS, consumer=fake, clock=clock)
    for _ in range(13):  # librdkafka repeats the error while it reconnects
        src._on_error(_down())
        clock.now += 10
    assert src.broker_problem() == "Kafka brokers unreachable for 130s (_ALL_BROKERS_DOWN)"
    fake.batches.append([FakeMessage()])
    assert len(src.consume(10, 0.0)) == 1
    assert src.broker_problem() is None


@pytest.mark.parametrize(
    "code, counts",
    [
        pytest.param(KafkaError._TRANSPORT, True, id="transport"),
        pytest.param(KafkaError._RESOLVE, True, id="resolve"),
        pytest.param(KafkaError.TOPIC_AUTHORIZATION_FAILED, False, id="not-an-outage"),
    ],
)
def test_which_client_errors_count_as_broker_down(code: int, counts: bool) -> None:
    clock = Clock()
    src = KafkaSource(SETTINGS, consumer=FakeConsumer(), clock=clock)
    for _ in range(7):  # 140 s of errors, one every 20 s
        src._on_error(KafkaError(code, "x"))
        clock.now += 20
    assert (src.broker_problem() is not None) is counts


@pytest.fixture
def sender() -> Iterator[tuple[Sender, Outage, Clock]]:
    clock = Clock()
    outage = Outage("every ASAPP API request failing", bound_s=120.0, clock=clock)
    metrics = Metrics(CollectorRegistry())
    sink = ApiSink(
        base_url="https://api.example.test",
        api_id="id",
        api_secret="secret-value",
        timeout_s=1.0,
        max_connections=1,
        transport=httpx.MockTransport(lambda r: httpx.Response(500)),
    )
    s = Sender(
        sink=sink,
        throttle=Throttle(rate_rps=1000.0),
        metrics=metrics,
        credentials=Credentials(metrics),
        threads=1,
        retry_max_backoff_s=1.0,
        malformed_max_attempts=1,
        outage=outage,
    )
    yield s, outage, clock
    s.stop()
    sink.close()


@pytest.mark.parametrize(
    "status, detail, blocks",
    [
        pytest.param(None, "ConnectError: connection refused", True, id="no-answer"),
        pytest.param(503, "", True, id="5xx"),
        pytest.param(429, "", False, id="429-is-an-answer"),
        pytest.param(200, "", False, id="ok"),
    ],
)
def test_api_outage_is_fed_every_answer(
    sender: tuple[Sender, Outage, Clock], status: int | None, detail: str, blocks: bool
) -> None:
    s, outage, clock = sender
    batch = Batch(Entity.AGENT)
    failing = Outcome(Kind.TRANSIENT, None, 0.1, detail="ConnectError: connection refused")
    s._observe(batch, [], failing)
    clock.now += 121
    s._observe(batch, [], Outcome(Kind.TRANSIENT, status, 0.1, detail=detail))
    reason = outage.problem()
    assert (reason is not None) is blocks
    if blocks:
        assert reason == f"every ASAPP API request failing for 121s ({detail or 'HTTP 503'})"


def test_probe_reports_outage_blockers_with_their_reasons() -> None:
    clock = Clock()
    outage = Outage("Kafka brokers unreachable", bound_s=120.0, clock=clock)
    outage.failed("_TRANSPORT")
    clock.now += 125
    probe = Probe(
        last_iteration=clock,
        assigned=lambda: 3,
        blockers=[lambda: None, outage.problem],
        stopping=lambda: False,
        stall_timeout_s=60.0,
        clock=clock,
    )
    assert probe.ready() == (False, "Kafka brokers unreachable for 125s (_TRANSPORT)")


def test_health_server_binds_the_metrics_host() -> None:
    probe = Probe(lambda: 0.0, lambda: 0, [], lambda: False, 60.0)
    server = HealthServer(registry=CollectorRegistry(), probe=probe, port=0, host="127.0.0.1")
    try:
        assert server._server.server_address[0] == "127.0.0.1"
    finally:
        server._server.server_close()  # never started: stop() would wait for serve_forever


def test_effective_settings_carry_every_field_with_secrets_masked() -> None:
    out = effective_settings(SETTINGS)
    assert set(out) == {f for f in Settings.__dataclass_fields__}
    text = json.dumps(out, default=str)
    for secret in ("s3cret-value", "reg-pass", "kafka-pass"):
        assert secret not in text
    assert out["api_secret"] == "***"
    assert out["schema_registry_auth"] == "reg-user:***"
    assert out["kafka_properties"] == {"sasl.password": "***", "sasl.username": "kafka-user"}
    assert out["metrics_host"] == "0.0.0.0"
    assert out["topics"] == {
        "agent": ["asapp.metadata.agent"],
        "conversation": ["asapp.metadata.conversation"],
        "customer": ["asapp.metadata.customer"],
    }


def _start_record() -> logging.LogRecord:
    record = logging.LogRecord("consumer", logging.INFO, __file__, 1, "starting", (), None)
    record.event = "start"
    record.settings = effective_settings(SETTINGS)
    return record


def test_text_start_line_shows_the_settings_readably() -> None:
    line = TextFormatter().format(_start_record())
    assert "consumer: starting bootstrap_servers=127.0.0.1:1 api_id=app-id api_secret=***" in line
    assert " health_outage_s=120.0 " in line
    assert ' kafka_properties={"sasl.password":"***","sasl.username":"kafka-user"}' in line
    assert "\n" not in line


def test_json_start_line_carries_the_settings() -> None:
    out = json.loads(JsonFormatter().format(_start_record()))
    assert out["settings"]["api_secret"] == "***"
    assert out["settings"]["batch_max_items"] == 1000
