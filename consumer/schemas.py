"""The consumer's Avro reader schemas: the only code that finds and parses ``schemas/*.avsc``.

The repository's top-level ``schemas/`` folder is the source of truth; the wheel carries a copy
as ``consumer/_schemas`` (hatch force-include). An installed wheel reads the packaged copy; a
checkout or an editable install, which has no ``consumer/_schemas``, reads ``schemas/`` beside
the package. Both are looked up once per entity and cached for the life of the process.

Contracts:

- ``schema_text(entity)`` is the file's exact text (what a producer would register).
- ``reader_schema(entity)`` is the ``fastavro.parse_schema`` result, parsed once and shared:
  callers must treat it as read-only.
- A missing or unreadable schema file raises :class:`SchemaFilesMissing` (a ``FatalError``: the
  installation is broken, no message can be decoded), naming every place that was searched.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, TypeAlias, cast

import fastavro

from consumer.errors import FatalError
from consumer.records import Entity

ParsedSchema: TypeAlias = dict[str, Any]
"""A schema as returned by ``fastavro.parse_schema`` (a dict for our record schemas)."""

_PACKAGED_DIR = "_schemas"
# consumer/schemas.py -> consumer/ -> repository root -> schemas/
_CHECKOUT_DIR = Path(__file__).resolve().parent.parent / "schemas"


class SchemaFilesMissing(FatalError):
    """No schema file for an entity was found in the package or in the checkout."""


def _candidates(entity: Entity) -> list[Traversable]:
    """Places to look for ``<entity>.avsc``, in order: packaged copy, then the checkout."""
    filename = f"{entity.value}.avsc"
    return [resources.files("consumer").joinpath(_PACKAGED_DIR, filename), _CHECKOUT_DIR / filename]


@functools.cache
def schema_text(entity: Entity) -> str:
    """Return the text of the entity's ``.avsc`` file, cached.

    Raises :class:`SchemaFilesMissing` when no candidate location holds the file.
    """
    candidates = _candidates(entity)
    for candidate in candidates:
        if candidate.is_file():
            try:
                return candidate.read_text(encoding="utf-8")
            except OSError as exc:
                raise SchemaFilesMissing(f"cannot read Avro schema {candidate}: {exc}") from exc
    searched = ", ".join(str(c) for c in candidates)
    raise SchemaFilesMissing(
        f"no Avro schema for entity {entity.value!r}: looked in {searched}; "
        "reinstall the package (the wheel ships consumer/_schemas) or run from a checkout"
    )


@functools.cache
def reader_schema(entity: Entity) -> ParsedSchema:
    """Return the entity's parsed reader schema, parsed once per process and shared.

    Raises :class:`SchemaFilesMissing` when the file is missing, and ``FatalError`` when the
    file is not a valid Avro schema (a packaging bug, not a message problem).
    """
    text = schema_text(entity)
    try:
        parsed = fastavro.parse_schema(json.loads(text))
    except (ValueError, fastavro.schema.SchemaParseException) as exc:
        raise FatalError(
            f"the bundled {entity.value}.avsc is not a valid Avro schema: {exc}"
        ) from exc
    return cast(ParsedSchema, parsed)
