"""classify() over every kind of answer, and ApiSink.post against httpx.MockTransport."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import httpx
import pytest

from consumer.records import Entity, Item, Message, Position
from consumer.sink import EXCERPT_BYTES, ApiSink, Kind, Outcome, classify, parse_retry_after

SECRET = "s3cr3t-do-not-leak"
API_ID = "app-id-1"


def item(event_id: str, entity: Entity = Entity.AGENT, offset: int = 0) -> Item:
    payload = {"externalAgentId": f"a-{event_id}", "eventId": event_id}
    body = json.dumps(payload, separators=(",", ":")).encode()
    message = Message(Position("t", 0, offset), b"k", b"v", 1_700_000_000_000)
    return Item(entity, event_id, body, message)


ITEMS = [item("e1", offset=1), item("e2", offset=2), item("e3", offset=3)]


def results(*pairs: tuple[str | None, str]) -> bytes:
    return json.dumps(
        {
            "errorCount": sum(1 for _, e in pairs if e),
            "results": [{"eventId": i, "error": e} for i, e in pairs],
        }
    ).encode()


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"requestId": "r", "code": code, "message": message}}).encode()


def rejected_ids(outcome: Outcome) -> list[tuple[str, str]]:
    return [(i.event_id, err) for i, err in outcome.rejected]


@pytest.mark.parametrize(
    ("status", "content", "kind", "rejected"),
    [
        pytest.param(
            200, results(("e1", ""), ("e2", ""), ("e3", "")), Kind.DELIVERED, [], id="200-all-ok"
        ),
        pytest.param(
            200,
            results(("e1", ""), ("e2", "FAIL_BAD_PARAMS: ERROR: x"), ("e3", "")),
            Kind.DELIVERED,
            [("e2", "FAIL_BAD_PARAMS: ERROR: x")],
            id="200-partial",
        ),
        pytest.param(
            200,
            results(("e3", "E3 bad"), ("e1", ""), ("e2", "E2 bad")),
            Kind.DELIVERED,
            [("e2", "E2 bad"), ("e3", "E3 bad")],
            id="200-partial-shuffled",
        ),
        pytest.param(
            200,
            results(("other-1", ""), ("other-2", "BAD"), ("other-3", "")),
            Kind.DELIVERED,
            [("e2", "BAD")],
            id="200-server-ids-fallback-to-position",
        ),
        pytest.param(
            200,
            json.dumps(
                {
                    "results": [
                        {"eventId": "e1"},
                        {"eventId": "e2", "error": None},
                        {"eventId": "e3", "error": "  "},
                    ]
                }
            ).encode(),
            Kind.DELIVERED,
            [],
            id="200-missing-null-blank-errors-accepted",
        ),
        pytest.param(
            200,
            results(("srv-1", "BAD"), ("e1", ""), ("e3", "")),
            Kind.DELIVERED,
            [("e2", "BAD")],
            id="200-server-id-for-the-rejected-one-shuffled",
        ),
        pytest.param(
            200,
            results(("e3", ""), ("srv-1", "BAD A"), ("e1", ""), ("srv-2", "BAD B")),
            Kind.MALFORMED,
            [],
            id="200-more-results-than-items",
        ),
        pytest.param(
            200,
            results(("e1", ""), ("srv-1", "BAD"), ("srv-2", "")),
            Kind.DELIVERED,
            [("e2", "BAD")],
            id="200-server-ids-in-our-order-by-position",
        ),
        pytest.param(
            200,
            json.dumps(
                {"errorCount": 1, "results": [{"eventId": i} for i in ("e1", "e2", "e3")]}
            ).encode(),
            Kind.MALFORMED,
            [],
            id="200-errorcount-says-one-failed-but-none-named",
        ),
        pytest.param(
            200,
            results(("e1", ""), ("e2", "BAD"), ("e3", "")).replace(
                b'"errorCount": 1', b'"errorCount": 0'
            ),
            Kind.MALFORMED,
            [],
            id="200-errorcount-disagrees",
        ),
        pytest.param(
            200,
            json.dumps(
                {"errorCount": "0", "results": [{"eventId": i} for i in ("e1", "e2", "e3")]}
            ).encode(),
            Kind.MALFORMED,
            [],
            id="200-errorcount-not-an-int",
        ),
        pytest.param(
            200,
            json.dumps(
                {"errorCount": False, "results": [{"eventId": i} for i in ("e1", "e2", "e3")]}
            ).encode(),
            Kind.MALFORMED,
            [],
            id="200-errorcount-bool",
        ),
        pytest.param(
            200, results(("e1", ""), ("e2", "")), Kind.MALFORMED, [], id="200-fewer-results"
        ),
        pytest.param(200, b"[1, 2, 3]", Kind.MALFORMED, [], id="200-json-list"),
        pytest.param(200, b"\xff\xfe", Kind.MALFORMED, [], id="200-not-utf8"),
        pytest.param(
            200,
            results(("x1", ""), ("x2", ""), ("x3", ""), ("x4", "")),
            Kind.MALFORMED,
            [],
            id="200-server-ids-count-differs",
        ),
        pytest.param(200, b"<html>oops</html>", Kind.MALFORMED, [], id="200-non-json"),
        pytest.param(200, b"{}", Kind.MALFORMED, [], id="200-no-results"),
        pytest.param(200, b'{"results": {"e1": ""}}', Kind.MALFORMED, [], id="200-results-object"),
        pytest.param(
            200, b'{"results": ["e1", "e2", "e3"]}', Kind.MALFORMED, [], id="200-results-strings"
        ),
        pytest.param(
            200,
            json.dumps({"results": [{"eventId": "e1", "error": 5}] * 3}).encode(),
            Kind.MALFORMED,
            [],
            id="200-error-not-string",
        ),
        pytest.param(
            400,
            results(("e1", "A"), ("e2", "B"), ("e3", "C")),
            Kind.ALL_REJECTED,
            [("e1", "A"), ("e2", "B"), ("e3", "C")],
            id="400-per-item",
        ),
        pytest.param(
            400,
            results(("e1", "A"), ("e2", ""), ("e3", "C")),
            Kind.ALL_REJECTED,
            [("e1", "A"), ("e2", "HTTP 400 without an item error"), ("e3", "C")],
            id="400-per-item-one-blank",
        ),
        pytest.param(
            400, error_body("400-02", "Bad request"), Kind.CLIENT_ERROR, [], id="400-generic"
        ),
        pytest.param(400, b"not json", Kind.CLIENT_ERROR, [], id="400-non-json"),
        pytest.param(400, b"{}", Kind.CLIENT_ERROR, [], id="400-no-results-no-error"),
        pytest.param(
            400, results(("e1", "A"), ("e2", "B")), Kind.CLIENT_ERROR, [], id="400-fewer-results"
        ),
        pytest.param(
            400, b'{"results": "nope"}', Kind.CLIENT_ERROR, [], id="400-results-unreadable"
        ),
        pytest.param(409, error_body("409-01", "exists"), Kind.CONFLICT, [], id="409"),
        pytest.param(413, error_body("413-01", "too big"), Kind.TOO_LARGE, [], id="413"),
        pytest.param(413, b"", Kind.TOO_LARGE, [], id="413-empty-body"),
        pytest.param(401, error_body("401-01", "Unauthorized"), Kind.AUTH, [], id="401"),
        pytest.param(403, error_body("403-01", "Forbidden"), Kind.FORBIDDEN, [], id="403"),
        pytest.param(301, b"", Kind.REDIRECTED, [], id="301"),
        pytest.param(302, b"<html>moved</html>", Kind.REDIRECTED, [], id="302"),
        pytest.param(307, b"", Kind.REDIRECTED, [], id="307"),
        pytest.param(308, b"", Kind.REDIRECTED, [], id="308"),
        pytest.param(100, b"", Kind.MALFORMED, [], id="100-unexpected"),
        pytest.param(201, b"", Kind.MALFORMED, [], id="201-unexpected"),
        pytest.param(404, error_body("404-01", "Not found"), Kind.CLIENT_ERROR, [], id="404"),
        pytest.param(422, b"unprocessable", Kind.CLIENT_ERROR, [], id="422"),
        pytest.param(408, b"", Kind.TRANSIENT, [], id="408"),
        pytest.param(500, error_body("500-01", "boom"), Kind.TRANSIENT, [], id="500"),
        pytest.param(502, b"<html>bad gateway</html>", Kind.TRANSIENT, [], id="502-html"),
        pytest.param(503, b"", Kind.TRANSIENT, [], id="503"),
        pytest.param(204, b"", Kind.MALFORMED, [], id="204-unexpected"),
    ],
)
def test_classify(status: int, content: bytes, kind: Kind, rejected: list[tuple[str, str]]) -> None:
    outcome = classify(ITEMS, status, content, None, 0.25)
    assert outcome.kind is kind
    assert outcome.status == status
    assert outcome.duration_s == 0.25
    assert sorted(rejected_ids(outcome)) == sorted(rejected)
    if kind is Kind.DELIVERED:
        assert outcome.accepted == len(ITEMS) - len(rejected)


def test_results_matched_by_event_id_keep_the_item_identity() -> None:
    content = results(("e3", "third"), ("e2", ""), ("e1", "first"))
    outcome = classify(ITEMS, 200, content, None, 0.0)
    by_item = {id(i): err for i, err in outcome.rejected}
    assert by_item == {id(ITEMS[0]): "first", id(ITEMS[2]): "third"}


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(
            results(("dup", "first dup bad"), ("solo", ""), ("dup", "")), id="in-our-order"
        ),
        pytest.param(
            results(("solo", ""), ("dup", "first dup bad"), ("dup", "")), id="out-of-order"
        ),
    ],
)
def test_duplicate_event_ids_with_mixed_results_deliver_neither(content: bytes) -> None:
    """Two items share an id and one of its results failed: which one is a guess (a swap of two
    results with the same id cannot be seen), so neither is counted delivered (the old n-th
    result rule delivered one of them on that guess)."""
    items = [item("dup", offset=1), item("solo", offset=2), item("dup", offset=3)]
    outcome = classify(items, 200, content, None, 0.0)
    assert outcome.kind is Kind.DELIVERED
    assert [i.position.offset for i, _ in outcome.rejected] == [1, 3]
    assert all("cannot tell which of 2 items failed" in err for _, err in outcome.rejected)
    assert all(err.endswith("first dup bad") for _, err in outcome.rejected)
    assert outcome.accepted == 1


def test_duplicate_event_ids_with_the_same_result_are_matched() -> None:
    items = [item("dup", offset=1), item("solo", offset=2), item("dup", offset=3)]
    content = results(("dup", "bad"), ("solo", ""), ("dup", "bad"))
    outcome = classify(items, 200, content, None, 0.0)
    assert [(i.position.offset, err) for i, err in outcome.rejected] == [(1, "bad"), (3, "bad")]


def test_foreign_ids_with_mixed_results_out_of_order_deliver_none_of_the_leftovers() -> None:
    """Our ids come back shuffled and two results carry server ids, one failed: the two items
    left unmatched cannot be told apart, so neither is delivered; the id-matched one is."""
    items = [item("e1", offset=1), item("e2", offset=2), item("e3", offset=3)]
    content = results(("srv-a", ""), ("e1", ""), ("srv-b", "FAIL_BAD_PARAMS: x"))
    outcome = classify(items, 200, content, None, 0.0)
    assert outcome.kind is Kind.DELIVERED
    assert sorted(i.event_id for i, _ in outcome.rejected) == ["e2", "e3"]
    assert all("cannot tell which of 2 items failed" in err for _, err in outcome.rejected)
    assert outcome.accepted == 1


def test_the_issue_case_server_ids_for_rejected_items_and_shuffled_results() -> None:
    """5 % rejected, answered with the server's own ids, results in another order: every
    rejected item is dead, every accepted one delivered (the old positional fallback swapped
    them)."""
    items = [item(f"e{n}", offset=n) for n in range(40)]
    bad = {3, 17, 29}
    answer = [
        {"eventId": f"srv-{n}" if n in bad else f"e{n}", "error": "FAIL_BAD_PARAMS: x" * (n in bad)}
        for n in range(40)
    ]
    answer = answer[7:] + answer[:7]  # another order
    content = json.dumps({"errorCount": len(bad), "results": answer}).encode()
    outcome = classify(items, 200, content, None, 0.0)
    assert outcome.kind is Kind.DELIVERED
    assert sorted(i.position.offset for i, _ in outcome.rejected) == sorted(bad)
    assert outcome.accepted == 37


def test_more_results_for_a_duplicate_id_than_items_is_malformed() -> None:
    items = [item("dup", offset=1), item("solo", offset=2)]
    content = results(("dup", ""), ("dup", ""), ("dup", "x"))
    assert classify(items, 200, content, None, 0.0).kind is Kind.MALFORMED


def test_409_is_a_conflict_the_sender_decides_on() -> None:
    """No item is counted accepted by the sink: a batch's 409 is split by the sender."""
    outcome = classify(ITEMS, 409, error_body("409-01", "already persisted"), None, 0.0)
    assert outcome.kind is Kind.CONFLICT
    assert outcome.accepted == 0
    assert outcome.detail == "409-01: already persisted"


