"""Decoding plain Avro and the Confluent wire format, and classifying every failure."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import fastavro
import pytest
from confluent_kafka.schema_registry.common._httpx_compat import httpx as sr_httpx
from confluent_kafka.schema_registry.error import SchemaRegistryError

from consumer.decoder import PlainAvroDecoder, RegistryAvroDecoder, registry_client
from consumer.errors import DecodeError, RegistryUnavailable
from consumer.records import Entity
from consumer.sandbox.events import encode_confluent, encode_plain, generate
from consumer.schemas import reader_schema, schema_text

AGENT = {
    "externalAgentId": "agent158",
    "eventId": "eventId-158",
    "startTs": datetime(2022, 7, 8, 11, 15, 53, 237000, tzinfo=UTC),
    "languages": ["en-us"],
    "concurrency": 3,
    "attributes": [{"name": "k", "value": "v"}],
}


@dataclass
class FakeSchema:
    schema_str: str | None
    schema_type: str | None = "AVRO"


@dataclass
class FakeRegistry:
    """Serves schema texts by id; ids in ``errors`` raise that exception instead."""

    schemas: dict[int, str] = field(default_factory=dict)
    errors: dict[int, BaseException] = field(default_factory=dict)
    types: dict[int, str] = field(default_factory=dict)
    calls: list[int] = field(default_factory=list)

    def get_schema(self, schema_id: int) -> FakeSchema:
        self.calls.append(schema_id)
        if schema_id in self.errors:
            raise self.errors[schema_id]
        if schema_id not in self.schemas:
            raise SchemaRegistryError(404, 40403, f"Schema {schema_id} not found")
        return FakeSchema(self.schemas[schema_id], self.types.get(schema_id, "AVRO"))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _agent_schema(*, extra: bool = False, drop: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(schema_text(Entity.AGENT))
    if drop is not None:
        schema["fields"] = [f for f in schema["fields"] if f["name"] != drop]
    if extra:
        schema["fields"].insert(
            2, {"name": "shoeSize", "type": ["null", "int"], "default": None, "doc": "new"}
        )
    return schema


def _registry_decoder(**schemas: dict[str, Any]) -> tuple[RegistryAvroDecoder, FakeRegistry]:
    registry = FakeRegistry({int(k[1:]): json.dumps(v) for k, v in schemas.items()})
    return RegistryAvroDecoder(Entity.AGENT, registry), registry


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("entity", [pytest.param(e, id=e.value) for e in Entity])
def test_plain_round_trip(entity: Entity) -> None:
    decoder = PlainAvroDecoder(entity)
    for record in generate(entity, 30, seed=7):
        decoded = decoder.decode(encode_plain(entity, record))
        assert {k: v for k, v in decoded.items() if v is not None and k != "startTs"} == {
            k: v for k, v in record.items() if k != "startTs"
        }
        if "startTs" in record:
            ts = record["startTs"]
            millis = ts if isinstance(ts, int) else int(ts.timestamp() * 1000)
            assert int(decoded["startTs"].timestamp() * 1000) == millis


def test_confluent_round_trip_and_one_registry_call_per_id() -> None:
    decoder, registry = _registry_decoder(s7=_agent_schema())
    parsed = fastavro.parse_schema(_agent_schema())
    for _ in range(5):
        decoded = decoder.decode(encode_confluent(7, parsed, AGENT))
        assert decoded["externalAgentId"] == "agent158"
        assert decoded["startTs"] == AGENT["startTs"]
        assert decoded["attributes"] == [{"name": "k", "value": "v"}]
        assert decoded["lobId"] is None
    assert registry.calls == [7]


def test_large_schema_id_uses_all_four_bytes() -> None:
    decoder, registry = _registry_decoder(s16909060=_agent_schema())
    value = encode_confluent(0x01020304, reader_schema(Entity.AGENT), AGENT)
    assert value[:5] == b"\x00\x01\x02\x03\x04"
    assert decoder.decode(value)["concurrency"] == 3
    assert registry.calls == [0x01020304]


EVOLUTIONS = [
    pytest.param(_agent_schema(extra=True), id="writer-added-optional-field"),
    pytest.param(_agent_schema(drop="lobName"), id="writer-dropped-optional-field"),
    pytest.param(_agent_schema(extra=True, drop="concurrency"), id="added-and-dropped"),
]


@pytest.mark.parametrize("writer", EVOLUTIONS)
def test_schema_evolution_resolves_to_reader_shape(writer: dict[str, Any]) -> None:
    decoder, _ = _registry_decoder(s3=writer)
    record = dict(AGENT, shoeSize=44, lobName="retail")
    writer_names = {f["name"] for f in writer["fields"]}
    record = {k: v for k, v in record.items() if k in writer_names}
    decoded = decoder.decode(encode_confluent(3, fastavro.parse_schema(writer), record))
    reader_names = [f["name"] for f in reader_schema(Entity.AGENT)["fields"]]
    assert list(decoded) == reader_names, "exactly the reader's fields"
    assert "shoeSize" not in decoded
    assert decoded["externalAgentId"] == "agent158"
    assert decoded["startTs"] == AGENT["startTs"]
    for name in reader_names:
        if name not in writer_names:
            assert decoded[name] is None, name
        elif name in record:
            assert decoded[name] == record[name], name


def test_evolution_needing_type_promotion_goes_through_resolution() -> None:
    writer = _agent_schema()
    for f in writer["fields"]:
        if f["name"] == "concurrency":
            f["type"] = "int"  # not nullable in the writer: a real resolution, int -> union
            del f["default"]
    decoder, _ = _registry_decoder(s5=writer)
    decoded = decoder.decode(encode_confluent(5, fastavro.parse_schema(writer), AGENT))
    assert decoded["concurrency"] == 3
    assert decoded["attributes"] == [{"name": "k", "value": "v"}]


# --- bad messages ------------------------------------------------------------------------------

PLAIN_BODY = encode_plain(Entity.AGENT, AGENT)
CONFLUENT = encode_confluent(1, reader_schema(Entity.AGENT), AGENT)

BAD_PLAIN = [
    pytest.param(None, "no value", id="none"),
    pytest.param(b"", "empty", id="empty"),
    pytest.param(PLAIN_BODY[:-3], "truncated", id="truncated"),
    pytest.param(PLAIN_BODY + b"\x00\x00", "2 trailing bytes", id="trailing-bytes"),
    pytest.param(b'{"externalAgentId": "a"}', "truncated Avro body", id="json-not-avro"),
    pytest.param(
        b"\x04\xff\xfe", "invalid Avro body for agent.avsc: UnicodeDecodeError", id="bad-utf8"
    ),
]


@pytest.mark.parametrize(("value", "reason"), BAD_PLAIN)
def test_plain_bad_input_is_decode_error(value: bytes | None, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason) as info:
        PlainAvroDecoder(Entity.AGENT).decode(value)
    assert 0 < len(str(info.value)) <= 200


BAD_CONFLUENT = [
    pytest.param(None, "no value", id="none"),
    pytest.param(b"", "empty", id="empty"),
    pytest.param(b"\x00\x00\x01", r"frame too short: 3 bytes", id="short-frame"),
    pytest.param(b'{"a": 1}', r"unknown magic byte 0x7b \(expected 0x00", id="json-magic"),
    pytest.param(b"\x01" + CONFLUENT[1:], "unknown magic byte 0x01", id="magic-v1"),
    pytest.param(CONFLUENT[:5], "truncated", id="header-only"),
    pytest.param(CONFLUENT[:-4], "truncated", id="truncated-body"),
    pytest.param(CONFLUENT + b"\x00", "1 trailing bytes", id="trailing-bytes"),
    pytest.param(b"\x00\x00\x00\x00\x09" + PLAIN_BODY, "schema id 9 not found", id="unknown-id"),
]


@pytest.mark.parametrize(("value", "reason"), BAD_CONFLUENT)
def test_confluent_bad_input_is_decode_error(value: bytes | None, reason: str) -> None:
    decoder, _ = _registry_decoder(s1=_agent_schema())
    with pytest.raises(DecodeError, match=reason) as info:
        decoder.decode(value)
    assert 0 < len(str(info.value)) <= 200


def _with_field(name: str, avro_type: Any) -> dict[str, Any]:
    schema = _agent_schema()
    for f in schema["fields"]:
        if f["name"] == name:
            f["type"] = avro_type
            f.pop("default", None)
    return schema


BAD_WRITERS = [
    pytest.param(
        _with_field("concurrency", ["null", "string"]),
        {"concurrency": "3"},
        "does not resolve",
        id="incompatible-type",
    ),
    pytest.param(
        _agent_schema(drop="externalAgentId"),
        {},
        "does not resolve",
        id="writer-lacks-required-id",
    ),
]


@pytest.mark.parametrize(("writer", "override", "reason"), BAD_WRITERS)
def test_incompatible_writer_schema_is_decode_error(
    writer: dict[str, Any], override: dict[str, Any], reason: str
) -> None:
    decoder, _ = _registry_decoder(s4=writer)
    names = {f["name"] for f in writer["fields"]}
    record = {k: v for k, v in dict(AGENT, **override).items() if k in names}
    with pytest.raises(DecodeError, match=reason):
        decoder.decode(encode_confluent(4, fastavro.parse_schema(writer), record))


@pytest.mark.parametrize(
    ("schema_str", "schema_type", "reason"),
    [
        pytest.param('syntax = "proto3";', "PROTOBUF", "is a PROTOBUF schema", id="protobuf"),
        pytest.param("{not json", "AVRO", "does not parse", id="not-json"),
        pytest.param('{"type": "record", "name": "X", "fields": [{"name": "a", "type": "Ref"}]}',
                     "AVRO", "schema references are not supported", id="reference"),
        pytest.param('"string"', None, "not an Avro record schema", id="not-a-record"),
    ],
)  # fmt: skip
def test_unusable_writer_schema_is_decode_error_and_remembered(
    schema_str: str, schema_type: str | None, reason: str
) -> None:
    registry = FakeRegistry({6: schema_str}, types={6: schema_type} if schema_type else {})
    decoder = RegistryAvroDecoder(Entity.AGENT, registry)
    for _ in range(3):
        with pytest.raises(DecodeError, match=reason):
            decoder.decode(b"\x00\x00\x00\x00\x06" + PLAIN_BODY)
    assert registry.calls == [6]


def test_unknown_id_is_remembered_for_the_ttl_only() -> None:
    clock = FakeClock()
    registry = FakeRegistry()
    decoder = RegistryAvroDecoder(Entity.AGENT, registry, missing_ttl_s=60, clock=clock)
    value = b"\x00\x00\x00\x00\x09" + PLAIN_BODY
    for _ in range(3):
        with pytest.raises(DecodeError, match="schema id 9 not found"):
            decoder.decode(value)
    assert registry.calls == [9]
    clock.now += 61
    registry.schemas[9] = schema_text(Entity.AGENT)  # registered meanwhile
    assert decoder.decode(value)["externalAgentId"] == "agent158"
    assert registry.calls == [9, 9]


def test_random_bytes_only_ever_raise_decode_error() -> None:
    rng = random.Random(1234)
    plain = PlainAvroDecoder(Entity.CONVERSATION)
    registry = FakeRegistry({0: schema_text(Entity.CONVERSATION)})
    framed = RegistryAvroDecoder(Entity.CONVERSATION, registry)
    decoded = 0
    for _ in range(400):
        body = rng.randbytes(rng.randint(1, 40))
        for decoder, value in ((plain, body), (framed, b"\x00\x00\x00\x00\x00" + body)):
            try:
                decoder.decode(value)
                decoded += 1
            except DecodeError:
                pass
    assert decoded < 800, "garbage must not all decode"


# --- registry trouble is retryable, never a bad message -----------------------------------------

REGISTRY_FAILURES = [
    pytest.param(SchemaRegistryError(503, 50003, "unavailable"), "HTTP 503", id="503"),
    pytest.param(SchemaRegistryError(500, 50001, "store error"), "HTTP 500", id="500"),
    pytest.param(SchemaRegistryError(429, 42901, "slow down"), "HTTP 429", id="429"),
    pytest.param(SchemaRegistryError(401, 40101, "unauthorized"), "HTTP 401", id="401"),
    pytest.param(SchemaRegistryError(404, -1, "<html>"), "HTTP 404", id="404-not-a-registry"),
    pytest.param(sr_httpx.ConnectError("connection refused"), "unreachable", id="connect"),
    pytest.param(sr_httpx.ReadTimeout("timed out"), "unreachable", id="timeout"),
    pytest.param(ConnectionResetError("reset"), "unreachable", id="os-error"),
    pytest.param(ValueError("Expecting value"), "failed", id="malformed-answer"),
]


@pytest.mark.parametrize(("error", "reason"), REGISTRY_FAILURES)
def test_registry_failure_is_retryable_and_not_cached(error: BaseException, reason: str) -> None:
    registry = FakeRegistry({2: schema_text(Entity.AGENT)}, errors={2: error})
    decoder = RegistryAvroDecoder(Entity.AGENT, registry)
    value = encode_confluent(2, reader_schema(Entity.AGENT), AGENT)
    with pytest.raises(RegistryUnavailable, match=reason) as info:
        decoder.decode(value)
    assert not isinstance(info.value, DecodeError)
    assert info.value.__cause__ is error
    del registry.errors[2]  # the registry recovers: the next call asks again and succeeds
    assert decoder.decode(value)["externalAgentId"] == "agent158"
    assert registry.calls == [2, 2]


# --- the real client against a tiny HTTP registry ----------------------------------------------


class _Registry(BaseHTTPRequestHandler):
    answers: ClassVar[dict[str, tuple[int, dict[str, Any]]]] = {}
    authorizations: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        self.authorizations.append(self.headers.get("Authorization"))
        status, body = self.answers.get(self.path.split("?")[0], (404, {"error_code": 40403}))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def registry_url() -> Iterator[str]:
    _Registry.answers = {
        "/schemas/ids/1": (200, {"schema": schema_text(Entity.AGENT)}),
        "/schemas/ids/2": (503, {"error_code": 50003, "message": "down"}),
    }
    server = HTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _frame(schema_id: int) -> bytes:
    return encode_confluent(schema_id, reader_schema(Entity.AGENT), AGENT)


def test_real_client_decodes_and_classifies(registry_url: str) -> None:
    client = registry_client(registry_url, "user:secret", timeout_s=2, max_retries=0)
    decoder = RegistryAvroDecoder(Entity.AGENT, client)
    assert decoder.decode(_frame(1))["externalAgentId"] == "agent158"
    with pytest.raises(RegistryUnavailable, match="HTTP 503"):
        decoder.decode(_frame(2))
    with pytest.raises(DecodeError, match="schema id 3 not found"):
        decoder.decode(_frame(3))
    assert set(_Registry.authorizations) == {"Basic dXNlcjpzZWNyZXQ="}  # user:secret


def test_real_client_unreachable_registry_is_retryable() -> None:
    with socket_closed_port() as port:
        client = registry_client(f"http://127.0.0.1:{port}", None, timeout_s=1, max_retries=0)
        with pytest.raises(RegistryUnavailable, match="unreachable") as info:
            RegistryAvroDecoder(Entity.AGENT, client).decode(_frame(1))
    assert isinstance(info.value.__cause__, sr_httpx.TransportError)


class socket_closed_port:
    """A local port nothing listens on (bound, then released)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        return None
