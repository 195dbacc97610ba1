"""An emulated ASAPP Metadata Ingestion API: the six endpoints of the spec, plus fault injection.

Used by the demo, the integration tests and the benchmarks in place of ``api.asapp.com``. It
answers exactly the shapes the spec documents (``consumer/spec/metadata-ingestion.openapi.yaml``)
and validates every item with :class:`consumer.validation.ItemValidator`, so an item it accepts
is one the real API's schema accepts (under our full-match reading of the patterns).

Endpoints (``POST``, JSON; headers ``asapp-api-id`` / ``asapp-api-secret`` on every call)::

    /metadata-ingestion/v1/many-{agent,convo,customer}-metadata   {"items": [1..1000 items]}
        200 {"errorCount": n, "results": [{"eventId", "error"}, ...]}  at least one accepted
        400 same body                                                   none accepted
    /metadata-ingestion/v1/single-{agent,convo,customer}-metadata  one item
        200 / 400 {"result": {"eventId", "error"}}

``results`` are in item order (unless ``shuffle_results``); ``error`` is ``""`` or
``"FAIL_BAD_PARAMS: ERROR: <reason>"``; ``eventId`` is the item's own when it has one, else a
UUID (``server_ids`` makes it a UUID for rejected items or for all of them).
Every other failure answers ``{"error": {"requestId", "message", "code": "<status>-01"}}``.

A request goes through these steps, first answer wins:

1. routing: unknown path 404, wrong method 405; no ``Content-Length`` 411 (connection closed);
2. body larger than ``max_body_bytes``: 413 (the body is drained, the connection kept);
3. injected faults: a ``stall`` of this entity's endpoint, then latency, then the next
   ``sequence`` step, then ``reset_rate``, then ``error_rate`` (random 5xx);
4. ``forbidden`` flag 403; ``reject_credentials`` flag or wrong/missing credentials 401;
5. the account's quota (see "Quota" below): daily quota spent 429 code ``429-02``, spike
   arrest 429 code ``429-01``; then the rate limit (token bucket, ``rate_limit_rps`` refilled
   per second, burst = one second's worth): 429 with ``Retry-After`` when a value is
   configured;
6. body not JSON / not ``{"items": [...]}`` / not 1..1000 items: 400 code ``400-01``;
7. per-item validation, then ``reject_rate`` (``FAIL_BAD_PARAMS: ERROR: injected rejection``);
   then ``server_ids`` and ``shuffle_results`` shape the answer.

Control and inspection endpoints, no auth: ``GET /_emulator/items?entity=agent``,
``GET /_emulator/receipts[?entity=agent]``, ``GET /_emulator/requests``,
``GET /_emulator/stats``, ``GET|POST /_emulator/faults`` (POST replaces the whole fault config;
the body is :meth:`Faults.from_dict`'s format),
``GET|POST /_emulator/quota`` (POST body: any of ``{"daily_quota": 10000 | null,
"spike_rps": 100 | null, "used": 9990}``; both answer :meth:`EmulatedApi.quota`),
``POST /_emulator/reset`` (clears items, request log, stats, faults and today's quota count;
the quota limits stay),
``GET /_emulator/health``.

Fault config (JSON; every key optional)::

    {"sequence": [503, 503, 429, "reset", "malformed", "timeout", "ok",
                  {"status": 200, "latency_ms": 250}],
     "error_rate": 0.0, "error_statuses": [503, 500], "latency_ms": 0, "latency_jitter_ms": 0,
     "reset_rate": 0.0, "reject_rate": 0.0, "retry_after_s": null, "echo_event_ids": true,
     "server_ids": "none", "shuffle_results": false,
     "stall": {"entity": "conversation", "hold_s": 20, "status": 503, "for_s": 25},
     "reject_credentials": false, "forbidden": false, "hang_s": 30.0, "seed": null}

``sequence`` is consumed one step per API request (control endpoints excluded): an HTTP status
answers that status with the documented error body (``200``/``"ok"`` means "behave
normally"), ``"reset"`` closes the connection with a TCP RST and no answer, ``"malformed"``
answers 200 with a truncated JSON body, ``"timeout"`` holds the request ``hang_s`` seconds and
then closes the connection without answering.

``server_ids`` (the API's docs say neither whether results echo our ids nor their order):
``"none"`` echoes each item's own ``eventId``, ``"rejected"`` answers every rejected item with a
fresh UUID, ``"all"`` answers every item with one (``echo_event_ids: false`` is the old spelling
of ``"all"``). ``shuffle_results`` answers the results in another order than the items (a seeded
shuffle; rotated by one if the shuffle left them in place), so only ids can match them.

``stall`` makes one entity's endpoint hang while the others answer normally: for ``for_s``
seconds from when the fault config is set (forever when null), every request to that entity's
endpoints is held ``hold_s`` seconds and then answered ``status`` (no items are ingested).

``Retry-After`` is sent on every 429 when ``retry_after_s`` (fault) or the server's
``retry_after_s`` is set; whole numbers are sent as integers, fractions as decimals
(non-standard, but lets tests back off briefly).

Quota (as ASAPP sells it: per account, across every endpoint and client)::

    daily_quota  requests per UTC day; once that many were admitted today, every API request
                 is answered 429 code "429-02" with Retry-After = whole seconds to 00:00 UTC
                 (of ``wall_clock``); the count starts again at 0 each UTC day
    spike_rps    more than this many admitted requests within any 1 s window (of ``clock``):
                 429 code "429-01" with Retry-After 1

Only requests that reach step 5 (routed, authenticated, no injected fault) and are admitted
count, as do the requests :meth:`EmulatedApi.set_quota` says were ``used`` already; refused
requests are counted separately (``refused`` in :meth:`EmulatedApi.quota`). Set them with the
constructor, :meth:`EmulatedApi.set_quota`, ``POST /_emulator/quota`` or the CLI's
``--daily-quota`` / ``--spike-rps`` / ``--quota-used``.

Threading: one thread per connection (``ThreadingHTTPServer``, HTTP/1.1 keep-alive,
``TCP_NODELAY``); all shared state sits behind one lock and item validation runs outside it.
:meth:`EmulatedApi.stop` wakes sleeping requests and shuts every open connection down.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import socket
import struct
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import Enum
from http import HTTPStatus
from typing import Any, Final, Literal
from urllib.parse import parse_qs, urlsplit

from consumer.records import Entity
from consumer.sandbox._http import Handler, StandInServer
from consumer.validation import validator_for

try:  # orjson is part of the sandbox extra; the stdlib is the fallback
    import orjson

    def _dumps(value: Any) -> bytes:
        return orjson.dumps(value)

    _loads: Callable[[bytes], Any] = orjson.loads
    _JSONDecodeError: type[ValueError] = orjson.JSONDecodeError
except ImportError:  # pragma: no cover - exercised only without the sandbox extra

    def _dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    _loads = json.loads
    _JSONDecodeError = json.JSONDecodeError

__all__ = [
    "QUOTA_SPENT_CODE",
    "SPIKE_ARREST_CODE",
    "EmulatedApi",
    "FaultStep",
    "Faults",
    "Keep",
    "Receipt",
    "RequestRecord",
    "Stall",
    "main",
    "parser",
    "steps",
]

API_PREFIX: Final = "/metadata-ingestion/v1/"
CONTROL_PREFIX: Final = "/_emulator/"
MAX_ITEMS: Final = 1000
DEFAULT_API_ID: Final = "sandbox-api-id"
DEFAULT_API_SECRET: Final = "sandbox-api-secret"
REJECTION: Final = "FAIL_BAD_PARAMS: ERROR: injected rejection"
MALFORMED_BODY: Final = b'{"errorCount": 0, "results": [{"eventId": "'
_DRAIN_LIMIT_BYTES: Final = 256 * 1024 * 1024  # beyond this a 413 closes instead of draining

#: ``{single,many}-<suffix>-metadata`` → entity.
_SUFFIXES: Final[Mapping[str, Entity]] = {
    "agent": Entity.AGENT,
    "convo": Entity.CONVERSATION,
    "customer": Entity.CUSTOMER,
}
_ENTITY_NAMES: Final[Mapping[str, Entity]] = {
    **{e.value: e for e in Entity},
    "convo": Entity.CONVERSATION,
}
#: The ``message`` of each documented error body.
_MESSAGES: Final[Mapping[int, str]] = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden Response",
    404: "Not Found",
    409: "Conflict",
    413: "Request Entity Too Large",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal server error",
    503: "Service Unavailable",
}
_SPECIAL_STEPS: Final = frozenset({"ok", "reset", "malformed", "timeout"})
#: ``Faults.server_ids`` modes: which results carry a server-made UUID instead of our eventId.
SERVER_IDS: Final = ("none", "rejected", "all")


@dataclass(frozen=True, slots=True)
class FaultStep:
    """One entry of the fault sequence: ``action`` is an HTTP status or one of
    ``ok``/``reset``/``malformed``/``timeout``; ``latency_ms`` is added before answering."""

    action: int | str
    latency_ms: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.action, bool) or not (
            (isinstance(self.action, int) and 100 <= self.action <= 599)
            or self.action in _SPECIAL_STEPS
        ):
            raise ValueError(
                f"fault step {self.action!r}: expected an HTTP status or one of "
                f"{sorted(_SPECIAL_STEPS)}"
            )
        if self.latency_ms < 0:
            raise ValueError(f"fault step latency_ms must be >= 0, got {self.latency_ms}")

    @classmethod
    def parse(cls, raw: Any) -> FaultStep:
        """``503``, ``"reset"`` or ``{"status": 503, "latency_ms": 10}``; ValueError otherwise."""
        if isinstance(raw, FaultStep):
            return raw
        if isinstance(raw, Mapping):
            unknown = set(raw) - {"status", "latency_ms"}
            if unknown or "status" not in raw:
                raise ValueError(f"fault step {raw!r}: expected keys status and latency_ms")
            return cls(raw["status"], float(raw.get("latency_ms", 0.0)))
        return cls(raw)

    def to_json(self) -> int | str | dict[str, Any]:
        """The short form when there is no latency, else ``{"status", "latency_ms"}``."""
        if not self.latency_ms:
            return self.action
        return {"status": self.action, "latency_ms": self.latency_ms}


def steps(*entries: int | str | Mapping[str, Any] | FaultStep) -> tuple[FaultStep, ...]:
    """A fault sequence from short entries: ``steps(503, 503, "reset")``."""
    return tuple(FaultStep.parse(entry) for entry in entries)


@dataclass(frozen=True, slots=True)
class Stall:
    """One entity's endpoint hangs: each request is held ``hold_s`` then answered ``status``,
    for ``for_s`` seconds from when the fault config is set (``None``: until replaced)."""

    entity: Entity
    hold_s: float
    status: int = 503
    for_s: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.entity, Entity):
            raise ValueError(f"stall.entity must be an Entity, got {self.entity!r}")
        if self.hold_s < 0:
            raise ValueError(f"stall.hold_s must be >= 0, got {self.hold_s}")
        if isinstance(self.status, bool) or not 400 <= self.status <= 599:
            raise ValueError(f"stall.status must be a 4xx or 5xx code, got {self.status!r}")
        if self.for_s is not None and self.for_s < 0:
            raise ValueError(f"stall.for_s must be >= 0, got {self.for_s}")

    @classmethod
    def parse(cls, raw: Any) -> Stall:
        """``{"entity": "conversation", "hold_s": 20, "status": 503, "for_s": 25}`` (``status``
        and ``for_s`` optional; ``convo`` is accepted for the entity); ValueError otherwise."""
        if isinstance(raw, Stall):
            return raw
        if not isinstance(raw, Mapping) or set(raw) - {"entity", "hold_s", "status", "for_s"}:
            raise ValueError(f"stall {raw!r}: expected keys entity, hold_s, status, for_s")
        entity = _ENTITY_NAMES.get(str(raw.get("entity")))
        if entity is None:
            raise ValueError(f"stall.entity must be one of {sorted(_ENTITY_NAMES)}")
        for_s = raw.get("for_s")
        return cls(
            entity,
            float(raw.get("hold_s", 0.0)),
            int(raw.get("status", 503)),
            None if for_s is None else float(for_s),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "entity": self.entity.value,
            "hold_s": self.hold_s,
            "status": self.status,
            "for_s": self.for_s,
        }


@dataclass(frozen=True, slots=True)
class Faults:
    """What the emulator does wrong on purpose. The default is a well-behaved API."""

    sequence: tuple[FaultStep, ...] = ()
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (503, 500)
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    reset_rate: float = 0.0
    reject_rate: float = 0.0
    retry_after_s: float | None = None
    echo_event_ids: bool = True
    server_ids: str = "none"
    shuffle_results: bool = False
    stall: Stall | None = None
    reject_credentials: bool = False
    forbidden: bool = False
    hang_s: float = 30.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.server_ids not in SERVER_IDS:
            raise ValueError(
                f"faults.server_ids must be one of {SERVER_IDS}, got {self.server_ids!r}"
            )
        for name in ("error_rate", "reset_rate", "reject_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"faults.{name} must be within [0, 1], got {rate}")
        for name in ("latency_ms", "latency_jitter_ms", "hang_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"faults.{name} must be >= 0, got {getattr(self, name)}")
        if self.retry_after_s is not None and self.retry_after_s < 0:
            raise ValueError(f"faults.retry_after_s must be >= 0, got {self.retry_after_s}")
        if not self.error_statuses or any(not 500 <= s <= 599 for s in self.error_statuses):
            raise ValueError(f"faults.error_statuses must be 5xx codes, got {self.error_statuses}")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Faults:
        """Parse the JSON fault config (module docstring); ValueError names a bad key."""
        if not isinstance(raw, Mapping):
            raise ValueError("faults must be a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown fault keys {unknown}; known: {sorted(known)}")
        values = dict(raw)
        try:
            if "sequence" in values:
                values["sequence"] = steps(*values["sequence"])
            if values.get("stall") is not None:
                values["stall"] = Stall.parse(values["stall"])
            if "error_statuses" in values:
                values["error_statuses"] = tuple(int(s) for s in values["error_statuses"])
            for name in (
                "error_rate",
                "latency_ms",
                "latency_jitter_ms",
                "reset_rate",
                "reject_rate",
                "hang_s",
            ):
                if name in values:
                    values[name] = float(values[name])
            if values.get("retry_after_s") is not None:
                values["retry_after_s"] = float(values["retry_after_s"])
            for name in ("echo_event_ids", "shuffle_results", "reject_credentials", "forbidden"):
                if name in values and not isinstance(values[name], bool):
                    raise ValueError(f"faults.{name} must be true or false")
        except TypeError as exc:
            raise ValueError(f"bad fault config: {exc}") from exc
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form :meth:`from_dict` reads back."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["sequence"] = [step.to_json() for step in self.sequence]
        out["error_statuses"] = list(self.error_statuses)
        out["stall"] = None if self.stall is None else self.stall.to_json()
        return out

    @property
    def foreign_ids(self) -> str:
        """The effective ``server_ids`` mode (``echo_event_ids: false`` means ``"all"``)."""
        return self.server_ids if self.echo_event_ids else "all"


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request the emulator answered (or dropped), in arrival order.

    ``status`` is 0 when no answer was sent (``reset``/``timeout``); ``t_monotonic`` is when
    the request arrived (``time.monotonic`` unless a clock was injected); ``fault`` names the
    injected fault that decided the answer, if any; ``client`` is the peer ``host:port`` (one
    value per TCP connection, so it shows keep-alive at work); ``retry_after`` is the
    ``Retry-After`` header value sent with the answer (None when none was sent).
    """

    endpoint: str
    entity: str | None
    item_count: int
    body_bytes: int
    status: int
    t_monotonic: float
    accepted: int = 0
    rejected: int = 0
    fault: str | None = None
    client: str = ""
    retry_after: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Receipt:
    """One accepted item, in the order the emulator accepted them (all entities in one log).

    ``t_wall`` is when the accepting answer was decided, in seconds since the epoch (the
    injected ``wall_clock``, ``time.time`` by default), comparable with Kafka message
    timestamps; ``event_id`` is the item's own ``eventId`` (``None`` when it had none).
    """

    entity: Entity
    event_id: str | None
    item: dict[str, Any]
    t_wall: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "entity": self.entity.value,
            "event_id": self.event_id,
            "item": self.item,
            "t_wall": self.t_wall,
        }


