"""Bad input never crashes the ingest step: decode → map → validate → encode, over any input.

Properties (hypothesis) state each step's error contract, as the module docstrings write it:

- ``decode``: any value (``None``, arbitrary bytes, valid events truncated or bit-flipped, any
  schema id in the Confluent frame) gives a record shaped by the reader schema, a
  ``DecodeError``, or ``RegistryUnavailable`` when (and only when) the registry is out.
- ``to_item``: any record (wrong types in every field, missing and extra fields, nested junk,
  unicode edge cases: lone surrogates, combining marks, NUL, RTL marks, emoji, strings up to
  2 MB) gives an item or a ``ValidationError``.
- ``error`` / ``encode``: any item gives ``None`` or a short printable reason, and bytes or a
  ``ValidationError``. Bytes that come out satisfy the API spec, checked here by an oracle
  that reads the OpenAPI document itself (not our translation of it), and are orjson's JSON.

Speed: every property has a CI size (this file takes a few seconds) and a ``slow`` twin with
many more examples, run by ``make bench``. CI runs are derandomized (the same examples every
run, no flakiness); the slow twins explore at random. Deadlines catch a slow example, the
pytest timeout a hang. The last section holds the example-based regression tests for what the
properties found, each failing on the code before its fix.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from enum import Enum
from typing import Any

import fastavro
import orjson
import pytest
from confluent_kafka.schema_registry.common._httpx_compat import httpx as sr_httpx
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastjsonschema.draft04 import CodeGeneratorDraft04
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.decoder import Decoder, PlainAvroDecoder, RegistryAvroDecoder
from consumer.errors import DecodeError, RegistryUnavailable, ValidationError
from consumer.ingest import ID_FIELDS
from consumer.mapping import (
    FIELDS,
    fallback_event_id,
    iso_utc_millis,
    reference_to_item,
    to_item,
)
from consumer.records import Entity
from consumer.sandbox.events import encode_confluent, encode_plain, generate
from consumer.schemas import reader_schema, schema_text
from consumer.validation import (
    COMPONENTS,
    LONG_EMAIL_PATTERN,
    MAX_REASON_CHARS,
    load_spec,
    validator_for,
)

# --- settings: a CI size and a slow twin ------------------------------------------------------

_COMMON: dict[str, Any] = {
    "deadline": timedelta(seconds=1),  # a ReDoS or an unbounded read blows it by orders
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "database": None,  # nothing written into the working tree
}
CI = settings(max_examples=60, derandomize=True, **_COMMON)
# make bench runs these beside the benchmarks: a loaded machine may take 1.5 s for a case a
# ReDoS would take minutes for, so the slow twins allow 5 s (and 300 examples keep make bench
# inside its 10 minutes)
SLOW = settings(CI, max_examples=300, derandomize=False, deadline=timedelta(seconds=5))


def twins(
    *strategies: st.SearchStrategy[Any], ci: int = 60, **named: st.SearchStrategy[Any]
) -> Callable[[Callable[..., None]], tuple[Callable[..., None], Callable[..., None]]]:
    """The property at CI size and its ``slow`` twin, both bounded by a pytest timeout."""

    def wrap(body: Callable[..., None]) -> tuple[Callable[..., None], Callable[..., None]]:
        fast = settings(CI, max_examples=ci)(given(*strategies, **named)(body))
        slow = settings(SLOW)(given(*strategies, **named)(body))
        return (
            pytest.mark.timeout(60)(fast),
            pytest.mark.slow(pytest.mark.timeout(900)(slow)),
        )

    return wrap


# --- the decoders under test ------------------------------------------------------------------


@dataclass(frozen=True)
class _Schema:
    schema_str: str | None
    schema_type: str | None = "AVRO"


@dataclass
class _Registry:
    """A registry stand-in: schemas by id, outages by id, 404 (40403) for every other id."""

    schemas: dict[int, _Schema] = field(default_factory=dict)
    outages: dict[int, BaseException] = field(default_factory=dict)

    def get_schema(self, schema_id: int) -> _Schema:
        if schema_id in self.outages:
            raise self.outages[schema_id]
        if schema_id not in self.schemas:
            raise SchemaRegistryError(404, 40403, f"Schema {schema_id} not found")
        return self.schemas[schema_id]


def _writer(entity: Entity, change: Callable[[list[dict[str, Any]]], None]) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(schema_text(entity))
    change(schema["fields"])
    return schema


def _evolved(fields: list[dict[str, Any]]) -> None:
    """A newer producer: one optional field added, the last optional one dropped."""
    fields.insert(1, {"name": "shoeSize", "type": ["null", "int"], "default": None})
    fields.pop()


def _resolving(fields: list[dict[str, Any]]) -> None:
    """A writer whose ``eventId`` is not nullable: fastavro resolves it to the reader's union."""
    for f in fields:
        if f["name"] == "eventId":
            f["type"] = "string"
            f.pop("default", None)


