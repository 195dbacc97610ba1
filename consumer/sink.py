"""The only httpx user: POST a batch to its ``many-*`` endpoint and classify the answer.

:meth:`ApiSink.post` never raises for anything the server or the network does; it returns an
:class:`Outcome` whose ``kind`` says what the answer was (:mod:`consumer.decision` says what
the sender does with it):

========================  =====================================================================
kind                      meaning
========================  =====================================================================
``DELIVERED``             200 whose results we could match; per-item failures in ``rejected``
``ALL_REJECTED``          400 with per-item results: every item failed validation
``CONFLICT``              409: "already persisted" (documented for one entity, not for a batch)
``TOO_LARGE``             413: split and resend
``RATE_LIMITED``          429: back off pod-wide (``retry_after_s`` from ``Retry-After``)
``TRANSIENT``             5xx, 408, timeout, connection error: retry without limit
``AUTH``                  401: the credentials are rejected (pod-wide, never dead-letter)
``FORBIDDEN``             403: this app may not use this endpoint (that entity only)
``REDIRECTED``            3xx: a wrong ``ASAPP_API_BASE_URL`` (pod-wide, never dead-letter)
``CLIENT_ERROR``          other 4xx (404, 422), or a 400 whose results cannot be read
``MALFORMED``             a 200 whose body cannot be read or matched to the items, or that
                          says more items failed than it names; any other status
========================  =====================================================================

Per-item results are matched to items by ``eventId`` (we always send one); results with ids
that are not ours go to the unmatched items by position when both leftovers are as long; see
:func:`match_results` for when a pairing is trusted. An item is never counted delivered when
the body says some item failed (``errorCount`` or an ``error``) and we cannot tell which.
A ``Retry-After`` of zero (or a date already past) is no hint: the caller's backoff applies.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
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
    FORBIDDEN = "forbidden"
    REDIRECTED = "redirected"
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
    """``Retry-After`` as seconds >= 0 (delta-seconds or HTTP-date); None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
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
        return f"{err.get('code', '')}: {err.get('message', '')}".strip(": ")[:EXCERPT_BYTES]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return excerpt(content)


def _parse_results(results: Any) -> list[tuple[object, str]] | None:
    """``(eventId, error)`` per result, or None when ``results`` is not a list of result objects.

    A missing or null ``error`` is ``""`` (accepted); an ``error`` that is not a string makes the
    whole answer unreadable. ``eventId`` is kept as sent: anything but one of our ids is foreign.
    """
    if not isinstance(results, list):
        return None
    parsed: list[tuple[object, str]] = []
    for r in results:
        if not isinstance(r, dict):
            return None
        error = r.get("error")
        if error is None:
            error = ""
        if not isinstance(error, str):
            return None
        parsed.append((r.get("eventId"), error))
    return parsed


def _failed(error: str) -> bool:
    return bool(error.strip())


def match_results(items: Sequence[Item], results: Any) -> list[str] | None:
    """Per-item error strings aligned with ``items`` (``""`` = accepted), or None if the results
    cannot be matched (the answer is then malformed).

    1. By ``eventId``: a result carrying one of our ids goes to the first still unmatched item
       with that id (ids repeat only when a batch holds the same event twice).
    2. The results whose ids are not ours (a server-made id, none, or one more than we sent)
       go to the items left unmatched, by position, only when both leftovers have the same
       length; otherwise None.
    3. A pairing is a guess wherever two items could have swapped results. Among the leftovers
       of step 2 it is trusted when the server visibly kept our order (every id-matched result
       sits at its item's index); among items sharing an id never (a swap of two results with
       the same id cannot be seen). A guess that cannot matter (every result of the group has
       the same verdict) stands; otherwise the response says some of the group failed and we
       cannot tell which: every item of the group gets an error saying so, and none of them is
       counted delivered.
    """
    parsed = _parse_results(results)
    if parsed is None:
        return None
    slots: dict[str, deque[int]] = defaultdict(deque)
    for index, item in enumerate(items):
        slots[item.event_id].append(index)
    aligned: list[str | None] = [None] * len(items)
    foreign: list[str] = []
    ordered = True
    for position, (event_id, error) in enumerate(parsed):
        free = slots.get(event_id) if isinstance(event_id, str) else None
        if free:
            index = free.popleft()
            aligned[index] = error
            ordered = ordered and index == position
        else:
            foreign.append(error)
    left = [index for index, error in enumerate(aligned) if error is None]
    if len(left) != len(foreign):
        return None
    for index, error in zip(left, foreign, strict=True):
        aligned[index] = error
    errors = [error or "" for error in aligned]
    for group in [left] if not ordered else []:
        _blur(errors, group)
    for group in _shared_ids(items):
        _blur(errors, group)
    return errors


