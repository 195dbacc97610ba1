"""Property-based tests of the response side: ``classify`` and ``decide`` are total, and no item
is counted delivered when the body says it failed.

Inputs: arbitrary bytes, arbitrary JSON and result-shaped JSON, every status 100-599 and any
``Retry-After`` text. Each example is a pure call, so a hang would show as a deadline failure.
"""

from __future__ import annotations

import json
from email.utils import formatdate
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from consumer.decision import (
    Attempts,
    DeadLetterAll,
    Deliver,
    Hold,
    Policy,
    RateLimited,
    Retry,
    Split,
    decide,
)
from consumer.records import Entity, Item, Message, Position
from consumer.retry import Backoff
from consumer.sink import Kind, Outcome, classify, parse_retry_after

POLICY = Policy(malformed_max_attempts=3, transient_backoff=Backoff(0.25, 60.0, jitter=False))
DECISIONS = (Deliver, DeadLetterAll, Split, Retry, RateLimited, Hold)

PROPERTIES = settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])


def make_items(ids: list[str]) -> list[Item]:
    return [
        Item(
            Entity.AGENT,
            event_id,
            json.dumps({"externalAgentId": "a", "eventId": event_id}).encode(),
            Message(Position("t", 0, offset), None, b"v", None),
        )
        for offset, event_id in enumerate(ids)
    ]


ITEMS = make_items(["e0", "e1", "e2", "e3"])

event_ids = st.text(alphabet="abcdef0123456789-_", min_size=1, max_size=6)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
retry_after = (
    st.none()
    | st.text(max_size=40)
    | st.from_regex(r"\A-?[0-9]{1,25}(\.[0-9]{0,6})?\Z")
    | st.integers(0, 4_000_000_000).map(lambda t: formatdate(t, usegmt=True))
)
statuses = st.integers(100, 599)
error_strings = st.sampled_from(["", " ", "FAIL_BAD_PARAMS: ERROR: x", "E"]) | st.text(max_size=5)


def result_entries(ids: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """A result object: our ids, foreign ids, odd ids; errors as strings, null, missing, odd."""
    event_id = st.sampled_from(ids) | event_ids | st.none() | st.integers()
    error = error_strings | st.none() | st.integers() | st.just(["x"])
    return st.fixed_dictionaries({}, optional={"eventId": event_id, "error": error})


@st.composite
def result_bodies(draw: st.DrawFn) -> tuple[list[Item], bytes, dict[str, Any]]:
    ids = draw(st.lists(event_ids, min_size=1, max_size=6))
    items = make_items(ids)
    results = draw(st.lists(result_entries(ids), max_size=8))
    body: dict[str, Any] = {"results": results}
    if draw(st.booleans()):
        body["errorCount"] = draw(st.integers(-1, 9) | st.text(max_size=2) | st.booleans())
    return items, json.dumps(body).encode(), body


def check_outcome(outcome: Outcome, status: int, items: list[Item]) -> None:
    assert isinstance(outcome.kind, Kind)
    assert outcome.status == status
    assert isinstance(outcome.detail, str)
    mine = {id(i) for i in items}
    assert all(id(item) in mine and isinstance(err, str) for item, err in outcome.rejected)
    assert outcome.retry_after_s is None or outcome.retry_after_s > 0
    for attempts in (Attempts(), Attempts(transient=10**6, malformed=10**6)):
        decision = decide(
            outcome, entity=Entity.AGENT, items=len(items), attempts=attempts, policy=POLICY
        )
        assert isinstance(decision, DECISIONS)
        if isinstance(decision, Retry):
            assert 0.0 <= decision.delay_s <= POLICY.transient_backoff.cap_s


@PROPERTIES
@given(status=statuses, content=st.binary(max_size=300), hint=retry_after)
@example(status=200, content=b"[" * 100_000, hint=None)
@example(status=400, content=b'{"error": ' * 50_000, hint=None)
@example(status=200, content=b"\xff\xfe\x00", hint="1e400")
def test_classify_and_decide_any_bytes(status: int, content: bytes, hint: str | None) -> None:
    check_outcome(classify(ITEMS, status, content, hint, 0.0), status, ITEMS)


@PROPERTIES
@given(status=statuses, value=json_values, hint=retry_after)
def test_classify_and_decide_any_json(status: int, value: Any, hint: str | None) -> None:
    content = json.dumps(value).encode()
    check_outcome(classify(ITEMS, status, content, hint, 0.0), status, ITEMS)


@PROPERTIES
@given(hint=retry_after)
def test_parse_retry_after_is_none_or_non_negative(hint: str | None) -> None:
    seconds = parse_retry_after(hint)
    assert seconds is None or seconds >= 0.0


def failed_results(body: dict[str, Any]) -> int:
    return sum(1 for r in body["results"] if isinstance(r.get("error"), str) and r["error"].strip())


@PROPERTIES
@given(case=result_bodies(), status=st.sampled_from([200, 400]))
def test_no_item_is_delivered_when_the_body_says_it_failed(
    case: tuple[list[Item], bytes, dict[str, Any]], status: int
) -> None:
    """Each failed result keeps at least one item from delivery, and so does each failure an
    ``errorCount`` announces; a 400 never delivers anything."""
    items, content, body = case
    outcome = classify(items, status, content, None, 0.0)
    check_outcome(outcome, status, items)
    if outcome.kind is Kind.ALL_REJECTED:
        assert len(outcome.rejected) == len(items)
    if outcome.kind is not Kind.DELIVERED:
        assert status == 400 or outcome.accepted == 0
        return
    assert status == 200
    rejected = len({id(item) for item, _ in outcome.rejected})
    assert rejected >= failed_results(body)
    count = body.get("errorCount")
    if type(count) is int:
        assert rejected >= count
    assert outcome.accepted == len(items) - rejected


@st.composite
def honest_answers(draw: st.DrawFn) -> tuple[list[Item], set[int], bytes]:
    """A server that knows the truth and answers in a way the client can decode: it keeps our
    order (any mix of our ids, its own ids and none), or it echoes every id (any order)."""
    ids = draw(st.lists(event_ids, min_size=1, max_size=8))
    items = make_items(ids)
    failed = {i for i in range(len(items)) if draw(st.booleans())}
    keep_order = draw(st.booleans())
    results = []
    for index, event_id in enumerate(ids):
        echoed = (
            event_id
            if not keep_order or draw(st.booleans())
            else draw(st.none() | st.just(f"srv-{index}"))
        )
        results.append(
            {"eventId": echoed, "error": "FAIL_BAD_PARAMS: x" if index in failed else ""}
        )
    if not keep_order:
        results = draw(st.permutations(results))
    body = {"errorCount": len(failed), "results": results}
    return items, failed, json.dumps(body).encode()


@PROPERTIES
@given(case=honest_answers())
def test_a_truly_failed_item_is_never_delivered(case: tuple[list[Item], set[int], bytes]) -> None:
    items, failed, content = case
    outcome = classify(items, 200, content, None, 0.0)
    assert outcome.kind is Kind.DELIVERED
    dead = {item.position.offset for item, _ in outcome.rejected}
    assert failed <= dead, "a failed item was counted delivered"
    if len({i.event_id for i in items}) == len(items):
        assert dead == failed, "with unique ids every answer is exact"
