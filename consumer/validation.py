"""Pre-flight check of one API item against the Metadata Ingestion API's own spec.

The JSON Schema of each entity is *built from the bundled OpenAPI spec*
(``consumer/spec/metadata-ingestion.openapi.yaml``), never written by hand, so a new spec copy
changes the checks without touching code. The translation from OpenAPI 3.0 to JSON Schema
(draft-04, compiled with fastjsonschema) is:

- ``$ref`` to ``#/components/schemas/...`` is inlined (the spec has no recursive schemas);
- ``nullable: true`` adds ``"null"`` to ``type`` (and ``None`` to ``enum``);
- ``description``, ``example`` and every ``x-*`` annotation are dropped;
- every ``pattern`` is anchored as a full match, ``^(?:...)$``. The spec's patterns are
  unanchored (JSON Schema would accept ``"a b"`` for ``[a-zA-Z0-9]+``); we assume the server
  full-matches. fastjsonschema turns ``$`` into ``\\Z``, so a trailing newline is rejected too;
- ``maxLength``, ``maxItems``, ``enum``, ``required``, ``type: integer`` and the formats
  ``email`` and ``date-time`` are kept as they are. Draft-04 is chosen on purpose: its
  ``integer`` is a Python ``int`` only, so ``3.0`` and ``True`` are rejected (later drafts
  accept ``3.0``); the consumer must send real integers. ``maxLength`` counts characters
  (code points, Python's ``len``), as JSON Schema defines it.
- ``email`` is fastjsonschema's own regex up to 320 characters and, beyond, a linear-time
  regex for the same language (:data:`LONG_EMAIL_PATTERN`): the original backtracks
  quadratically (40 KB took 3 s), and the spec sets no ``maxLength`` on e-mail addresses, so a
  1 MB event would have stalled the consumer for hours.
- **Unknown fields are rejected** (``additionalProperties: false`` on every object, the
  ``Attribute`` pairs included). The spec does not forbid them and the server may ignore them,
  but the consumer must never send a field the API does not define: a typo such as
  ``externlConversationId`` (present in the spec's own example) would otherwise be dropped
  silently by the server instead of being dead-lettered here.

Users: the service (an item that fails is dead-lettered with reason ``validation``) and the
emulated API in ``consumer.sandbox.api`` (which answers ``FAIL_BAD_PARAMS`` with the reason).
The validators are pure and thread-safe; :func:`validator_for` builds each one once.

Error contract (property-tested in ``tests/unit/test_properties_ingest.py``): for *any* input
(any mapping, with keys and values of any type and nesting, or not a mapping at all)

- :meth:`ItemValidator.error` returns ``None`` or one reason and never raises. ``None`` means
  the item satisfies the spec as translated above.
- :meth:`ItemValidator.encode` returns the item's compact JSON (orjson) or raises
  :class:`~consumer.errors.ValidationError` and nothing else. On top of :meth:`error` it
  rejects what JSON itself cannot carry, a lone surrogate in a ``str`` and an integer beyond
  64 bits, with orjson's own rules (no decoded Avro record holds either, so this costs nothing
  on the hot path where a second copy of those checks in the schema would cost ~6 %).

A reason is printable ASCII (odd key names are escaped) of at most ``MAX_REASON_CHARS``
characters, so it fits a DLQ header and a log line.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any, Final, cast

import fastjsonschema
import orjson
import yaml
from fastjsonschema.draft04 import CodeGeneratorDraft04

from consumer.errors import ValidationError
from consumer.records import Entity

__all__ = [
    "LONG_EMAIL_PATTERN",
    "MAX_REASON_CHARS",
    "ItemValidator",
    "item_schema",
    "load_spec",
    "validator_for",
]

#: Where the bundled spec lives, relative to the ``consumer`` package.
SPEC_PARTS: Final = ("spec", "metadata-ingestion.openapi.yaml")

#: The spec component that describes one item of each entity.
COMPONENTS: Final[Mapping[Entity, str]] = {
    Entity.AGENT: "AgentMetadata",
    Entity.CONVERSATION: "ConversationMetadata",
    Entity.CUSTOMER: "CustomerMetadata",
}

_REF_PREFIX: Final = "#/components/schemas/"
_ANCHOR_HEAD: Final = "^(?:"
_ANCHOR_TAIL: Final = ")$"
# OpenAPI keys that carry no constraint; dropped from the JSON Schema.
_DROPPED_KEYS: Final = frozenset({"description", "example", "examples", "nullable"})
_FORMAT_NAMES: Final = {"email": "an email address", "date-time": "an ISO-8601 date-time"}
MAX_REASON_CHARS: Final = 500
"""Upper bound on the length of a reason (:meth:`ItemValidator.error`, ``encode``)."""
_MAX_UNKNOWN_SHOWN: Final = 5
_MAX_KEY_CHARS: Final = 40

_SHORT_EMAIL: Final = re.compile(CodeGeneratorDraft04.FORMAT_REGEXS["email"])
LONG_EMAIL_PATTERN: Final = (
    # fastjsonschema's ^(?!.*\.\..*@)[^@.][^@]*(?<!\.)@[^@]+\.[^@]+\Z without backtracking.
    # Given the single "@" the rest demands, the lookahead forbids ".." in the local part
    # unless it holds a newline (".*" stops there): so the local part is either free of
    # newlines and of "..", each "." followed by another character, or holds a newline.
    # The domain needs a "." with a character on each side: the first "." after its first
    # character serves.
    r"^(?:[^@.\n](?:[^@.\n]|\.(?=[^@.\n]))*|(?=[^@\n]*\n)[^@.][^@]*(?<!\.))"
    r"@[^@][^@.]*\.[^@]+\Z"
)
"""The ``email`` format for values longer than 320 characters (same language, linear)."""
_LONG_EMAIL: Final = re.compile(LONG_EMAIL_PATTERN)


def _is_email(
    value: str,
    _short: Callable[[str], object] = _SHORT_EMAIL.match,  # bound once: this runs per item
    _long: Callable[[str], object] = _LONG_EMAIL.match,
) -> bool:
    """fastjsonschema's ``email`` format, in time linear in ``len(value)``."""
    if len(value) <= 320:  # the original's worst case at this length is ~0.2 ms
        return _short(value) is not None
    return _long(value) is not None


