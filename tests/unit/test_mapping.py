"""Avro record → API item: field list, omissions, timestamps, eventId rule, attributes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from consumer.decoder import PlainAvroDecoder
from consumer.errors import ValidationError
from consumer.mapping import FIELDS, fallback_event_id, iso_utc_millis, to_item
from consumer.records import Entity
from consumer.sandbox.events import encode_plain

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"
POS: dict[str, Any] = {"topic": "asapp.metadata.agent", "partition": 0, "offset": 42}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(
            datetime(2022, 7, 8, 11, 15, 53, 237517, tzinfo=UTC),
            "2022-07-08T11:15:53.237Z",
            id="aware-utc-truncates-micros",
        ),
        pytest.param(
            datetime(2022, 7, 8, 13, 15, 53, 237000, tzinfo=timezone(timedelta(hours=2))),
            "2022-07-08T11:15:53.237Z",
            id="aware-offset-converted",
        ),
        pytest.param(datetime(2022, 7, 8, 11, 15, 53), "2022-07-08T11:15:53.000Z", id="naive"),
        pytest.param(1657278953237, "2022-07-08T11:15:53.237Z", id="millis"),
        pytest.param(0, "1970-01-01T00:00:00.000Z", id="epoch"),
        pytest.param(-1, "1969-12-31T23:59:59.999Z", id="before-epoch"),
        pytest.param(datetime(9, 1, 2, tzinfo=UTC), "0009-01-02T00:00:00.000Z", id="padded-year"),
    ],
)
def test_timestamps_become_iso_utc_millis(value: datetime | int, expected: str) -> None:
    assert iso_utc_millis(value) == expected
    item = to_item(Entity.AGENT, {"externalAgentId": "a", "startTs": value}, **POS)
    assert item["startTs"] == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("2022-07-08", id="string"),
        pytest.param(True, id="bool"),
        pytest.param(10**18, id="out-of-range"),
    ],
)
def test_bad_timestamp_is_validation_error(value: Any) -> None:
    with pytest.raises(ValidationError, match="timestamp"):
        to_item(Entity.AGENT, {"externalAgentId": "a", "startTs": value}, **POS)


def test_absent_and_none_optionals_are_omitted_but_empty_values_kept() -> None:
    record: dict[str, Any] = {
        "externalAgentId": "agent1",
        "lobId": None,
        "languages": [],
        "concurrency": 0,
        "agentName": "",
    }
    item = to_item(Entity.AGENT, record, **POS)
    assert item == {
        "externalAgentId": "agent1",
        "eventId": "asapp-metadata-agent-0-42",
        "agentName": "",
        "languages": [],
        "concurrency": 0,
    }


@pytest.mark.parametrize(
    ("event_id", "expected"),
    [
        pytest.param("evt-1", "evt-1", id="own-id"),
        pytest.param("", "asapp-metadata-agent-0-42", id="empty-falls-back"),
        pytest.param(None, "asapp-metadata-agent-0-42", id="none-falls-back"),
    ],
)
def test_event_id_rule(event_id: str | None, expected: str) -> None:
    item = to_item(Entity.AGENT, {"externalAgentId": "a", "eventId": event_id}, **POS)
    assert item["eventId"] == expected


@pytest.mark.parametrize(
    ("topic", "partition", "offset", "expected"),
    [
        pytest.param("asapp.metadata.agent", 0, 42, "asapp-metadata-agent-0-42", id="dots"),
        pytest.param("team/conv topic+v2", 11, 7, "team-conv-topic-v2-11-7", id="specials"),
        pytest.param("Agent_Events-1", 3, 10**12, "Agent_Events-1-3-1000000000000", id="kept"),
        pytest.param("tópico", 1, 2, "t-pico-1-2", id="non-ascii"),
    ],
)
def test_fallback_event_id_is_sanitised(
    topic: str, partition: int, offset: int, expected: str
) -> None:
    assert fallback_event_id(topic, partition, offset) == expected


def test_attributes_and_lists_are_fresh_copies_with_only_name_and_value() -> None:
    attrs = [{"name": "tier", "value": "gold", "extra": "dropped"}]
    segments = ["Sales"]
    record: dict[str, Any] = {
        "externalConversationId": "c1",
        "attributes": attrs,
        "companySegment": segments,
        "platform": "IOS",
    }
    item = to_item(Entity.CONVERSATION, record, **POS)
    assert item["attributes"] == [{"name": "tier", "value": "gold"}]
    assert item["companySegment"] == ["Sales"]
    assert item["platform"] == "IOS"
    attrs[0]["value"] = "changed"
    segments.append("Marketing")
    assert item["attributes"] == [{"name": "tier", "value": "gold"}]
    assert item["companySegment"] == ["Sales"]


def test_malformed_attributes_are_validation_error() -> None:
    with pytest.raises(ValidationError, match="attributes"):
        to_item(Entity.CUSTOMER, {"attributes": [{"name": "only-name"}]}, **POS)


def test_only_api_fields_are_copied_in_spec_order() -> None:
    record: dict[str, Any] = {
        "ranking": 5,
        "externalAgentId": "a",
        "shoeSize": 44,  # from a newer writer schema, not an API field
        "externalConversationId": "belongs-to-another-entity",
    }
    item = to_item(Entity.AGENT, record, **POS)
    assert list(item) == ["externalAgentId", "eventId", "ranking"]


@pytest.mark.parametrize("entity", [pytest.param(e, id=e.value) for e in Entity])
def test_decoded_example_maps_to_the_expected_item(entity: Entity) -> None:
    example = json.loads((EXAMPLES / f"{entity.value}.json").read_text())
    record = PlainAvroDecoder(entity).decode(encode_plain(entity, example))
    item = to_item(entity, record, topic=f"asapp.metadata.{entity.value}", partition=2, offset=9)
    expected = {k: v for k, v in example.items() if v is not None}
    if "startTs" in expected:
        expected["startTs"] = "2022-07-08T11:15:53.237Z"
    expected.setdefault("eventId", f"asapp-metadata-{entity.value}-2-9")
    assert item == expected
    assert list(item) == [name for name in FIELDS[entity] if name in item]
    again = to_item(entity, record, topic=f"asapp.metadata.{entity.value}", partition=2, offset=9)
    assert json.dumps(again) == json.dumps(item), "deterministic, key order included"
