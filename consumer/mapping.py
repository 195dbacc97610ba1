"""Avro record → API item: the dict that goes, as one element of ``items``, to the batch endpoint.

Contracts of :func:`to_item`:

- Only the API's own fields are copied, from an explicit list per entity (the order of the
  spec's component properties); anything else in the record is ignored. Keys keep that order,
  so the same record always yields the same item (and the same JSON bytes).
- A field that is absent or ``None`` is omitted, never sent as ``null``.
- ``startTs`` (a ``datetime`` from fastavro's ``timestamp-millis``, or epoch milliseconds)
  becomes an ISO-8601 UTC string with milliseconds, e.g. ``2022-07-08T11:15:53.237Z``; a naive
  ``datetime`` is taken as UTC.
- ``attributes`` becomes a new list of ``{"name", "value"}`` dicts; ``languages`` and
  ``companySegment`` become new lists; enum-valued fields are sent as strings.
- ``eventId`` is always set: the record's own ``eventId`` when it is a non-empty string, else
  :func:`fallback_event_id` of the message's position, so every result the API returns can be
  matched back to its message.
- The item is not checked against the API's patterns, lengths and scalar types (that is
  validation's job: a wrong-typed scalar is copied as it is and rejected there).

Error contract: for *any* input (a record of any shape, with values of any type, however
nested) ``to_item`` returns an item or raises :class:`~consumer.errors.ValidationError`, and
nothing else. It raises for what it cannot convert: a record that is not a mapping, a
``startTs`` that is not a ``datetime`` or epoch milliseconds or lies outside years 1-9999 (in
UTC), ``languages`` / ``companySegment`` / ``attributes`` that are not lists (or tuples), an
attribute that is not a mapping with ``name`` and ``value``. The error text names the field
and is at most about 200 characters. Property-tested in ``tests/unit/test_properties_ingest.py``.

Speed: :func:`to_item` runs code generated per entity for the decoders' records (plain dicts
holding every field) and :func:`reference_to_item`, the plain field-by-field loop, for anything
else; the tests hold the two equal (same keys, order, values and errors) on any record.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, cast

from consumer.errors import ValidationError
from consumer.records import Entity

FIELDS: dict[Entity, tuple[str, ...]] = {
    Entity.AGENT: (
        "externalAgentId", "eventId", "startTs", "lobId", "lobName", "groupId", "groupName",
        "agentName", "agentLocation", "supervisorId", "supervisorName", "languages",
        "concurrency", "categoryLabel", "accountAccessLevel", "ranking", "vendor", "jobTitle",
        "jobRole", "workShift", "emailAddress", "attributes",
    ),
    Entity.CONVERSATION: (
        "externalConversationId", "eventId", "lobId", "lobName", "groupId", "groupName",
        "agentRoutingCode", "campaign", "deviceType", "platform", "companySegment",
        "companySubdivision", "businessRule", "entryType", "operatingSystem", "browserType",
        "browserVersion", "attributes",
    ),
    Entity.CUSTOMER: (
        "externalConversationId", "externalCustomerId", "eventId", "status", "phoneNumber",
        "emailAddress", "userId", "addressCountry", "addressState", "addressZipcode",
        "attributes",
    ),
}  # fmt: skip
"""The API's item fields per entity, in the spec's order (a test checks them against it)."""

_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_TOPIC_CHARS = 200
"""Room left in the API's 256-char ``eventId`` for ``-<partition>-<offset>`` (up to 31 chars)."""
_TOPIC_HASH_CHARS = 12
_MAX_SHOWN_CHARS = 60


