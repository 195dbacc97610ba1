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
  accept ``3.0``); the consumer must send real integers.
- **Unknown fields are rejected** (``additionalProperties: false`` on every object, the
  ``Attribute`` pairs included). The spec does not forbid them and the server may ignore them,
  but the consumer must never send a field the API does not define: a typo such as
  ``externlConversationId`` (present in the spec's own example) would otherwise be dropped
  silently by the server instead of being dead-lettered here.

Users: the service (an item that fails is dead-lettered with reason ``validation``) and the
emulated API in ``consumer.sandbox.api`` (which answers ``FAIL_BAD_PARAMS`` with the reason).
The validators are pure and thread-safe; :func:`validator_for` builds each one once.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib import resources
from typing import Any, Final

import fastjsonschema
import yaml

from consumer.records import Entity

__all__ = ["ItemValidator", "item_schema", "load_spec", "validator_for"]

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
        unknown = sorted(key for key in value if key not in schema_keys)
        return ", ".join(f"{_child(where, str(key))}: unknown field" for key in unknown)
    return f"{where}: {exc.message}"  # a rule the spec does not use today; keep its own words


class ItemValidator:
    """Checks API items of one entity; compiled once, then pure and thread-safe."""

    __slots__ = ("_check", "entity", "schema")

    def __init__(self, entity: Entity) -> None:
        """Build and compile the entity's schema from the bundled spec (a few ms; cache it)."""
        self.entity = entity
        self.schema: Mapping[str, Any] = item_schema(entity)
        self._check = fastjsonschema.compile(dict(self.schema))

    def error(self, item: Mapping[str, Any]) -> str | None:
        """``None`` when ``item`` satisfies the API's schema; else one reason naming the field.

        Only the first violation found is reported, e.g.
        ``externalAgentId: does not match [a-zA-Z0-9\\-\\_]+``. Never raises for bad data.
        """
        data = item if isinstance(item, dict) else dict(item) if isinstance(item, Mapping) else item
        try:
            self._check(data)
        except fastjsonschema.JsonSchemaValueException as exc:
            return _describe(exc)
        return None

    def __repr__(self) -> str:
        return f"ItemValidator({self.entity!s})"


@functools.cache
def validator_for(entity: Entity) -> ItemValidator:
    """The process-wide validator of ``entity`` (built on first use)."""
    return ItemValidator(entity)
