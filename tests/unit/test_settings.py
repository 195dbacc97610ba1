"""Settings.from_env: defaults, every contract variable, errors that name the variable."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from consumer.errors import ConfigError
from consumer.records import Entity
from consumer.settings import (
    API_MAX_ITEMS,
    DEFAULT_TOPICS,
    ENV_VARS,
    ConfigErrors,
    Settings,
    config_warnings,
    lookalikes,
)

SECRET = "top-secret-value-123"
BASE = {
    "KAFKA_BOOTSTRAP_SERVERS": "broker-1:9092,broker-2:9092",
    "ASAPP_API_ID": "app-id",
    "ASAPP_API_SECRET": SECRET,
}


def env(**overrides: str) -> dict[str, str]:
    out = dict(BASE)
    out.update(overrides)
    return out


def without(name: str) -> dict[str, str]:
    return {k: v for k, v in BASE.items() if k != name}


def test_defaults() -> None:
    s = Settings.from_env(BASE)
    assert s.bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert s.api_id == "app-id"
    assert s.api_secret == SECRET
    assert s.group_id == "asapp-metadata-consumer"
    assert dict(s.topics) == {e: (t,) for e, t in DEFAULT_TOPICS.items()}
    assert s.kafka_properties == {}
    assert s.schema_registry_url is None
    assert s.schema_registry_auth is None
    assert s.api_base_url == "https://api.sandbox.asapp.com"
    assert s.batch_max_items == API_MAX_ITEMS == 1000
    assert s.batch_max_bytes == 1_000_000
    assert s.batch_linger_ms == 1000
    assert s.max_in_flight == 16
    assert s.rate_limit_rps == 90.0
    assert s.retry_max_backoff_s == 60.0
    assert s.malformed_response_max_attempts == 5
    assert s.dlq_topic == "asapp.metadata.dlq"
    assert s.metrics_port == 9400
    assert (s.log_format, s.log_level) == ("json", "INFO")
    assert s.topic_entities == {t: e for e, t in DEFAULT_TOPICS.items()}


@pytest.mark.parametrize("name", ["KAFKA_BOOTSTRAP_SERVERS", "ASAPP_API_ID", "ASAPP_API_SECRET"])
@pytest.mark.parametrize("value", [None, "", "   "], ids=["unset", "empty", "blank"])
def test_required_variables(name: str, value: str | None) -> None:
    e = without(name)
    if value is not None:
        e[name] = value
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(e)


def test_credentials_optional_for_tools_that_never_call_the_api() -> None:
    s = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "b:9092"}, require_credentials=False)
    assert s.bootstrap_servers == "b:9092"
    with pytest.raises(ConfigError, match="KAFKA_BOOTSTRAP_SERVERS"):
        Settings.from_env({}, require_credentials=False)


def test_topic_lists_and_disabled_entity() -> None:
    s = Settings.from_env(
        env(TOPIC_AGENT=" agents-a , agents-b ,", TOPIC_CONVERSATION="", TOPIC_CUSTOMER="cust")
    )
    assert dict(s.topics) == {Entity.AGENT: ("agents-a", "agents-b"), Entity.CUSTOMER: ("cust",)}
    assert s.topic_entities == {
        "agents-a": Entity.AGENT,
        "agents-b": Entity.AGENT,
        "cust": Entity.CUSTOMER,
    }


def test_all_topics_empty_is_an_error() -> None:
    with pytest.raises(ConfigError, match="TOPIC_AGENT"):
        Settings.from_env(env(TOPIC_AGENT="", TOPIC_CONVERSATION=" , ", TOPIC_CUSTOMER=""))


def test_topic_shared_by_two_entities_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"TOPIC_AGENT.*TOPIC_CUSTOMER"):
        Settings.from_env(env(TOPIC_AGENT="a,shared", TOPIC_CUSTOMER="shared"))


def test_dlq_topic_cannot_be_a_source_topic() -> None:
    with pytest.raises(ConfigError, match="DLQ_TOPIC"):
        Settings.from_env(env(DLQ_TOPIC=DEFAULT_TOPICS[Entity.AGENT]))


def test_kafka_pass_through_properties() -> None:
    s = Settings.from_env(
        env(
            KAFKA_SECURITY_PROTOCOL="SASL_SSL",
            KAFKA_SASL_MECHANISMS="PLAIN",
            KAFKA_SASL_USERNAME="user",
            KAFKA_SASL_PASSWORD="pw",
            KAFKA_SESSION_TIMEOUT_MS="45000",
            KAFKA_GROUP_ID="my-group",
        )
    )
    assert s.kafka_properties == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "PLAIN",
        "sasl.username": "user",
        "sasl.password": "pw",
        "session.timeout.ms": "45000",
    }
    assert s.group_id == "my-group"
    assert "bootstrap.servers" not in s.kafka_properties


@pytest.mark.parametrize(
    "name",
    ["KAFKA_ENABLE_AUTO_COMMIT", "KAFKA_ENABLE_AUTO_OFFSET_STORE"],
)
def test_reserved_kafka_properties_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(env(**{name: "true"}))


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        pytest.param("BATCH_MAX_ITEMS", "1001", "out of range", id="items-over-api-max"),
        pytest.param("BATCH_MAX_ITEMS", "0", "out of range", id="items-zero"),
        pytest.param("BATCH_MAX_ITEMS", "ten", "not an integer", id="items-not-int"),
        pytest.param("BATCH_MAX_ITEMS", "1.5", "not an integer", id="items-float"),
        pytest.param("BATCH_MAX_BYTES", "100", "out of range", id="bytes-too-small"),
        pytest.param("BATCH_LINGER_MS", "-1", "out of range", id="linger-negative"),
        pytest.param("MAX_IN_FLIGHT", "257", "out of range", id="in-flight-high"),
        pytest.param("INGEST_WORKERS", "17", "out of range", id="workers-high"),
        pytest.param("INGEST_WORKERS", "two", "not an integer", id="workers-text"),
        pytest.param("METRICS_PORT", "70000", "out of range", id="port-high"),
        pytest.param("RATE_LIMIT_RPS", "fast", "not a number", id="rps-not-number"),
        pytest.param("RATE_LIMIT_RPS", "0", "out of range", id="rps-zero"),
        pytest.param("HTTP_TIMEOUT_S", "nan", "out of range", id="timeout-nan"),
        pytest.param("SHUTDOWN_TIMEOUT_S", "0.5", "out of range", id="shutdown-short"),
        pytest.param("MALFORMED_RESPONSE_MAX_ATTEMPTS", "0", "out of range", id="malformed-0"),
        pytest.param("ASAPP_API_BASE_URL", "api.asapp.com", "http(s) URL", id="url-no-scheme"),
        pytest.param("ASAPP_API_BASE_URL", "ftp://x", "http(s) URL", id="url-ftp"),
        pytest.param("SCHEMA_REGISTRY_URL", "http://", "http(s) URL", id="registry-no-host"),
        pytest.param("LOG_FORMAT", "xml", "must be one of", id="log-format"),
        pytest.param("LOG_LEVEL", "verbose", "must be one of", id="log-level"),
    ],
)
def test_invalid_values_name_the_variable(name: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env(**{name: value}))
    assert name in str(info.value)
    assert problem in str(info.value)


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        pytest.param("BATCH_MAX_ITEMS", "1000", "batch_max_items", 1000, id="items-max"),
        pytest.param("BATCH_MAX_ITEMS", " 7 ", "batch_max_items", 7, id="items-padded"),
        pytest.param("BATCH_LINGER_MS", "0", "batch_linger_ms", 0, id="linger-zero"),
        pytest.param("RATE_LIMIT_RPS", "12.5", "rate_limit_rps", 12.5, id="rps-float"),
        pytest.param(
            "ASAPP_API_BASE_URL",
            "https://api.asapp.com/",
            "api_base_url",
            "https://api.asapp.com",
            id="url-trailing-slash",
        ),
        pytest.param("LOG_FORMAT", "TEXT", "log_format", "text", id="format-case"),
        pytest.param("LOG_LEVEL", "debug", "log_level", "DEBUG", id="level-upper"),
        pytest.param("BATCH_MAX_ITEMS", "", "batch_max_items", 1000, id="empty-is-default"),
    ],
)
def test_valid_values(name: str, value: str, field: str, expected: Any) -> None:
    assert getattr(Settings.from_env(env(**{name: value})), field) == expected


def test_secrets_not_in_repr() -> None:
    s = Settings.from_env(
        env(
            KAFKA_SASL_PASSWORD="kafka-pw-987",
            SCHEMA_REGISTRY_URL="https://registry.example",
            SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO="user:registry-pw-654",
        )
    )
    text = repr(s) + str(s)
    for secret in (SECRET, "kafka-pw-987", "registry-pw-654"):
        assert secret not in text
    assert "app-id" in text  # repr still shows the non-secret fields


def test_settings_are_frozen() -> None:
    s = Settings.from_env(BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.batch_max_items = 5  # type: ignore[misc]


#: A distinctive valid value for every variable in ENV_VARS.
DISTINCT = {
    "KAFKA_BOOTSTRAP_SERVERS": "other-broker:19092",
    "KAFKA_GROUP_ID": "other-group",
    "TOPIC_AGENT": "t-agent-x",
    "TOPIC_CONVERSATION": "t-convo-x",
    "TOPIC_CUSTOMER": "t-customer-x",
    "SCHEMA_REGISTRY_URL": "http://registry.x:8081",
    "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "u:p",
    "ASAPP_API_BASE_URL": "https://api.x.example",
    "ASAPP_API_ID": "other-id",
    "ASAPP_API_SECRET": "other-secret",
    "BATCH_MAX_ITEMS": "17",
    "BATCH_MAX_BYTES": "4321",
    "BATCH_LINGER_MS": "123",
    "MAX_IN_FLIGHT": "3",
    "INGEST_WORKERS": "2",
    "MAX_BUFFERED_MESSAGES": "1234",
    "MAX_BUFFERED_BYTES": "2000000",
    "BATCH_COALESCE": "true",
    "RATE_LIMIT_RPS": "7.5",
    "DAILY_REQUEST_QUOTA": "99",
    "QUOTA_TOPIC": "quota-x",
    "QUOTA_RESERVE": "7",
    "QUOTA_MAX_WAIT_S": "12.5",
    "QUOTA_PACING": "false",
    "HTTP_TIMEOUT_S": "4.5",
    "RETRY_MAX_BACKOFF_S": "8.5",
    "MALFORMED_RESPONSE_MAX_ATTEMPTS": "9",
    "DLQ_TOPIC": "dlq-x",
    "METRICS_PORT": "9999",
    "METRICS_HOST": "127.0.0.1",
    "SHUTDOWN_TIMEOUT_S": "3.5",
    "REVOKE_TIMEOUT_S": "2.5",
    "COMMIT_TIMEOUT_S": "1.5",
    "HEALTH_STALL_TIMEOUT_S": "11.5",
    "HEALTH_OUTAGE_S": "33.5",
    "LOG_FORMAT": "text",
    "LOG_LEVEL": "error",
}


def test_distinct_values_cover_env_vars() -> None:
    assert set(DISTINCT) == set(ENV_VARS)


@pytest.mark.parametrize("name", sorted(ENV_VARS))
def test_every_env_var_is_read(name: str) -> None:
    baseline = Settings.from_env(BASE)
    changed = Settings.from_env(env(**{name: DISTINCT[name]}))
    assert changed != baseline, f"{name} is listed in ENV_VARS but from_env ignores it"


@pytest.mark.parametrize(
    "raw, expected",
    [
        pytest.param("true", True, id="true"),
        pytest.param("ON", True, id="on"),
        pytest.param("0", False, id="zero"),
        pytest.param("", False, id="unset"),
    ],
)
def test_batch_coalesce_reads_booleans(raw: str, expected: bool) -> None:
    assert Settings.from_env(env(BATCH_COALESCE=raw)).batch_coalesce is expected


def test_batch_coalesce_rejects_a_non_boolean_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="BATCH_COALESCE='maybe'"):
        Settings.from_env(env(BATCH_COALESCE="maybe"))


def test_max_buffered_bytes_below_one_mebibyte_is_refused() -> None:
    with pytest.raises(ConfigError, match="MAX_BUFFERED_BYTES"):
        Settings.from_env(env(MAX_BUFFERED_BYTES="1000"))


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigErrors) as info:
        Settings.from_env({"BATCH_MAX_ITEMS": "ten", "LOG_LEVEL": "verbose"})
    names = ["KAFKA_BOOTSTRAP_SERVERS", "ASAPP_API_ID", "ASAPP_API_SECRET"]
    names += ["BATCH_MAX_ITEMS", "LOG_LEVEL"]
    assert len(info.value.problems) == len(names)
    for name, problem in zip(names, info.value.problems, strict=True):
        assert name in problem
        assert name in str(info.value)
    assert str(info.value).startswith("5 problems:")


def test_a_single_problem_reads_as_one_line() -> None:
    with pytest.raises(ConfigErrors) as info:
        Settings.from_env(without("ASAPP_API_ID"))
    assert str(info.value) == "ASAPP_API_ID is required: the asapp-api-id issued for your app"


def test_topic_and_reserved_property_problems_are_collected_with_the_rest() -> None:
    with pytest.raises(ConfigErrors) as info:
        Settings.from_env(
            env(
                TOPIC_AGENT="shared",
                TOPIC_CUSTOMER="shared",
                KAFKA_ENABLE_AUTO_COMMIT="true",
                DLQ_TOPIC="shared",
                METRICS_PORT="-1",
            )
        )
    text = str(info.value)
    for fragment in ("TOPIC_CUSTOMER", "KAFKA_ENABLE_AUTO_COMMIT", "DLQ_TOPIC", "METRICS_PORT"):
        assert fragment in text
    assert len(info.value.problems) == 4


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param({"BATCH_MAX_ITEM": "5"}, [("BATCH_MAX_ITEM", "BATCH_MAX_ITEMS")], id="plural"),
        pytest.param({"TOPIC_AGENTS": "foo"}, [("TOPIC_AGENTS", "TOPIC_AGENT")], id="topic-s"),
        pytest.param({"batch_max_items": "5"}, [("batch_max_items", "BATCH_MAX_ITEMS")], id="case"),
        pytest.param(
            {"ASAPP_API_SECRT": "x"}, [("ASAPP_API_SECRT", "ASAPP_API_SECRET")], id="typo"
        ),
        pytest.param({"KAFKA_BOOTSTRAP_SERVER": "b"}, [], id="kafka-pass-through-ignored"),
        pytest.param({"PATH": "/bin", "HOME": "/root", "HOSTNAME": "pod"}, [], id="unrelated"),
        pytest.param({"METRICS_SERVICE_PORT": "tcp://x"}, [], id="service-link-not-close"),
    ],
)
def test_lookalikes_suggest_the_variable_meant(
    extra: dict[str, str], expected: list[tuple[str, str]]
) -> None:
    assert lookalikes(env(**extra)) == expected


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        pytest.param({}, [], id="clean"),
        pytest.param({"RATE_LIMIT_RPS": "100"}, [], id="rps-at-limit"),
        pytest.param({"RATE_LIMIT_RPS": "500"}, ["RATE_LIMIT_RPS=500", "100"], id="rps-over"),
        pytest.param(
            {"TOPIC_AGENTS": "foo"}, ["TOPIC_AGENTS", "did you mean TOPIC_AGENT?"], id="typo"
        ),
    ],
)
def test_config_warnings(extra: dict[str, str], fragments: list[str]) -> None:
    e = env(**extra)
    warnings = config_warnings(e, Settings.from_env(e))
    assert len(warnings) == (1 if fragments else 0)
    for fragment in fragments:
        assert fragment in warnings[0]


def test_quota_reserve_defaults_to_five_percent_of_the_quota() -> None:
    assert Settings.from_env(env(DAILY_REQUEST_QUOTA="10000")).quota_reserve == 500
    assert Settings.from_env(env(DAILY_REQUEST_QUOTA="10000", QUOTA_RESERVE="0")).quota_reserve == 0


def test_quota_reserve_above_the_quota_is_refused() -> None:
    with pytest.raises(ConfigError, match="QUOTA_RESERVE"):
        Settings.from_env(env(DAILY_REQUEST_QUOTA="100", QUOTA_RESERVE="101"))


def test_quota_topic_must_not_be_a_source_or_dead_letter_topic() -> None:
    with pytest.raises(ConfigError, match="QUOTA_TOPIC"):
        Settings.from_env(env(QUOTA_TOPIC="asapp.metadata.dlq"))


@pytest.mark.parametrize(
    "raw, expected",
    [
        pytest.param("", "0.0.0.0", id="default-every-interface"),
        pytest.param("127.0.0.1", "127.0.0.1", id="loopback"),
        pytest.param("::", "::", id="ipv6-any"),
        pytest.param("localhost", "localhost", id="hostname"),
        pytest.param("metrics.pod-1.svc", "metrics.pod-1.svc", id="dotted-hostname"),
    ],
)
def test_metrics_host_accepts_addresses_and_hostnames(raw: str, expected: str) -> None:
    assert Settings.from_env(env(METRICS_HOST=raw)).metrics_host == expected


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("http://0.0.0.0", id="url"),
        pytest.param("0.0.0.0:9400", id="with-port"),
        pytest.param("bad_host", id="underscore"),
        pytest.param("-lead.example", id="leading-dash"),
    ],
)
def test_metrics_host_rejects_what_cannot_be_bound(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"METRICS_HOST=.*IP address or hostname"):
        Settings.from_env(env(METRICS_HOST=raw))


def test_health_outage_bound_defaults_to_two_minutes() -> None:
    assert Settings.from_env(BASE).health_outage_s == 120.0
