"""librdkafka configs built from Settings, dead-letter headers, and redaction. No broker."""

from __future__ import annotations

import pytest

from consumer.errors import ConfigError
from consumer.kafka import (
    CLASSIC_ONLY_PROPERTIES,
    KafkaSource,
    consumer_config,
    dead_letter_headers,
    producer_config,
    redacted,
)
from consumer.records import DeadLetter, Entity, Message, Position
from consumer.settings import Settings

BASE = {
    "KAFKA_BOOTSTRAP_SERVERS": "b1:9092",
    "ASAPP_API_ID": "id",
    "ASAPP_API_SECRET": "secret",
}


def settings(**kafka: str) -> Settings:
    return Settings.from_env({**BASE, **kafka})


def test_consumer_config_owns_commits_and_starts_at_earliest() -> None:
    config = consumer_config(settings())
    assert config["enable.auto.commit"] is False
    assert config["enable.auto.offset.store"] is False
    assert config["auto.offset.reset"] == "earliest"
    assert config["bootstrap.servers"] == "b1:9092"
    assert config["group.id"] == "asapp-metadata-consumer"


def test_consumer_config_passes_kafka_properties_through() -> None:
    config = consumer_config(
        settings(
            KAFKA_SECURITY_PROTOCOL="SASL_SSL",
            KAFKA_SASL_PASSWORD="pw",
            KAFKA_AUTO_OFFSET_RESET="latest",
            KAFKA_GROUP_ID="g2",
        )
    )
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.password"] == "pw"
    assert config["auto.offset.reset"] == "latest"  # an override the invariant survives
    assert config["group.id"] == "g2"


def test_settings_built_directly_cannot_turn_auto_commit_on() -> None:
    """Even properties that slipped past from_env's check are overridden."""
    s = Settings(
        bootstrap_servers="b:9092",
        api_id="id",
        api_secret="x",
        kafka_properties={"enable.auto.commit": "true", "enable.auto.offset.store": "true"},
    )
    config = consumer_config(s)
    assert config["enable.auto.commit"] is False
    assert config["enable.auto.offset.store"] is False


def test_producer_config_is_idempotent_and_shares_connection_properties() -> None:
    config = producer_config(
        settings(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CA_LOCATION="/ca.pem")
    )
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["bootstrap.servers"] == "b1:9092"
    assert config["security.protocol"] == "SSL"
    assert config["ssl.ca.location"] == "/ca.pem"
    assert "group.id" not in config
    assert "enable.auto.commit" not in config


@pytest.mark.parametrize(
    "name",
    [
        "KAFKA_AUTO_OFFSET_RESET",
        "KAFKA_SESSION_TIMEOUT_MS",
        "KAFKA_HEARTBEAT_INTERVAL_MS",
        "KAFKA_MAX_POLL_INTERVAL_MS",
        "KAFKA_FETCH_MIN_BYTES",
        "KAFKA_PARTITION_ASSIGNMENT_STRATEGY",
        "KAFKA_GROUP_INSTANCE_ID",
    ],
)
def test_producer_config_drops_consumer_only_properties(name: str) -> None:
    prop = name[len("KAFKA_") :].lower().replace("_", ".")
    s = settings(**{name: "1"})
    assert prop in consumer_config(s)
    assert prop not in producer_config(s)


@pytest.mark.parametrize(
    "name",
    [
        # librdkafka: "Configuration property isolation.level is a consumer property and will
        # be ignored by this producer instance" (a CONFWARN at every start).
        "KAFKA_ISOLATION_LEVEL",
        "KAFKA_MAX_PARTITION_FETCH_BYTES",
    ],
)
def test_producer_config_drops_other_common_consumer_properties(name: str) -> None:
    prop = name[len("KAFKA_") :].lower().replace("_", ".")
    assert prop not in producer_config(settings(**{name: "1"}))


def dead_letter(
    error: str = "FAIL_BAD_PARAMS: x",
    status: int | None = 200,
    headers: tuple[tuple[str, bytes], ...] = (),
    timestamp_ms: int | None = 1_700_000_000_123,
) -> DeadLetter:
    message = Message(
        Position("asapp.metadata.agent", 3, 1234), b"key", b"value", timestamp_ms, headers
    )
    return DeadLetter(message, Entity.AGENT, "rejected", error, status)


def test_dead_letter_headers() -> None:
    headers = dead_letter_headers(
        dead_letter(headers=(("trace-id", b"abc"), ("dlq.reason", b"stale")))
    )
    assert headers == [
        ("trace-id", b"abc"),
        ("dlq.source.topic", b"asapp.metadata.agent"),
        ("dlq.source.partition", b"3"),
        ("dlq.source.offset", b"1234"),
        ("dlq.reason", b"rejected"),
        ("dlq.error", b"FAIL_BAD_PARAMS: x"),
        ("dlq.entity", b"agent"),
        ("dlq.source.timestamp", b"1700000000123"),
        ("dlq.http.status", b"200"),
    ]