@dataclass(slots=True)
class _Answer:
    """What to send back: a status and body, or ``drop`` (reset/timeout: no answer)."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    drop: str | None = None
    close: bool = False
    fault: str | None = None
    entity: Entity | None = None
    item_count: int = 0
    accepted: int = 0
    rejected: int = 0
    content_type: str = "application/json"
    accepted_items: list[Any] = field(default_factory=list)


def _error_body(status: int, message: str | None = None, *, code: str | None = None) -> bytes:
    """The documented ``{"error": {"requestId", "message", "code"}}`` body (code
    ``<status>-01`` unless given)."""
    text = message or _MESSAGES.get(status) or HTTPStatus(status).phrase
    return _dumps(
        {
            "error": {
                "requestId": str(uuid.uuid4()),
                "message": text,
                "code": code or f"{status}-01",
            }
        }
    )


class Keep(Enum):
    """:meth:`EmulatedApi.set_quota`'s "leave this limit as it is"."""

    KEEP = "keep"


#: Error codes of the quota's 429s.
SPIKE_ARREST_CODE: Final = "429-01"
QUOTA_SPENT_CODE: Final = "429-02"
_DAY_S: Final = 86_400


def _utc_day(unix_s: float) -> int:
    return int(unix_s // _DAY_S)


class _Quota:
    """The account's daily quota and spike arrest; not thread-safe (the server's lock).

    ``admit`` returns None when the request may proceed (and counts it), else the 429 code
    and the Retry-After seconds.
    """

    def __init__(
        self,
        daily_quota: int | None,
        spike_rps: float | None,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self._clock, self._wall_clock = clock, wall_clock
        self.configure(daily_quota, spike_rps)
        self.clear()

    def configure(self, daily_quota: int | None, spike_rps: float | None) -> None:
        if daily_quota is not None and (isinstance(daily_quota, bool) or daily_quota < 0):
            raise ValueError(f"daily_quota must be >= 0 or null, got {daily_quota!r}")
        if spike_rps is not None and spike_rps <= 0:
            raise ValueError(f"spike_rps must be > 0 or null, got {spike_rps!r}")
        self.daily_quota, self.spike_rps = daily_quota, spike_rps

    def clear(self) -> None:
        self._day = _utc_day(self._wall_clock())
        self._used = 0
        self._recent: deque[float] = deque()
        self.refused: Counter[str] = Counter()

    def set_used(self, used: int) -> None:
        if isinstance(used, bool) or used < 0:
            raise ValueError(f"used must be >= 0, got {used!r}")
        self._roll()
        self._used = used

    def used(self) -> int:
        self._roll()
        return self._used

    def _roll(self) -> None:
        day = _utc_day(self._wall_clock())
        if day != self._day:
            self._day, self._used = day, 0

    def admit(self) -> tuple[str, float] | None:
        self._roll()
        if self.daily_quota is not None and self._used >= self.daily_quota:
            wall = self._wall_clock()
            self.refused[QUOTA_SPENT_CODE] += 1
            return QUOTA_SPENT_CODE, float(math.ceil((self._day + 1) * _DAY_S - wall))
        if self.spike_rps is not None:
            now = self._clock()
            while self._recent and self._recent[0] <= now - 1.0:
                self._recent.popleft()
            if len(self._recent) >= self.spike_rps:
                self.refused[SPIKE_ARREST_CODE] += 1
                return SPIKE_ARREST_CODE, 1.0
            self._recent.append(now)
        self._used += 1
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "daily_quota": self.daily_quota,
            "spike_rps": self.spike_rps,
            "used": self.used(),
            "day": datetime.fromtimestamp(self._day * _DAY_S, UTC).strftime("%Y-%m-%d"),
            "refused": dict(sorted(self.refused.items())),
        }


def _retry_after_header(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


class _TokenBucket:
    """``rate`` tokens per second, at most ``burst`` stored; not thread-safe (caller locks)."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens, self._last = burst, clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class EmulatedApi(StandInServer):
    """The emulated API server. Embeddable (``with EmulatedApi() as api: api.url``) or CLI.

    Guarantees: items are recorded (per entity, in arrival order, and in the all-entity
    :meth:`receipts` log with their acceptance time) when the answer that accepted them is
    decided, just before it is sent; :meth:`stop` returns promptly even with hanging requests.
    ``clock`` times the request log, the rate limit, the spike arrest and the ``stall``
    window; ``wall_clock`` stamps receipts and decides the quota's UTC day (and midnight).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_id: str = DEFAULT_API_ID,
        api_secret: str = DEFAULT_API_SECRET,
        max_body_bytes: int | None = None,
        rate_limit_rps: float | None = None,
        retry_after_s: float | None = None,
        faults: Faults | None = None,
        record_items: bool = True,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        daily_quota: int | None = None,
        spike_rps: float | None = None,
    ) -> None:
        """Raises ValueError for a bad limit (``daily_quota`` < 0, ``spike_rps`` <= 0...)."""
        if max_body_bytes is not None and max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be > 0, got {max_body_bytes}")
        if rate_limit_rps is not None and rate_limit_rps <= 0:
            raise ValueError(f"rate_limit_rps must be > 0, got {rate_limit_rps}")
        quota = _Quota(daily_quota, spike_rps, clock, wall_clock)  # validated before binding
        super().__init__(host=host, port=port)
        self.api_id, self.api_secret = api_id, api_secret
        self.max_body_bytes, self.rate_limit_rps = max_body_bytes, rate_limit_rps
        self.retry_after_s = retry_after_s
        self.record_items = record_items
        self._clock, self._wall_clock = clock, wall_clock
        self._stopping = threading.Event()
        self._quota = quota
        self._set_faults_locked(faults or Faults())
        self._clear_records_locked()

    # ---- lifecycle -------------------------------------------------------------------------

    thread_name = "emulated-asapp-api"

    def _on_start(self) -> None:
        self._stopping.clear()

    def _on_stop(self) -> None:
        self._stopping.set()  # wake requests hanging on an injected "timeout"

    # ---- inspection and control --------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        with self._lock:
            return self._faults

    def set_faults(self, faults: Faults) -> None:
        """Replace the fault config; the sequence and the random generator restart."""
        with self._lock:
            self._set_faults_locked(faults)

    def reset(self) -> None:
        """Clear recorded items, the request log, stats, rate-limit state, faults and today's
        quota count (the quota's limits stay)."""
        with self._lock:
            self._clear_records_locked()
            self._quota.clear()
            self._set_faults_locked(Faults())

    def set_quota(
        self,
        *,
        daily_quota: int | Literal[Keep.KEEP] | None = Keep.KEEP,
        spike_rps: float | Literal[Keep.KEEP] | None = Keep.KEEP,
        used: int | None = None,
    ) -> None:
        """Change the quota's limits (None switches one off; omitted ones stay) and, with
        ``used``, say how many requests were already spent today. Raises ValueError."""
        with self._lock:
            quota = self._quota
            new_daily = quota.daily_quota if daily_quota is Keep.KEEP else daily_quota
            new_spike = quota.spike_rps if spike_rps is Keep.KEEP else spike_rps
            if new_daily is not None and not isinstance(new_daily, int):
                raise ValueError(f"daily_quota must be an integer or null, got {new_daily!r}")
            if new_spike is not None and not isinstance(new_spike, int | float):
                raise ValueError(f"spike_rps must be a number or null, got {new_spike!r}")
            if used is not None:
                quota.set_used(used)  # validated first: a bad call changes nothing
            quota.configure(new_daily, None if new_spike is None else float(new_spike))

    def quota(self) -> dict[str, Any]:
        """``{"daily_quota", "spike_rps", "used" (admitted today), "day" (UTC), "refused"
        ({"429-01": n, "429-02": n})}``."""
        with self._lock:
            return self._quota.to_dict()

    def quota_used(self) -> int:
        """Requests admitted today (UTC day of ``wall_clock``), ``used`` included."""
        with self._lock:
            return self._quota.used()

    def items(self, entity: Entity) -> list[Any]:
        """Accepted items of ``entity`` in arrival order (empty when ``record_items`` is off)."""
        with self._lock:
            return list(self._items[entity])

    def receipts(self, entity: Entity | None = None) -> list[Receipt]:
        """Accepted items with their acceptance time, in acceptance order across all entities
        (only ``entity``'s when given; empty when ``record_items`` is off)."""
        with self._lock:
            if entity is None:
                return list(self._receipts)
            return [r for r in self._receipts if r.entity is entity]

    def requests(self) -> list[RequestRecord]:
        """Every API request so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def request_count(self) -> int:
        """How many API requests arrived so far (control endpoints excluded); no copy."""
        with self._lock:
            return len(self._requests)

    def stats(self) -> dict[str, Any]:
        """Counts: ``requests``, ``statuses``; per entity requests/accepted/rejected/statuses."""
        with self._lock:
            return {
                "requests": len(self._requests),
                "statuses": {str(k): v for k, v in sorted(self._statuses.items())},
                "faults_injected": self._faults_injected,
                "entities": {
                    entity.value: {
                        "requests": self._entity_requests[entity],
                        "items_accepted": self._accepted[entity],
                        "items_rejected": self._rejected[entity],
                        "statuses": {
                            str(k): v for k, v in sorted(self._entity_statuses[entity].items())
                        },
                    }
                    for entity in Entity
                },
            }

    def accepted_count(self, entity: Entity | None = None) -> int:
        """Items accepted for ``entity`` (all when None); counted even when items aren't kept."""
        with self._lock:
            if entity is None:
                return sum(self._accepted.values())
            return self._accepted[entity]

    def _set_faults_locked(self, faults: Faults) -> None:
        self._faults = faults
        self._faults_since = self._clock()  # the start of a ``stall`` window
        self._sequence: deque[FaultStep] = deque(faults.sequence)
        self._rng = random.Random(faults.seed)

    def _clear_records_locked(self) -> None:
        self._items: dict[Entity, list[Any]] = {entity: [] for entity in Entity}
        self._receipts: list[Receipt] = []
        self._requests: list[RequestRecord] = []
        self._statuses: Counter[int] = Counter()
        self._entity_statuses: dict[Entity, Counter[int]] = {e: Counter() for e in Entity}
        self._entity_requests: Counter[Entity] = Counter()
        self._accepted: Counter[Entity] = Counter()
        self._rejected: Counter[Entity] = Counter()
        self._faults_injected = 0
        rate = self.rate_limit_rps
        self._bucket = _TokenBucket(rate, max(1.0, rate), self._clock) if rate else None

    # ---- request handling --------------------------------------------------------------------

    def _serve(self, h: Handler, method: str) -> None:
        split = urlsplit(h.path)
        path = split.path
        if path.startswith(CONTROL_PREFIX):
            body = self._read_body(h)
            if body is None:
                return
            self._send(h, self._control(method, path, split.query, body))
            return
        arrived = self._clock()
        answer, body_bytes = self._api(h, method, path)
        with self._lock:
            client = f"{h.client_address[0]}:{h.client_address[1]}"
            self._record_locked(path, answer, body_bytes, arrived, client)
        if answer.drop is not None:
            self._drop(h, answer.drop)
        else:
            self._send(h, answer)

    def _read_body(self, h: Handler) -> bytes | None:
        """A control request's body (``b""`` when none); None when unreadable, in which case
        the answer (400/411, connection closed) has been sent."""
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self._send(h, _Answer(411, _error_body(411, "Length Required"), close=True))
            return None
        try:
            length = int(h.headers.get("Content-Length") or 0)
        except ValueError:
            self._send(h, _Answer(400, _error_body(400, "bad Content-Length"), close=True))
            return None
        return h.rfile.read(length) if length > 0 else b""

    def _api(self, h: Handler, method: str, path: str) -> tuple[_Answer, int]:
        """Decide the answer to an API request (steps 1-7 of the module docstring)."""
        route = self._route(path)
        if route is None or method != "POST":
            # no body is expected here: close rather than guess where the next request starts
            status, message = (404, None) if route is None else (405, "Method Not Allowed")
            close = h.headers.get("Content-Length") not in (None, "0")
            return _Answer(status, _error_body(status, message), close=close), 0
        kind, entity = route
        length_header = h.headers.get("Content-Length")
        if length_header is None or h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return _Answer(411, _error_body(411, "Length Required"), close=True, entity=entity), 0
        try:
            length = int(length_header)
        except ValueError:
            return _Answer(400, _error_body(400, "bad Content-Length"), close=True), 0
        if self.max_body_bytes is not None and length > self.max_body_bytes:
            if length > _DRAIN_LIMIT_BYTES:
                return _Answer(413, _error_body(413), close=True, entity=entity), length
            self._drain(h, length)
            return _Answer(413, _error_body(413), entity=entity), length
        body = h.rfile.read(length) if length else b""

        fault_answer = self._inject(entity)
        if fault_answer is not None:
            return fault_answer, length
        with self._lock:
            faults = self._faults
            if faults.forbidden:
                return _Answer(403, _error_body(403), entity=entity), length
            if (
                faults.reject_credentials
                or h.headers.get("asapp-api-id") != self.api_id
                or h.headers.get("asapp-api-secret") != self.api_secret
            ):
                return _Answer(401, _error_body(401), entity=entity), length
            refused = self._quota.admit()
            if refused is not None:
                code, retry_after = refused
                return _Answer(
                    429,
                    _error_body(429, code=code),
                    headers=(("Retry-After", _retry_after_header(retry_after)),),
                    entity=entity,
                    fault="quota" if code == QUOTA_SPENT_CODE else "spike_arrest",
                ), length
            if self._bucket is not None and not self._bucket.take():
                return self._too_many(entity, fault=None), length
        return self._ingest(kind, entity, body, faults), length

    @staticmethod
    def _route(path: str) -> tuple[str, Entity] | None:
        if not path.startswith(API_PREFIX) or not path.endswith("-metadata"):
            return None
        kind, _, suffix = path[len(API_PREFIX) : -len("-metadata")].partition("-")
        entity = _SUFFIXES.get(suffix)
        if kind not in ("single", "many") or entity is None:
            return None
        return kind, entity

    @staticmethod
    def _drain(h: Handler, length: int) -> None:
        remaining = length
        while remaining > 0:
            chunk = h.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)

    def _too_many(self, entity: Entity | None, fault: str | None) -> _Answer:
        retry_after = self._faults.retry_after_s
        if retry_after is None:
            retry_after = self.retry_after_s
        headers = (
            () if retry_after is None else (("Retry-After", _retry_after_header(retry_after)),)
        )
        return _Answer(429, _error_body(429), headers=headers, entity=entity, fault=fault)

    def _inject(self, entity: Entity) -> _Answer | None:
        """Injected latency and faults (step 3); None when the request proceeds normally."""
        stalled = self._stall(entity)
        if stalled is not None:
            return stalled
        with self._lock:
            faults = self._faults
            step = self._sequence.popleft() if self._sequence else None
            latency_ms = faults.latency_ms + (step.latency_ms if step else 0.0)
            if faults.latency_jitter_ms:
                latency_ms += self._rng.uniform(0.0, faults.latency_jitter_ms)
            reset = faults.reset_rate > 0 and self._rng.random() < faults.reset_rate
            error = faults.error_rate > 0 and self._rng.random() < faults.error_rate
            error_status = self._rng.choice(faults.error_statuses) if error else 0
        if latency_ms > 0:
            self._stopping.wait(latency_ms / 1000.0)
        answer: _Answer | None = None
        if step is not None and step.action not in ("ok", 200):
            answer = self._step_answer(step, entity, faults)
        elif reset:
            answer = _Answer(0, drop="reset", fault="reset", entity=entity)
        elif error:
            answer = _Answer(
                error_status,
                _error_body(error_status),
                entity=entity,
                fault=f"random:{error_status}",
            )
        if answer is not None:
            with self._lock:
                self._faults_injected += 1
        return answer

    def _stall(self, entity: Entity) -> _Answer | None:
        """The ``stall`` fault: hold this entity's request, then answer its status; None when
        no stall is active for ``entity``."""
        with self._lock:
            stall = self._faults.stall
            if stall is None or stall.entity is not entity:
                return None
            if stall.for_s is not None and self._clock() - self._faults_since >= stall.for_s:
                return None
            self._faults_injected += 1
        self._stopping.wait(stall.hold_s)
        return _Answer(
            stall.status,
            _error_body(stall.status),
            entity=entity,
            fault=f"stall:{stall.status}",
        )

    def _step_answer(self, step: FaultStep, entity: Entity, faults: Faults) -> _Answer:
        action = step.action
        if action == "reset":
            return _Answer(0, drop="reset", fault="sequence:reset", entity=entity)
        if action == "timeout":
            self._stopping.wait(faults.hang_s)
            return _Answer(0, drop="timeout", fault="sequence:timeout", entity=entity)
        if action == "malformed":
            return _Answer(200, MALFORMED_BODY, fault="sequence:malformed", entity=entity)
        assert isinstance(action, int)
        if action == 429:
            return self._too_many(entity, fault="sequence:429")
        return _Answer(action, _error_body(action), entity=entity, fault=f"sequence:{action}")

    def _ingest(self, kind: str, entity: Entity, body: bytes, faults: Faults) -> _Answer:
        """Parse, validate, apply ``reject_rate`` (steps 6-7)."""
        try:
            payload = _loads(body)
        except (_JSONDecodeError, ValueError, UnicodeDecodeError):
            return _Answer(400, _error_body(400, "request body is not valid JSON"), entity=entity)
        if kind == "many":
            items = payload.get("items") if isinstance(payload, dict) else None
            if not isinstance(items, list) or not 1 <= len(items) <= MAX_ITEMS:
                count = len(items) if isinstance(items, list) else 0
                message = f'body must be {{"items": [...]}} with 1 to {MAX_ITEMS} items'
                return _Answer(400, _error_body(400, message), entity=entity, item_count=count)
        else:
            if not isinstance(payload, dict):
                return _Answer(400, _error_body(400, "body must be a JSON object"), entity=entity)
            items = [payload]

        check = validator_for(entity).error
        results: list[dict[str, str]] = []
        accepted_items: list[Any] = []
        reject_rate, foreign = faults.reject_rate, faults.foreign_ids
        for item in items:
            # the hot loop of every benchmark: one validation, no allocation beyond the result
            if type(item) is dict:
                error = check(item)
                own_id = item.get("eventId") if foreign != "all" else None
            else:
                error, own_id = "item: must be object", None
            if error is not None:
                error = "FAIL_BAD_PARAMS: ERROR: " + error
            elif reject_rate > 0 and self._draw() < reject_rate:
                error = REJECTION
            else:
                accepted_items.append(item)
                error = ""
            if type(own_id) is not str or not own_id or (error and foreign == "rejected"):
                own_id = str(uuid.uuid4())
            results.append({"eventId": own_id, "error": error})
        if faults.shuffle_results and len(results) > 1:
            self._shuffle(results)
        accepted = len(accepted_items)
        status = 200 if accepted else 400
        response: dict[str, Any]
        if kind == "many":
            response = {"errorCount": len(items) - accepted, "results": results}
        else:
            response = {"result": results[0]}
        return _Answer(
            status,
            _dumps(response),
            entity=entity,
            item_count=len(items),
            accepted=accepted,
            rejected=len(items) - accepted,
            accepted_items=accepted_items,
        )

    def _draw(self) -> float:
        with self._lock:
            return self._rng.random()

    def _shuffle(self, results: list[dict[str, str]]) -> None:
        """Reorder ``results`` in place, never leaving them in item order (2+ results)."""
        original = list(results)
        with self._lock:
            self._rng.shuffle(results)
        if results == original:
            results.append(results.pop(0))

    def _record_locked(
        self, path: str, answer: _Answer, body_bytes: int, arrived: float, client: str
    ) -> None:
        entity = answer.entity
        self._requests.append(
            RequestRecord(
                endpoint=path,
                entity=entity.value if entity else None,
                item_count=answer.item_count,
                body_bytes=body_bytes,
                status=answer.status,
                t_monotonic=arrived,
                accepted=answer.accepted,
                rejected=answer.rejected,
                fault=answer.fault,
                client=client,
                retry_after=next(
                    (value for name, value in answer.headers if name == "Retry-After"), None
                ),
            )
        )
        self._statuses[answer.status] += 1
        if entity is not None:
            self._entity_requests[entity] += 1
            self._entity_statuses[entity][answer.status] += 1
            self._accepted[entity] += answer.accepted
            self._rejected[entity] += answer.rejected
            if self.record_items and answer.accepted_items:
                self._items[entity].extend(answer.accepted_items)
                now = self._wall_clock()
                for item in answer.accepted_items:
                    event_id = item.get("eventId")
                    own = event_id if isinstance(event_id, str) and event_id else None
                    self._receipts.append(Receipt(entity, own, item, now))

    def _send(self, h: Handler, answer: _Answer) -> None:
        try:
            h.send_response(answer.status)
            h.send_header("Content-Type", answer.content_type)
            h.send_header("Content-Length", str(len(answer.body)))
            for name, value in answer.headers:
                h.send_header(name, value)
            if answer.close:
                h.send_header("Connection", "close")
                h.close_connection = True
            h.end_headers()
            h.wfile.write(answer.body)
        except OSError:
            h.close_connection = True  # the client went away; nothing left to answer

    @staticmethod
    def _drop(h: Handler, how: str) -> None:
        """Close without answering; ``reset`` sends a TCP RST (SO_LINGER 0)."""
        h.close_connection = True
        with contextlib.suppress(OSError):
            if how == "reset":
                linger = struct.pack("ii", 1, 0)
                h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            else:
                h.connection.shutdown(socket.SHUT_RDWR)
            h.connection.close()

    # ---- control endpoints -------------------------------------------------------------------

    def _control(self, method: str, path: str, query: str, body: bytes) -> _Answer:
        name = path[len(CONTROL_PREFIX) :].strip("/")
        route = (method, name)
        if route == ("GET", "health"):
            return _Answer(200, _dumps({"status": "ok"}))
        if route == ("GET", "items"):
            raw = parse_qs(query).get("entity", [""])[0]
            entity = _ENTITY_NAMES.get(raw)
            if entity is None:
                return _Answer(
                    400, _error_body(400, f"entity must be one of {sorted(_ENTITY_NAMES)}")
                )
            return _Answer(200, _dumps(self.items(entity)))
        if route == ("GET", "receipts"):
            raw = parse_qs(query).get("entity", [""])[0]
            only = _ENTITY_NAMES.get(raw) if raw else None
            if raw and only is None:
                return _Answer(
                    400, _error_body(400, f"entity must be one of {sorted(_ENTITY_NAMES)}")
                )
            return _Answer(200, _dumps([r.to_dict() for r in self.receipts(only)]))
        if route == ("GET", "requests"):
            return _Answer(200, _dumps([r.to_dict() for r in self.requests()]))
        if route == ("GET", "stats"):
            return _Answer(200, _dumps(self.stats()))
        if route == ("GET", "faults"):
            return _Answer(200, _dumps(self.faults.to_dict()))
        if route == ("POST", "faults"):
            try:
                faults = Faults.from_dict(_loads(body or b"{}"))
            except (_JSONDecodeError, ValueError) as exc:
                return _Answer(400, _error_body(400, str(exc)))
            self.set_faults(faults)
            return _Answer(200, _dumps(faults.to_dict()))
        if route == ("GET", "quota"):
            return _Answer(200, _dumps(self.quota()))
        if route == ("POST", "quota"):
            try:
                raw = _loads(body or b"{}")
                if not isinstance(raw, dict) or set(raw) - {"daily_quota", "spike_rps", "used"}:
                    raise ValueError("quota: expected an object with daily_quota, spike_rps, used")
                self.set_quota(**raw)
            except (_JSONDecodeError, ValueError, TypeError) as exc:
                return _Answer(400, _error_body(400, str(exc)))
            return _Answer(200, _dumps(self.quota()))
        if route == ("POST", "reset"):
            self.reset()
            return _Answer(200, _dumps({"status": "reset"}))
        known = {"health", "items", "receipts", "requests", "stats", "faults", "quota", "reset"}
        if name in known:
            return _Answer(405, _error_body(405, "Method Not Allowed"))
        return _Answer(404, _error_body(404))