_FORMATS: Final = {"email": _is_email}


@functools.cache
def load_spec() -> Mapping[str, Any]:
    """The bundled OpenAPI document, parsed once.

    Raises ``OSError`` / ``yaml.YAMLError`` / ``ValueError`` when the packaged copy is missing
    or broken (a packaging bug, not a runtime condition).
    """
    resource = resources.files("consumer").joinpath(*SPEC_PARTS)
    spec = yaml.safe_load(resource.read_text(encoding="utf-8"))
    if not isinstance(spec, dict):
        raise ValueError(f"{'/'.join(SPEC_PARTS)}: not an OpenAPI document")
    return spec


def item_schema(entity: Entity) -> dict[str, Any]:
    """The JSON Schema (draft-04) of one ``entity`` item, translated as the module doc says.

    Returns a fresh dict each call; raises ``KeyError`` if the spec lacks the component.
    """
    schemas = load_spec()["components"]["schemas"]
    schema: dict[str, Any] = _translate(schemas[COMPONENTS[entity]], schemas)
    schema["$schema"] = "http://json-schema.org/draft-04/schema#"
    return schema


def _translate(node: Any, schemas: Mapping[str, Any]) -> Any:
    """Translate one OpenAPI schema node (recursively) into JSON Schema."""
    if isinstance(node, list):
        return [_translate(child, schemas) for child in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        if not ref.startswith(_REF_PREFIX):
            raise ValueError(f"unsupported $ref {ref!r} in the API spec")
        return _translate(schemas[ref.removeprefix(_REF_PREFIX)], schemas)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS or key.startswith("x-"):
            continue
        if key == "properties":
            out[key] = {name: _translate(prop, schemas) for name, prop in value.items()}
        elif key == "pattern":
            out[key] = f"{_ANCHOR_HEAD}{value}{_ANCHOR_TAIL}"
        else:
            out[key] = _translate(value, schemas)
    if node.get("nullable") is True:
        types = out.get("type")
        if isinstance(types, str):
            out["type"] = [types, "null"]
        if isinstance(out.get("enum"), list):
            out["enum"] = [*out["enum"], None]
    if out.get("type") == "object" or "properties" in out:
        out["additionalProperties"] = False
    return out


def _unanchor(pattern: str) -> str:
    """The spec's own (unanchored) spelling of a pattern we anchored."""
    if pattern.startswith(_ANCHOR_HEAD) and pattern.endswith(_ANCHOR_TAIL):
        return pattern[len(_ANCHOR_HEAD) : -len(_ANCHOR_TAIL)]
    return pattern


def _field(name: str | None) -> str:
    """``data.attributes[3].name`` → ``attributes[3].name``; the item itself is ``item``."""
    if name is None or name == "data":
        return "item"
    return name.removeprefix("data.")


def _child(parent: str, key: str) -> str:
    return key if parent == "item" else f"{parent}.{key}"


def _key(key: Any) -> str:
    """A key as it may appear in a reason: printable, escaped, cut short."""
    if isinstance(key, str):
        text = key if key.isascii() and key.isprintable() else ascii(key)[1:-1]
    else:
        try:
            text = ascii(key)
        except Exception:  # a key object with a broken __repr__
            text = f"<{type(key).__name__}>"
    return text if len(text) <= _MAX_KEY_CHARS else text[: _MAX_KEY_CHARS - 3] + "..."


def _describe(exc: fastjsonschema.JsonSchemaValueException) -> str:
    """One human-readable reason, naming the field, for a fastjsonschema failure."""
    where = _field(exc.name)
    rule, definition, value = exc.rule, exc.rule_definition, exc.value
    if rule == "pattern":
        return f"{where}: does not match {_unanchor(str(definition))}"
    if rule == "maxLength":
        return f"{where}: longer than {definition} characters"
    if rule == "maxItems":
        return f"{where}: more than {definition} items"
    if rule == "minItems":
        return f"{where}: fewer than {definition} items"
    if rule == "type":
        types = definition if isinstance(definition, list) else [definition]
        return f"{where}: must be {' or '.join(map(str, types))}, got {type(value).__name__}"
    if rule == "enum":
        allowed = ", ".join("null" if v is None else str(v) for v in definition)
        return f"{where}: must be one of {allowed}"
    if rule == "format":
        return f"{where}: is not {_FORMAT_NAMES.get(str(definition), definition)}"
    if rule == "required" and isinstance(value, Mapping):
        missing = [key for key in definition if key not in value]
        return ", ".join(f"{_child(where, key)}: is required" for key in missing)
    if rule == "additionalProperties" and isinstance(value, Mapping):
        schema_keys = exc.definition.get("properties", {}) if exc.definition else {}
        unknown = sorted(_key(key) for key in value if key not in schema_keys)
        more = len(unknown) - _MAX_UNKNOWN_SHOWN
        text = ", ".join(f"{_child(where, k)}: unknown field" for k in unknown[:_MAX_UNKNOWN_SHOWN])
        return text + (f" (and {more} more)" if more > 0 else "")
    return f"{where}: {exc.message}"  # a rule the spec does not use today; keep its own words


def _compile(
    schema: Mapping[str, Any], formats: Mapping[str, Any]
) -> Callable[[Any, Mapping[str, Any]], Any]:
    """The compiled check of ``schema``, to be called as ``check(data, formats)``.

    ``fastjsonschema.compile`` wraps a function compiled with ``formats`` in
    ``functools.partial(func, custom_formats=formats)``, whose per-call keyword merge costs
    several percent here; calling the function itself with the formats positionally avoids it.
    """
    compiled = fastjsonschema.compile(dict(schema), formats=dict(formats))
    raw = getattr(compiled, "__wrapped__", None)
    if raw is None:  # pragma: no cover - another fastjsonschema release
        return lambda data, _formats: compiled(data)
    return cast(Callable[[Any, Mapping[str, Any]], Any], raw)


def _reason(exc: fastjsonschema.JsonSchemaValueException) -> str:
    """The reason for ``exc``: printable (escaped) and at most ``MAX_REASON_CHARS`` long."""
    return _bounded(_describe(exc))


def _bounded(reason: str) -> str:
    """``reason`` made printable ASCII (escaped) and cut to ``MAX_REASON_CHARS``."""
    if not (reason.isascii() and reason.isprintable()):  # e.g. the name of an odd class
        reason = ascii(reason)[1:-1]
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 3] + "..."
    return reason


