"""The only httpx user: POST a batch to its ``many-*`` endpoint and classify the answer.

:meth:`ApiSink.post` never raises for anything the server or the network does; it returns an
:class:`Outcome` whose ``kind`` tells the sender what to do:

========================  =====================================================================
kind                      meaning
========================  =====================================================================
``DELIVERED``             200; per-item results in ``rejected`` (empty when all accepted)
``ALL_REJECTED``          400 with per-item results: every item failed validation
``CONFLICT``              409: ASAPP says the entity is already persisted (delivered)
``TOO_LARGE``             413: split and resend
``RATE_LIMITED``          429: back off pod-wide (``retry_after_s`` from ``Retry-After``)
``TRANSIENT``             5xx, timeout, connection error: retry without limit
``AUTH``                  401 / 403: credentials problem, never dead-letter
``CLIENT_ERROR``          other 4xx (404, 422, a 400 without per-item results): dead-letter
``MALFORMED``             a 200/400 whose body cannot be read or matched to the items
========================  =====================================================================

Per-item results are matched to items by ``eventId`` (we always send one); by position only
when the server's ids do not match ours and the counts agree.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from consumer.batcher import request_body
from consumer.records import Entity, Item

#: How much of a response body travels into logs and dead-letter headers.
EXCERPT_BYTES = 512


class Kind(enum.Enum):
    DELIVERED = "delivered"
    ALL_REJECTED = "all_rejected"
    CONFLICT = "conflict"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    TRANSIENT = "transient"
    AUTH = "auth"
    CLIENT_ERROR = "client_error"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The classified answer to one request."""

    kind: Kind
    status: int | None
    duration_s: float
    rejected: Sequence[tuple[Item, str]] = ()  # (item, API error string)
    retry_after_s: float | None = None
    detail: str = ""  # human-readable: error message or body excerpt (never a secret)
    accepted: int = field(default=0)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or HTTP-date); None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def excerpt(content: bytes) -> str:
    """First bytes of a response body, decoded leniently, for logs and DLQ headers."""
    text = content[:EXCERPT_BYTES].decode("utf-8", "replace")
    return text + ("…" if len(content) > EXCERPT_BYTES else "")


def _error_message(content: bytes) -> str:
    """``error.code: error.message`` of ASAPP's error body, else an excerpt."""
    try:
        err = json.loads(content)["error"]
        return f"{err.get('code', '')}: {err.get('message', '')}".strip(": ")
    except (ValueError, KeyError, TypeError, AttributeError):
        return excerpt(content)


def match_results(items: Sequence[Item], results: Any) -> list[str] | None:
    """Per-item error strings aligned with ``items``, or None if the results can't be matched.

    Matching is by ``eventId`` (ids may repeat: the n-th result for an id goes to the n-th item
    with it); when the server's ids are not ours, by position if the counts agree.
    """
    if not isinstance(results, list):
        return None
    parsed: list[tuple[Any, str]] = []
    for r in results:
        if not isinstance(r, dict):
            return None
        error = r.get("error", "")
        if error is None:
            error = ""
        if not isinstance(error, str):
            return None
        parsed.append((r.get("eventId"), error))
    by_id: dict[str, deque[int]] = defaultdict(deque)
    for index, item in enumerate(items):
        by_id[item.event_id].append(index)
    aligned: list[str | None] = [None] * len(items)
    matched = True
    for event_id, error in parsed:
        slots = by_id.get(event_id) if isinstance(event_id, str) else None
        if not slots:
            matched = False
            break
        aligned[slots.popleft()] = error
    if matched and all(a is not None for a in aligned):
        return [a for a in aligned if a is not None]
    if len(parsed) == len(items):
        return [error for _, error in parsed]
    return None


