"""``metadata-consumer schemas check``: do our Avro schemas fit the API, and is a candidate
schema safe to ship?

Contract:

- :func:`spec_problems` compares one Avro record schema with the API's item schema of its
  entity (:func:`consumer.validation.item_schema`, built from the bundled spec): every Avro
  field must be an API property (a field the API lacks is a problem: the consumer would drop
  its value), of a matching type (``string`` ↔ string or enum, a ``date-time`` ↔
  ``timestamp-millis``/``-micros`` long or string, ``integer`` ↔ int or long, arrays item by
  item, ``attributes`` ↔ an array of records ``{name, value}``); an API-required property must
  be a field that is never null; enum symbols and non-null defaults must satisfy the
  property's ``enum``, ``pattern`` (full match) and ``maxLength``. An API property without a
  field is a warning (its value is simply never sent). Avro cannot carry patterns or lengths
  themselves: the consumer's validation checks them per event.
- :func:`incompatibilities` applies Avro's schema resolution rules (the ones fastavro's reader
  follows) with the *current* schema as reader and the *candidate* as writer: the change is
  backward compatible when the consumer, still on the current schema, can read every record a
  producer writes with the candidate. Each incompatibility names its field path.
- Exit codes: 0 every schema fits and every candidate is compatible, 1 a problem or an
  incompatibility, 2 a usage error (unreadable file, unknown entity). ``--json`` prints one
  document.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fastavro

from consumer.records import Entity
from consumer.schemas import schema_text
from consumer.validation import COMPONENTS, item_schema

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2

#: Avro primitive promotions a reader accepts (writer type → reader types).
_PROMOTIONS: Mapping[str, frozenset[str]] = {
    "int": frozenset({"int", "long", "float", "double"}),
    "long": frozenset({"long", "float", "double"}),
    "float": frozenset({"float", "double"}),
    "string": frozenset({"string", "bytes"}),
    "bytes": frozenset({"bytes", "string"}),
}
_NAMED = ("record", "enum", "fixed")
_TIMESTAMPS = frozenset({"timestamp-millis", "timestamp-micros"})


class UsageError(ValueError):
    """A candidate that cannot be read or assigned to an entity."""


# --------------------------------------------------------------------------- Avro helpers
def _type_name(schema: Any) -> str:
    if isinstance(schema, str):
        return schema.rsplit(".", 1)[-1] if schema not in _PROMOTIONS else schema
    if isinstance(schema, list):
        return "union"
    return str(schema.get("type"))


def _short_name(schema: Mapping[str, Any]) -> str:
    return str(schema.get("name", "")).rsplit(".", 1)[-1]


def _branches(schema: Any) -> list[Any]:
    return list(schema) if isinstance(schema, list) else [schema]


def _resolve(schema: Any, named: dict[str, Any]) -> Any:
    """A named reference (``"com.asapp.metadata.Attribute"``) → its definition; collects every
    named definition seen into ``named``."""
    if isinstance(schema, str):
        return named.get(schema, named.get(schema.rsplit(".", 1)[-1], schema))
    if isinstance(schema, dict) and schema.get("type") in _NAMED and "name" in schema:
        named[str(schema["name"])] = schema
        named[_short_name(schema)] = schema
    return schema


# --------------------------------------------------------------------------- compatibility
def incompatibilities(reader: Any, writer: Any) -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader`` (empty: compatible).
    Both are schemas as JSON values (parsed ``.avsc`` files)."""
    out: list[str] = []
    _compare(reader, writer, "", out, {}, {}, set())
    return out


