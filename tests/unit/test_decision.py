"""decide(): every kind of answer, with the attempts before it, as one parameter table."""

from __future__ import annotations

import json

import pytest

from consumer.decision import (
    Attempts,
    DeadLetterAll,
    Decision,
    Deliver,
    Hold,
    Policy,
    RateLimited,
    Retry,
    Scope,
    Split,
    decide,
)
from consumer.records import Entity, Item, Message, Position
from consumer.retry import Backoff
from consumer.sink import Kind, Outcome

#: No jitter: 0.25 s, 0.5 s, 1 s, 2 s, then 4 s (the cap).
POLICY = Policy(malformed_max_attempts=3, transient_backoff=Backoff(0.25, 4.0, jitter=False))


def item(event_id: str) -> Item:
    body = json.dumps({"externalAgentId": event_id, "eventId": event_id}).encode()
    return Item(Entity.AGENT, event_id, body, Message(Position("t", 0, 0), None, b"v", None))


BAD = item("bad")


def outcome(
    kind: Kind,
    status: int | None,
    *,
    retry_after_s: float | None = None,
    detail: str = "why",
    rejected: tuple[tuple[Item, str], ...] = (),
) -> Outcome:
    return Outcome(kind, status, 0.1, rejected=rejected, retry_after_s=retry_after_s, detail=detail)


@pytest.mark.parametrize(
    ("answer", "entity", "items", "attempts", "expected"),
    [
        pytest.param(
            outcome(Kind.DELIVERED, 200), Entity.AGENT, 3, Attempts(), Deliver((), 200), id="200"
        ),
        pytest.param(
            outcome(Kind.DELIVERED, 200, rejected=((BAD, "E"),)),
            Entity.AGENT,
            3,
            Attempts(),
            Deliver(((BAD, "E"),), 200),
            id="200-partial",
        ),
        pytest.param(
            outcome(Kind.ALL_REJECTED, 400, rejected=((BAD, "E"),)),
            Entity.AGENT,
            1,
            Attempts(transient=2),
            Deliver(((BAD, "E"),), 400),
            id="400-per-item",
        ),
        pytest.param(
            outcome(Kind.CONFLICT, 409), Entity.AGENT, 1, Attempts(), Deliver((), 409), id="409-one"
        ),
        pytest.param(
            outcome(Kind.CONFLICT, 409),
            Entity.AGENT,
            2,
            Attempts(),
            Split("409_split"),
            id="409-batch-splits",
        ),
        pytest.param(
            outcome(Kind.TOO_LARGE, 413),
            Entity.AGENT,
            7,
            Attempts(),
            Split("413_split"),
            id="413-batch-splits",
        ),
        pytest.param(
            outcome(Kind.TOO_LARGE, 413, detail="413-01: big"),
            Entity.AGENT,
            1,
            Attempts(),
            DeadLetterAll("http", "413 for a single item: 413-01: big", 413),
            id="413-one",
        ),
        pytest.param(
            outcome(Kind.RATE_LIMITED, 429, retry_after_s=3.0),
            Entity.AGENT,
            5,
            Attempts(),
            RateLimited(3.0),
            id="429-retry-after",
        ),
        pytest.param(
            outcome(Kind.RATE_LIMITED, 429),
            Entity.CUSTOMER,
            5,
            Attempts(transient=9),
            RateLimited(None),
            id="429",
        ),
        pytest.param(
            outcome(Kind.TRANSIENT, 503),
            Entity.AGENT,
            5,
            Attempts(),
            Retry(0.25, "5xx"),
            id="503-first",
        ),
        pytest.param(
            outcome(Kind.TRANSIENT, 503),
            Entity.AGENT,
            5,
            Attempts(transient=2),
            Retry(1.0, "5xx"),
            id="503-third",
        ),
        pytest.param(
            outcome(Kind.TRANSIENT, 503),
            Entity.AGENT,
            5,
            Attempts(transient=1000),
            Retry(4.0, "5xx"),
            id="503-without-limit-capped",
        ),
        pytest.param(
            outcome(Kind.TRANSIENT, 503, retry_after_s=2.0),
            Entity.AGENT,
            5,
            Attempts(),
            Retry(2.0, "5xx"),
            id="503-retry-after-at-least",
        ),
        pytest.param(
            outcome(Kind.TRANSIENT, 503, retry_after_s=3600.0),
            Entity.AGENT,
            5,
            Attempts(),
            Retry(4.0, "5xx"),
            id="503-retry-after-capped",
        ),
        pytest.param(
            outcome(Kind.TRANSIENT, None),
            Entity.AGENT,
            5,
            Attempts(),
            Retry(0.25, "network"),
            id="network",
        ),
        pytest.param(
            outcome(Kind.MALFORMED, 200),
            Entity.AGENT,
            5,
            Attempts(),
            Retry(0.25, "malformed"),
            id="malformed-first",
        ),
        pytest.param(
            outcome(Kind.MALFORMED, 200),
            Entity.AGENT,
            5,
            Attempts(transient=4, malformed=1),
            Retry(0.5, "malformed"),
            id="malformed-second",
        ),
        pytest.param(
            outcome(Kind.MALFORMED, 200, detail="unreadable results: <html>"),
            Entity.AGENT,
            5,
            Attempts(malformed=2),
            DeadLetterAll(
                "http", "malformed response after 3 attempts: unreadable results: <html>", 200
            ),
            id="malformed-limit",
        ),
        pytest.param(
            outcome(Kind.CLIENT_ERROR, 404, detail="404-01: nope"),
            Entity.AGENT,
            5,
            Attempts(),
            DeadLetterAll("http", "HTTP 404: 404-01: nope", 404),
            id="404",
        ),
        pytest.param(
            outcome(Kind.CLIENT_ERROR, 400, detail="<html>"),
            Entity.AGENT,
            5,
            Attempts(),
            DeadLetterAll("http", "HTTP 400: <html>", 400),
            id="400-unreadable",
        ),
        pytest.param(
            outcome(Kind.AUTH, 401),
            Entity.AGENT,
            5,
            Attempts(),
            Hold(Scope.POD, "auth", "ASAPP API rejects the credentials (HTTP 401)"),
            id="401-pod",
        ),
        pytest.param(
            outcome(Kind.REDIRECTED, 301),
            Entity.CUSTOMER,
            5,
            Attempts(),
            Hold(Scope.POD, "redirect", "ASAPP API answers HTTP 301: check ASAPP_API_BASE_URL"),
            id="301-pod",
        ),
        pytest.param(
            outcome(Kind.FORBIDDEN, 403),
            Entity.CONVERSATION,
            5,
            Attempts(),
            Hold(
                Scope.ENTITY,
                "forbidden",
                "ASAPP API forbids many-convo-metadata for this app (HTTP 403)",
            ),
            id="403-entity",
        ),
        pytest.param(
            outcome(Kind.FORBIDDEN, 403),
            Entity.CUSTOMER,
            1,
            Attempts(malformed=2),
            Hold(
                Scope.ENTITY,
                "forbidden",
                "ASAPP API forbids many-customer-metadata for this app (HTTP 403)",
            ),
            id="403-customer",
        ),
    ],
)
def test_decide(
    answer: Outcome, entity: Entity, items: int, attempts: Attempts, expected: Decision
) -> None:
    assert decide(answer, entity=entity, items=items, attempts=attempts, policy=POLICY) == expected


