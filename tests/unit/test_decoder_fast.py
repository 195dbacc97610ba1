"""The decoder's fast reader: it returns exactly what fastavro reads, or leaves the value to it.

Soundness is what matters (a value it reads must be one fastavro reads the same way, with no
trailing bytes); coverage is checked on the events the service sees (every entity's sample
events and the benchmark's agent events), so the shortcut is really taken.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.decoder import PlainAvroDecoder, RegistryAvroDecoder, _compile_reader
from consumer.errors import DecodeError
from consumer.records import Entity
from consumer.sandbox.events import encode_plain, generate
from consumer.schemas import reader_schema, schema_text
from tests import bench_pipeline


def _fastavro(entity: Entity, value: bytes) -> Any:
    """fastavro's record for ``value``, or the exception type when it is not exactly one."""
    buf = io.BytesIO(value)
    try:
        record = fastavro.schemaless_reader(buf, reader_schema(entity), None)
    except Exception as exc:
        return type(exc)
    return record if buf.tell() == len(value) else "trailing bytes"


def _fast(entity: Entity, value: bytes) -> Any:
    reader = _compile_reader(reader_schema(entity))
    assert reader is not None
    try:
        return reader(value, 0)
    except Exception:
        return None


@pytest.mark.parametrize("entity", list(Entity))
def test_every_entity_schema_has_a_fast_reader(entity: Entity) -> None:
    assert _compile_reader(reader_schema(entity)) is not None


@pytest.mark.parametrize("entity", list(Entity))
def test_sample_events_are_read_fast_and_as_fastavro_reads_them(entity: Entity) -> None:
    for record in generate(entity, 300, seed=3):
        value = encode_plain(entity, record)
        assert _fast(entity, value) == _fastavro(entity, value)


def test_benchmark_events_are_read_fast() -> None:
    for value in bench_pipeline.values(200):
        assert _fast(Entity.AGENT, value) == _fastavro(Entity.AGENT, value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        *(
            pytest.param("lobName", "é" * (n // 2) + "x" * (n % 2), id=f"string-of-{n}-bytes")
            for n in (0, 1, 63, 64, 65, 127, 128, 8191, 8192)
        ),
        *(
            pytest.param("concurrency", n, id=f"int-{n}")
            for n in (0, -1, 63, -64, 64, -65, 8191, -8192, 2**31 - 1, -(2**31))
        ),
        *(
            pytest.param("startTs", ts, id=f"timestamp-{ts:%Y%m%dT%H%M%S.%f}")
            for ts in (
                datetime(1, 1, 1, tzinfo=UTC),
                datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
                datetime(1970, 1, 1, tzinfo=UTC),
                datetime(2022, 7, 8, 11, 15, 53, 237000, tzinfo=UTC),
                datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
            )
        ),
        pytest.param("languages", ["en"] * 64, id="array-of-64"),
        pytest.param("attributes", [], id="empty-array"),
    ],
)
def test_varint_boundaries_are_read_fast_and_as_fastavro_reads_them(field: str, value: Any) -> None:
    """One-byte varints come from tables, longer ones from a loop: both sides of each edge."""
    record = {**bench_pipeline.record(1), field: value}
    encoded = bench_pipeline.encode(record)
    fast = _fast(Entity.AGENT, encoded)
    assert fast is not None, "left to fastavro"
    expected = _fastavro(Entity.AGENT, encoded)
    assert fast == expected
    assert fast[field] == value
    assert type(fast[field]) is type(expected[field])
    if isinstance(value, datetime):
        assert fast[field].tzinfo is expected[field].tzinfo


@pytest.mark.parametrize(
    ("schema", "covered"),
    [
        pytest.param({"type": "record", "name": "r", "fields": []}, False, id="empty-record"),
        pytest.param(
            {"type": "record", "name": "r", "fields": [{"name": "b", "type": "boolean"}]},
            False,
            id="boolean-not-covered",
        ),
        pytest.param(
            {
                "type": "record",
                "name": "r",
                "fields": [{"name": "a", "type": {"type": "array", "items": "null"}}],
            },
            False,
            id="array-of-zero-byte-items",
        ),
        pytest.param(
            {"type": "record", "name": "r", "fields": [{"name": "s", "type": "string"}]},
            True,
            id="string",
        ),
    ],
)
def test_only_plain_schemas_get_a_fast_reader(schema: dict[str, Any], covered: bool) -> None:
    assert (_compile_reader(fastavro.parse_schema(schema)) is not None) is covered


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("string", id="string"),
        pytest.param({"type": "string"}, id="string-as-object"),
        pytest.param("long", id="long"),
        pytest.param({"type": "long"}, id="long-as-object"),
        pytest.param({"type": "long", "logicalType": "timestamp-millis"}, id="timestamp"),
        pytest.param({"type": "array", "items": "string"}, id="array"),
    ],
)
@pytest.mark.parametrize("value_first", [True, False], ids=["value-first", "null-first"])
def test_union_branches_are_read_fast_in_either_order(kind: Any, value_first: bool) -> None:
    """Every branch kind of a two-branch union, with null first or last, each value and null."""
    branches = [kind, "null"] if value_first else ["null", kind]
    schema = fastavro.parse_schema(
        {"type": "record", "name": "r", "fields": [{"name": "a", "type": branches},
                                                   {"name": "b", "type": "string"}]}
    )  # fmt: skip
    reader = _compile_reader(schema)
    assert reader is not None
    values = {"string": "é" * 40, "long": -(2**40), "array": ["x", "é" * 40]}
    kind_name = kind if isinstance(kind, str) else kind.get("logicalType", kind["type"])
    sample = values.get(kind_name, datetime(2022, 7, 8, 11, 15, 53, 237000, tzinfo=UTC))
    for a in (sample, None):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, {"a": a, "b": "end"})
        assert reader(buf.getvalue(), 0) == {"a": a, "b": "end"}