class ApiSink:
    """POSTs batches to ASAPP with pooled keep-alive connections and explicit timeouts.

    Thread-safe (one ``httpx.Client`` shared by the sender threads). The credentials are sent
    as ``asapp-api-id`` / ``asapp-api-secret`` headers and never appear in an Outcome.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_id: str,
        api_secret: str,
        timeout_s: float,
        max_connections: int,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._secret = api_secret
        self._client = httpx.Client(
            base_url=base_url,
            headers={
                "asapp-api-id": api_id,
                "asapp-api-secret": api_secret,
                "content-type": "application/json",
                "accept": "application/json",
            },
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30.0,
            ),
            transport=transport,
            follow_redirects=False,
        )

    def close(self) -> None:
        self._client.close()

    def post(self, entity: Entity, items: Sequence[Item]) -> Outcome:
        """Send ``items`` (all of ``entity``) in one request and classify the answer."""
        body = request_body(items)
        started = time.monotonic()
        try:
            response = self._client.post(entity.endpoint, content=body)
        except httpx.TimeoutException as exc:
            return Outcome(
                Kind.TRANSIENT,
                None,
                time.monotonic() - started,
                detail=f"timeout: {type(exc).__name__}",
            )
        except httpx.TransportError as exc:
            return Outcome(
                Kind.TRANSIENT,
                None,
                time.monotonic() - started,
                detail=f"network: {type(exc).__name__}: {exc}"[:300],
            )
        except httpx.HTTPError as exc:  # e.g. an undecodable Content-Encoding: the answer's fault
            return Outcome(
                Kind.MALFORMED,
                None,
                time.monotonic() - started,
                detail=f"unreadable response: {type(exc).__name__}: {exc}"[:300],
            )
        outcome = classify(
            items,
            response.status_code,
            response.content,
            response.headers.get("retry-after"),
            time.monotonic() - started,
        )
        if self._secret and self._secret in outcome.detail:
            # A proxy or debug page echoing request headers must not leak the secret into
            # logs and dead-letter headers.
            outcome = dataclasses.replace(
                outcome, detail=outcome.detail.replace(self._secret, "***")
            )
        return outcome


def classify(
    items: Sequence[Item],
    status: int,
    content: bytes,
    retry_after: str | None,
    duration_s: float,
) -> Outcome:
    """Turn an HTTP answer into an :class:`Outcome` (pure; unit-tested on its own)."""
    if status in (200, 400):
        try:
            data = json.loads(content)
        except ValueError:
            data = None
        results = data.get("results") if isinstance(data, dict) else None
        if results is None and status == 400 and isinstance(data, dict) and "error" in data:
            # A request-level 400 (not per-item): never resend unchanged.
            return Outcome(Kind.CLIENT_ERROR, status, duration_s, detail=_error_message(content))
        errors = match_results(items, results) if results is not None else None
        if errors is None:
            return Outcome(
                Kind.MALFORMED, status, duration_s, detail=f"unreadable results: {excerpt(content)}"
            )
        rejected = [(item, err) for item, err in zip(items, errors, strict=True) if err.strip()]
        if status == 400:
            if len(rejected) != len(items):
                # 400 promises every item failed; treat accepted-looking ones as failed too,
                # with the server's status as the reason, rather than guess they were stored.
                rejected = [
                    (item, err if err.strip() else "HTTP 400 without an item error")
                    for item, err in zip(items, errors, strict=True)
                ]
            return Outcome(Kind.ALL_REJECTED, status, duration_s, rejected=rejected)
        return Outcome(
            Kind.DELIVERED,
            status,
            duration_s,
            rejected=rejected,
            accepted=len(items) - len(rejected),
        )
    if status == 409:
        return Outcome(
            Kind.CONFLICT, status, duration_s, accepted=len(items), detail=_error_message(content)
        )
    if status == 413:
        return Outcome(Kind.TOO_LARGE, status, duration_s, detail=_error_message(content))
    if status == 429:
        return Outcome(
            Kind.RATE_LIMITED,
            status,
            duration_s,
            retry_after_s=parse_retry_after(retry_after),
            detail=_error_message(content),
        )
    if status in (401, 403):
        return Outcome(Kind.AUTH, status, duration_s, detail=_error_message(content))
    if status >= 500 or status == 408:
        return Outcome(
            Kind.TRANSIENT,
            status,
            duration_s,
            retry_after_s=parse_retry_after(retry_after),
            detail=_error_message(content),
        )
    if 200 <= status < 300:
        return Outcome(
            Kind.MALFORMED, status, duration_s, detail=f"unexpected status: {excerpt(content)}"
        )
    return Outcome(Kind.CLIENT_ERROR, status, duration_s, detail=_error_message(content))
