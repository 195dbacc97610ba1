"""ItemValidator: every constraint the spec states, for all three entities, valid and invalid."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from fastjsonschema import JsonSchemaValueException
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.records import Entity
from consumer.validation import (
    _FORMATS as FORMATS,
)
from consumer.validation import (
    ItemValidator,
    _class_chars,
    _never,
    item_schema,
    load_spec,
    validator_for,
)

AGENT, CONVO, CUSTOMER = Entity.AGENT, Entity.CONVERSATION, Entity.CUSTOMER

MINIMAL: dict[Entity, dict[str, Any]] = {
    AGENT: {"externalAgentId": "agent158"},
    CONVO: {"externalConversationId": "issue1389"},
    CUSTOMER: {
        "externalConversationId": "issue509",
        "externalCustomerId": "555.555.0100-jdoe@x.com",
    },
}


def _with(entity: Entity, **fields: Any) -> dict[str, Any]:
    return {**MINIMAL[entity], **fields}


def _attrs(n: int) -> list[dict[str, str]]:
    return [{"name": f"n{i}", "value": f"v{i}"} for i in range(n)]


VALID = [
    pytest.param(AGENT, MINIMAL[AGENT], id="agent-minimal"),
    pytest.param(CONVO, MINIMAL[CONVO], id="convo-minimal"),
    pytest.param(CUSTOMER, MINIMAL[CUSTOMER], id="customer-minimal"),
    # patterns: the whole allowed alphabet, and the customer id's extra `.` and `@`
    pytest.param(AGENT, _with(AGENT, externalAgentId="aZ09-_"), id="agent-id-full-alphabet"),
    pytest.param(
        CUSTOMER, _with(CUSTOMER, externalCustomerId="a.b@c_d-1"), id="customer-id-dot-at"
    ),
    pytest.param(CUSTOMER, _with(CUSTOMER, phoneNumber="+1(555)555-0100.9"), id="phone-pattern"),
    pytest.param(CONVO, _with(CONVO, browserVersion="103.0.5060.128"), id="browser-version-dots"),
    pytest.param(AGENT, _with(AGENT, languages=["en-us", "zh-hans-hk"]), id="languages"),
    # max lengths at the limit
    pytest.param(AGENT, _with(AGENT, externalAgentId="a" * 256), id="id-256-chars"),
    pytest.param(CUSTOMER, _with(CUSTOMER, phoneNumber="5" * 32), id="phone-32-chars"),
    pytest.param(CUSTOMER, _with(CUSTOMER, addressZipcode="1" * 16), id="zipcode-16-chars"),
    pytest.param(CONVO, _with(CONVO, companySegment=["s" * 64]), id="segment-64-chars"),
    pytest.param(
        AGENT, _with(AGENT, agentName="Jane Doe, O'Hara " * 15), id="free-text-no-pattern"
    ),
    # enums
    pytest.param(
        CONVO, _with(CONVO, deviceType="WATCH", platform="WAB", operatingSystem="LINUX"), id="enums"
    ),
    # attributes: up to 10, name <= 256, value <= 1024
    pytest.param(AGENT, _with(AGENT, attributes=_attrs(10)), id="attributes-10"),
    pytest.param(CONVO, _with(CONVO, attributes=[]), id="attributes-empty"),
    pytest.param(
        CUSTOMER,
        _with(CUSTOMER, attributes=[{"name": "n" * 256, "value": "v" * 1024}]),
        id="attribute-max-lengths",
    ),
    # integers
    pytest.param(AGENT, _with(AGENT, concurrency=3, ranking=-1), id="integers"),
    # nullables
    pytest.param(
        AGENT,
        _with(
            AGENT,
            eventId=None,
            startTs=None,
            concurrency=None,
            languages=None,
            emailAddress=None,
            attributes=None,
        ),
        id="agent-nulls",
    ),
    pytest.param(
        CONVO,
        _with(
            CONVO,
            deviceType=None,
            platform=None,
            operatingSystem=None,
            companySegment=None,
            attributes=None,
        ),
        id="convo-null-enums",
    ),
    pytest.param(
        CUSTOMER,
        _with(CUSTOMER, phoneNumber=None, emailAddress=None, userId=None),
        id="customer-nulls",
    ),
    # formats
    pytest.param(AGENT, _with(AGENT, startTs="2022-07-08T11:15:53.237517000Z"), id="date-time-z"),
    pytest.param(AGENT, _with(AGENT, startTs="2022-07-08T11:15:53+02:00"), id="date-time-offset"),
    pytest.param(CUSTOMER, _with(CUSTOMER, emailAddress="jdoe@example.com"), id="email"),
    pytest.param(AGENT, _with(AGENT, eventId="evt-1_2"), id="event-id"),
]


@pytest.mark.parametrize(("entity", "item"), VALID)
def test_valid_items_pass(entity: Entity, item: dict[str, Any]) -> None:
    assert validator_for(entity).error(item) is None


INVALID = [
    # required
    pytest.param(AGENT, {}, "externalAgentId: is required", id="agent-id-required"),
    pytest.param(
        CONVO, {"eventId": "e1"}, "externalConversationId: is required", id="convo-id-required"
    ),
    pytest.param(
        CUSTOMER,
        {"externalConversationId": "c1"},
        "externalCustomerId: is required",
        id="customer-id-required",
    ),
    pytest.param(
        CUSTOMER,
        {"externalCustomerId": "c1"},
        "externalConversationId: is required",
        id="customer-convo-id-required",
    ),
    pytest.param(
        AGENT,
        {"externalAgentId": None},
        "externalAgentId: must be string",
        id="required-not-nullable",
    ),
    # types
    pytest.param(
        AGENT, {"externalAgentId": 158}, "externalAgentId: must be string", id="id-int-not-string"
    ),
    pytest.param(
        AGENT,
        _with(AGENT, concurrency="3"),
        "concurrency: must be integer or null",
        id="integer-as-string",
    ),
    pytest.param(
        AGENT, _with(AGENT, ranking=7.0), "ranking: must be integer or null", id="integer-as-float"
    ),
    pytest.param(
        AGENT, _with(AGENT, ranking=True), "ranking: must be integer or null", id="integer-as-bool"
    ),
    pytest.param(
        AGENT,
        _with(AGENT, languages="en-us"),
        "languages: must be array or null",
        id="array-as-string",
    ),
    pytest.param(
        AGENT,
        _with(AGENT, attributes={"a": "b"}),
        "attributes: must be array or null",
        id="attributes-as-map",
    ),
    # full-match patterns (the spec's are unanchored: one good char must not be enough)
    pytest.param(
        AGENT,
        _with(AGENT, externalAgentId="agent 158"),
        r"externalAgentId: does not match [a-zA-Z0-9\-\_]+",
        id="pattern-space",
    ),
    pytest.param(
        AGENT,
        _with(AGENT, externalAgentId="a\n"),
        r"externalAgentId: does not match [a-zA-Z0-9\-\_]+",
        id="pattern-trailing-newline",
    ),
    pytest.param(
        AGENT,
        _with(AGENT, externalAgentId=""),
        r"externalAgentId: does not match [a-zA-Z0-9\-\_]+",
        id="pattern-empty",
    ),
    pytest.param(
        CONVO,
        _with(CONVO, externalConversationId="a.b"),
        r"externalConversationId: does not match [a-zA-Z0-9\-\_]+",
        id="convo-id-no-dot",
    ),
    pytest.param(
        CUSTOMER,
        _with(CUSTOMER, externalConversationId="a@b"),
        r"externalConversationId: does not match [a-zA-Z0-9\-\_]+",
        id="customer-convo-id-no-at",
    ),
    pytest.param(
        CUSTOMER,
        _with(CUSTOMER, externalCustomerId="j doe@x.com"),
        r"externalCustomerId: does not match [a-zA-Z0-9\-\_\.\@]+",
        id="customer-id-space",
    ),
    pytest.param(
        CUSTOMER,
        _with(CUSTOMER, externalCustomerId="a+b@x.com"),
        r"externalCustomerId: does not match [a-zA-Z0-9\-\_\.\@]+",
        id="customer-id-plus",
    ),
    pytest.param(
        CUSTOMER,
        _with(CUSTOMER, phoneNumber="555 0100"),
        r"phoneNumber: does not match [0-9\-\.\(\)\+]+",
        id="phone-space",
    ),
    pytest.param(
        CUSTOMER,
        _with(CUSTOMER, phoneNumber="555-CALL"),
        r"phoneNumber: does not match [0-9\-\.\(\)\+]+",
        id="phone-letters",
    ),
    pytest.param(
        AGENT,
        _with(AGENT, eventId="evt 1"),
        r"eventId: does not match [a-zA-Z0-9\-\_]+",
        id="event-id-pattern",
    ),
    pytest.param(
        AGENT,
        _with(AGENT, languages=["en_US"]),
        r"languages[0]: does not match [a-zA-Z0-9\-]+",
        id="language-underscore",
    ),
    pytest.param(
        CONVO,
        _with(CONVO, companySegment=["ok", "not ok"]),
        r"companySegment[1]: does not match [a-zA-Z0-9\-\_]+",
        id="segment-item-pattern",
    ),
    pytest.param(
        CONVO,
        _with(CONVO, browserVersion="14.1 beta"),
        r"browserVersion: does not match [a-zA-Z0-9\-\_\.]+",
        id="browser-version",
    ),
    # max lengths
    pytest.param(
        AGENT,
        _with(AGENT, externalAgentId="a" * 257),
        "externalAgentId: longer than 256 characters",
        id="id-257-chars",
    ),
    pytest.param(
        AGENT,
        _with(AGENT, agentName="x" * 257),
        "agentName: longer than 256 characters",
        id="free-text-257-chars",
    ),
    pytest.param(
        CUSTOMER,
        _with(CUSTOMER, phoneNumber="5" * 33),
        "phoneNumber: longer than 32 characters",
        id="phone-33-chars",
    ),
    pytest.param(
        CUSTOMER,
        _with(CUSTOMER, addressCountry="c" * 129),
        "addressCountry: longer than 128 characters",
        id="country-129-chars",
    ),
    pytest.param(
        AGENT,
        _with(AGENT, languages=["e" * 17]),
        "languages[0]: longer than 16 characters",
        id="language-17-chars",
    ),
    pytest.param(
        CONVO,
        _with(CONVO, browserVersion="1" * 17),
        "browserVersion: longer than 16 characters",
        id="browser-version-17-chars",
    ),
    # enums
    pytest.param(
        CONVO,
        _with(CONVO, deviceType="LAPTOP"),
        "deviceType: must be one of TABLET",
        id="device-type-enum",
    ),
    pytest.param(
        CONVO, _with(CONVO, platform="ios"), "platform: must be one of SMS", id="platform-case"
    ),
    pytest.param(
        CONVO,
        _with(CONVO, operatingSystem="BEOS"),
        "operatingSystem: must be one of MAC_OS",
        id="os-enum",
    ),
    # attributes
    pytest.param(
        AGENT,
        _with(AGENT, attributes=_attrs(11)),
        "attributes: more than 10 items",
        id="attributes-11",
    ),
    pytest.param(
        CUSTOMER,
        _with(CUSTOMER, attributes=[{"name": "n" * 257, "value": "v"}]),
        "attributes[0].name: longer than 256 characters",
        id="attribute-name-257",
    ),
    pytest.param(
        CONVO,
        _with(CONVO, attributes=[{"name": "n", "value": "v" * 1025}]),
        "attributes[0].value: longer than 1024 characters",
        id="attribute-value-1025",
    ),
    pytest.param(
        AGENT,
        _with(AGENT, attributes=[{"name": "n", "value": 1}]),
        "attributes[0].value: must be string",
        id="attribute-value-int",
    ),
    pytest.param(
        AGENT,
        _with(AGENT, attributes=[{"name": "n", "value": None}]),
        "attributes[0].value: must be string",
        id="attribute-value-null",
    ),
    pytest.param(
        AGENT,
        _with(AGENT, attributes=[{"name": "n", "value": "v", "type": "s"}]),
        "attributes[0].type: unknown field",
        id="attribute-unknown-key",
    ),
    # formats
    pytest.param(
        AGENT,
        _with(AGENT, startTs="2022-07-08"),
        "startTs: is not an ISO-8601 date-time",
        id="date-only",
    ),
    pytest.param(
        AGENT,
        _with(AGENT, startTs="2022-07-08T11:15:53"),
        "startTs: is not an ISO-8601 date-time",
        id="date-time-no-zone",
    ),
    pytest.param(
        AGENT,
        _with(AGENT, startTs="2022-02-30T11:15:53Z"),
        "startTs: is not an ISO-8601 date-time",
        id="date-time-impossible-day",
    ),
    pytest.param(
        AGENT,
        _with(AGENT, startTs=1657278953),
        "startTs: must be string or null",
        id="date-time-epoch",
    ),
    pytest.param(
        AGENT,
        _with(AGENT, emailAddress="jdoe"),
        "emailAddress: is not an email address",
        id="agent-email",
    ),
    pytest.param(
        CUSTOMER,
        _with(CUSTOMER, emailAddress="a@@b.com"),
        "emailAddress: is not an email address",
        id="customer-email",
    ),
    # unknown fields (our choice: the spec does not forbid them, we never send them)
    pytest.param(AGENT, _with(AGENT, agentId="x"), "agentId: unknown field", id="agent-unknown"),
    pytest.param(
        CONVO,
        {"externlConversationId": "x", "externalConversationId": "y"},
        "externlConversationId: unknown field",
        id="convo-typo-unknown",
    ),
    pytest.param(
        CUSTOMER,
        _with(CUSTOMER, phone="1", zip="2"),
        "phone: unknown field, zip: unknown field",
        id="customer-two-unknown",
    ),
    pytest.param(
        CUSTOMER,
        _with(CUSTOMER, externalAgentId="a1"),
        "externalAgentId: unknown field",
        id="other-entity-field",
    ),
]


@pytest.mark.parametrize(("entity", "item", "reason"), INVALID)
def test_invalid_items_name_the_field(entity: Entity, item: dict[str, Any], reason: str) -> None:
    error = validator_for(entity).error(item)
    assert error is not None
    assert error.startswith(reason), error


def test_not_an_object() -> None:
    assert validator_for(AGENT).error(["externalAgentId"]) == "item: must be object, got list"  # type: ignore[arg-type]


def test_mapping_that_is_not_a_dict() -> None:
    from types import MappingProxyType

    assert validator_for(AGENT).error(MappingProxyType({"externalAgentId": "a1"})) is None
    assert validator_for(AGENT).error(MappingProxyType({"externalAgentId": "a 1"})) is not None


def test_validator_for_is_cached() -> None:
    assert validator_for(AGENT) is validator_for(AGENT)
    assert validator_for(AGENT) is not validator_for(CUSTOMER)
    assert ItemValidator(AGENT) is not validator_for(AGENT)


def test_schema_is_translated_from_the_spec() -> None:
    schema = item_schema(CUSTOMER)
    props = schema["properties"]
    assert schema["required"] == ["externalConversationId", "externalCustomerId"]
    assert schema["additionalProperties"] is False
    assert props["externalCustomerId"]["pattern"] == r"^(?:[a-zA-Z0-9\-\_\.\@]+)$"
    assert props["phoneNumber"] == {
        "type": ["string", "null"],
        "pattern": r"^(?:[0-9\-\.\(\)\+]+)$",
        "maxLength": 32,
    }
    attributes = props["attributes"]
    assert attributes["maxItems"] == 10
    assert attributes["items"]["additionalProperties"] is False
    assert "example" not in str(schema) and "x-" not in str(list(schema))
    platform = item_schema(CONVO)["properties"]["platform"]
    assert platform["enum"][-1] is None and "WAB" in platform["enum"]


def _spec_examples(component: str) -> list[dict[str, Any]]:
    schemas = load_spec()["components"]["schemas"]
    single = schemas[component]["example"]
    many = schemas[f"{component}Many"]["example"]["items"]
    return [single, *many]


SPEC_EXAMPLES = [
    pytest.param(entity, index, example, id=f"{component}-{index}")
    for entity, component in [
        (AGENT, "AgentMetadata"),
        (CONVO, "ConversationMetadata"),
        (CUSTOMER, "CustomerMetadata"),
    ]
    for index, example in enumerate(_spec_examples(component))
]


@pytest.mark.parametrize(("entity", "index", "example"), SPEC_EXAMPLES)
def test_spec_examples_validate(entity: Entity, index: int, example: dict[str, Any]) -> None:
    error = validator_for(entity).error(example)
    if "externlConversationId" in example:  # the spec's known typo in the many-convo example
        # required is checked before unknown fields: the real id is missing
        assert error == "externalConversationId: is required"
    else:
        assert error is None, error


def test_spec_examples_include_the_known_typo() -> None:
    typos = [p for p in SPEC_EXAMPLES if "externlConversationId" in p.values[2]]  # type: ignore[operator]
    assert len(typos) == 1
    assert len(SPEC_EXAMPLES) >= 12


# --- the fast accept: a shortcut that never changes a result -------------------------------


def _general(entity: Entity, item: Any) -> bool:
    """Whether fastjsonschema alone (no shortcut) accepts ``item``."""
    validator = validator_for(entity)
    try:
        validator._check(item, FORMATS)
    except JsonSchemaValueException:
        return False
    return True


def test_every_entity_has_a_fast_accept() -> None:
    for entity in Entity:
        assert validator_for(entity)._accept is not _never, entity


@pytest.mark.parametrize(("entity", "item"), VALID)
def test_fast_accept_takes_the_valid_items(entity: Entity, item: dict[str, Any]) -> None:
    assert validator_for(entity)._accept(item)


@pytest.mark.parametrize(("entity", "item", "reason"), INVALID)
def test_fast_accept_refuses_the_invalid_items(
    entity: Entity, item: dict[str, Any], reason: str
) -> None:
    assert not validator_for(entity)._accept(item)


def test_fast_accept_agrees_with_fastjsonschema_on_a_realistic_mix() -> None:
    bench = importlib.import_module("tests.bench_validation")
    items = bench.realistic_items(3000)
    for entity, item in items:
        assert validator_for(entity)._accept(item) == _general(entity, item), item


@pytest.mark.parametrize(
    ("attribute", "valid"),
    [
        pytest.param({"name": "k", "value": "v"}, True, id="name-and-value"),
        pytest.param({"value": "v", "name": "k"}, True, id="either-order"),
        pytest.param({"name": "k", "value": "v", "extra": "x"}, False, id="one-key-too-many"),
        pytest.param({"name": "k", "value": "v", 1: "x"}, False, id="non-string-extra-key"),
        pytest.param({"name": "k"}, True, id="value-missing"),
        pytest.param({"name": "k", "extra": "v"}, False, id="value-replaced"),
        pytest.param({}, True, id="empty"),
    ],
)
def test_fast_accept_of_attribute_keys_is_fastjsonschemas(
    attribute: dict[Any, Any], valid: bool
) -> None:
    """An attribute holds ``name`` and ``value`` and nothing else (the spec requires neither)."""
    for entity in Entity:
        item = {**MINIMAL[entity], "attributes": [{"name": "a", "value": "b"}, attribute]}
        assert _general(entity, item) is valid
        assert validator_for(entity)._accept(item) is valid


_ALL_FIELDS = {name for e in Entity for name in item_schema(e)["properties"]} | {"bogus"}

_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(["", "a", "a-b_c", "a b", "a\n", "x@y.z", "2024-01-02T03:04:05.678Z"]),
    st.lists(st.text(max_size=5), max_size=12),
    st.lists(st.fixed_dictionaries({"name": st.text(max_size=3), "value": st.text(max_size=3)})),
    st.lists(  # attributes with a key missing or one too many
        st.dictionaries(st.sampled_from(["name", "value", "extra"]), st.text(max_size=3)),
        max_size=3,
    ),
)


@settings(max_examples=400, deadline=None)
@given(
    entity=st.sampled_from(list(Entity)),
    changes=st.dictionaries(st.sampled_from(sorted(_ALL_FIELDS)), _VALUES, max_size=6),
    dropped=st.sets(st.sampled_from(sorted(_ALL_FIELDS)), max_size=2),
)
def test_fast_accept_never_accepts_what_fastjsonschema_rejects(
    entity: Entity, changes: dict[str, Any], dropped: set[str]
) -> None:
    item = {k: v for k, v in {**MINIMAL[entity], **changes}.items() if k not in dropped}
    if validator_for(entity)._accept(item):
        assert _general(entity, item), item


@pytest.mark.parametrize(
    ("body", "chars"),
    [
        pytest.param(r"a-c", "abc", id="range"),
        pytest.param(r"a-c\-\_", "abc-_", id="escaped-punctuation"),
        pytest.param(r"-a", "-a", id="leading-dash-literal"),
        pytest.param(r"a\-", "a-", id="trailing-escaped-dash"),
        pytest.param(r"\d", None, id="class-escape-unsupported"),
        pytest.param(r"z-a", None, id="reversed-range"),
        pytest.param(r"a^", None, id="caret"),
    ],
)
def test_class_chars(body: str, chars: str | None) -> None:
    assert _class_chars(body) == chars
