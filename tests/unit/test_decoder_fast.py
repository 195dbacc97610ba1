"""The decoder's fast reader: it returns exactly what fastavro reads, or leaves the value to it.

Soundness is what matters (a value it reads must be one fastavro reads the same way, with no
trailing bytes); coverage is checked on the events the service sees (every entity's sample
events and the benchmark's agent events), so the shortcut is really taken.
"""

from __future__ import annotations

import io
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.decoder import PlainAvroDecoder, _compile_reader
from consumer.errors import DecodeError
from consumer.records import Entity
from consumer.sandbox.events import encode_plain, generate
from consumer.schemas import reader_schema
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


_VALUES = [encode_plain(e, r) for e in Entity for r in generate(e, 20, seed=9)]
_ENTITIES = [e for e in Entity for _ in range(20)]


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
