"""The ingest step on its own: message → item, dead letter or registry hold, no loop needed."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from consumer.decoder import PlainAvroDecoder
from consumer.ingest import ID_FIELDS, Ingest, Unavailable, entity_key
from consumer.mapping import to_item
from consumer.records import DeadLetter, Entity, Item, Message, Position
from consumer.sandbox.events import encode_plain, generate
from consumer.validation import item_schema, validator_for
from tests.unit.fakes import FakeDecoder

TOPICS = {"agents": Entity.AGENT, "customers": Entity.CUSTOMER}


def ingest_with(decoder: Any = None) -> Ingest:
    return Ingest(
        topic_entities=TOPICS,
        decoders={e: decoder or PlainAvroDecoder(e) for e in TOPICS.values()},
        validators={e: validator_for(e) for e in TOPICS.values()},
        mapper=to_item,
    )


def message(value: bytes | None, *, topic: str = "agents", offset: int = 0, **kw: Any) -> Message:
    return Message(Position(topic, 0, offset), None, value, None, **kw)


def test_valid_events_become_items_with_body_and_entity_key() -> None:
    [agent] = generate(Entity.AGENT, 1)
    [customer] = generate(Entity.CUSTOMER, 1)
    results = ingest_with()(
        [
            message(encode_plain(Entity.AGENT, agent)),
            message(encode_plain(Entity.CUSTOMER, customer), topic="customers"),
        ]
    )
    assert all(isinstance(r, Item) for r in results)
    a, c = results
    assert isinstance(a, Item) and isinstance(c, Item)
    assert orjson.loads(a.body)["externalAgentId"] == agent["externalAgentId"] == a.key
    body = orjson.loads(c.body)
    assert c.key == f"{body['externalConversationId']}\x00{body['externalCustomerId']}"


@pytest.mark.parametrize(
    "msg, reason, error_part",
    [
        pytest.param(message(b"\x00garbage"), "decode", "", id="undecodable"),
        pytest.param(message(None), "decode", "", id="tombstone"),
        pytest.param(
            message(None, error="Local: Bad message format"), "consume", "Bad message", id="error"
        ),
    ],
)
def test_messages_that_can_never_succeed_become_dead_letters(
    msg: Message, reason: str, error_part: str
) -> None:
    [result] = ingest_with()([msg])
    assert isinstance(result, DeadLetter)
    assert (result.reason, result.entity) == (reason, Entity.AGENT)
    assert error_part in result.error


def test_an_item_breaking_the_api_constraints_is_a_validation_dead_letter() -> None:
    [agent] = generate(Entity.AGENT, 1)
    agent["externalAgentId"] = "not allowed!"
    [result] = ingest_with()([message(encode_plain(Entity.AGENT, agent))])
    assert isinstance(result, DeadLetter) and result.reason == "validation"


def test_a_registry_outage_is_a_hold_not_a_dead_letter() -> None:
    decoder = FakeDecoder()
    decoder.registry_down = True
    decoder.retry_after_s = 7.0
    [result] = ingest_with(decoder)([message(b"new-schema-1")])
    assert isinstance(result, Unavailable)
    assert result.retry_after_s == 7.0


def test_one_result_per_message_in_order() -> None:
    events = generate(Entity.AGENT, 5)
    values = [encode_plain(Entity.AGENT, e) for e in events]
    values[2] = b"junk"
    results = ingest_with()([message(v, offset=n) for n, v in enumerate(values)])
    assert [type(r).__name__ for r in results] == ["Item", "Item", "DeadLetter", "Item", "Item"]
    assert [r.message.position.offset for r in results] == [0, 1, 2, 3, 4]


def test_entity_key_of_a_single_id_entity_is_the_id_itself() -> None:
    assert entity_key(Entity.AGENT, {"externalAgentId": "a-1"}) == "a-1"
    assert entity_key(Entity.CONVERSATION, {"externalConversationId": "c"}) == "c"


def test_id_fields_are_the_specs_required_fields() -> None:
    for entity in Entity:
        assert ID_FIELDS[entity] == tuple(item_schema(entity)["required"])