def test_generic_400_detail_is_the_error_code_and_message() -> None:
    outcome = classify(ITEMS, 400, error_body("400-03", "Invalid JSON"), None, 0.0)
    assert outcome.detail == "400-03: Invalid JSON"


def test_detail_excerpt_is_bounded() -> None:
    outcome = classify(ITEMS, 422, b"x" * 5000, None, 0.0)
    assert outcome.detail == "x" * EXCERPT_BYTES + "…"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param("2", 2.0, id="seconds"),
        pytest.param(" 0.5 ", 0.5, id="fraction-padded"),
        pytest.param("-3", 0.0, id="negative-clamped"),
        pytest.param(None, None, id="absent"),
        pytest.param("", None, id="empty"),
        pytest.param("soon", None, id="garbage"),
        pytest.param("nan", None, id="nan"),
        pytest.param("inf", None, id="inf"),
        pytest.param("Wed, 21 Oct 99999 07:28:10 GMT", None, id="http-date-out-of-range"),
        pytest.param("Wed, 21 Oct 2015 07:28:10 GMT", 10.0, id="http-date"),
        pytest.param("Wed, 21 Oct 2015 07:27:00 GMT", 0.0, id="http-date-past"),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after(header, now=now) == expected


@pytest.mark.parametrize(
    ("header", "low", "high"),
    [
        pytest.param("3", 3.0, 3.0, id="seconds"),
        pytest.param("http-date+120", 100.0, 120.0, id="http-date"),
        pytest.param(None, None, None, id="absent"),
        pytest.param("0", None, None, id="zero-is-no-hint"),
        pytest.param("http-date-60", None, None, id="past-http-date-is-no-hint"),
    ],
)
def test_429_carries_retry_after(header: str | None, low: float | None, high: float | None) -> None:
    if header == "http-date+120":  # built at run time: collection may precede it by minutes
        header = formatdate(time.time() + 120, usegmt=True)
    if header == "http-date-60":
        header = formatdate(time.time() - 60, usegmt=True)
    outcome = classify(ITEMS, 429, error_body("429-01", "Too many"), header, 0.0)
    assert outcome.kind is Kind.RATE_LIMITED
    if low is None:
        assert outcome.retry_after_s is None
    else:
        assert outcome.retry_after_s is not None
        assert low <= outcome.retry_after_s <= high  # type: ignore[operator]


