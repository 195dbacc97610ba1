"""The producer side of the wire formats the decoder reads: plain (schemaless) Avro and the
Confluent registry framing, plus the registry id of our schema for a topic.

Users: ``metadata-consumer produce`` (:mod:`consumer.backfill`) and the sandbox's sample
producer. The decoder (:mod:`consumer.decoder`) is the reading side; both use the schemas of
:mod:`consumer.schemas`.

Contracts:

- :func:`encode_plain` writes ``record`` with our ``schemas/<entity>.avsc``; it raises
  :class:`~consumer.errors.ValidationError` (naming the Avro problem) when the record does not
  fit the schema: a wrong type, a missing required field, an ``int`` beyond 32 bits.
- :func:`encode_confluent` writes ``0x00`` + the 4-byte big-endian schema id + the same body,
  with any writer schema; it raises ``ValidationError`` in the same cases.
- :func:`registered_id` returns the id of our schema under ``<topic>-value``, registering it
  when the subject does not hold it yet (what Confluent's serializers do by default); raises
  :class:`~consumer.errors.RegistryUnavailable` when the registry cannot be asked and
  :class:`SchemaRefused` when it refuses the schema (an incompatible subject, no permission).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import fastavro
from fastavro.types import Schema as AvroSchema

from consumer.errors import ConfigError, RegistryUnavailable, ValidationError
from consumer.records import Entity
from consumer.schemas import reader_schema, schema_text

__all__ = ["SchemaRefused", "encode_confluent", "encode_plain", "registered_id", "subject_for"]

_MAX_REASON_CHARS = 300


class SchemaRefused(ConfigError):
    """The schema registry refused our schema for a subject (incompatible, or not allowed)."""


def _write(buf: io.BytesIO, schema: AvroSchema, record: Mapping[str, Any]) -> None:
    try:
        fastavro.schemaless_writer(buf, schema, dict(record))
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        # fastavro's ValidationError is a ValueError; struct.error (an int out of range) too
        text = f"does not fit the Avro schema: {type(exc).__name__}: {exc}"
        raise ValidationError(text[:_MAX_REASON_CHARS]) from exc


def encode_plain(entity: Entity, record: Mapping[str, Any]) -> bytes:
    """Schemaless Avro body of ``record`` written with our ``schemas/<entity>.avsc``."""
    buf = io.BytesIO()
    _write(buf, reader_schema(entity), record)
    return buf.getvalue()


def encode_confluent(schema_id: int, schema: AvroSchema, record: Mapping[str, Any]) -> bytes:
    """Confluent wire format: ``0x00`` + 4-byte big-endian ``schema_id`` + schemaless body.

    ``schema`` is the writer schema (any schema, e.g. an evolved one), ideally already parsed
    with ``fastavro.parse_schema``; ``record`` must be valid for it.
    """
    buf = io.BytesIO()
    buf.write(b"\x00")
    buf.write(schema_id.to_bytes(4, "big"))
    _write(buf, schema, record)
    return buf.getvalue()


def subject_for(topic: str) -> str:
    """The registry subject of a topic's values (TopicNameStrategy): ``<topic>-value``."""
    return f"{topic}-value"


def registered_id(client: Any, entity: Entity, topic: str) -> int:
    """The registry id of our ``<entity>.avsc`` under ``<topic>-value`` (registered if absent).

    ``client`` is a ``SchemaRegistryClient`` (:func:`consumer.decoder.registry_client`).
    """
    from confluent_kafka.schema_registry import Schema
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    subject = subject_for(topic)
    schema = Schema(schema_text(entity), "AVRO")
    try:
        try:
            return int(client.lookup_schema(subject, schema).schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code != 404:
                raise
        return int(client.register_schema(subject, schema))
    except SchemaRegistryError as exc:
        if exc.http_status_code >= 500:
            raise RegistryUnavailable(f"schema registry: {subject}: {exc}") from exc
        raise SchemaRefused(
            f"the schema registry refused {entity.value}.avsc under {subject}: {exc}"
        ) from exc
    except Exception as exc:  # connection refused, DNS, timeout: the client's own exceptions
        raise RegistryUnavailable(
            f"schema registry unreachable ({subject}): {type(exc).__name__}: {exc}"
        ) from exc
