"""consumer.schema_check: our schemas fit the spec; candidates' problems and compatibility."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from consumer.records import Entity
from consumer.schema_check import UsageError, check, incompatibilities, spec_problems
from consumer.schemas import schema_text


def current(entity: Entity = Entity.AGENT) -> dict[str, Any]:
    return json.loads(schema_text(entity))  # type: ignore[no-any-return]


def edited(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    schema = copy.deepcopy(current())
    change(schema)
    return schema


def field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


@pytest.mark.parametrize("entity", list(Entity))
def test_our_schemas_fit_the_spec(entity: Entity) -> None:
    assert spec_problems(entity, current(entity)) == ([], [])
    assert incompatibilities(current(entity), current(entity)) == []


def _add(name: str, typ: Any, **extra: Any) -> Callable[[dict[str, Any]], None]:
    return lambda s: s["fields"].append({"name": name, "type": typ, **extra})


def _retype(name: str, typ: Any) -> Callable[[dict[str, Any]], None]:
    return lambda s: field(s, name).update(type=typ)


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        pytest.param(
            _add("nickname", ["null", "string"], default=None),
            "nickname: the API has no such field",
            id="extra-field",
        ),
        pytest.param(
            _retype("concurrency", ["null", "string"]),
            "concurrency: Avro string for an API integer",
            id="type",
        ),
        pytest.param(
            _retype("externalAgentId", ["null", "string"]),
            "required by the API but nullable",
            id="nullable-id",
        ),
        pytest.param(
            _retype("lobId", ["null", {"type": "enum", "name": "Lob", "symbols": ["a_b", "x"]}]),
            None,
            id="enum-ok",
        ),
        pytest.param(
            lambda s: field(s, "workShift").update(
                type=["string", "null"], default="has space!" * 30
            ),
            "longer than the API's maxLength 256",
            id="default-length",
        ),
    ],
)
def test_spec_problems(change: Callable[[dict[str, Any]], None], phrase: str | None) -> None:
    problems, _ = spec_problems(Entity.AGENT, edited(change))
    if phrase is None:
        assert problems == []
    else:
        assert any(phrase in p for p in problems), problems


def test_a_missing_api_property_is_a_warning() -> None:
    schema = edited(lambda s: s["fields"].remove(field(s, "lobId")))
    problems, warnings = spec_problems(Entity.AGENT, schema)
    assert problems == [] and warnings == ["lobId: API property without a field (never sent)"]


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        pytest.param(lambda s: s["fields"].remove(field(s, "lobId")), None, id="drop-optional"),
        pytest.param(_add("nickname", ["null", "string"], default=None), None, id="add-field"),
        pytest.param(_retype("agentName", "string"), None, id="narrow-to-non-null"),
        pytest.param(
            _retype("concurrency", ["null", "long"]),
            "concurrency: the candidate writes long",
            id="widen-int",
        ),
        pytest.param(
            _retype("externalAgentId", ["null", "string"]),
            "externalAgentId: the candidate writes null",
            id="nullable-id",
        ),
        pytest.param(
            lambda s: s["fields"].remove(field(s, "externalAgentId")),
            "externalAgentId: the candidate drops it",
            id="drop-required",
        ),
    ],
)
def test_backward_compatibility(
    change: Callable[[dict[str, Any]], None], phrase: str | None
) -> None:
    found = incompatibilities(current(), edited(change))
    if phrase is None:
        assert found == [], found
    else:
        assert any(phrase in f for f in found), found


def test_array_items_are_resolved() -> None:
    found = incompatibilities(
        current(), edited(_retype("languages", ["null", {"type": "array", "items": "int"}]))
    )
    assert found == ["languages[]: the candidate writes int, the current reads string"]


def test_check_finds_the_entity_by_record_name(tmp_path: Path) -> None:
    path = tmp_path / "v2.avsc"
    path.write_text(json.dumps(edited(_retype("concurrency", ["null", "long"]))))
    findings = check([path])
    assert [f.entity for f in findings] == ["agent", "conversation", "customer", "agent"]
    assert not findings[-1].ok and findings[-1].incompatibilities


def test_check_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        check([tmp_path / "missing.avsc"])
    odd = tmp_path / "thing.avsc"
    odd.write_text(json.dumps({"type": "record", "name": "Thing", "fields": []}))
    with pytest.raises(UsageError, match="add --entity"):
        check([odd])