def test_redirect_detail_names_the_location() -> None:
    outcome = classify(ITEMS, 301, b"", None, 0.0, location="https://elsewhere.example/x")
    assert outcome.kind is Kind.REDIRECTED
    assert outcome.detail.startswith("redirected to https://elsewhere.example/x")


def test_503_keeps_retry_after_hint() -> None:
    outcome = classify(ITEMS, 503, b"", "4", 0.0)
    assert outcome.kind is Kind.TRANSIENT
    assert outcome.retry_after_s == 4.0


# --- ApiSink.post over httpx.MockTransport -------------------------------------------------

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler that records requests and answers with ``respond``."""

    def __init__(self, respond: Handler) -> None:
        self.respond = respond
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.respond(request)


def sink(handler: Handler) -> ApiSink:
    return ApiSink(
        base_url="https://api.example.test",
        api_id=API_ID,
        api_secret=SECRET,
        timeout_s=5.0,
        max_connections=4,
        transport=httpx.MockTransport(handler),
    )


def all_ok(request: httpx.Request) -> httpx.Response:
    sent = json.loads(request.content)["items"]
    return httpx.Response(
        200,
        json={"errorCount": 0, "results": [{"eventId": i["eventId"], "error": ""} for i in sent]},
    )


@pytest.mark.parametrize(
    ("entity", "path"),
    [
        pytest.param(Entity.AGENT, "/metadata-ingestion/v1/many-agent-metadata", id="agent"),
        pytest.param(
            Entity.CONVERSATION, "/metadata-ingestion/v1/many-convo-metadata", id="conversation"
        ),
        pytest.param(
            Entity.CUSTOMER, "/metadata-ingestion/v1/many-customer-metadata", id="customer"
        ),
    ],
)
def test_post_sends_headers_body_and_endpoint(entity: Entity, path: str) -> None:
    recorder = Recorder(all_ok)
    items = [item("e1", entity), item("e2", entity)]
    outcome = sink(recorder).post(entity, items)
    assert outcome.kind is Kind.DELIVERED
    assert outcome.accepted == 2
    assert outcome.duration_s >= 0
    (request,) = recorder.requests
    assert request.method == "POST"
    assert request.url == f"https://api.example.test{path}"
    assert request.headers["asapp-api-id"] == API_ID
    assert request.headers["asapp-api-secret"] == SECRET
    assert request.headers["content-type"] == "application/json"
    assert request.content == b'{"items":[' + items[0].body + b"," + items[1].body + b"]}"


def test_post_classifies_the_answer_and_reads_retry_after() -> None:
    def limited(_: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "7"}, json={"error": {}})

    outcome = sink(limited).post(Entity.AGENT, ITEMS)
    assert outcome.kind is Kind.RATE_LIMITED
    assert outcome.status == 429
    assert outcome.retry_after_s == 7.0


def _raise(exc_type: type[httpx.TransportError]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        # Even an error message quoting the request must not carry the secret out.
        raise exc_type(f"failed talking to {request.url}", request=request)

    return handler


@pytest.mark.parametrize(
    ("exc_type", "prefix"),
    [
        pytest.param(httpx.ConnectError, "network: ConnectError", id="connect"),
        pytest.param(httpx.ReadTimeout, "timeout: ReadTimeout", id="read-timeout"),
        pytest.param(httpx.ConnectTimeout, "timeout: ConnectTimeout", id="connect-timeout"),
        pytest.param(httpx.RemoteProtocolError, "network: RemoteProtocolError", id="protocol"),
    ],
)
def test_transport_errors_are_transient_without_status(
    exc_type: type[httpx.TransportError], prefix: str
) -> None:
    outcome = sink(_raise(exc_type)).post(Entity.AGENT, ITEMS)
    assert outcome.kind is Kind.TRANSIENT
    assert outcome.status is None
    assert outcome.detail.startswith(prefix)
    assert SECRET not in repr(outcome)


def _fields(outcome: Outcome) -> str:
    parts: list[Any] = [outcome.kind, outcome.status, outcome.detail, outcome.retry_after_s]
    parts += [err for _, err in outcome.rejected]
    return repr(parts)


@pytest.mark.parametrize(
    "status",
    [200, 400, 401, 403, 404, 409, 413, 422, 429, 500, 503],
)
def test_secret_never_in_outcome(status: int) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if status in (200, 400):
            sent = json.loads(request.content)["items"]
            return httpx.Response(
                status,
                json={
                    "results": [
                        {"eventId": i["eventId"], "error": "FAIL_BAD_PARAMS: x"} for i in sent
                    ]
                },
            )
        return httpx.Response(status, content=error_body(f"{status}-01", "nope"))

    outcome = sink(answer).post(Entity.AGENT, ITEMS)
    assert outcome.status == status
    assert SECRET not in _fields(outcome)
    assert SECRET not in repr(outcome)


def test_secret_echoed_by_the_server_is_not_carried_into_the_outcome() -> None:
    """A proxy or debug page that echoes request headers must not put the secret into the
    Outcome's detail, which ends up in logs and in the dead-letter ``dlq.error`` header."""

    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, text=f"bad request; headers: {dict(request.headers)}")

    outcome = sink(echo).post(Entity.AGENT, ITEMS)
    assert outcome.kind is Kind.CLIENT_ERROR
    assert SECRET not in outcome.detail


def test_an_undecodable_response_body_is_malformed_not_a_crash() -> None:
    """A Content-Encoding the body does not honour makes httpx raise DecodingError, which is
    not a TransportError; it must become a bounded MALFORMED retry, not escape ``post``."""

    def bad_gzip(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-encoding": "gzip"}, content=b"not gzip at all")

    outcome = sink(bad_gzip).post(Entity.AGENT, ITEMS)
    assert outcome.kind is Kind.MALFORMED
    assert outcome.status is None
    assert "DecodingError" in outcome.detail
