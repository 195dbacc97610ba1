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


# ---------------------------------------------------------------------- the fast accept
#
# fastjsonschema's generated code is general: per item it builds key sets, re-tests types and
# runs a regex per pattern. Most items are valid, so each validator also compiles an *accept*
# function for its own schema: one Python expression, from the same translated schema, that is
# true only when fastjsonschema accepts the item too (exact built-in types, the same compiled
# regexes and format functions; a pattern that is one character class becomes a set test).
# When it is false (or the schema uses a keyword it does not know) the general validator runs
# and gives the reason, so results are fastjsonschema's in every case; only the cost differs.
# ``tests/unit/test_validation.py`` checks that it accepts nothing fastjsonschema rejects.

_CLASS_ONLY: Final = re.compile(r"\^\(\?:\[([^\]\[^]+)\]\+\)\$")  # ^(?:[...]+)$, no negation
_KNOWN_KEYS: Final = frozenset(
    {"type", "properties", "required", "additionalProperties", "items", "maxItems", "minItems"}
    | {"maxLength", "pattern", "format", "enum", "$schema"}
)


def _class_chars(body: str) -> str | None:
    """The characters of the regex class body ``body`` (``a-zA-Z0-9\\-\\_``), or None when it
    uses anything but literals, escaped punctuation and ranges."""
    chars: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            if i + 1 >= len(body) or body[i + 1].isalnum():
                return None  # \d, \w, \n ...: not a plain literal
            chars.append(body[i + 1])
            i += 2
            continue
        if c in "[]^":
            return None
        if c == "-" and chars and i + 1 < len(body) and body[i + 1] != "\\":
            lo, hi = chars.pop(), body[i + 1]
            if ord(hi) < ord(lo):
                return None
            chars.extend(chr(k) for k in range(ord(lo), ord(hi) + 1))
            i += 2
            continue
        chars.append(c)
        i += 1
    return "".join(dict.fromkeys(chars)) or None