def test_every_kind_has_a_decision() -> None:
    for kind in Kind:
        decision = decide(
            outcome(kind, 200), entity=Entity.AGENT, items=2, attempts=Attempts(), policy=POLICY
        )
        assert isinstance(decision, Deliver | DeadLetterAll | Split | Retry | RateLimited | Hold)


@pytest.mark.parametrize(
    ("attempts", "cause", "expected"),
    [
        pytest.param(Attempts(), "5xx", Attempts(transient=1), id="5xx"),
        pytest.param(Attempts(1, 1), "network", Attempts(2, 1), id="network"),
        pytest.param(Attempts(1, 1), "malformed", Attempts(1, 2), id="malformed"),
    ],
)
def test_attempts_after_a_retry(attempts: Attempts, cause: str, expected: Attempts) -> None:
    assert attempts.after(cause) == expected
    assert bool(expected) and not bool(Attempts())


def test_malformed_limit_of_one_dead_letters_at_once() -> None:
    policy = Policy(malformed_max_attempts=1, transient_backoff=POLICY.transient_backoff)
    decision = decide(
        outcome(Kind.MALFORMED, None, detail="DecodingError"),
        entity=Entity.AGENT,
        items=2,
        attempts=Attempts(),
        policy=policy,
    )
    assert decision == DeadLetterAll(
        "http", "malformed response after 1 attempts: DecodingError", None
    )