def _compare(
    reader: Any,
    writer: Any,
    path: str,
    out: list[str],
    rnamed: dict[str, Any],
    wnamed: dict[str, Any],
    seen: set[tuple[str, str]],
) -> None:
    reader, writer = _resolve(reader, rnamed), _resolve(writer, wnamed)
    where = path or "(record)"
    if isinstance(writer, list):  # every branch the writer may use must be readable
        for branch in writer:
            sub: list[str] = []
            _compare(reader, branch, path, sub, rnamed, wnamed, seen)
            out.extend(sub[:1])
        return
    if isinstance(reader, list):  # the first matching reader branch is used
        first: list[str] = []
        for branch in reader:
            sub = []
            _compare(branch, writer, path, sub, rnamed, wnamed, seen)
            if not sub:
                return
            if _type_name(_resolve(branch, rnamed)) == _type_name(writer) and not first:
                first = sub  # the branch of the same kind says best what is wrong
        if first:
            out.extend(first)
            return
        wanted = ", ".join(_type_name(_resolve(b, rnamed)) for b in reader)
        out.append(
            f"{where}: the candidate writes {_type_name(writer)}, the current reads {wanted}"
        )
        return
    rtype, wtype = _type_name(reader), _type_name(writer)
    if wtype in _PROMOTIONS or wtype in ("null", "boolean", "double"):
        if rtype != wtype and rtype not in _PROMOTIONS.get(wtype, frozenset()):
            out.append(f"{where}: the candidate writes {wtype}, the current reads {rtype}")
        return
    if rtype != wtype:
        out.append(f"{where}: the candidate writes {wtype}, the current reads {rtype}")
        return
    if wtype in _NAMED and _short_name(reader) != _short_name(writer):
        aliases = {str(a).rsplit(".", 1)[-1] for a in reader.get("aliases", ())}
        if _short_name(writer) not in aliases:
            out.append(
                f"{where}: {wtype} {_short_name(writer)} is not the current {_short_name(reader)}"
            )
            return
    if wtype == "record":
        key = (str(reader.get("name")), str(writer.get("name")))
        if key in seen:  # a recursive record: already being compared
            return
        seen.add(key)
        wfields = {f["name"]: f for f in writer.get("fields", [])}
        for rf in reader.get("fields", []):
            name = rf["name"]
            sub_path = f"{path}.{name}" if path else name
            wf = wfields.get(name) or next(
                (wfields[a] for a in rf.get("aliases", ()) if a in wfields), None
            )
            if wf is None:
                if "default" not in rf:
                    out.append(
                        f"{sub_path}: the candidate drops it and the current schema has no "
                        "default for it"
                    )
                continue
            _compare(rf["type"], wf["type"], sub_path, out, rnamed, wnamed, seen)
    elif wtype == "enum":
        missing = [s for s in writer.get("symbols", []) if s not in reader.get("symbols", [])]
        if missing and "default" not in reader:
            out.append(f"{where}: symbols {missing} are unknown to the current schema")
    elif wtype == "array":
        _compare(reader["items"], writer["items"], f"{path}[]", out, rnamed, wnamed, seen)
    elif wtype == "map":
        _compare(reader["values"], writer["values"], f"{path}{{}}", out, rnamed, wnamed, seen)
    elif wtype == "fixed" and reader.get("size") != writer.get("size"):
        out.append(f"{where}: fixed size {writer.get('size')}, the current {reader.get('size')}")


# --------------------------------------------------------------------------- against the spec
def _api_types(prop: Mapping[str, Any]) -> set[str]:
    types = prop.get("type", [])
    return {types} if isinstance(types, str) else set(types)


def _value_problem(name: str, value: Any, prop: Mapping[str, Any]) -> str | None:
    """Why ``value`` (an enum symbol or a default) breaks the property's constraints."""
    if not isinstance(value, str):
        return None
    enum = prop.get("enum")
    if enum is not None and value not in enum:
        return f"{value!r} is not one of the API's values {[e for e in enum if e is not None]}"
    limit = prop.get("maxLength")
    if limit is not None and len(value) > limit:
        return f"{value!r} is longer than the API's maxLength {limit}"
    pattern = prop.get("pattern")
    if pattern is not None and re.search(pattern, value) is None:
        return f"{value!r} does not match the API's pattern {pattern[4:-2]}"
    return None


def _type_problem(
    name: str, avro: Any, prop: Mapping[str, Any], named: dict[str, Any], out: list[str]
) -> None:
    """Compare one non-null Avro type with one API property (recursing into arrays and
    objects); appends to ``out``."""
    avro = _resolve(avro, named)
    api = _api_types(prop) - {"null"}
    atype = _type_name(avro)
    logical = avro.get("logicalType") if isinstance(avro, dict) else None
    if "string" in api:
        if prop.get("format") == "date-time" and atype == "long" and logical in _TIMESTAMPS:
            return
        if atype == "string":
            return
        if atype == "enum":
            for symbol in avro.get("symbols", []):
                problem = _value_problem(name, symbol, prop)
                if problem:
                    out.append(f"{name}: enum symbol {problem}")
            return
        out.append(f"{name}: Avro {atype} for an API string")
    elif "integer" in api:
        if atype not in ("int", "long"):
            out.append(f"{name}: Avro {atype} for an API integer")
    elif "array" in api:
        if atype != "array":
            out.append(f"{name}: Avro {atype} for an API array")
            return
        _type_problem(f"{name}[]", avro["items"], prop.get("items", {}), named, out)
    elif "object" in api:
        if atype != "record":
            out.append(f"{name}: Avro {atype} for an API object")
            return
        _record_problems(name, avro, prop, named, out, [])
    elif api - {"boolean", "number"}:
        out.append(f"{name}: API type {sorted(api)} is not handled")


