"""consumer.avro_encode: the two wire formats and the registry id of our schema."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka.schema_registry.error import SchemaRegistryError

from consumer.avro_encode import (
    SchemaRefused,
    encode_confluent,
    encode_plain,
    registered_id,
    subject_for,
)
from consumer.decoder import PlainAvroDecoder
from consumer.errors import RegistryUnavailable, ValidationError
from consumer.records import Entity
from consumer.schemas import reader_schema


def test_plain_round_trips_and_confluent_frames() -> None:
    record = {"externalAgentId": "a1", "concurrency": 2}
    body = encode_plain(Entity.AGENT, record)
    assert PlainAvroDecoder(Entity.AGENT).decode(body)["concurrency"] == 2
    framed = encode_confluent(258, reader_schema(Entity.AGENT), record)
    assert framed[:5] == b"\x00\x00\x00\x01\x02" and framed[5:] == body


@pytest.mark.parametrize(
    "record",
    [
        pytest.param({"agentName": "x"}, id="missing-id"),
        pytest.param({"externalAgentId": 5}, id="wrong-type"),
        pytest.param({"externalAgentId": "a", "concurrency": 2**40}, id="int32"),
    ],
)
def test_a_record_that_does_not_fit_is_a_validation_error(record: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="does not fit the Avro schema"):
        encode_plain(Entity.AGENT, record)


class FakeRegistry:
    """lookup_schema answers ``lookup`` (an id, or an exception); register_schema returns 9."""

    def __init__(self, lookup: int | Exception, register: int | Exception = 9) -> None:
        self._lookup, self._register = lookup, register
        self.registered: list[str] = []

    def lookup_schema(self, subject: str, schema: Any) -> Any:
        if isinstance(self._lookup, Exception):
            raise self._lookup
        return type("Registered", (), {"schema_id": self._lookup})()

    def register_schema(self, subject: str, schema: Any) -> int:
        self.registered.append(subject)
        if isinstance(self._register, Exception):
            raise self._register
        return self._register


def test_registered_id_looks_up_then_registers() -> None:
    assert registered_id(FakeRegistry(4), Entity.AGENT, "t") == 4
    missing = FakeRegistry(SchemaRegistryError(404, 40401, "Subject not found"))
    assert registered_id(missing, Entity.AGENT, "t") == 9
    assert missing.registered == [subject_for("t")] == ["t-value"]


@pytest.mark.parametrize(
    ("registry", "error"),
    [
        pytest.param(
            FakeRegistry(
                SchemaRegistryError(404, 40401, "no"), SchemaRegistryError(409, 409, "incompatible")
            ),
            SchemaRefused,
            id="refused",
        ),
        pytest.param(
            FakeRegistry(SchemaRegistryError(503, 50301, "down")), RegistryUnavailable, id="5xx"
        ),
        pytest.param(
            FakeRegistry(ConnectionError("refused")), RegistryUnavailable, id="unreachable"
        ),
    ],
)
def test_registered_id_errors(registry: FakeRegistry, error: type[Exception]) -> None:
    with pytest.raises(error, match="t-value"):
        registered_id(registry, Entity.AGENT, "t")