class ItemValidator:
    """Checks API items of one entity; compiled once, then pure and thread-safe."""

    __slots__ = ("_check", "entity", "schema")

    def __init__(self, entity: Entity) -> None:
        """Build and compile the entity's schema from the bundled spec (a few ms; cache it)."""
        self.entity = entity
        self.schema: Mapping[str, Any] = item_schema(entity)
        self._check = _compile(self.schema, _FORMATS)

    def error(self, item: Mapping[str, Any]) -> str | None:
        """``None`` when ``item`` satisfies the API's schema; else one reason naming the field.

        Only the first violation found is reported, e.g.
        ``externalAgentId: does not match [a-zA-Z0-9\\-\\_]+``. Never raises (module doc).
        """
        data = item if isinstance(item, dict) else dict(item) if isinstance(item, Mapping) else item
        try:
            self._check(data, _FORMATS)
        except fastjsonschema.JsonSchemaValueException as exc:
            return _reason(exc)
        return None

    def encode(self, item: Mapping[str, Any]) -> bytes:
        """The item's compact UTF-8 JSON when it is valid and JSON can carry it.

        Raises :class:`~consumer.errors.ValidationError` with the :meth:`error` reason, or with
        ``item: not representable as JSON: ...`` for a lone surrogate or an integer beyond 64
        bits (orjson's rules). Keys keep the item's order, so equal items give equal bytes.
        """
        data = item if isinstance(item, dict) else dict(item) if isinstance(item, Mapping) else item
        reason = self.error(data)
        if reason is not None:
            raise ValidationError(reason)
        try:
            return orjson.dumps(data)
        except orjson.JSONEncodeError as exc:
            text = f"item: not representable as JSON: {exc}"
            raise ValidationError(_bounded(text)) from exc

    def __repr__(self) -> str:
        return f"ItemValidator({self.entity!s})"


@functools.cache
def validator_for(entity: Entity) -> ItemValidator:
    """The process-wide validator of ``entity`` (built on first use)."""
    return ItemValidator(entity)