def _recursive(fields: list[dict[str, Any]]) -> None:
    node = {
        "type": "record",
        "name": "Node",
        "fields": [{"name": "next", "type": ["null", "Node"]}],
    }
    fields.append({"name": "tree", "type": ["null", node], "default": None})


def _null_array(fields: list[dict[str, Any]]) -> None:
    fields.append({"name": "nothing", "type": {"type": "array", "items": "null"}, "default": []})


READER, EVOLVED, RESOLVING, RECURSIVE, NULL_ARRAY, PROTOBUF, NOT_JSON = 1, 2, 3, 4, 5, 6, 7
OUTAGE_503, OUTAGE_CONNECT = 8, 9
WRITERS: dict[int, Callable[[list[dict[str, Any]]], None]] = {
    READER: lambda fields: None,
    EVOLVED: _evolved,
    RESOLVING: _resolving,
    RECURSIVE: _recursive,
    NULL_ARRAY: _null_array,
}
REFUSED_IDS = (RECURSIVE, NULL_ARRAY, PROTOBUF, NOT_JSON)
OUTAGE_IDS = (OUTAGE_503, OUTAGE_CONNECT)
KNOWN_IDS = (READER, EVOLVED, RESOLVING, *REFUSED_IDS, *OUTAGE_IDS)


def _registry(entity: Entity) -> _Registry:
    schemas = {i: _Schema(json.dumps(_writer(entity, change))) for i, change in WRITERS.items()}
    schemas[PROTOBUF] = _Schema('syntax = "proto3";', "PROTOBUF")
    schemas[NOT_JSON] = _Schema("{not json")
    return _Registry(
        schemas,
        {
            OUTAGE_503: SchemaRegistryError(503, 50003, "unavailable"),
            OUTAGE_CONNECT: sr_httpx.ConnectError("connection refused"),
        },
    )


PLAIN = {e: PlainAvroDecoder(e) for e in Entity}
FRAMED = {e: RegistryAvroDecoder(e, _registry(e)) for e in Entity}
PARSED_WRITERS = {
    (e, i): fastavro.parse_schema(_writer(e, change))
    for e in Entity
    for i, change in WRITERS.items()
}
READER_FIELDS = {e: [f["name"] for f in reader_schema(e)["fields"]] for e in Entity}
ENTITIES = st.sampled_from(list(Entity))


def _decode(decoder: Decoder, entity: Entity, value: bytes | None) -> dict[str, Any] | None:
    """The decoder's contract: a reader-shaped record, ``None`` for ``DecodeError``."""
    try:
        record = decoder.decode(value)
    except DecodeError as exc:
        assert 0 < len(str(exc)) <= 400, str(exc)
        return None
    assert isinstance(record, dict)
    assert list(record) == READER_FIELDS[entity]
    return record


# --- strategies: text, valid records, junk ----------------------------------------------------

EDGE_PIECES = [
    "\x00", "\u0301", "e\u0301", "\u202e", "\u200f", "\u200d", "\ufeff", "\ufffd", "\U0010ffff",
    "\U0001f469\u200d\U0001f4bb", "\U0001f1fa\U0001f1f8", "\n", "\r\n", "\t", " ", "\\", '"',
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629", "\u4e2d\u6587", "a", "-", "_", ".", "@",
]  # fmt: skip
"""NUL, combining marks, RTL override and mark, ZWJ, BOM, the last code point, emoji
sequences, line breaks, JSON's escapes, Arabic and CJK text, and the characters of the ids."""

SURROGATES = ["\ud800", "\udfff", "\ud83d", "a\udc00b"]


def texts(*, surrogates: bool) -> st.SearchStrategy[str]:
    """Unicode edge cases, short and up to ~2 MB (long ones built by repetition: fast)."""
    pieces = EDGE_PIECES + (SURROGATES if surrogates else [])
    chars = st.characters() if surrogates else st.characters(codec="utf-8")
    short = st.one_of(
        st.text(chars, max_size=20),
        st.lists(st.sampled_from(pieces), max_size=8).map("".join),
        st.from_regex(r"[a-zA-Z0-9_\-]{1,12}", fullmatch=True),
    )
    huge = st.builds(
        lambda head, piece, n, tail: (head + piece * n)[:2_000_000] + tail,
        st.sampled_from(["", "a@", "a"]),
        st.sampled_from([*pieces, "x", "a.", "..", ".x", "a@b."]),
        st.sampled_from([255, 256, 257, 1025, 100_000, 2_000_000]),
        st.sampled_from(["", "@", ".x"]),
    )
    return st.one_of(short, short, short, huge)


VALID_TEXT = texts(surrogates=False)
ANY_TEXT = texts(surrogates=True)
TIMESTAMPS = st.one_of(
    st.integers(-62135596800000, 253402300799999),  # years 1-9999 in epoch milliseconds
    st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
    ),
)
ATTRIBUTES = st.lists(st.fixed_dictionaries({"name": VALID_TEXT, "value": VALID_TEXT}), max_size=12)