class _AcceptCompiler:
    """Turns a translated schema into the source of one boolean expression (see above)."""

    def __init__(self, regexes: Mapping[str, Any], formats: Mapping[str, Any]) -> None:
        self.regexes = regexes
        self.formats = formats
        self.names: dict[str, Any] = {"_MISSING": _MISSING}
        self._count = 0

    def _name(self, prefix: str, value: Any = None) -> str:
        self._count += 1
        name = f"_{prefix}{self._count}"
        if value is not None:
            self.names[name] = value
        return name

    def expr(self, node: Any, var: str) -> str | None:
        """Expression true only if ``var`` satisfies ``node``; None for unknown keywords."""
        if not isinstance(node, dict) or not set(node) <= _KNOWN_KEYS:
            return None
        types = node.get("type")
        types = [types] if isinstance(types, str) else types
        if not isinstance(types, list) or not types:
            return None
        enum = node.get("enum")
        if enum is not None and not all(v is None or isinstance(v, str) for v in enum):
            return None
        alternatives: list[str] = []
        for t in types:
            alt = self._alternative(t, node, var, enum)
            if alt is None:
                return None
            if alt:
                alternatives.append(alt)
        return "(" + " or ".join(alternatives) + ")" if alternatives else "False"

    def _alternative(self, t: str, node: dict[str, Any], var: str, enum: Any) -> str | None:
        """The test for one of the node's types ("" when the enum excludes that type)."""
        if t == "null":
            return "" if enum is not None and None not in enum else f"{var} is None"
        if enum is not None and t != "string":
            return ""
        if t == "integer":
            return f"type({var}) is int"
        if t == "string":
            return self._string(node, var, enum)
        if t == "array":
            return self._array(node, var)
        if t == "object":
            return self._object(node, var)
        return None

    def _string(self, node: dict[str, Any], var: str, enum: Any) -> str | None:
        parts = [f"type({var}) is str"]
        if "maxLength" in node:
            parts.append(f"len({var}) <= {int(node['maxLength'])}")
        if "pattern" in node:
            pattern = node["pattern"]
            match = _CLASS_ONLY.fullmatch(pattern)
            chars = _class_chars(match.group(1)) if match else None
            if chars is not None:  # every character in the class (a set's test: the cheapest)
                parts.append(
                    f"{var} != '' and {self._name('C', frozenset(chars))}.issuperset({var})"
                )
            elif pattern in self.regexes:
                parts.append(f"{self._name('P', self.regexes[pattern].search)}({var})")
            else:
                return None
        if "format" in node:
            fmt = node["format"]
            if self.formats.get(fmt) is _is_email:  # inlined: one call less per item
                short, long = (
                    self._name("S", _SHORT_EMAIL.match),
                    self._name("L", _LONG_EMAIL.match),
                )
                parts.append(f"({short}({var}) if len({var}) <= 320 else {long}({var}))")
            elif fmt in self.formats:
                parts.append(f"{self._name('F', self.formats[fmt])}({var})")
            elif f"{fmt}_re_pattern" in self.regexes:
                parts.append(f"{self._name('F', self.regexes[f'{fmt}_re_pattern'].match)}({var})")
            else:
                return None
        if enum is not None:
            parts.append(f"{var} in {self._name('E', frozenset(v for v in enum if v is not None))}")
        return "(" + " and ".join(parts) + ")"

    def _array(self, node: dict[str, Any], var: str) -> str | None:
        parts = [f"type({var}) is list"]
        if "maxItems" in node:
            parts.append(f"len({var}) <= {int(node['maxItems'])}")
        if "minItems" in node:
            parts.append(f"len({var}) >= {int(node['minItems'])}")
        if "items" in node:  # a loop in a function of its own: cheaper than all(genexpr)
            inner = self.expr(node["items"], "x")
            if inner is None:
                return None
            name = self._name("A")
            source = f"def {name}(v):\n    for x in v:\n        if not {inner}:\n"
            exec(f"{source}            return False\n    return True\n", self.names)
            parts.append(f"{name}({var})")
        return "(" + " and ".join(parts) + ")"

    def _object(self, node: dict[str, Any], var: str) -> str | None:
        if node.get("additionalProperties") is not False:
            return None
        props = node.get("properties", {})
        required = node.get("required", ())
        parts = [f"type({var}) is dict", f"{var}.keys() <= {self._name('K', frozenset(props))}"]
        parts.extend(f"{name!r} in {var}" for name in required if name not in props)
        for name, prop in props.items():
            value = self._name("v")
            inner = self.expr(prop, value)
            if inner is None:
                return None
            test = "is not _MISSING and" if name in required else "is _MISSING or"
            parts.append(f"(({value} := {var}.get({name!r}, _MISSING)) {test} {inner})")
        return "(" + " and ".join(parts) + ")"


_MISSING: Final = object()


def _accept(
    schema: Mapping[str, Any], regexes: Mapping[str, Any], formats: Mapping[str, Any]
) -> Callable[[Any], bool] | None:
    """The fast accept function of ``schema`` (see above), or None if it cannot be built."""
    compiler = _AcceptCompiler(regexes, formats)
    expr = compiler.expr(dict(schema), "item")
    if expr is None:
        return None
    namespace = compiler.names
    exec(f"def accept(item):\n    return bool({expr})\n", namespace)
    return cast(Callable[[Any], bool], namespace["accept"])


def _never(item: Any) -> bool:
    return False


class ItemValidator:
    """Checks API items of one entity; compiled once, then pure and thread-safe."""

    __slots__ = ("_accept", "_check", "entity", "schema")

    def __init__(self, entity: Entity) -> None:
        """Build and compile the entity's schema from the bundled spec (a few ms; cache it)."""
        self.entity = entity
        self.schema: Mapping[str, Any] = item_schema(entity)
        self._check = _compile(self.schema, _FORMATS)
        regexes = getattr(self._check, "__globals__", {}).get("REGEX_PATTERNS", {})
        self._accept = _accept(self.schema, regexes, _FORMATS) or _never

    def error(self, item: Mapping[str, Any]) -> str | None:
        """``None`` when ``item`` satisfies the API's schema; else one reason naming the field.

        Only the first violation found is reported, e.g.
        ``externalAgentId: does not match [a-zA-Z0-9\\-\\_]+``. Never raises (module doc).
        """
        if self._accept(item):
            return None
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
        data: Any = item
        if not (type(item) is dict and self._accept(item)):  # the usual case skips error()
            if not isinstance(item, dict) and isinstance(item, Mapping):
                data = dict(item)
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
