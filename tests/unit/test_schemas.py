"""The Avro schemas in ``schemas/``: shape rules, examples, and agreement with the API spec."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest
import yaml
from fastavro.validation import validate

from consumer.mapping import FIELDS
from consumer.records import Entity
from consumer.schemas import reader_schema, schema_text

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
SPEC = ROOT / "consumer" / "spec" / "metadata-ingestion.openapi.yaml"
COMPONENT = {
    Entity.AGENT: "AgentMetadata",
    Entity.CONVERSATION: "ConversationMetadata",
    Entity.CUSTOMER: "CustomerMetadata",
}
REQUIRED = {
    Entity.AGENT: {"externalAgentId"},
    Entity.CONVERSATION: {"externalConversationId"},
    Entity.CUSTOMER: {"externalConversationId", "externalCustomerId"},
}
ENTITIES = [pytest.param(e, id=e.value) for e in Entity]


def _raw(entity: Entity) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((SCHEMAS / f"{entity.value}.avsc").read_text())
    return result


def _component(entity: Entity) -> dict[str, Any]:
    spec = yaml.safe_load(SPEC.read_text())
    result: dict[str, Any] = spec["components"]["schemas"][COMPONENT[entity]]
    return result


def _example(entity: Entity) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((SCHEMAS / "examples" / f"{entity.value}.json").read_text())
    return result


@pytest.mark.parametrize("entity", ENTITIES)
def test_schema_parses_and_loader_serves_the_file(entity: Entity) -> None:
    raw = _raw(entity)
    assert raw["type"] == "record"
    assert raw["namespace"] == "com.asapp.metadata"
    assert schema_text(entity) == (SCHEMAS / f"{entity.value}.avsc").read_text()
    parsed = reader_schema(entity)
    assert parsed is reader_schema(entity), "parsed once and cached"
    assert [f["name"] for f in parsed["fields"]] == [f["name"] for f in raw["fields"]]


@pytest.mark.parametrize("entity", ENTITIES)
def test_required_ids_are_non_null_strings_and_the_rest_optional(entity: Entity) -> None:
    fields = {f["name"]: f for f in _raw(entity)["fields"]}
    for name in REQUIRED[entity]:
        assert fields[name]["type"] == "string", name
        assert "default" not in fields[name], name
    for name, field in fields.items():
        assert field.get("doc"), f"{name} has no doc"
        if name in REQUIRED[entity]:
            continue
        assert isinstance(field["type"], list), f"{name} is not a union"
        assert field["type"][0] == "null", f"{name}: null must come first"
        assert len(field["type"]) == 2, name
        assert "default" in field and field["default"] is None, f"{name} needs default null"


@pytest.mark.parametrize("entity", ENTITIES)
def test_field_names_are_exactly_the_spec_properties(entity: Entity) -> None:
    component = _component(entity)
    names = [f["name"] for f in _raw(entity)["fields"]]
    assert len(names) == len(set(names))
    assert set(names) == set(component["properties"])
    assert set(component["required"]) == REQUIRED[entity]
    # mapping's explicit list is the same set, in the spec's order
    assert list(FIELDS[entity]) == list(component["properties"])


@pytest.mark.parametrize("entity", ENTITIES)
def test_field_types_follow_the_spec(entity: Entity) -> None:
    props = _component(entity)["properties"]
    for field in _raw(entity)["fields"]:
        name, avro = field["name"], field["type"]
        inner: Any = avro if isinstance(avro, str) else avro[1]
        prop = props[name]
        if name == "startTs":
            assert inner == {"type": "long", "logicalType": "timestamp-millis"}
        elif name == "attributes":
            assert inner["type"] == "array"
            assert inner["items"]["name"] == "Attribute"
            assert [f["name"] for f in inner["items"]["fields"]] == ["name", "value"]
            assert [f["type"] for f in inner["items"]["fields"]] == ["string", "string"]
        elif prop["type"] == "array":
            assert inner == {"type": "array", "items": "string"}, name
        elif prop["type"] == "integer":
            assert inner == "int", name
        else:
            assert inner == "string", name
        if "enum" in prop:  # strings on purpose; the doc lists every allowed value
            assert all(symbol in field["doc"] for symbol in prop["enum"]), name


@pytest.mark.parametrize("entity", ENTITIES)
def test_example_validates_and_round_trips(entity: Entity) -> None:
    example = _example(entity)
    schema = reader_schema(entity)
    assert validate(example, schema, raise_errors=True)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, example)
    buf.seek(0)
    decoded = fastavro.schemaless_reader(buf, schema)
    assert isinstance(decoded, dict)
    for name, value in example.items():
        if name == "startTs":
            assert int(decoded[name].timestamp() * 1000) == value
        else:
            assert decoded[name] == value, name


@pytest.mark.parametrize("entity", ENTITIES)
def test_example_covers_most_fields(entity: Entity) -> None:
    example = _example(entity)
    assert set(example) <= set(FIELDS[entity])
    assert len(example) >= len(FIELDS[entity]) - 1


def test_invalid_record_fails_validation() -> None:
    bad = dict(_example(Entity.AGENT), concurrency="three")
    assert not validate(bad, reader_schema(Entity.AGENT), raise_errors=False)
    missing = {k: v for k, v in _example(Entity.CUSTOMER).items() if k != "externalCustomerId"}
    assert not validate(missing, reader_schema(Entity.CUSTOMER), raise_errors=False)


def test_missing_schema_files_raise_a_clear_fatal_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import consumer.schemas as schemas

    monkeypatch.setattr(schemas, "_PACKAGED_DIR", "no-such-dir")
    monkeypatch.setattr(schemas, "_CHECKOUT_DIR", tmp_path)
    with pytest.raises(schemas.SchemaFilesMissing, match="no Avro schema for entity 'agent'"):
        schemas.schema_text.__wrapped__(Entity.AGENT)
    (tmp_path / "agent.avsc").write_text('{"type": "record", "name": "A", "fields": []}')
    assert "A" in schemas.schema_text.__wrapped__(Entity.AGENT), "falls back to the checkout"