def _value_for(avro_type: Any) -> st.SearchStrategy[Any]:
    """Values valid for one field type of our reader schemas (a decoded record's shape)."""
    if isinstance(avro_type, list):  # ["null", X]
        return st.one_of(st.none(), *(_value_for(t) for t in avro_type if t != "null"))
    if avro_type == "string":
        return VALID_TEXT
    if avro_type == "int":
        return st.integers(-(2**31), 2**31 - 1)
    if isinstance(avro_type, dict):
        if avro_type.get("logicalType") == "timestamp-millis":
            return TIMESTAMPS
        if avro_type["type"] == "array" and avro_type["items"] == "string":
            return st.lists(VALID_TEXT, max_size=4)
        if avro_type["type"] == "array":
            return ATTRIBUTES
    raise AssertionError(f"no strategy for {avro_type!r}")  # a new type in schemas/


def valid_records(entity: Entity) -> st.SearchStrategy[dict[str, Any]]:
    """Records fastavro can write with the entity's reader schema (optional fields may lack)."""
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for f in json.loads(schema_text(entity))["fields"]:
        (optional if "default" in f else required)[f["name"]] = _value_for(f["type"])
    return st.fixed_dictionaries(required, optional=optional)


VALID_RECORDS = ENTITIES.flatmap(lambda e: st.tuples(st.just(e), valid_records(e)))


class _Colour(Enum):
    RED = "RED"
    PHONE = "PHONE"


class _BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    ANY_TEXT,
    st.binary(max_size=16),
    st.datetimes(timezones=st.none() | st.timezones() | st.just(timezone(timedelta(hours=14)))),
    st.sampled_from([datetime.min.replace(tzinfo=timezone(timedelta(hours=5))), _Colour.PHONE]),
    st.builds(_BadRepr),
)
ALL_FIELD_NAMES = sorted({name for names in FIELDS.values() for name in names} | {"name", "value"})
KEYS = st.one_of(st.sampled_from(ALL_FIELD_NAMES), ANY_TEXT, st.integers(), st.none())
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=12),
        st.tuples(inner, inner),
        st.dictionaries(KEYS, inner, max_size=6),
        st.fixed_dictionaries({"name": inner, "value": inner}),
    ),
    max_leaves=12,
)


def junk_records() -> st.SearchStrategy[Any]:
    """Records with API field names and any values, extra keys, or not a mapping at all."""
    return st.one_of(
        st.dictionaries(st.sampled_from(ALL_FIELD_NAMES), JUNK, max_size=12),
        st.dictionaries(KEYS, JUNK, max_size=6),
        JUNK,
    )


_SPEC_SCHEMAS = load_spec()["components"]["schemas"]
FREE_TEXT = {
    e: [
        name
        for name, spec in _SPEC_SCHEMAS[COMPONENTS[e]]["properties"].items()
        if spec.get("type") == "string" and not {"pattern", "enum", "format"} & spec.keys()
    ]
    for e in Entity
}
"""Per entity, the API's string fields without a pattern, enum or format: any text goes."""
BASES = {e: generate(e, 40, seed=11) for e in Entity}
"""Records that pass the API's constraints (the sandbox generator's promise)."""