@functools.lru_cache(maxsize=256)
def _safe_topic(topic: str) -> str:
    safe = _UNSAFE.sub("-", topic)
    if len(safe) <= _MAX_TOPIC_CHARS:
        return safe
    # Kafka allows 249-char topic names: keep a prefix and make it unique with a hash.
    digest = hashlib.sha256(topic.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{safe[: _MAX_TOPIC_CHARS - _TOPIC_HASH_CHARS - 1]}-{digest[:_TOPIC_HASH_CHARS]}"


def fallback_event_id(topic: str, partition: int, offset: int) -> str:
    """``<topic>-<partition>-<offset>`` with every char outside ``[a-zA-Z0-9_-]`` made ``-``.

    Unique per message within a cluster and stable across redeliveries, so a retried message
    carries the same id. Example: ``asapp.metadata.agent``, 0, 42 → ``asapp-metadata-agent-0-42``.
    A sanitised topic longer than 200 characters is cut to 187 plus ``-`` and 12 hex digits
    of its SHA-256, so the id always fits the API's 256 characters.
    """
    # ints render as digits and "-" only, so the topic is the one part that needs sanitising
    return f"{_safe_topic(topic)}-{partition}-{offset}"


def iso_utc_millis(value: datetime | int) -> str:
    """Format a ``datetime`` (naive = UTC) or epoch milliseconds as ``YYYY-MM-DDTHH:MM:SS.mmmZ``.

    Raises ``ValidationError`` for another type or a time outside years 1-9999.
    """
    if type(value) is datetime:  # the decoder's case: fastavro's aware UTC datetime
        tz = value.tzinfo
        if tz is None or tz is UTC:
            return _format(value)
    if isinstance(value, datetime):
        try:
            dt = value if value.tzinfo is None else value.astimezone(UTC)
        except (OverflowError, ValueError, TypeError) as exc:  # 0001-01-01+05:00, a bad tzinfo
            raise ValidationError(f"timestamp {_shown(value)} is out of range in UTC") from exc
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            dt = _EPOCH + timedelta(milliseconds=value)
        except OverflowError as exc:
            raise ValidationError(f"timestamp {_shown(value)} ms is out of range") from exc
    else:
        raise ValidationError(
            f"timestamp must be a datetime or epoch millis, not {type(value).__name__}"
        )
    return _format(dt) if type(dt) is datetime else _format_fields(dt)


def _format_fields(dt: datetime) -> str:
    """``dt`` as ``YYYY-MM-DDTHH:MM:SS.mmmZ``, its UTC offset ignored (the definition)."""
    return (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T"
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}.{dt.microsecond // 1000:03d}Z"
    )


# The same text from lookups: a day's "YYYY-MM-DDT" (cached by ordinal, up to _MAX_DAYS days,
# ~45 years) and tables of two-digit numbers and ".mmmZ" tails. A sixth of the f-string's cost.
_TWO: Final = tuple(f"{n:02d}" for n in range(100))
_MILLIS: Final = tuple(f".{n:03d}Z" for n in range(1000))
_DAYS: dict[int, str] = {}
_MAX_DAYS: Final = 16_384


def _format(dt: datetime) -> str:
    """:func:`_format_fields` for an exact ``datetime`` (not a subclass: its fields are its own)."""
    day = _DAYS.get(dt.toordinal())
    if day is None:
        day = f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T"
        if len(_DAYS) < _MAX_DAYS:
            _DAYS[dt.toordinal()] = day
    two = _TWO
    return f"{day}{two[dt.hour]}:{two[dt.minute]}:{two[dt.second]}{_MILLIS[dt.microsecond // 1000]}"


def _shown(value: Any) -> str:
    """A short, printable rendering of a bad value for an error text."""
    try:
        text = ascii(value)
    except Exception:  # a broken __repr__ must not turn a validation error into a crash
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _MAX_SHOWN_CHARS else text[: _MAX_SHOWN_CHARS - 3] + "..."


def _attributes(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list | tuple):
        raise ValidationError(f"attributes must be a list, not {type(value).__name__}")
    try:
        return [{"name": a["name"], "value": a["value"]} for a in value]
    except (LookupError, TypeError, AttributeError, ValueError) as exc:
        raise ValidationError(
            f"attributes must be a list of {{name, value}}: {type(exc).__name__}: {_shown(exc)}"
        ) from exc


def _list_of(name: str) -> Callable[[Any], list[Any]]:
    def convert(value: Any) -> list[Any]:
        if not isinstance(value, list | tuple):
            # list("en") would be ["e", "n"]: a wrong type must not become a plausible value
            raise ValidationError(f"{name} must be a list, not {type(value).__name__}")
        return list(value)

    return convert


def _enum_or_str(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "startTs": iso_utc_millis,
    "attributes": _attributes,
    "languages": _list_of("languages"),
    "companySegment": _list_of("companySegment"),
    "deviceType": _enum_or_str,
    "platform": _enum_or_str,
    "operatingSystem": _enum_or_str,
}

# Per entity: (field, converter or None) pairs, eventId excluded (always set, see to_item).
_PLAN: dict[Entity, tuple[tuple[str, Callable[[Any], Any] | None], ...]] = {
    entity: tuple((name, _CONVERT.get(name)) for name in names) for entity, names in FIELDS.items()
}


def reference_to_item(
    entity: Entity, record: Mapping[str, Any], *, topic: str, partition: int, offset: int
) -> dict[str, Any]:
    """The item, field by field from the plan: the definition :func:`to_item` follows (same
    contract, same result for every record; the property tests compare the two)."""
    if type(record) is not dict and not isinstance(record, Mapping):
        raise ValidationError(f"event must be a record, not {type(record).__name__}")
    item: dict[str, Any] = {}
    get = record.get
    for name, convert in _PLAN[entity]:
        if name == "eventId":
            event_id = get("eventId")
            item["eventId"] = (
                event_id
                if isinstance(event_id, str) and event_id
                else fallback_event_id(topic, partition, offset)
            )
            continue
        value = get(name)
        if value is None:
            continue
        item[name] = value if convert is None else convert(value)
    return item


# ---------------------------------------------------------------------- the fast mapper
#
# Per entity, one generated function does what reference_to_item does for a plain dict that
# holds every field of the entity (what the decoders return): it reads the fields by constant
# keys, and when none is None it builds the item as one dict display (keys in plan order,
# converters applied left to right, so the first bad field still raises first). Any other
# record (a Mapping that is not a dict, a missing field) takes reference_to_item itself.

_Compiled = Callable[[Any, str, int, int], dict[str, Any]]


def _compile(entity: Entity) -> _Compiled:
    """The generated mapper of ``entity`` (see above)."""
    namespace: dict[str, Any] = {
        "_reference": reference_to_item,
        "_entity": entity,
        "_fallback": fallback_event_id,
    }
    plan = _PLAN[entity]
    head = ["def map_item(record, topic, partition, offset):"]
    slow = "return _reference(_entity, record, topic=topic, partition=partition, offset=offset)"
    head += ["    if type(record) is not dict:", f"        {slow}", "    try:"]
    head += [f"        v{k} = record[{name!r}]" for k, (name, _) in enumerate(plan)]
    head += ["    except KeyError:", f"        {slow}"]
    values: list[str] = []
    for k, (name, convert) in enumerate(plan):
        if name == "eventId":
            values.append(
                f"v{k} if isinstance(v{k}, str) and v{k} else _fallback(topic, partition, offset)"
            )
        elif convert is None:
            values.append(f"v{k}")
        else:
            namespace[f"_c{k}"] = convert
            values.append(f"_c{k}(v{k})")
    present = " and ".join(f"v{k} is not None" for k, (n, _) in enumerate(plan) if n != "eventId")
    full = ", ".join(f"{name!r}: {value}" for (name, _), value in zip(plan, values, strict=True))
    body = [f"    if {present or 'True'}:", f"        return {{{full}}}", "    item = {}"]
    for k, ((name, _), value) in enumerate(zip(plan, values, strict=True)):
        if name == "eventId":
            body.append(f"    item[{name!r}] = {value}")
        else:
            body += [f"    if v{k} is not None:", f"        item[{name!r}] = {value}"]
    source = "\n".join([*head, *body, "    return item", ""])
    exec(source, namespace)  # generated from FIELDS and _PLAN only, no outside text
    return cast(_Compiled, namespace["map_item"])


_MAPPERS: dict[Entity, _Compiled] = {entity: _compile(entity) for entity in FIELDS}


def to_item(
    entity: Entity, record: Mapping[str, Any], *, topic: str, partition: int, offset: int
) -> dict[str, Any]:
    """Build the API item for one decoded record (contract in the module docstring)."""
    return _MAPPERS[entity](record, topic, partition, offset)