_VALUES = [encode_plain(e, r) for e in Entity for r in generate(e, 20, seed=9)]
_ENTITIES = [e for e in Entity for _ in range(20)]


class _OwnSchemas:
    """A registry holding each entity's own schema under id 1 (the fast reader's case)."""

    def __init__(self, entity: Entity) -> None:
        self.schema_str = schema_text(entity)
        self.schema_type = "AVRO"

    def get_schema(self, schema_id: int) -> _OwnSchemas:
        return self


_FRAME = b"\x00\x00\x00\x00\x01"  # the Confluent header of schema id 1


@settings(max_examples=600, deadline=None)
@given(
    index=st.integers(0, len(_VALUES) - 1),
    cut=st.integers(0, 400),
    flips=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 255)), max_size=3),
    tail=st.binary(max_size=3),
)
def test_damaged_values_are_read_as_fastavro_reads_them_or_left_to_it(
    index: int, cut: int, flips: list[tuple[int, int]], tail: bytes
) -> None:
    entity, value = _ENTITIES[index], bytearray(_VALUES[index])
    for at, mask in flips:
        if value:
            value[at % len(value)] ^= mask
    damaged = bytes(value[: max(1, len(value) - cut % 8)] if cut % 2 else value) + tail
    fast = _fast(entity, damaged)
    if fast is not None:
        assert fast == _fastavro(entity, damaged)
    # and the decoder as a whole gives fastavro's answer either way
    expected = _fastavro(entity, damaged)
    try:
        got: Any = PlainAvroDecoder(entity).decode(damaged)
    except DecodeError:
        assert not isinstance(expected, dict)
    else:
        assert got == expected
    # and so does the registry decoder reading it with our own schema as the writer's
    try:
        framed: Any = RegistryAvroDecoder(entity, _OwnSchemas(entity)).decode(_FRAME + damaged)
    except DecodeError:
        assert not isinstance(expected, dict)
    else:
        assert framed == expected