def api_records(entity: Entity, text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """A record the API accepts, with up to three of its free-text fields (attributes too) set
    to ``text``."""
    free = FREE_TEXT[entity]
    edits = st.dictionaries(st.sampled_from(free), text, max_size=3) if free else st.just({})
    pairs = st.fixed_dictionaries({"name": text, "value": text})
    attributes = st.one_of(
        st.just({}), st.lists(pairs, max_size=3).map(lambda a: {"attributes": a})
    )
    return st.builds(
        lambda base, new, attrs: {**base, **new, **attrs},
        st.sampled_from(BASES[entity]),
        edits,
        attributes,
    )


API_RECORDS = ENTITIES.flatmap(lambda e: st.tuples(st.just(e), api_records(e, VALID_TEXT)))
ODD_API_RECORDS = ENTITIES.flatmap(lambda e: st.tuples(st.just(e), api_records(e, ANY_TEXT)))


# --- the oracle: the API's constraints, read from the OpenAPI document itself -----------------

_SHORT_EMAIL = re.compile(CodeGeneratorDraft04.FORMAT_REGEXS["email"])


def _node(node: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = node.get("$ref")
    return _SPEC_SCHEMAS[ref.rsplit("/", 1)[1]] if isinstance(ref, str) else node


def _conforms(spec: Mapping[str, Any], value: Any, where: str) -> None:
    """Assert ``value`` satisfies one OpenAPI schema node (the subset the spec uses)."""
    spec = _node(spec)
    if value is None:
        assert spec.get("nullable") is True, f"{where}: null"
        return
    kind = spec.get("type")
    if kind == "string":
        assert isinstance(value, str), where
        if "maxLength" in spec:
            assert len(value) <= spec["maxLength"], f"{where}: {len(value)} characters"
        if "pattern" in spec:
            assert re.fullmatch(spec["pattern"], value), f"{where}: {value!r}"
        if "enum" in spec:
            assert value in spec["enum"], where
        if spec.get("format") == "email":
            assert _SHORT_EMAIL.match(value), where
        if spec.get("format") == "date-time":
            assert datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo, where
    elif kind == "integer":
        assert isinstance(value, int) and not isinstance(value, bool), where
    elif kind == "array":
        assert isinstance(value, list), where
        assert len(value) <= spec.get("maxItems", len(value)), f"{where}: {len(value)} items"
        for i, element in enumerate(value):
            _conforms(spec["items"], element, f"{where}[{i}]")
    elif kind == "object" or "properties" in spec:
        assert isinstance(value, dict), where
        properties = spec["properties"]
        assert set(value) <= set(properties), f"{where}: unknown {set(value) - set(properties)}"
        assert set(spec.get("required", ())) <= set(value), f"{where}: required"
        for key, element in value.items():
            _conforms(properties[key], element, f"{where}.{key}")
    else:
        raise AssertionError(f"{where}: the oracle does not know type {kind!r}")


def _assert_api_item(entity: Entity, item: Mapping[str, Any], body: bytes) -> None:
    """What an item sent to the API must be: its JSON, satisfying the spec's component."""
    assert orjson.loads(body) == item
    assert json.loads(body.decode("utf-8")) == item, "strict UTF-8 JSON"
    _conforms(_SPEC_SCHEMAS[COMPONENTS[entity]], dict(item), "item")
    assert len(item.get("attributes") or ()) <= 10


def _assert_reason(reason: str) -> None:
    assert 0 < len(reason) <= MAX_REASON_CHARS, reason
    assert reason.isascii() and reason.isprintable(), reason


def _ingest(entity: Entity, record: Any, *, offset: int = 7) -> bytes | None:
    """Map, validate and encode like the ingest step; ``None`` = dead letter ``validation``."""
    try:
        item = to_item(entity, record, topic=f"asapp.metadata.{entity.value}", partition=1,
                       offset=offset)  # fmt: skip
    except ValidationError as exc:
        assert 0 < len(str(exc)) <= 300, str(exc)
        return None
    validator = validator_for(entity)
    reason = validator.error(item)
    if reason is not None:
        _assert_reason(reason)
    try:
        body = validator.encode(item)
    except ValidationError as exc:
        _assert_reason(str(exc))
        return None
    assert reason is None, "encode() accepted what error() rejected"
    _assert_api_item(entity, item, body)
    return body


# --- decoder properties -----------------------------------------------------------------------


def _frame(schema_id: int, body: bytes) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + body


def _encoded(entity: Entity, record: dict[str, Any], writer: int) -> bytes:
    """``record`` in the Confluent frame under one of the writer schemas we register."""
    parsed: dict[str, Any] = PARSED_WRITERS[entity, writer]  # type: ignore[assignment]
    names = {f["name"] for f in parsed["fields"]}
    fitted = {k: v for k, v in record.items() if k in names}
    if writer == RESOLVING and fitted.get("eventId") is None:
        fitted["eventId"] = "evt-1"  # not nullable in that writer
    return encode_confluent(writer, PARSED_WRITERS[entity, writer], fitted)


def _event(entity: Entity, record: dict[str, Any], wire: int | str) -> tuple[Decoder, bytes]:
    """The decoder and value of ``record`` on one wire: ``"plain"`` or a writer schema id."""
    if isinstance(wire, str):
        return PLAIN[entity], encode_plain(entity, record)
    return FRAMED[entity], _encoded(entity, record, wire)


SCHEMA_IDS = st.one_of(
    st.sampled_from(KNOWN_IDS), st.integers(0, 2**32 - 1), st.sampled_from([0, 2**32 - 1])
)


@twins(ENTITIES, st.none() | st.binary(max_size=300), ci=150)
def _arbitrary_bytes(entity: Entity, value: bytes | None) -> None:
    _decode(PLAIN[entity], entity, value)
    _decode(FRAMED[entity], entity, value)  # mostly the wrong magic byte or a short frame


test_plain_and_framed_decoders_take_arbitrary_bytes, test_arbitrary_bytes_slow = _arbitrary_bytes


@twins(ENTITIES, st.sampled_from([READER, EVOLVED, RESOLVING, *REFUSED_IDS]),
       st.binary(max_size=300), ci=150)  # fmt: skip
def _framed_garbage(entity: Entity, schema_id: int, body: bytes) -> None:
    """A well-formed frame around garbage: every writer schema path reads it safely."""
    record = _decode(FRAMED[entity], entity, _frame(schema_id, body))
    assert record is None or schema_id not in REFUSED_IDS


test_framed_garbage_under_every_writer_schema, test_framed_garbage_slow = _framed_garbage


@twins(VALID_RECORDS, st.sampled_from(["plain", READER, EVOLVED, RESOLVING]), st.data())
def _truncated(pair: tuple[Entity, dict[str, Any]], wire: Any, data: st.DataObject) -> None:
    """Every strict prefix of a valid event is a ``DecodeError`` (Avro reads are prefix-free)."""
    entity, record = pair
    decoder, value = _event(entity, record, wire)
    assert _decode(decoder, entity, value) is not None, "the whole event decodes"
    cut = data.draw(st.integers(0, len(value) - 1), label="cut")
    assert _decode(decoder, entity, value[:cut]) is None


test_truncated_valid_events_are_decode_errors, test_truncated_slow = _truncated


@twins(VALID_RECORDS, st.sampled_from(["plain", READER, EVOLVED, RESOLVING]), st.data(), ci=100)
def _bit_flipped(pair: tuple[Entity, dict[str, Any]], wire: Any, data: st.DataObject) -> None:
    """Flipped bits give a record or a ``DecodeError``, and what decodes maps or dead-letters."""
    entity, record = pair
    decoder, value = _event(entity, record, wire)
    flips = data.draw(st.lists(st.integers(0, len(value) * 8 - 1), min_size=1, max_size=8))
    corrupt = bytearray(value)
    for bit in flips:
        corrupt[bit // 8] ^= 1 << (bit % 8)
    try:
        decoded = _decode(decoder, entity, bytes(corrupt))
    except RegistryUnavailable:  # a flipped schema id can land on an outage id
        assert wire != "plain" and int.from_bytes(corrupt[1:5], "big") in OUTAGE_IDS
        return
    if decoded is not None:
        _ingest(entity, decoded)


test_bit_flipped_valid_events_decode_or_are_decode_errors, test_bit_flipped_slow = _bit_flipped


@twins(VALID_RECORDS, SCHEMA_IDS, ci=100)
def _schema_ids(pair: tuple[Entity, dict[str, Any]], schema_id: int) -> None:
    """Any schema id: decoded by the writers we know, refused or unknown: ``DecodeError``,
    an outage: ``RegistryUnavailable``, and nothing else."""
    entity, record = pair
    value = _frame(schema_id, encode_plain(entity, record))
    try:
        decoded = _decode(FRAMED[entity], entity, value)
    except RegistryUnavailable:
        assert schema_id in OUTAGE_IDS
        return
    assert schema_id not in OUTAGE_IDS
    if schema_id == READER:
        assert decoded is not None
    if schema_id in REFUSED_IDS or schema_id not in KNOWN_IDS:
        assert decoded is None


test_any_schema_id_is_a_record_decode_error_or_outage, test_schema_ids_slow = _schema_ids


@twins(st.one_of(VALID_RECORDS, API_RECORDS), ci=100)
def _valid_events(pair: tuple[Entity, dict[str, Any]]) -> None:
    """Valid Avro with unicode edge cases and huge strings: an API item or a dead letter."""
    entity, record = pair
    decoded = _decode(PLAIN[entity], entity, encode_plain(entity, record))
    assert decoded is not None
    _ingest(entity, decoded)


test_valid_events_become_api_items_or_dead_letters, test_valid_events_slow = _valid_events


# --- mapper and validator properties ----------------------------------------------------------


@twins(ENTITIES, junk_records(), ci=200)
def _junk_records(entity: Entity, record: Any) -> None:
    _ingest(entity, record)


test_any_record_maps_to_an_item_or_a_validation_error, test_junk_records_slow = _junk_records


BAD_VALUES = st.one_of(SCALARS, ANY_TEXT, JUNK, st.lists(st.one_of(SCALARS, JUNK), max_size=12))


@twins(st.one_of(ODD_API_RECORDS, VALID_RECORDS), st.data(), ci=200)
def _one_bad_field(pair: tuple[Entity, dict[str, Any]], data: st.DataObject) -> None:
    """A record the API accepts (but for odd free text, lone surrogates included) with up to
    three of its fields replaced by a wrong type, odd text or junk."""
    entity, record = pair
    names = st.sampled_from([*FIELDS[entity], "shoeSize"])
    for name in data.draw(st.lists(names, max_size=3, unique=True), label="fields"):
        record = {**record, name: data.draw(BAD_VALUES, label=name)}
    _ingest(entity, record)


test_one_wrong_field_in_a_valid_record, test_one_bad_field_slow = _one_bad_field


@twins(ENTITIES, JUNK | st.dictionaries(KEYS, JUNK, max_size=40), ci=150)
def _validator_on_anything(entity: Entity, item: Any) -> None:
    """``error`` never raises and ``encode`` raises only ``ValidationError`` for any item."""
    validator = validator_for(entity)
    reason = validator.error(item)
    if reason is not None:
        _assert_reason(reason)
    try:
        body = validator.encode(item)
    except ValidationError as exc:
        _assert_reason(str(exc))
        return
    assert reason is None
    _assert_api_item(entity, item, body)


test_validator_takes_any_item, test_validator_slow = _validator_on_anything


@twins(VALID_RECORDS, st.dictionaries(KEYS, JUNK, min_size=1, max_size=4), ci=100)
def _extra_keys(pair: tuple[Entity, dict[str, Any]], extra: dict[Any, Any]) -> None:
    """A mapped item plus keys of any type: an unknown field is a reason, never a crash."""
    entity, record = pair
    item: dict[Any, Any] = to_item(entity, record, topic="t", partition=0, offset=0)
    item.update(extra)
    reason = validator_for(entity).error(item)
    if set(item) - set(FIELDS[entity]):
        assert reason is not None
        _assert_reason(reason)


test_unknown_keys_of_any_type_are_reasons, test_extra_keys_slow = _extra_keys


EMAILISH = st.text(st.sampled_from("ab.@\n\u00e9"), max_size=12)


@twins(EMAILISH, st.sampled_from([0, 1, 330, 2000]), st.integers(0, 12), ci=300)
def _email_language(text: str, pad: int, at: int) -> None:
    """Our linear e-mail regex accepts exactly what fastjsonschema's own does."""
    value = text[:at] + "x" * pad + text[at:]  # long values take the linear path
    assert bool(re.match(LONG_EMAIL_PATTERN, value)) == bool(_SHORT_EMAIL.match(value)), value
    item = {"externalConversationId": "c", "externalCustomerId": "u", "emailAddress": value}
    accepted = validator_for(Entity.CUSTOMER).error(item) is None
    assert accepted == bool(_SHORT_EMAIL.match(value)), value


test_email_check_is_fastjsonschemas_language, test_email_language_slow = _email_language


# --- fast paths give exactly what their references give -------------------------------------


def _mapped(mapper: Callable[..., dict[str, Any]], entity: Entity, record: Any) -> Any:
    """What ``mapper`` makes of ``record``: the item's (key, value) pairs in order, or the
    error's class and text."""
    try:
        item = mapper(entity, record, topic="asapp.metadata.x y", partition=2, offset=9)
    except Exception as exc:
        return type(exc), str(exc)
    assert type(item) is dict
    return list(item.items())


def full_records(entity: Entity) -> st.SearchStrategy[dict[str, Any]]:
    """Plain dicts holding every field of ``entity`` (the fast mapper's case, as decoded),
    each field valid, None, a wrong type or junk, sometimes with an extra key."""
    types = {f["name"]: f["type"] for f in json.loads(schema_text(entity))["fields"]}
    values = {
        name: st.one_of(_value_for(types[name]), st.none(), BAD_VALUES) for name in FIELDS[entity]
    }
    extra = st.dictionaries(KEYS, JUNK, max_size=2)
    return st.builds(lambda r, e: {**r, **e}, st.fixed_dictionaries(values), extra)


FULL_RECORDS = ENTITIES.flatmap(lambda e: st.tuples(st.just(e), full_records(e)))
ANY_RECORDS = st.one_of(
    FULL_RECORDS, FULL_RECORDS, VALID_RECORDS, ODD_API_RECORDS, st.tuples(ENTITIES, junk_records())
)
ODD_FIELD_VALUES: list[Any] = [
    None, "", "x", "a b", 0, -1, True, 1.5, 10**18, b"x", [], ["en-US"], ("en-US",), "en",
    {"name": "n", "value": "v"}, [{"name": "n", "value": "v", "extra": 1}], [{"name": "n"}],
    [["name", "value"]], datetime(2022, 7, 8, 11, 15, 53, 237517), datetime.min,
    datetime(2022, 7, 8, 13, 0, tzinfo=timezone(timedelta(hours=2))),
    datetime.min.replace(tzinfo=timezone(timedelta(hours=5))), _Colour.PHONE, _BadRepr(),
]  # fmt: skip
"""A value of every kind the converters treat apart (lists, tuples, timestamps, enums...)."""


@pytest.mark.parametrize("entity", [pytest.param(e, id=e.value) for e in Entity])
def test_fast_mapper_is_the_reference_for_each_field_of_a_decoded_record(entity: Entity) -> None:
    """Each field of a decoded record (every field present: the generated code's case) set to
    each odd value, with and without every other optional field set to None."""
    decoder = PlainAvroDecoder(entity)
    records = [decoder.decode(encode_plain(entity, r)) for r in generate(entity, 2, seed=5)]
    sparse = {name: None for name in records[0]} | {n: records[0][n] for n in ID_FIELDS[entity]}
    cases = 0
    for base in [*records, sparse]:
        assert _mapped(to_item, entity, base) == _mapped(reference_to_item, entity, base)
        for name in FIELDS[entity]:
            for value in ODD_FIELD_VALUES:
                record = {**base, name: value}
                assert _mapped(to_item, entity, record) == _mapped(
                    reference_to_item, entity, record
                ), (name, value)
                cases += 1
    assert cases == 3 * len(FIELDS[entity]) * len(ODD_FIELD_VALUES)


@twins(ANY_RECORDS, ci=200)
def _fast_mapper(pair: tuple[Entity, Any]) -> None:
    """``to_item`` (generated per entity) and ``reference_to_item`` agree on every record:
    the same keys in the same order with the same values, or the same error."""
    entity, record = pair
    assert _mapped(to_item, entity, record) == _mapped(reference_to_item, entity, record)


test_fast_mapper_is_the_reference, test_fast_mapper_slow = _fast_mapper


@twins(st.datetimes(timezones=st.none() | st.just(UTC) | st.timezones()), ci=300)
def _fast_timestamps(value: datetime) -> None:
    """The table-driven timestamp text is the field-by-field one, for every datetime."""
    try:
        utc = value if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError):
        with pytest.raises(ValidationError, match="out of range in UTC"):
            iso_utc_millis(value)
        return
    expected = (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:"
        f"{utc.second:02d}.{utc.microsecond // 1000:03d}Z"
    )
    assert iso_utc_millis(value) == expected


test_fast_timestamp_text_is_the_reference, test_fast_timestamps_slow = _fast_timestamps


# --- regressions found by the properties (example-based) --------------------------------------

AGENT: dict[Any, Any] = {"externalAgentId": "agent1", "eventId": "evt-1"}
CUSTOMER: dict[Any, Any] = {"externalConversationId": "c1", "externalCustomerId": "u1"}


@pytest.mark.parametrize("entity", [pytest.param(e, id=e.value) for e in Entity])
@pytest.mark.parametrize("writer", [pytest.param(RECURSIVE, id="recursive-type"),
                                    pytest.param(NULL_ARRAY, id="array-of-null")])  # fmt: skip
def test_unbounded_writer_schemas_are_refused_and_remembered(entity: Entity, writer: int) -> None:
    """A recursive writer schema let a ~5 KB value nest deep enough to overflow fastavro's C
    stack (segmentation fault: the pod crash-looped on it); an array of zero-byte items let a
    corrupt count of 2^62 spin for ever. Both schemas are refused, whatever the body."""
    registry = _registry(entity)
    decoder = RegistryAvroDecoder(entity, registry)
    record = generate(entity, 1, seed=3)[0]
    valid = _encoded(entity, record, writer)
    for _ in range(2):
        with pytest.raises(DecodeError, match=r"not supported: (recursive|an array whose)"):
            decoder.decode(valid)


def test_deeply_nested_value_under_a_recursive_schema_does_not_kill_the_process() -> None:
    """The crash itself, in a child process (a segfault here must not take pytest down)."""
    code = (
        "import json\n"
        "from consumer.decoder import RegistryAvroDecoder\n"
        "from consumer.errors import DecodeError\n"
        "from consumer.records import Entity\n"
        "from consumer.schemas import schema_text\n"
        "class S:\n"
        "    schema_type = 'AVRO'\n"
        "    def __init__(self, text): self.schema_str = text\n"
        "class R:\n"
        "    def get_schema(self, i): return S(json.dumps(writer))\n"
        "writer = json.loads(schema_text(Entity.CUSTOMER))\n"
        "node = {'type': 'record', 'name': 'Node',\n"
        "        'fields': [{'name': 'next', 'type': ['null', 'Node']}]}\n"
        "writer['fields'].append({'name': 'tree', 'type': ['null', node], 'default': None})\n"
        "body = b'\\x02c\\x02u' + b'\\x00' * 9 + b'\\x02' * 200_000 + b'\\x00'\n"
        "try:\n"
        "    frame = b'\\x00\\x00\\x00\\x00\\x04' + body\n"
        "    RegistryAvroDecoder(Entity.CUSTOMER, R()).decode(frame)\n"
        "except DecodeError as exc:\n"
        "    print('DecodeError', exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-500:]}"
    assert done.stdout.startswith("DecodeError"), done.stdout


def test_corrupt_count_of_null_items_is_refused_without_reading() -> None:
    body = b"\x02c\x02u" + b"\x00" * 9 + b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f" + b"\x00"
    decoder = RegistryAvroDecoder(Entity.CUSTOMER, _registry(Entity.CUSTOMER))
    with pytest.raises(DecodeError, match="array whose items take no bytes"):
        decoder.decode(_frame(NULL_ARRAY, body))


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "email",
    [
        pytest.param("a@" + ".x" * 500_000 + "@", id="dots-then-second-at"),
        pytest.param("a@" + "a.a" * 300_000 + "@", id="dotted-domain-then-at"),
        pytest.param("a" + "..a" * 300_000, id="double-dots-no-at"),
    ],
)
def test_a_megabyte_email_is_checked_in_linear_time(email: str) -> None:
    """fastjsonschema's e-mail regex backtracks quadratically: 40 KB took 3 s, so these 1 MB
    values took hours (the spec sets no maxLength on e-mail addresses)."""
    reason = validator_for(Entity.CUSTOMER).error({**CUSTOMER, "emailAddress": email})
    assert reason == "emailAddress: is not an email address"


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        pytest.param(dict(CUSTOMER) | {1: "x", "zz": "y"}, "1: unknown field, zz: unknown field",
                     id="int-and-str-keys"),  # sorted() of mixed keys raised TypeError
        pytest.param({**CUSTOMER, "attributes": [{"name": "n", "value": "v", None: 1, "b": 2}]},
                     "attributes[0].None: unknown field, attributes[0].b: unknown field",
                     id="nested-mixed-keys"),
        pytest.param({**CUSTOMER, "\ud800\x00" + "k" * 100: 1},
                     "\\ud800\\x00kkkkkkkkkkkkkkkkkkkkkkkkkkk...: unknown field",
                     id="surrogate-nul-long-key-escaped-and-cut"),
        pytest.param({**CUSTOMER, **{f"k{i:04}": i for i in range(1000)}},
                     "k0000: unknown field, k0001: unknown field, k0002: unknown field, "
                     "k0003: unknown field, k0004: unknown field (and 995 more)",
                     id="thousand-unknown-keys-bounded"),
    ],
)  # fmt: skip
def test_reasons_for_odd_keys_are_bounded_and_printable(item: Any, reason: str) -> None:
    assert validator_for(Entity.CUSTOMER).error(item) == reason


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        pytest.param({**CUSTOMER, "attributes": [{"name": "\ud800", "value": "v"}]},
                     "not representable as JSON: str is not valid UTF-8", id="lone-surrogate"),
        pytest.param({**AGENT, "concurrency": 2**64}, "not representable as JSON: Integer",
                     id="int-beyond-64-bits"),
        pytest.param({**AGENT, "lobId": "a b"}, r"lobId: does not match", id="invalid"),
    ],
)  # fmt: skip
def test_encode_rejects_what_json_cannot_carry(item: dict[str, Any], reason: str) -> None:
    """``error()`` passes the first two (the spec has no rule against them) but orjson, which
    the ingest step serialises with, raised ``JSONEncodeError`` outside any handler."""
    entity = Entity.AGENT if "externalAgentId" in item else Entity.CUSTOMER
    with pytest.raises(ValidationError, match=reason) as info:
        validator_for(entity).encode(item)
    _assert_reason(str(info.value))


