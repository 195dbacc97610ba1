"""A Confluent Schema Registry stand-in: the REST calls our clients make, in memory.

Serves what ``confluent_kafka.schema_registry.SchemaRegistryClient`` (2.16) sends for
``register_schema`` (``AvroSerializer`` with ``auto.register.schemas``), ``lookup_schema``,
``get_schema`` (``AvroDeserializer``), ``get_subjects``, ``get_versions`` and
``get_latest_version`` / ``get_version``::

    POST /subjects/{subject}/versions          {"schema", "schemaType"?, "references"?}
                                               → {"id", "guid", "subject", "version", "schema"}
    POST /subjects/{subject}                   lookup → {"id", "guid", "subject", "version",
                                               "schema"}; 404 40401 / 40403
    GET  /schemas/ids/{id}                     → {"schema", "schemaType"?}; 404 40403
    GET  /subjects                             → ["subject", ...]
    GET  /subjects/{subject}/versions          → [1, 2, ...]; 404 40401
    GET  /subjects/{subject}/versions/{n|latest}  → as lookup; 404 40401 / 40402

Errors carry the registry's ``{"error_code": 40403, "message": ...}`` body. Query parameters
(``normalize``, ``deleted``, ``subject``, ``format``...) are accepted and ignored.

Semantics kept from the real registry: ids are global and identify the schema text (the same
schema under two subjects has one id); registering a schema a subject already has returns the
existing version. Not emulated: compatibility checks, deletes, modes, contexts, auth. A schema
of type AVRO must at least be JSON (422 42201 otherwise); it is not otherwise checked.

Fault knobs (Python methods, or ``POST /_standin/faults`` with ``{"fail_next": n,
"fail_all": bool, "status": 503}``): answer ``status`` for the next ``n`` calls, or for every
call. Note the real client retries 408/429/5xx itself (``max.retries``, default 3).
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from consumer.sandbox._http import Handler, StandInServer

__all__ = ["RegistryCall", "SchemaRegistryStandIn", "main"]

CONTENT_TYPE: Final = "application/vnd.schemaregistry.v1+json"
CONTROL_PATH: Final = "/_standin/faults"


@dataclass(frozen=True, slots=True)
class RegistryCall:
    """One registry request: method, path (query excluded) and the status answered."""

    method: str
    path: str
    status: int


@dataclass(frozen=True, slots=True)
class _Stored:
    """A schema as stored: its global id and guid, type, text and references."""

    schema_id: int
    guid: str
    schema_type: str
    schema_str: str
    references: tuple[Mapping[str, Any], ...]

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": self.schema_str}
        if self.schema_type != "AVRO":  # the real registry omits the default type
            out["schemaType"] = self.schema_type
        if self.references:
            out["references"] = [dict(r) for r in self.references]
        return out


class _RegistryError(Exception):
    """An error answer: HTTP ``status`` and the registry's ``error_code``."""

    def __init__(self, status: int, error_code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.error_code, self.message = status, error_code, message


def _canonical(schema_type: str, schema_str: str) -> str:
    """Whitespace/key-order-insensitive identity for JSON-based schemas (AVRO, JSON)."""
    if schema_type in ("AVRO", "JSON"):
        try:
            return json.dumps(json.loads(schema_str), sort_keys=True, separators=(",", ":"))
        except ValueError:
            return schema_str
    return schema_str


class SchemaRegistryStandIn(StandInServer):
    """In-memory schema registry over HTTP. Thread-safe; ``with`` starts and stops it."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host=host, port=port)
        self._fail_next = 0
        self._fail_all = False
        self._fail_status = 503
        self._clear_locked()

    # ---- lifecycle ---------------------------------------------------------------------------

    thread_name = "schema-registry-stand-in"

    # ---- direct access -----------------------------------------------------------------------

    def register(self, subject: str, schema_str: str, schema_type: str = "AVRO") -> int:
        """Register ``schema_str`` under ``subject`` (as the REST call would); returns its id.

        Raises ``ValueError`` when an AVRO/JSON schema is not JSON.
        """
        try:
            with self._lock:
                return self._register_locked(subject, schema_type, schema_str, ())[0].schema_id
        except _RegistryError as exc:
            raise ValueError(exc.message) from exc

    def schema(self, schema_id: int) -> str | None:
        """The schema text of ``schema_id``, None if unknown."""
        with self._lock:
            stored = self._by_id.get(schema_id)
            return stored.schema_str if stored else None

    def subjects(self) -> list[str]:
        """Registered subjects, sorted."""
        with self._lock:
            return sorted(self._subjects)

    def calls(self) -> list[RegistryCall]:
        """Every registry call (control calls excluded), in arrival order."""
        with self._lock:
            return list(self._calls)

    def fail_next(self, n: int, status: int = 503) -> None:
        """Answer ``status`` to the next ``n`` calls, then behave again."""
        with self._lock:
            self._fail_next, self._fail_status = max(0, n), status

    def fail_all(self, enabled: bool = True, status: int = 503) -> None:
        """Answer ``status`` to every call while ``enabled``."""
        with self._lock:
            self._fail_all, self._fail_status = enabled, status

    def reset(self) -> None:
        """Forget schemas, subjects, calls and faults (ids restart at 1)."""
        with self._lock:
            self._clear_locked()
            self._fail_next, self._fail_all, self._fail_status = 0, False, 503

    def _clear_locked(self) -> None:
        self._by_id: dict[int, _Stored] = {}
        self._by_identity: dict[tuple[str, str, str], _Stored] = {}
        self._subjects: dict[str, list[int]] = {}  # subject → schema id of each version
        self._calls: list[RegistryCall] = []

    def _register_locked(
        self,
        subject: str,
        schema_type: str,
        schema_str: str,
        references: tuple[Mapping[str, Any], ...],
    ) -> tuple[_Stored, int]:
        """Store (or find) the schema and its version under ``subject``: (schema, version)."""
        if schema_type in ("AVRO", "JSON"):
            try:
                json.loads(schema_str)
            except ValueError as exc:
                raise _RegistryError(422, 42201, f"Invalid schema: {exc}") from exc
        identity = (schema_type, _canonical(schema_type, schema_str), json.dumps(references))
        stored = self._by_identity.get(identity)
        if stored is None:
            schema_id = len(self._by_id) + 1
            stored = _Stored(schema_id, str(uuid.uuid4()), schema_type, schema_str, references)
            self._by_id[schema_id] = stored
            self._by_identity[identity] = stored
        versions = self._subjects.setdefault(subject, [])
        if stored.schema_id not in versions:
            versions.append(stored.schema_id)
        return stored, versions.index(stored.schema_id) + 1

    # ---- HTTP --------------------------------------------------------------------------------

    def _serve(self, h: Handler, method: str) -> None:
        path = urlsplit(h.path).path
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length > 0 else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self._send(h, 400, {"error_code": 400, "message": "request body is not JSON"})
            return
        if path == CONTROL_PATH and method == "POST":
            self._control(h, body)
            return
        with self._lock:
            failing = self._fail_all or self._fail_next > 0
            if self._fail_next > 0:
                self._fail_next -= 1
            status = self._fail_status
            if failing:
                payload: Any = {"error_code": status * 100 + 1, "message": "injected failure"}
            else:
                try:
                    status, payload = 200, self._dispatch_locked(method, path, body)
                except _RegistryError as exc:
                    status = exc.status
                    payload = {"error_code": exc.error_code, "message": exc.message}
            self._calls.append(RegistryCall(method, path, status))
        self._send(h, status, payload)

    def _dispatch_locked(self, method: str, path: str, body: Any) -> Any:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if method == "GET" and parts == ["subjects"]:
            return sorted(self._subjects)
        if method == "GET" and len(parts) == 3 and parts[:2] == ["schemas", "ids"]:
            stored = self._by_id.get(int(parts[2])) if parts[2].isdigit() else None
            if stored is None:
                raise _RegistryError(404, 40403, f"Schema {parts[2]} not found")
            return stored.body()
        if len(parts) >= 2 and parts[0] == "subjects":
            subject = parts[1]
            if method == "POST" and len(parts) in (2, 3) and parts[2:] in ([], ["versions"]):
                return self._post_subject_locked(subject, body, register=len(parts) == 3)
            if method == "GET" and parts[2:3] == ["versions"]:
                versions = self._subjects.get(subject)
                if versions is None:
                    raise _RegistryError(404, 40401, f"Subject '{subject}' not found.")
                if len(parts) == 3:
                    return list(range(1, len(versions) + 1))
                if len(parts) == 4:
                    return self._version_locked(subject, versions, parts[3])
        raise _RegistryError(404, 404, f"HTTP 404 Not Found: {method} {path}")

    def _post_subject_locked(self, subject: str, body: Any, *, register: bool) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
            raise _RegistryError(422, 42201, "Invalid schema: body must carry a 'schema' string")
        schema_type = str(body.get("schemaType") or "AVRO")
        references = tuple(body.get("references") or ())
        if register:
            stored, version = self._register_locked(
                subject, schema_type, body["schema"], references
            )
        else:
            versions = self._subjects.get(subject)
            if versions is None:
                raise _RegistryError(404, 40401, f"Subject '{subject}' not found.")
            identity = (
                schema_type,
                _canonical(schema_type, body["schema"]),
                json.dumps(references),
            )
            found = self._by_identity.get(identity)
            if found is None or found.schema_id not in versions:
                raise _RegistryError(404, 40403, "Schema not found")
            stored, version = found, versions.index(found.schema_id) + 1
        return {
            "id": stored.schema_id,
            "guid": stored.guid,
            "subject": subject,
            "version": version,
            **stored.body(),
        }

    def _version_locked(self, subject: str, versions: list[int], which: str) -> dict[str, Any]:
        if which in ("latest", "-1"):
            number = len(versions)
        elif which.isdigit() and 1 <= int(which) <= len(versions):
            number = int(which)
        else:
            raise _RegistryError(404, 40402, f"Version {which} not found.")
        stored = self._by_id[versions[number - 1]]
        return {
            "id": stored.schema_id,
            "guid": stored.guid,
            "subject": subject,
            "version": number,
            **stored.body(),
        }

    def _control(self, h: Handler, body: Any) -> None:
        if not isinstance(body, dict) or set(body) - {"fail_next", "fail_all", "status"}:
            self._send(
                h, 400, {"error_code": 400, "message": "expected {fail_next?, fail_all?, status?}"}
            )
            return
        status = int(body.get("status", 503))
        with self._lock:
            self._fail_status = status
            self._fail_next = int(body.get("fail_next", 0))
            self._fail_all = bool(body.get("fail_all", False))
        self._send(
            h, 200, {"fail_next": self._fail_next, "fail_all": self._fail_all, "status": status}
        )

    @staticmethod
    def _send(h: Handler, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", CONTENT_TYPE)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except OSError:
            h.close_connection = True


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stand-in until SIGTERM/SIGINT; prints one ready line. Returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m consumer.sandbox.registry",
        description="In-memory Confluent Schema Registry stand-in.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    args = parser.parse_args(argv)
    registry = SchemaRegistryStandIn(host=args.host, port=args.port)
    return registry.serve_until_signalled("schema registry stand-in listening on")


if __name__ == "__main__":
    sys.exit(main())