def _shared_ids(items: Sequence[Item]) -> list[list[int]]:
    """Indices of the items whose ``eventId`` occurs more than once, grouped by id."""
    by_id: dict[str, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        by_id[item.event_id].append(index)
    return [group for group in by_id.values() if len(group) > 1]


def _blur(errors: list[str], group: Sequence[int]) -> None:
    """If ``group``'s results disagree, fail every item of it with an error that says so."""
    failed = [errors[i] for i in group if _failed(errors[i])]
    if not failed or len(failed) == len(group):
        return
    note = (
        f"cannot tell which of {len(group)} items failed ({len(failed)} did, results unmatched):"
        f" {failed[0]}"
    )
    for i in group:
        errors[i] = note


class ApiSink:
    """POSTs batches to ASAPP with pooled keep-alive connections and explicit timeouts.

    Thread-safe (one ``httpx.Client`` shared by the sender threads). The credentials are sent
    as ``asapp-api-id`` / ``asapp-api-secret`` headers and never appear in an Outcome.

    ``max_connections`` is per entity, like the sender's ``threads`` (one connection per sender
    thread of an entity's lane): the pool holds that many for each of the three entities, so a
    hanging endpoint can never take the connections the other entities' threads need.
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
        pool = max_connections * len(Entity)
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
                max_connections=pool,
                max_keepalive_connections=pool,
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
            location=response.headers.get("location"),
        )
        if self._secret and self._secret in outcome.detail:
            # A proxy or debug page echoing request headers must not leak the secret into
            # logs and dead-letter headers.
            outcome = dataclasses.replace(
                outcome, detail=outcome.detail.replace(self._secret, "***")
            )
        return outcome

    def probe(self, entity: Entity = Entity.AGENT) -> tuple[str, int | None, str]:
        """One request that can ingest nothing, to learn whether the credentials are accepted:
        POST ``{"items": []}`` to ``entity``'s many-* endpoint (the API takes 1 to 1000
        items, so an empty list is refused after authentication). It counts against the
        daily quota like any request. Never raises.

        Returns ``(verdict, status or None, detail)``; ``verdict`` is ``"accepted"`` (400 or
        2xx: the body was judged, so the credentials passed), ``"rejected"`` (401/403),
        ``"redirected"`` (3xx: a wrong ``ASAPP_API_BASE_URL``), ``"unreachable"`` (timeout,
        DNS, TCP or TLS failure; ``detail`` says which) or ``"unexpected"`` (404: a wrong
        path, 429, 5xx...). ``detail`` never holds the secret.
        """
        try:
            response = self._client.post(entity.endpoint, content=b'{"items": []}')
        except httpx.HTTPError as exc:
            detail = f"{type(exc).__name__}: {exc}"[:300]
            return "unreachable", None, detail.replace(self._secret, "***")
        status = response.status_code
        text = f"HTTP {status}: {_error_message(response.content) or excerpt(response.content)}"
        text = text[:300].replace(self._secret, "***") if self._secret else text[:300]
        if status in (401, 403):
            return "rejected", status, text
        if 300 <= status < 400:
            where = response.headers.get("location", "?")
            return "redirected", status, f"HTTP {status} to {where}"
        if status == 400 or 200 <= status < 300:
            return "accepted", status, text
        return "unexpected", status, text


def classify(
    items: Sequence[Item],
    status: int,
    content: bytes,
    retry_after: str | None,
    duration_s: float,
    *,
    location: str | None = None,
) -> Outcome:
    """Turn an HTTP answer into an :class:`Outcome` (pure; unit-tested on its own).

    Total over its inputs: any status, any bytes and any ``Retry-After`` text give an Outcome,
    never an exception. ``location`` (the ``Location`` header) only feeds a 3xx's detail.
    """
    if status == 200:
        return _classify_200(items, content, duration_s)
    if status == 400:
        return _classify_400(items, content, duration_s)
    kind = _kind(status)
    if kind is Kind.MALFORMED:
        return Outcome(kind, status, duration_s, detail=f"unexpected status: {excerpt(content)}")
    detail = _error_message(content)
    if kind is Kind.REDIRECTED:
        detail = f"redirected to {location[:200]}: {detail}" if location else f"redirect: {detail}"
    hint = _hint(retry_after) if kind in (Kind.RATE_LIMITED, Kind.TRANSIENT) else None
    return Outcome(kind, status, duration_s, retry_after_s=hint, detail=detail)


#: Statuses with a kind of their own (200 and 400 carry per-item results: see classify).
_BY_STATUS = {
    401: Kind.AUTH,
    403: Kind.FORBIDDEN,
    408: Kind.TRANSIENT,
    409: Kind.CONFLICT,
    413: Kind.TOO_LARGE,
    429: Kind.RATE_LIMITED,
}


def _kind(status: int) -> Kind:
    """The kind of an answer without per-item results, by its status alone."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if 300 <= status < 400:
        return Kind.REDIRECTED
    if 500 <= status < 600:
        return Kind.TRANSIENT
    if 400 <= status < 500:
        return Kind.CLIENT_ERROR
    return Kind.MALFORMED  # 1xx, another 2xx, nonsense