def test_encode_of_a_valid_item_is_its_orjson() -> None:
    item = {**AGENT, "agentName": "Jos\u00e9 \U0001f469\u200d\U0001f4bb \u202e\x00", "ranking": 3}
    assert validator_for(Entity.AGENT).encode(item) == orjson.dumps(item)


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        pytest.param({**AGENT, "startTs": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))},
                     "out of range in UTC", id="aware-year-1-before-utc"),  # was OverflowError
        pytest.param({**AGENT, "startTs": 10**5000}, "timestamp <int> ms is out of range",
                     id="huge-int-millis"),  # was ValueError (int too long for str)
        pytest.param({**AGENT, "languages": "en"}, "languages must be a list, not str",
                     id="string-languages"),  # was silently ["e", "n"]
        pytest.param({**AGENT, "languages": 5}, "languages must be a list, not int",
                     id="int-languages"),  # was TypeError
        pytest.param({**AGENT, "attributes": {"name": "k", "value": "v"}},
                     "attributes must be a list, not dict", id="dict-attributes"),
        pytest.param({**AGENT, "attributes": [["name", "value"]]},
                     "attributes must be a list of {name, value}: TypeError", id="list-pair"),
        pytest.param(["externalAgentId", "a"], "event must be a record, not list",
                     id="not-a-mapping"),  # was AttributeError
    ],
)  # fmt: skip
def test_mapping_raises_only_validation_error(record: Any, reason: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(reason)) as info:
        to_item(Entity.AGENT, record, topic="t", partition=0, offset=1)
    assert len(str(info.value)) <= 200


def test_fallback_event_id_fits_the_api_for_the_longest_topic() -> None:
    """Kafka allows 249-char topic names: the fallback id was up to 280 characters, beyond the
    API's 256, so every event without its own id on such a topic was dead-lettered."""
    topic = "t" * 249
    event_id = fallback_event_id(topic, 2**31 - 1, 2**63 - 1)
    assert len(event_id) <= 256
    assert event_id != fallback_event_id("t" * 248 + "u", 2**31 - 1, 2**63 - 1), "unique"
    item = to_item(Entity.AGENT, {"externalAgentId": "a"}, topic=topic, partition=2**31 - 1,
                   offset=2**63 - 1)  # fmt: skip
    assert validator_for(Entity.AGENT).error(item) is None