def test_dead_letter_headers_without_status_or_timestamp() -> None:
    names = [k for k, _ in dead_letter_headers(dead_letter(status=None, timestamp_ms=None))]
    assert "dlq.http.status" not in names
    assert "dlq.source.timestamp" not in names
    assert "dlq.reason" in names


def test_dead_letter_error_is_at_most_1_kib() -> None:
    headers = dict(dead_letter_headers(dead_letter(error="e" * 5120)))
    assert len(headers["dlq.error"]) == 1024
    assert headers["dlq.error"] == b"e" * 1024


def test_dead_letter_error_cut_stays_valid_utf8() -> None:
    """Cutting at 1024 bytes must not split a multi-byte character (the header is text)."""
    headers = dict(dead_letter_headers(dead_letter(error="€" * 1707)))  # 5121 bytes
    assert len(headers["dlq.error"]) <= 1024
    assert headers["dlq.error"].decode("utf-8").startswith("€" * 341)


@pytest.mark.parametrize(
    ("key", "masked"),
    [
        pytest.param("sasl.password", True, id="sasl-password"),
        pytest.param("ssl.key.password", True, id="ssl-key-password"),
        pytest.param("sasl.jaas.config", True, id="jaas"),
        pytest.param("sasl.oauthbearer.client.secret", True, id="oauth-secret"),
        pytest.param("SASL.PASSWORD", True, id="upper-case"),
        pytest.param("bootstrap.servers", False, id="bootstrap"),
        pytest.param("sasl.username", False, id="username"),
        pytest.param("security.protocol", False, id="protocol"),
    ],
)
def test_redacted(key: str, masked: bool) -> None:
    out = redacted({key: "value-123", "group.id": "g"})
    assert out[key] == ("***" if masked else "value-123")
    assert out["group.id"] == "g"


def test_redacted_consumer_config_hides_the_password() -> None:
    config = consumer_config(settings(KAFKA_SASL_PASSWORD="pw-456"))
    assert "pw-456" not in repr(redacted(config))
    assert config["sasl.password"] == "pw-456"  # the real config is untouched


# --------------------------------------------------------------------------- KIP-848
@pytest.mark.parametrize(
    ("env", "assignor"),
    [
        pytest.param({}, "range", id="classic-default"),
        pytest.param({"KAFKA_GROUP_PROTOCOL": "classic"}, "range", id="classic-explicit"),
        pytest.param({"KAFKA_GROUP_PROTOCOL": "consumer"}, None, id="kip848"),
        pytest.param({"KAFKA_GROUP_PROTOCOL": "CONSUMER"}, None, id="kip848-upper-case"),
        pytest.param(
            {"KAFKA_PARTITION_ASSIGNMENT_STRATEGY": "roundrobin"},
            "roundrobin",
            id="classic-override",
        ),
    ],
)
def test_group_protocol_decides_the_assignor(env: dict[str, str], assignor: str | None) -> None:
    config = consumer_config(settings(**env))
    assert config.get("partition.assignment.strategy") == assignor
    assert config["enable.auto.commit"] is False


def test_kip848_config_sets_no_classic_only_property_and_librdkafka_accepts_it() -> None:
    """The built config is accepted by the real client (creation checks it; no broker)."""
    config = consumer_config(
        settings(KAFKA_GROUP_PROTOCOL="consumer", KAFKA_GROUP_REMOTE_ASSIGNOR="uniform")
    )
    assert not set(CLASSIC_ONLY_PROPERTIES) & set(config)
    assert config["group.remote.assignor"] == "uniform"
    source = KafkaSource(
        settings(KAFKA_GROUP_PROTOCOL="consumer", KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    )
    assert source.close(5.0)


@pytest.mark.parametrize("prop", CLASSIC_ONLY_PROPERTIES)
def test_kip848_with_a_classic_only_property_is_a_config_error_naming_it(prop: str) -> None:
    name = "KAFKA_" + prop.upper().replace(".", "_")
    with pytest.raises(ConfigError, match=name):
        consumer_config(settings(KAFKA_GROUP_PROTOCOL="consumer", **{name: "6000"}))


def test_classic_config_with_classic_properties_is_fine() -> None:
    config = consumer_config(settings(KAFKA_SESSION_TIMEOUT_MS="6000"))
    assert config["session.timeout.ms"] == "6000"
