"""Message bytes → Avro record: the only fastavro reader and the only schema-registry user.

Two wire formats, one per decoder, both behind the :class:`Decoder` protocol:

- :class:`PlainAvroDecoder`: the value is a schemaless Avro body written with our own
  ``schemas/<entity>.avsc``.
- :class:`RegistryAvroDecoder`: the Confluent wire format, ``0x00`` + 4-byte big-endian schema
  id + schemaless Avro body. The writer schema is fetched by id from the registry, parsed once
  and cached per id, then resolved against our reader schema, so a producer that adds or drops
  optional fields keeps decoding (unknown writer fields are dropped, missing ones take the
  reader's default ``null``).

Error contract of ``decode()`` (the caller acts on the class, the text is for the DLQ header):

- :class:`~consumer.errors.DecodeError` (dead-letter this message): no value, empty value, bytes
  that are not an Avro body for the schema, wrong magic byte, a frame shorter than 5 bytes, a
  schema id the registry says does not exist (HTTP 404 with SR code 40403), a writer schema that
  is not Avro, does not parse, or does not resolve against the reader schema, a truncated body,
  trailing bytes after the record. Nothing else escapes for bad bytes: any exception fastavro
  raises while reading is translated to ``DecodeError``. Its text is at most 160 characters
  plus a fixed prefix (well under 400).
- Bounded work: a read never takes more than time and memory proportional to the value's
  length. fastavro already refuses a string, bytes or array length beyond the remaining bytes
  (``EOFError``); the two writer schemas for which that is not enough are refused when the
  schema is first fetched, as ``DecodeError`` remembered for good: a **recursive** named type
  (fastavro's compiled reader recurses on the C stack, so a value of a few KB nesting deeper
  than the stack kills the process with a segmentation fault), and an **array of items that
  take no bytes** (``null``, an empty record, a zero-size ``fixed``: a corrupt count of
  2^62 items costs no bytes and never finishes).
- Property-tested (``tests/unit/test_properties_ingest.py``) over arbitrary, truncated and
  bit-flipped values and arbitrary schema ids.
- :class:`~consumer.errors.RegistryUnavailable` (retry later, never dead-letter): anything else
  that goes wrong while fetching a writer schema. What ``SchemaRegistryClient.get_schema`` raises
  (confluent-kafka 2.16, ``schema_registry/_sync/schema_registry_client.py``): after its own
  retries, ``httpx.TransportError`` subclasses (``ConnectError``, ``TimeoutException``, ...;
  from ``httpx2`` when that package is installed, see ``common/_httpx_compat.py``) when the
  registry cannot be reached; ``SchemaRegistryError(http_status_code, error_code, message)`` for
  any non-2xx answer (5xx, 429, 401/403, and 404 with 40403 for an unknown id); ``ValueError``
  or ``TypeError`` for a malformed answer; ``OAuthTokenError`` when a token cannot be fetched.
  Only the definitive "schema not found" (404 + 40403) is the message's fault; a 404 without
  that code (e.g. a wrong base URL answering HTML) and every other failure are an outage or a
  misconfiguration that must not dead-letter good messages.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast

import fastavro
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from consumer.errors import DecodeError, RegistryUnavailable
from consumer.records import Entity
from consumer.schemas import ParsedSchema, reader_schema

try:  # the HTTP library the registry client really uses (httpx2 when installed, else httpx)
    from confluent_kafka.schema_registry.common._httpx_compat import httpx as _sr_httpx

    _TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (_sr_httpx.TransportError, OSError)
except ImportError:  # pragma: no cover - layout of another confluent-kafka release
    _TRANSPORT_ERRORS = (OSError,)

MAGIC_BYTE = 0
"""First byte of the Confluent wire format."""
HEADER_BYTES = 5
"""Magic byte + 4-byte big-endian schema id."""
SCHEMA_NOT_FOUND = 40403
"""Schema registry error code for "schema id not found"."""
_MAX_REASON_CHARS = 160


class Decoder(Protocol):
    """Turns one Kafka message value into an Avro record (a dict shaped by our reader schema)."""

    def decode(self, value: bytes | None) -> dict[str, Any]:
        """Return the record. Raises ``DecodeError`` (bad message) or ``RegistryUnavailable``."""
        ...


class RegisteredSchemaLike(Protocol):
    """What the decoder reads from a registry's schema object (confluent's ``Schema``)."""

    @property
    def schema_str(self) -> str | None: ...

    @property
    def schema_type(self) -> str | None: ...


class SchemaRegistryLike(Protocol):
    """The one registry call the decoder makes; ``SchemaRegistryClient`` satisfies it."""

    def get_schema(self, schema_id: int) -> RegisteredSchemaLike: ...


def registry_client(
    url: str,
    basic_auth_user_info: str | None,
    *,
    timeout_s: float = 10.0,
    max_retries: int = 2,
) -> SchemaRegistryLike:
    """Build a real ``SchemaRegistryClient`` for ``url`` (comma-separated URLs fail over).

    ``basic_auth_user_info`` is ``"user:password"`` or ``None``. ``max_retries`` bounds the
    client's own retries (its default, 3 with waits up to 20 s, would stall the poll loop); the
    pipeline retries a ``RegistryUnavailable`` itself. Raises ``ValueError`` for a malformed
    URL or credentials (the client's own check).
    """
    conf: dict[str, Any] = {
        "url": url,
        "timeout": timeout_s,
        "max.retries": max_retries,
        "retries.wait.ms": 200,
        "retries.max.wait.ms": 2000,
    }
    if basic_auth_user_info:
        conf["basic.auth.user.info"] = basic_auth_user_info
    return SchemaRegistryClient(conf)


def _short(exc: BaseException) -> str:
    """``Type: message`` cut to a length that fits a DLQ header and a log line."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 3] + "..."


# ---------------------------------------------------------------------- the fast reader
#
# fastavro's compiled reader interprets the schema dicts for every value (~25 us for a
# 22-field agent event). For a writer schema read as it is (no resolution), a reader compiled
# for that schema, one straight-line Python function, does the same reads. It only covers the
# plain cases (null/string/int/long, timestamp-millis as fastavro converts it, unions
# with canonical one-byte indexes, arrays of items of at least one byte, inline records) and
# bails out on anything else (truncation, a negative or multi-block count, bad UTF-8, an int
# beyond 32 bits, trailing bytes...): fastavro then reads that value again and decides, so a
# record or an error is always fastavro's; only the cost differs. A schema using anything
# else gets no fast reader at all.


class _Bail(Exception):
    """The fast reader leaves this value to fastavro."""


def _long(data: bytes, pos: int) -> tuple[int, int]:
    """The zigzag varint at ``pos`` (at most 9 bytes, else :class:`_Bail`) and the next pos."""
    first = data[pos]
    if first < 0x80:
        return (first >> 1) ^ -(first & 1), pos + 1
    second = data[pos + 1]
    if second < 0x80:  # two bytes: a string of 64 to 8191 bytes, an int below 2**13
        n = (first & 0x7F) | (second << 7)
        return (n >> 1) ^ -(n & 1), pos + 2
    shift = n = 0
    for _ in range(9):
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7
    raise _Bail


def _size(data: bytes, pos: int) -> tuple[int, int]:
    """The length (a zigzag varint, never negative, else :class:`_Bail`) at ``pos``."""
    n, pos = _long(data, pos)
    if n < 0:
        raise _Bail
    return n, pos


# One-byte varints (the common case) by table: the value of a zigzag byte below 0x80, else None
# (a longer varint); a length, or -1 for a longer or negative one (both left to _size).
_ZIGZAG: tuple[int | None, ...] = tuple(
    (b >> 1) ^ -(b & 1) if b < 0x80 else None for b in range(256)
)
_SIZES: tuple[int, ...] = tuple(b >> 1 if b < 0x80 and not b & 1 else -1 for b in range(256))


class _ReaderCompiler:
    """Emits the fast reader's statements for one schema (see above); None = not covered."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._count = 0

    def var(self) -> str:
        self._count += 1
        return f"v{self._count}"

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def varint(self, indent: int, target: str, table: str = "_ZIGZAG", long: str = "_long") -> None:
        missing = "is None" if table == "_ZIGZAG" else "< 0"
        self.emit(indent, f"{target} = {table}[data[pos]]")
        self.emit(indent, f"if {target} {missing}:")
        self.emit(indent + 1, f"{target}, pos = {long}(data, pos)")
        self.emit(indent, "else:")
        self.emit(indent + 1, "pos += 1")

    def read(self, schema: Any, target: str, indent: int) -> bool:
        """Emit statements reading one ``schema`` value into ``target``."""
        if isinstance(schema, list):
            return self._union(schema, target, indent)
        kind, logical = schema, None
        if isinstance(schema, dict):
            kind, logical = schema.get("type"), schema.get("logicalType")
            if kind == "record":
                return self._record(schema, target, indent)
            if kind == "array":
                return self._array(schema, target, indent)
            extra = set(schema) - {"type", "logicalType"}
            if extra or (logical is not None and (kind, logical) != ("long", "timestamp-millis")):
                return False
        if kind == "null":
            self.emit(indent, f"{target} = None")
        elif kind == "string":
            # No bounds check: sizes are never negative, so pos only grows, and once it is past
            # the end every later read raises IndexError, or the final pos check bails.
            size = self.var()
            self.varint(indent, size, "_SIZES", "_size")
            self.emit(indent, f"{target} = data[pos:pos + {size}].decode()")
            self.emit(indent, f"pos += {size}")
        elif kind in ("int", "long"):
            self.varint(indent, target)
            if kind == "int":
                self.emit(indent, f"if not -2147483648 <= {target} <= 2147483647:")
                self.emit(indent + 1, "raise _Bail")
            if logical is not None:
                # fastavro's value (its converter adds the ms to the UTC epoch), without a call
                self.emit(indent, f"{target} = _EPOCH + _timedelta(0, 0, 0, {target})")
        else:
            return False
        return True

    def _union(self, branches: list[Any], target: str, indent: int) -> bool:
        index = self.var()
        self.emit(indent, f"{index} = data[pos]")
        self.emit(indent, "pos += 1")
        # one-byte zigzag indexes: 0, 2, 4 ...; null tested last (values are mostly set)
        order = sorted(enumerate(branches[:63]), key=lambda kb: kb[1] == "null")
        for n, (k, branch) in enumerate(order):
            self.emit(indent, f"{'if' if n == 0 else 'elif'} {index} == {2 * k}:")
            if not self.read(branch, target, indent + 1):
                return False
        self.emit(indent, "else:")
        self.emit(indent + 1, "raise _Bail")
        return bool(branches)

    def _record(self, schema: dict[str, Any], target: str, indent: int) -> bool:
        names: list[tuple[str, str]] = []
        for f in schema.get("fields", ()):
            value = self.var()
            if not self.read(f["type"], value, indent):
                return False
            names.append((f["name"], value))
        self.emit(indent, f"{target} = {{" + ", ".join(f"{n!r}: {v}" for n, v in names) + "}")
        return bool(names)  # an empty record takes no bytes: not covered (see arrays)

    def _array(self, schema: dict[str, Any], target: str, indent: int) -> bool:
        count, item = self.var(), self.var()
        self.emit(indent, f"{target} = []")
        self.varint(indent, count)
        self.emit(indent, f"if {count}:")
        # one block of items of at least one byte each (so the count is bounded by the bytes)
        self.emit(indent + 1, f"if {count} < 0 or {count} > end - pos:")
        self.emit(indent + 2, "raise _Bail")
        self.emit(indent + 1, f"for _ in range({count}):")
        before = len(self.lines)
        if not self.read(schema.get("items"), item, indent + 2):
            return False
        if any(ln.strip().endswith("= None") for ln in self.lines[before:]):
            return False  # an item may take no bytes
        self.emit(indent + 2, f"{target}.append({item})")
        self.varint(indent + 1, count)
        self.emit(indent + 1, f"if {count}:")
        self.emit(indent + 2, "raise _Bail")  # a second block: fastavro's
        return True


def _compile_reader(schema: Any) -> Callable[[bytes, int], Any] | None:
    """The fast reader of ``schema`` (a parsed record schema), or None if it is not covered.
    It returns the record read from ``data[start:]``, or raises :class:`_Bail` (or whatever a
    malformed value makes it raise) for fastavro to decide."""
    compiler = _ReaderCompiler()
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    if not compiler.read(schema, "record", 1):
        return None
    body = "\n".join(compiler.lines)
    source = (
        f"def read(data, pos):\n    end = len(data)\n{body}\n"
        "    if pos != end:\n        raise _Bail\n    return record\n"
    )
    namespace: dict[str, Any] = {
        "_Bail": _Bail,
        "_long": _long,
        "_size": _size,
        "_ZIGZAG": _ZIGZAG,
        "_SIZES": _SIZES,
        "_EPOCH": _EPOCH,
        "_timedelta": timedelta,
    }
    exec(source, namespace)  # generated from a parsed Avro schema, no outside text
    return cast(Callable[[bytes, int], Any], namespace["read"])


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


#: Fast readers by writer schema (keyed by identity; the schema is kept alive alongside).
_FAST: dict[int, tuple[ParsedSchema, Callable[[bytes, int], Any] | None]] = {}


def _fast_reader(writer: ParsedSchema) -> Callable[[bytes, int], Any] | None:
    entry = _FAST.get(id(writer))
    if entry is None or entry[0] is not writer:
        try:
            fast = _compile_reader(writer)
        except Exception:  # a schema shape the compiler did not foresee: fastavro reads it
            fast = None
        entry = _FAST[id(writer)] = (writer, fast)
    return entry[1]


def _read(
    value: bytes,
    start: int,
    writer: ParsedSchema,
    reader: ParsedSchema | None,
    what: str,
    *,
    fast_tried: bool = False,
) -> dict[str, Any]:
    """Read exactly one record from ``value[start:]``; every failure becomes ``DecodeError``.
    ``fast_tried``: the caller has already tried the fast reader on it (fastavro decides)."""
    if reader is None and not fast_tried:
        fast = _fast_reader(writer)
        if fast is not None:
            try:
                return cast(dict[str, Any], fast(value, start))
            except Exception:  # not swallowed: fastavro reads it again and decides
                pass
    buf = io.BytesIO(value)
    buf.seek(start)
    try:
        record = fastavro.schemaless_reader(buf, writer, reader)
    except fastavro.read.SchemaResolutionError as exc:
        raise DecodeError(
            f"{what} does not resolve against the reader schema: {_short(exc)}"
        ) from exc
    except (EOFError, StopIteration) as exc:
        raise DecodeError(f"truncated Avro body ({len(value) - start} bytes) for {what}") from exc
    except Exception as exc:  # fastavro raises many types on garbage: all mean a bad message
        raise DecodeError(f"invalid Avro body for {what}: {_short(exc)}") from exc
    end = buf.tell()
    if end != len(value):
        raise DecodeError(f"{len(value) - end} trailing bytes after the Avro record ({what})")
    if not isinstance(record, dict):  # pragma: no cover - our schemas are records
        raise DecodeError(f"{what} did not decode to a record")
    return record


def _require_value(value: bytes | None) -> bytes:
    if value is None:
        raise DecodeError("message has no value (tombstone or null)")
    if not value:
        raise DecodeError("message value is empty")
    return value


class PlainAvroDecoder:
    """Schemaless Avro written with our own ``schemas/<entity>.avsc`` (no framing)."""

    __slots__ = ("_fast", "_schema", "_what", "entity")

    def __init__(self, entity: Entity) -> None:
        self.entity = entity
        self._schema = reader_schema(entity)
        self._what = f"{entity.value}.avsc"
        self._fast = _fast_reader(self._schema)

    def decode(self, value: bytes | None) -> dict[str, Any]:
        """Return the record; raises ``DecodeError`` for anything that is not exactly one record."""
        fast = self._fast
        if fast is not None and value:
            try:
                return cast(dict[str, Any], fast(value, 0))
            except Exception:  # not swallowed: fastavro reads it again and decides
                pass
        return _read(_require_value(value), 0, self._schema, None, self._what, fast_tried=True)


@dataclass(frozen=True, slots=True)
class _Writer:
    """A usable writer schema and how to turn what it reads into a reader-shaped record.

    - ``reader`` set: let fastavro resolve writer → reader (the general, slower path).
    - ``project`` set: every reader field the writer has is of the identical type and every
      other reader field defaults to null, so reading with the writer alone and keeping the
      reader's fields (absent ones as ``None``) gives exactly what resolution would, at about
      half the cost. The usual evolution (optional fields added or dropped) takes this path.
    - neither: the writer is our reader schema.
    """

    schema: ParsedSchema
    reader: ParsedSchema | None
    project: tuple[str, ...] | None
    what: str
    #: The fast reader of ``schema`` when it is read as it is (``reader`` None), else None.
    fast: Callable[[bytes, int], Any] | None = dataclasses.field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        fast = _fast_reader(self.schema) if self.reader is None else None
        object.__setattr__(self, "fast", fast)


@dataclass(frozen=True, slots=True)
class _Rejected:
    """A schema id that is a bad message; ``until`` is a monotonic deadline, None = forever."""

    reason: str
    until: float | None


class RegistryBreakerOpen(Exception):
    """Raised by :class:`GuardedRegistry` while it refuses to call a failing registry."""


class GuardedRegistry:
    """A circuit breaker around the registry client, shared by every entity's decoder.

    After an outage-like failure (anything but "schema not found"), calls fail fast for
    ``cooldown_s`` instead of each cache miss blocking the poll loop on the client's timeouts
    and retries; the pipeline holds those messages and retries them later.
    """

    def __init__(
        self,
        client: SchemaRegistryLike,
        *,
        cooldown_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._open_until = 0.0
        self._last = ""

    def get_schema(self, schema_id: int) -> RegisteredSchemaLike:
        if self._clock() < self._open_until:
            raise RegistryBreakerOpen(f"not retried yet after: {self._last}")
        try:
            return self._client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if not (exc.http_status_code == 404 and exc.error_code == SCHEMA_NOT_FOUND):
                self._trip(exc)
            raise
        except Exception as exc:
            self._trip(exc)
            raise

    def _trip(self, exc: BaseException) -> None:
        self._open_until = self._clock() + self._cooldown_s
        self._last = _short(exc)


class RegistryAvroDecoder:
    """Confluent wire format: writer schema by id from the registry, resolved to our reader.

    Writer schemas are fetched once per id and cached for the life of the decoder (registry
    ids are immutable). Ids the registry reports missing are remembered for
    ``missing_ttl_s`` so a burst of such messages does not hammer the registry; ids whose
    schema is unusable (not Avro, does not parse) are remembered for good. Registry outages
    are never cached: the next call asks again.
    """

    __slots__ = ("_cache", "_client", "_clock", "_missing_ttl_s", "_reader", "_rejected", "entity")

    def __init__(
        self,
        entity: Entity,
        client: SchemaRegistryLike,
        *,
        missing_ttl_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.entity = entity
        self._client = client
        self._reader = reader_schema(entity)
        self._missing_ttl_s = missing_ttl_s
        self._clock = clock
        self._cache: dict[int, _Writer] = {}
        self._rejected: dict[int, _Rejected] = {}

    def decode(self, value: bytes | None) -> dict[str, Any]:
        """Return the record. Raises ``DecodeError`` or ``RegistryUnavailable`` (module doc)."""
        value = _require_value(value)
        if len(value) < HEADER_BYTES:
            raise DecodeError(
                f"frame too short: {len(value)} bytes (Confluent header is {HEADER_BYTES})"
            )
        if value[0] != MAGIC_BYTE:
            raise DecodeError(
                f"unknown magic byte 0x{value[0]:02x} (expected 0x00: Confluent wire format)"
            )
        schema_id = int.from_bytes(value[1:HEADER_BYTES], "big")
        writer = self._cache.get(schema_id)
        if writer is None:
            writer = self._writer(schema_id)
        fast = writer.fast
        if fast is not None:
            try:
                record = cast(dict[str, Any], fast(value, HEADER_BYTES))
            except Exception:  # not swallowed: fastavro reads it again and decides
                record = _read(
                    value, HEADER_BYTES, writer.schema, None, writer.what, fast_tried=True
                )
        else:
            record = _read(value, HEADER_BYTES, writer.schema, writer.reader, writer.what)
        if writer.project is None:
            return record
        get = record.get
        return {name: get(name) for name in writer.project}

    def _writer(self, schema_id: int) -> _Writer:
        """Fetch, parse and cache the writer schema for ``schema_id`` (cache miss path)."""
        rejected = self._rejected.get(schema_id)
        if rejected is not None:
            if rejected.until is None or self._clock() < rejected.until:
                raise DecodeError(rejected.reason)
            del self._rejected[schema_id]
        try:
            registered = self._client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404 and exc.error_code == SCHEMA_NOT_FOUND:
                reason = f"schema id {schema_id} not found in the schema registry"
                self._rejected[schema_id] = _Rejected(reason, self._clock() + self._missing_ttl_s)
                raise DecodeError(reason) from exc
            raise RegistryUnavailable(
                f"schema registry answered HTTP {exc.http_status_code} (SR code "
                f"{exc.error_code}) for schema id {schema_id}: {exc.error_message}"
            ) from exc
        except _TRANSPORT_ERRORS as exc:
            raise RegistryUnavailable(
                f"schema registry unreachable fetching schema id {schema_id}: {_short(exc)}"
            ) from exc
        except Exception as exc:  # malformed answer, token failure...: the registry's fault
            raise RegistryUnavailable(
                f"schema registry failed fetching schema id {schema_id}: {_short(exc)}"
            ) from exc
        try:
            writer = self._parse(schema_id, registered)
        except DecodeError as exc:
            self._rejected[schema_id] = _Rejected(str(exc), None)
            raise
        self._cache[schema_id] = writer
        return writer

    def _parse(self, schema_id: int, registered: RegisteredSchemaLike) -> _Writer:
        """Turn the registry's answer into a parsed writer schema, or raise ``DecodeError``."""
        schema_type = registered.schema_type or "AVRO"
        if schema_type.upper() != "AVRO":
            raise DecodeError(f"schema id {schema_id} is a {schema_type[:40]} schema, not AVRO")
        text = registered.schema_str
        if not text:
            raise DecodeError(f"schema id {schema_id} has an empty schema")
        try:
            parsed = fastavro.parse_schema(json.loads(text))
        except Exception as exc:  # JSON or Avro syntax, unknown (referenced) named types
            raise DecodeError(
                f"writer schema id {schema_id} does not parse: {_short(exc)}"
                + (
                    " (schema references are not supported)"
                    if isinstance(exc, fastavro.schema.UnknownType)
                    else ""
                )
            ) from exc
        if not isinstance(parsed, dict) or parsed.get("type") != "record":
            raise DecodeError(f"writer schema id {schema_id} is not an Avro record schema")
        what = f"writer schema id {schema_id}"
        try:
            unbounded = _unbounded(parsed)
            if unbounded is not None:
                raise DecodeError(f"{what} is not supported: {unbounded}")
            if _shape(parsed) == _shape(self._reader):
                return _Writer(parsed, None, None, what)
            if _projectable(parsed, self._reader):
                names = tuple(f["name"] for f in self._reader["fields"])
                return _Writer(parsed, None, names, what)
        except RecursionError as exc:  # parse_schema took it, our walk is deeper per level
            raise DecodeError(f"{what} is nested too deeply") from exc
        return _Writer(parsed, self._reader, None, what)


_IGNORED_KEYS = frozenset({"doc", "aliases", "order", "__fastavro_parsed", "__named_schemas"})


def _shape(schema: Any) -> Any:
    """What decides how bytes decode: the schema without docs, aliases and parse markers.

    Unlike Avro's parsing canonical form this keeps ``logicalType`` (a ``timestamp-millis``
    and a plain ``long`` decode to different Python values) and ``default``.
    """
    if isinstance(schema, dict):
        return {k: _shape(v) for k, v in schema.items() if k not in _IGNORED_KEYS}
    if isinstance(schema, list):
        return [_shape(v) for v in schema]
    return schema


def _projectable(writer: ParsedSchema, reader: ParsedSchema) -> bool:
    """True when reading with ``writer`` and projecting onto ``reader``'s fields is exact."""
    if writer.get("name") != reader.get("name"):
        return False
    writer_types = {f["name"]: _shape(f["type"]) for f in writer["fields"]}
    for field in reader["fields"]:
        if field["name"] in writer_types:
            if writer_types[field["name"]] != _shape(field["type"]):
                return False
        elif not ("default" in field and field["default"] is None):
            return False
    return True


_NAMED = frozenset({"record", "error", "enum", "fixed"})
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


def _types(schema: Any) -> Iterator[Any]:
    """Every type node of a parsed schema, each definition once (references stay names)."""
    stack = [schema]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in ("record", "error"):
                stack.extend(f.get("type") for f in node.get("fields", ()) if isinstance(f, dict))
            elif kind == "array":
                stack.append(node.get("items"))
            elif kind == "map":
                stack.append(node.get("values"))
            elif isinstance(kind, dict | list):
                stack.append(kind)


def _named(schema: ParsedSchema) -> dict[str, Any]:
    """Full name → definition of every named type (fastavro's parse keeps this table)."""
    table = schema.get("__named_schemas")
    if isinstance(table, dict):
        return table
    return {  # pragma: no cover - fastavro 1.x always fills the table
        t["name"]: t
        for t in _types(schema)
        if isinstance(t, dict) and t.get("type") in _NAMED and "name" in t
    }


def _refs(definition: Any) -> set[str]:
    """Names a record's fields refer to, without looking inside nested named definitions."""
    out: set[str] = set()
    stack = [f.get("type") for f in definition.get("fields", ()) if isinstance(f, dict)]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if node not in _PRIMITIVES:
                out.add(node)
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in _NAMED and "name" in node:
                out.add(node["name"])
            elif kind == "array":
                stack.append(node.get("items"))
            elif kind == "map":
                stack.append(node.get("values"))
            elif isinstance(kind, dict | list | str):
                stack.append(kind)
    return out


def _recursive(named: dict[str, Any]) -> str | None:
    """The name of a record that (directly or not) contains itself, or None."""
    graph = {
        name: _refs(d)
        for name, d in named.items()
        if isinstance(d, dict) and d.get("type") in ("record", "error")
    }
    done: set[str] = set()
    for root in graph:
        if root in done:
            continue
        path: list[tuple[str, Iterator[str]]] = [(root, iter(graph[root]))]
        on_path = {root}
        while path:
            name, children = path[-1]
            child = next(children, None)
            if child is None:
                path.pop()
                on_path.discard(name)
                done.add(name)
            elif child in on_path:
                return child
            elif child in graph and child not in done:
                path.append((child, iter(graph[child])))
                on_path.add(child)
    return None


def _zero_width(node: Any, named: dict[str, Any]) -> bool:
    """True when a value of this (non-recursive) type can be written in zero bytes."""
    if isinstance(node, str):
        if node == "null":
            return True
        return node in named and _zero_width(named[node], named)
    if not isinstance(node, dict):
        return False  # a union writes its branch index (>= 1 byte)
    kind = node.get("type")
    if kind in ("record", "error"):
        return all(_zero_width(f.get("type"), named) for f in node.get("fields", ()))
    if kind == "fixed":
        return node.get("size") == 0
    if isinstance(kind, str) and kind in _PRIMITIVES:
        return kind == "null"  # e.g. {"type": "null"} or a primitive with a logicalType
    return False  # enum, array, map: at least one byte each


def _unbounded(schema: ParsedSchema) -> str | None:
    """Why reading with this writer schema could outgrow the value's length, or None."""
    named = _named(schema)
    name = _recursive(named)
    if name is not None:
        return f"recursive type {name[:80]} (nesting is not bounded by the reader)"
    for node in _types(schema):
        if (
            isinstance(node, dict)
            and node.get("type") == "array"
            and _zero_width(node.get("items"), named)
        ):
            return "an array whose items take no bytes (a corrupt count is unbounded)"
    return None
