"""The schema registry stand-in, driven by the real confluent-kafka SchemaRegistryClient."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from consumer.sandbox.registry import RegistryCall, SchemaRegistryStandIn

AGENT_SCHEMA = json.dumps(
    {
        "type": "record",
        "name": "Agent",
        "namespace": "test",
        "fields": [
            {"name": "agent_id", "type": "string"},
            {"name": "ranking", "type": ["null", "int"], "default": None},
        ],
    }
)
OTHER_SCHEMA = json.dumps({"type": "record", "name": "Other", "fields": []})


@pytest.fixture
def registry() -> Iterator[SchemaRegistryStandIn]:
    with SchemaRegistryStandIn() as server:
        yield server


def client_for(registry: SchemaRegistryStandIn, **conf: Any) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": registry.url, "retries.wait.ms": 1, **conf})


def test_real_client_registers_and_fetches(registry: SchemaRegistryStandIn) -> None:
    client = client_for(registry)
    schema_id = client.register_schema("agents-value", Schema(AGENT_SCHEMA, "AVRO"))
    assert schema_id == 1
    fresh = client_for(registry)  # no cache: really GETs /schemas/ids/1
    fetched = fresh.get_schema(schema_id)
    assert json.loads(fetched.schema_str or "null") == json.loads(AGENT_SCHEMA)
    assert fetched.schema_type == "AVRO"
    assert fresh.get_subjects() == ["agents-value"]
    assert RegistryCall("GET", "/schemas/ids/1", 200) in registry.calls()


def test_ids_are_global_and_registration_is_idempotent(registry: SchemaRegistryStandIn) -> None:
    client = client_for(registry)
    first = client.register_schema("a-value", Schema(AGENT_SCHEMA, "AVRO"))
    # same schema, different whitespace, another subject: same id, like the real registry
    pretty = json.dumps(json.loads(AGENT_SCHEMA), indent=2)
    again = client_for(registry).register_schema("b-value", Schema(pretty, "AVRO"))
    other = client.register_schema("a-value", Schema(OTHER_SCHEMA, "AVRO"))
    assert first == again == 1
    assert other == 2
    assert registry.subjects() == ["a-value", "b-value"]
    assert client.get_versions("a-value") == [1, 2]
    latest = client.get_latest_version("a-value")
    assert (latest.schema_id, latest.version) == (2, 2)
    found = client_for(registry).lookup_schema("a-value", Schema(AGENT_SCHEMA, "AVRO"))
    assert (found.schema_id, found.version) == (1, 1)


def test_serializer_auto_registers_and_deserializer_fetches(
    registry: SchemaRegistryStandIn,
) -> None:
    ctx = SerializationContext("agents", MessageField.VALUE)
    serializer = AvroSerializer(client_for(registry), AGENT_SCHEMA)
    payload = serializer({"agent_id": "a1", "ranking": 7}, ctx)
    assert payload is not None
    assert payload[0] == 0 and int.from_bytes(payload[1:5], "big") == 1  # magic byte, id 1
    assert registry.subjects() == ["agents-value"]
    deserializer = AvroDeserializer(client_for(registry))
    assert deserializer(payload, ctx) == {"agent_id": "a1", "ranking": 7}


def test_unknown_id_is_404(registry: SchemaRegistryStandIn) -> None:
    with pytest.raises(SchemaRegistryError) as info:
        client_for(registry).get_schema(42)
    assert info.value.http_status_code == 404
    assert info.value.error_code == 40403


def test_unknown_subject_lookup_is_404(registry: SchemaRegistryStandIn) -> None:
    with pytest.raises(SchemaRegistryError) as info:
        client_for(registry).lookup_schema("nope-value", Schema(AGENT_SCHEMA, "AVRO"))
    assert (info.value.http_status_code, info.value.error_code) == (404, 40401)


def test_invalid_avro_is_422(registry: SchemaRegistryStandIn) -> None:
    with pytest.raises(SchemaRegistryError) as info:
        client_for(registry).register_schema("x-value", Schema("{not json", "AVRO"))
    assert info.value.http_status_code == 422


def test_fail_next_is_absorbed_by_client_retries(registry: SchemaRegistryStandIn) -> None:
    schema_id = registry.register("agents-value", AGENT_SCHEMA)
    registry.fail_next(2)
    fetched = client_for(registry, **{"max.retries": 3}).get_schema(schema_id)
    assert json.loads(fetched.schema_str or "null")["name"] == "Agent"
    assert [c.status for c in registry.calls()] == [503, 503, 200]


def test_fail_all_surfaces_503(registry: SchemaRegistryStandIn) -> None:
    schema_id = registry.register("agents-value", AGENT_SCHEMA)
    registry.fail_all()
    with pytest.raises(SchemaRegistryError) as info:
        client_for(registry, **{"max.retries": 1}).get_schema(schema_id)
    assert info.value.http_status_code == 503
    assert len(registry.calls()) == 2  # first try + one retry
    registry.fail_all(False)
    assert client_for(registry).get_schema(schema_id).schema_str == AGENT_SCHEMA


def test_control_endpoint_sets_faults(registry: SchemaRegistryStandIn) -> None:
    with httpx.Client(base_url=registry.url) as http:
        assert (
            http.post("/_standin/faults", json={"fail_next": 1, "status": 500}).status_code == 200
        )
        first = http.get("/subjects")
        second = http.get("/subjects")
        assert http.post("/_standin/faults", json={"bogus": 1}).status_code == 400
    assert first.status_code == 500 and first.json()["error_code"] == 50001
    assert second.status_code == 200 and second.json() == []
    assert [c.status for c in registry.calls()] == [500, 200]


def test_register_rejects_non_json_directly(registry: SchemaRegistryStandIn) -> None:
    with pytest.raises(ValueError, match="Invalid schema"):
        registry.register("x-value", "not json")
    assert registry.schema(1) is None


def test_reset_forgets_everything(registry: SchemaRegistryStandIn) -> None:
    registry.register("agents-value", AGENT_SCHEMA)
    registry.fail_all()
    registry.reset()
    assert registry.subjects() == []
    assert registry.register("other-value", OTHER_SCHEMA) == 1
    assert client_for(registry).get_subjects() == ["other-value"]


def test_cli_prints_ready_line_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "consumer.sandbox.registry", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("schema registry stand-in listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        client = SchemaRegistryClient({"url": url})
        assert client.register_schema("s-value", Schema(AGENT_SCHEMA, "AVRO")) == 1
        proc.terminate()
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.wait()