def _record_problems(
    prefix: str,
    record: Mapping[str, Any],
    api: Mapping[str, Any],
    named: dict[str, Any],
    out: list[str],
    warnings: list[str],
) -> None:
    props: Mapping[str, Any] = api.get("properties", {})
    required = set(api.get("required", []))
    fields = {f["name"]: f for f in record.get("fields", [])}
    for fname, f in fields.items():
        path = f"{prefix}.{fname}" if prefix else fname
        prop = props.get(fname)
        if prop is None:
            out.append(f"{path}: the API has no such field (its values would never be sent)")
            continue
        branches = [b for b in _branches(f["type"]) if b != "null"]
        nullable = len(branches) < len(_branches(f["type"]))
        if fname in required and nullable:
            out.append(f"{path}: required by the API but nullable in the schema")
        if fname in required and "default" in f:
            out.append(f"{path}: required by the API but has a default")
        if not branches:
            out.append(f"{path}: always null")
        for branch in branches:
            _type_problem(path, branch, prop, named, out)
        default = f.get("default")
        if default is not None:
            problem = _value_problem(path, default, prop)
            if problem:
                out.append(f"{path}: default {problem}")
    for pname in props:
        if pname not in fields:
            path = f"{prefix}.{pname}" if prefix else pname
            (out if pname in required else warnings).append(
                f"{path}: API property without a field"
                + (" (required by the API)" if pname in required else " (never sent)")
            )


def spec_problems(entity: Entity, schema: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """``(problems, warnings)`` of one Avro record schema against the API item of ``entity``
    (see the module doc)."""
    problems: list[str] = []
    warnings: list[str] = []
    if _type_name(schema) != "record":
        return [f"not a record schema but {_type_name(schema)}"], []
    _record_problems("", schema, item_schema(entity), {}, problems, warnings)
    return problems, warnings


# --------------------------------------------------------------------------- the command
@dataclass(slots=True)
class Finding:
    """One schema's results: spec problems and warnings, and (for a candidate) its
    incompatibilities with the current schema of its entity."""

    file: str
    entity: str
    candidate: bool
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    incompatibilities: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.incompatibilities


def _entity_of(path: Path, schema: Any, flag: str | None) -> Entity:
    if flag is not None:
        return Entity(flag)
    name = _short_name(schema) if isinstance(schema, dict) else ""
    for entity, component in COMPONENTS.items():
        if name == component:
            return entity
    stem = path.name.split(".", 1)[0]
    if stem in {e.value for e in Entity}:
        return Entity(stem)
    raise UsageError(
        f"{path}: cannot tell its entity (record {name or '?'}, not "
        f"{'/'.join(COMPONENTS.values())}): add --entity"
    )


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise UsageError(f"{path} is not JSON: {exc}") from exc


def check(candidates: list[Path], entity_flag: str | None = None) -> list[Finding]:
    """Findings for every current schema, then for every candidate (raises UsageError)."""
    current = {e: json.loads(schema_text(e)) for e in Entity}
    out = []
    for entity, schema in current.items():
        problems, warnings = spec_problems(entity, schema)
        out.append(Finding(f"schemas/{entity.value}.avsc", entity.value, False, problems, warnings))
    for path in candidates:
        schema = _read(path)
        entity = _entity_of(path, schema, entity_flag)
        finding = Finding(str(path), entity.value, True)
        try:
            fastavro.parse_schema(schema)
        except Exception as exc:  # fastavro raises several kinds for a bad schema
            finding.problems.append(f"not a valid Avro schema: {type(exc).__name__}: {exc}")
            out.append(finding)
            continue
        finding.problems, finding.warnings = spec_problems(entity, schema)
        finding.incompatibilities = incompatibilities(current[entity], schema)
        out.append(finding)
    return out


def _print_text(findings: list[Finding]) -> None:
    for f in findings:
        role = "candidate" if f.candidate else "current"
        verdict = "ok" if f.ok else "FAIL"
        compat = ""
        if f.candidate:
            compat = (
                ", backward compatible"
                if not f.incompatibilities
                else f", NOT backward compatible ({len(f.incompatibilities)})"
            )
        print(f"{verdict:<4} {f.file} ({role}, {f.entity}){compat}")
        for p in f.problems:
            print(f"     problem: {p}")
        for i in f.incompatibilities:
            print(f"     incompatible: {i}")
        for w in f.warnings:
            print(f"     warning: {w}")


def main(args: argparse.Namespace) -> int:
    """Entry point of ``metadata-consumer schemas check``."""
    try:
        findings = check([Path(c) for c in args.candidates], args.entity)
    except UsageError as exc:
        print(f"metadata-consumer schemas check: {exc}", file=sys.stderr)
        return EXIT_USAGE
    ok = all(f.ok for f in findings)
    if args.json:
        doc = {"ok": ok, "schemas": [{**asdict(f), "ok": f.ok} for f in findings]}
        print(json.dumps(doc, indent=2))
    else:
        _print_text(findings)
    return EXIT_OK if ok else EXIT_PROBLEM