def _hint(retry_after: str | None) -> float | None:
    """A usable ``Retry-After``: a zero (``0``, a date already past) is no hint at all, so the
    caller's own backoff (ASAPP's advised 1 s for a first 429) applies instead of zero."""
    seconds = parse_retry_after(retry_after)
    return seconds if seconds else None


def _results(content: bytes) -> tuple[Any, Any]:
    """``(body, body["results"])`` of a JSON object body; ``(None, None)`` when unreadable."""
    try:
        data = json.loads(content)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    return data, data.get("results")


def _classify_200(items: Sequence[Item], content: bytes, duration_s: float) -> Outcome:
    data, results = _results(content)
    errors = match_results(items, results) if results is not None else None
    if data is None or errors is None:
        return Outcome(
            Kind.MALFORMED, 200, duration_s, detail=f"unreadable results: {excerpt(content)}"
        )
    reported = data.get("errorCount")
    failed = sum(1 for _, error in _parse_results(results) or () if _failed(error))
    if reported is not None and (
        type(reported) is not int or reported != failed  # bool is an int: exclude it
    ):
        # The body says a different number of items failed than it names: we cannot tell
        # which, so nothing of it may count as delivered.
        return Outcome(
            Kind.MALFORMED,
            200,
            duration_s,
            detail=f"errorCount {reported!r} but {failed} failed results: {excerpt(content)}",
        )
    rejected = [(item, err) for item, err in zip(items, errors, strict=True) if _failed(err)]
    return Outcome(
        Kind.DELIVERED, 200, duration_s, rejected=rejected, accepted=len(items) - len(rejected)
    )


def _classify_400(items: Sequence[Item], content: bytes, duration_s: float) -> Outcome:
    data, results = _results(content)
    errors = match_results(items, results) if results is not None else None
    if errors is None:
        # A request-level 400, or per-item results we cannot read: never resent unchanged.
        detail = _error_message(content) if isinstance(data, dict) else excerpt(content)
        return Outcome(Kind.CLIENT_ERROR, 400, duration_s, detail=detail)
    # 400 promises every item failed; an accepted-looking one fails too, with the status as
    # the reason, rather than guess it was stored.
    rejected = [
        (item, err if _failed(err) else "HTTP 400 without an item error")
        for item, err in zip(items, errors, strict=True)
    ]
    return Outcome(Kind.ALL_REJECTED, 400, duration_s, rejected=rejected)