# ---- CLI ---------------------------------------------------------------------------------------


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Raw description and epilog, and every option's default in its help."""


def parser(prog: str = "metadata-consumer emulate-api") -> argparse.ArgumentParser:
    """The emulator's command line: every option with its default shown in ``--help`` (port,
    credentials...), an example and the exit codes."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Emulated ASAPP Metadata Ingestion API (with fault injection).",
        formatter_class=_HelpFormatter,
        epilog=(
            "examples:\n"
            "  metadata-consumer emulate-api --port 8080\n"
            "  ASAPP_API_BASE_URL=http://127.0.0.1:8080 \\\n"
            f"    ASAPP_API_ID={DEFAULT_API_ID} ASAPP_API_SECRET={DEFAULT_API_SECRET} \\\n"
            "    metadata-consumer run\n\n"
            "exit codes:\n  0  stopped by SIGTERM/SIGINT\n  2  usage error"
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="listen address")
    p.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    p.add_argument("--api-id", default=DEFAULT_API_ID, help="the asapp-api-id it accepts")
    p.add_argument(
        "--api-secret", default=DEFAULT_API_SECRET, help="the asapp-api-secret it accepts"
    )
    p.add_argument("--max-body-bytes", type=int, default=None, help="413 above this size")
    p.add_argument("--rate-limit-rps", type=float, default=None, help="429 above this rate")
    p.add_argument("--retry-after", type=float, default=None, help="Retry-After (s) on 429s")
    p.add_argument("--daily-quota", type=int, default=None, help="429-02 after N requests a day")
    p.add_argument("--spike-rps", type=float, default=None, help="429-01 above N requests/s")
    p.add_argument("--quota-used", type=int, default=0, help="requests already spent today")
    p.add_argument("--faults", default=None, help="fault config as JSON (see module docs)")
    p.add_argument("--count-only", action="store_true", help="record counts, not items")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until SIGTERM/SIGINT; prints one ready line. Returns the exit code."""
    args = parser().parse_args(argv)
    try:
        faults = Faults.from_dict(json.loads(args.faults)) if args.faults else Faults()
        api = EmulatedApi(
            host=args.host,
            port=args.port,
            api_id=args.api_id,
            api_secret=args.api_secret,
            max_body_bytes=args.max_body_bytes,
            rate_limit_rps=args.rate_limit_rps,
            retry_after_s=args.retry_after,
            faults=faults,
            record_items=not args.count_only,
            daily_quota=args.daily_quota,
            spike_rps=args.spike_rps,
        )
        if args.quota_used:
            api.set_quota(used=args.quota_used)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return api.serve_until_signalled("emulated ASAPP API listening on")


if __name__ == "__main__":
    raise SystemExit(main())
