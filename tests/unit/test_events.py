"""Sample events: valid Avro for our schemas, valid for the API's constraints, deterministic."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import KafkaError, KafkaException, Producer
from fastavro.validation import validate

from consumer.decoder import PlainAvroDecoder, RegistryAvroDecoder
from consumer.mapping import FIELDS, to_item
from consumer.records import Entity
from consumer.sandbox.events import (
    encode_confluent,
    encode_plain,
    generate,
    generate_versions,
    identity,
    oversized_event,
    version_of,
)
from consumer.schemas import reader_schema, schema_text
from consumer.validation import validator_for

SPEC = Path(__file__).resolve().parents[2] / "consumer" / "spec" / "metadata-ingestion.openapi.yaml"
COMPONENT = {
    Entity.AGENT: "AgentMetadata",
    Entity.CONVERSATION: "ConversationMetadata",
    Entity.CUSTOMER: "CustomerMetadata",
}
EMAIL = re.compile(r"[a-z0-9._%+-]+@[a-z0-9-]+(\.[a-z0-9-]+)+")
ENTITIES = [pytest.param(e, id=e.value) for e in Entity]
N = 200


def _spec_violations(item: dict[str, Any], props: dict[str, Any]) -> list[str]:
    """A small, independent reading of the spec: patterns full-match, lengths, enums, emails."""

    def check(name: str, value: Any, prop: dict[str, Any]) -> list[str]:
        errors = []
        if "pattern" in prop and not re.fullmatch(prop["pattern"], value):
            errors.append(f"{name}={value!r} breaks {prop['pattern']}")
        if "maxLength" in prop and len(value) > prop["maxLength"]:
            errors.append(f"{name} longer than {prop['maxLength']}")
        if "enum" in prop and value not in prop["enum"]:
            errors.append(f"{name}={value!r} not in enum")
        if prop.get("format") == "email" and not EMAIL.fullmatch(value):
            errors.append(f"{name}={value!r} is not an email")
        return errors

    errors: list[str] = []
    for name, value in item.items():
        prop = props[name]
        if name == "attributes":
            errors += ["too many attributes"] if len(value) > 10 else []
            for a in value:
                errors += [] if 0 < len(a["name"]) <= 256 and len(a["value"]) <= 1024 else [name]
        elif prop["type"] == "array":
            errors += [e for v in value for e in check(name, v, prop["items"])]
        elif prop["type"] == "integer":
            errors += [] if type(value) is int else [f"{name} is not an int"]
        elif name != "startTs":
            errors += check(name, value, prop)
    return errors


@pytest.mark.parametrize("entity", ENTITIES)
def test_generated_records_are_valid_avro_and_round_trip(entity: Entity) -> None:
    schema = reader_schema(entity)
    decoder = PlainAvroDecoder(entity)
    for record in generate(entity, N, seed=3):
        assert validate(record, schema, raise_errors=True)
        decoded = decoder.decode(encode_plain(entity, record))
        assert all(decoded[k] == v for k, v in record.items() if k != "startTs")


@pytest.mark.parametrize("entity", ENTITIES)
def test_generated_items_pass_the_api_constraints(entity: Entity) -> None:
    spec = yaml.safe_load(SPEC.read_text())
    props = spec["components"]["schemas"][COMPONENT[entity]]["properties"]
    for offset, record in enumerate(generate(entity, N, seed=5)):
        item = to_item(entity, record, topic=f"asapp.metadata.{entity.value}", partition=0,
                       offset=offset)  # fmt: skip
        assert _spec_violations(item, props) == [], item


@pytest.mark.parametrize("entity", ENTITIES)
def test_generated_records_vary(entity: Entity) -> None:
    records = generate(entity, N, seed=0)
    with_id = sum(1 for r in records if "eventId" in r)
    assert N * 0.3 < with_id < N * 0.7, "some with their own eventId, some without"
    optional = set(FIELDS[entity]) - {"eventId", "externalAgentId", "externalConversationId",
                                      "externalCustomerId"}  # fmt: skip
    for name in optional:
        present = sum(1 for r in records if name in r)
        assert 0 < present < N, f"{name} should be sometimes present, sometimes absent"
    ids = [tuple(r[k] for k in sorted(r) if k.startswith("external")) for r in records]
    assert len(set(ids)) == N, "ids are unique within a stream"
    if entity is Entity.AGENT:
        kinds = {type(r["startTs"]).__name__ for r in records if "startTs" in r}
        assert kinds == {"datetime", "int"}


@pytest.mark.parametrize("entity", ENTITIES)
def test_generate_is_deterministic_and_continuable(entity: Entity) -> None:
    assert generate(entity, 20, seed=9) == generate(entity, 20, seed=9)
    assert generate(entity, 20, seed=9) != generate(entity, 20, seed=10)
    assert generate(entity, 5, seed=9, start=15) == generate(entity, 20, seed=9)[15:]


def test_encode_confluent_frames_any_writer_schema() -> None:
    class Registry:
        def __init__(self) -> None:
            self.calls = 0

        def get_schema(self, schema_id: int) -> Any:
            self.calls += 1
            assert schema_id == 258

            class S:
                schema_str = schema_text(Entity.CUSTOMER)
                schema_type = "AVRO"

            return S()

    records = generate(Entity.CUSTOMER, 10, seed=1)
    values = [encode_confluent(258, reader_schema(Entity.CUSTOMER), r) for r in records]
    assert all(v[:5] == b"\x00\x00\x00\x01\x02" for v in values)
    registry = Registry()
    decoder = RegistryAvroDecoder(Entity.CUSTOMER, registry)
    assert [decoder.decode(v)["externalCustomerId"] for v in values] == [
        r["externalCustomerId"] for r in records
    ]
    assert registry.calls == 1


@pytest.mark.parametrize("entity", ENTITIES)
def test_generated_items_pass_the_service_validator(entity: Entity) -> None:
    validator = validator_for(entity)
    for offset, record in enumerate(generate(entity, N, seed=11)):
        item = to_item(entity, record, topic="t", partition=0, offset=offset)
        assert validator.error(item) is None, item


@pytest.mark.parametrize("entity", ENTITIES)
def test_versions_keep_their_id_and_are_numbered_in_stream_order(entity: Entity) -> None:
    ids, versions = 7, 5
    records = generate_versions(entity, ids, versions, seed=4)
    assert len(records) == ids * versions
    by_id: dict[tuple[str, ...], list[int]] = {}
    for record in records:
        by_id.setdefault(identity(entity, record), []).append(version_of(record) or 0)
    assert len(by_id) == ids
    assert all(seen == list(range(versions)) for seen in by_id.values())
    assert len({r["eventId"] for r in records}) == ids * versions
    validator, schema = validator_for(entity), reader_schema(entity)
    decoder = PlainAvroDecoder(entity)
    for offset, record in enumerate(records):
        assert validate(record, schema, raise_errors=True)
        item = to_item(entity, decoder.decode(encode_plain(entity, record)), topic="t",
                       partition=0, offset=offset)  # fmt: skip
        assert validator.error(item) is None, item
        # what the API receives tells which version it is
        assert (item["eventId"], version_of(item)) == (record["eventId"], version_of(record))
    first_round = [identity(entity, r) for r in records[:ids]]
    second_round = [identity(entity, r) for r in records[ids : 2 * ids]]
    assert first_round != second_round, "ids are interleaved in a different order each round"
    assert generate_versions(entity, ids, versions, seed=4) == records


@pytest.mark.parametrize("entity", ENTITIES)
def test_oversized_event_is_valid_avro_of_the_exact_size_that_breaks_max_length(
    entity: Entity,
) -> None:
    record = oversized_event(entity, size_bytes=1_040_000)
    value = encode_plain(entity, record)
    assert len(value) == 1_040_000
    assert validate(record, reader_schema(entity), raise_errors=True)
    decoded = PlainAvroDecoder(entity).decode(value)
    item = to_item(entity, decoded, topic="t", partition=0, offset=0)
    error = validator_for(entity).error(item)
    field = {Entity.AGENT: "agentName", Entity.CONVERSATION: "businessRule"}.get(entity, "userId")
    assert error == f"{field}: longer than 256 characters"


def test_oversized_event_refuses_a_size_that_would_not_break_the_limit() -> None:
    with pytest.raises(ValueError, match="exactly"):
        oversized_event(Entity.AGENT, size_bytes=300)


def test_a_dead_letter_of_the_oversized_event_is_refused_by_a_default_producer() -> None:
    """The premise of the oversized-dead-letter case: librdkafka's ``message.max.bytes``
    (1,000,000 by default) refuses the value synchronously, inside ``produce``."""
    value = encode_plain(Entity.AGENT, oversized_event(Entity.AGENT))
    producer = Producer({"bootstrap.servers": "127.0.0.1:9", "log_level": 0})
    try:
        with pytest.raises(KafkaException) as refused:
            producer.produce("dlq", value=value, headers=[("dlq.reason", b"validation")])
        assert refused.value.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE
    finally:
        producer.purge()
        producer.flush(0)
