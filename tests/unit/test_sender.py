"""A real Sender (threads) over an ApiSink on httpx.MockTransport that follows scripted answers.

Backoffs are capped at 50 ms (``retry_max_backoff_s``) and the throttle runs at 1000 rps, so
every retry path completes in well under a second.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry

from consumer.batcher import body_size
from consumer.metrics import Metrics
from consumer.records import Batch, Completion, Entity, Item, Message, Position
from consumer.retry import Backoff, Throttle
from consumer.sender import MAX_ERROR_BYTES, Credentials, Sender, clip
from consumer.sink import ApiSink

Answer = Callable[[httpx.Request], httpx.Response]


def item(event_id: str, offset: int, entity: Entity = Entity.AGENT) -> Item:
    payload = {"externalAgentId": f"agent-{event_id}", "eventId": event_id}
    body = json.dumps(payload, separators=(",", ":")).encode()
    message = Message(Position("agents", 0, offset), event_id.encode(), b"avro", 1_700_000_000_000)
    return Item(entity, event_id, body, message)


def batch(*event_ids: str, entity: Entity = Entity.AGENT) -> Batch:
    items = [item(e, n, entity) for n, e in enumerate(event_ids)]
    return Batch(entity=entity, items=items, body_bytes=body_size(items), close_reason="count")


def sent_ids(request: httpx.Request) -> list[str]:
    return [i["eventId"] for i in json.loads(request.content)["items"]]


def ok(request: httpx.Request, errors: dict[str, str] | None = None) -> httpx.Response:
    errors = errors or {}
    results = [{"eventId": e, "error": errors.get(e, "")} for e in sent_ids(request)]
    return httpx.Response(
        200, json={"errorCount": sum(1 for r in results if r["error"]), "results": results}
    )


def status(code: int, headers: dict[str, str] | None = None, body: bytes = b"") -> Answer:
    content = body or json.dumps({"error": {"code": f"{code}-01", "message": "no"}}).encode()
    return lambda _request: httpx.Response(code, headers=headers, content=content)


class Script:
    """MockTransport handler: answers in turn, then ``then`` for every later request."""

    def __init__(self, *answers: Answer, then: Answer = ok) -> None:
        self.answers = list(answers)
        self.then = then
        self.requests: list[list[str]] = []
        self.lock = threading.Lock()
        self.seen = threading.Event()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(sent_ids(request))
            answer = self.answers.pop(0) if self.answers else self.then
        self.seen.set()
        return answer(request)


class Harness:
    def __init__(self, script: Script, *, malformed_max_attempts: int = 3) -> None:
        self.script = script
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.credentials = Credentials(self.metrics)
        self.sink = ApiSink(
            base_url="https://api.example.test",
            api_id="id",
            api_secret="secret-value",
            timeout_s=5.0,
            max_connections=2,
            transport=httpx.MockTransport(script),
        )
        self.sender = Sender(
            sink=self.sink,
            throttle=Throttle(rate_rps=1000.0),
            metrics=self.metrics,
            credentials=self.credentials,
            threads=2,
            retry_max_backoff_s=0.05,
            malformed_max_attempts=malformed_max_attempts,
        )
        self.sender.auth_backoff = Backoff(base_s=0.01, cap_s=0.02, jitter=False)

    def run(self, b: Batch) -> Completion:
        self.sender.submit(b)
        completion = self.sender.completions.get(timeout=5)
        assert completion.batch is b
        assert_partitioned(completion)
        return completion

    def value(self, name: str, **labels: str) -> float:
        v = self.registry.get_sample_value(f"asapp_consumer_{name}", labels)
        return 0.0 if v is None else v

    def close(self) -> None:
        self.sender.stop()
        self.sink.close()


def assert_partitioned(c: Completion) -> None:
    """Every item of the batch ends in exactly one of delivered / dead / abandoned."""
    outcomes = [id(i.message) for i in c.delivered]
    outcomes += [id(d.message) for d in c.dead]
    outcomes += [id(i.message) for i in c.abandoned]
    assert sorted(outcomes) == sorted(id(i.message) for i in c.batch.items)


@pytest.fixture
def harness() -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(*answers: Answer, then: Answer = ok, **kw: int) -> Harness:
        h = Harness(Script(*answers, then=then), **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def test_all_accepted(harness: Callable[..., Harness]) -> None:
    h = harness()
    c = h.run(batch("a", "b", "c"))
    assert [i.event_id for i in c.delivered] == ["a", "b", "c"]
    assert c.dead == [] and c.abandoned == []
    assert c.acked_at > 0
    assert h.script.requests == [["a", "b", "c"]]
    assert h.value("http_requests_total", entity="agent", status="200") == 1
    assert h.value("batches_sent_total", entity="agent", close_reason="count") == 1
    assert h.value("in_flight_requests") == 0


def test_partial_success_dead_letters_the_rejected(harness: Callable[..., Harness]) -> None:
    error = "FAIL_BAD_PARAMS: ERROR: agent id cannot be blank"
    h = harness(lambda r: ok(r, {"b": error}))
    c = h.run(batch("a", "b", "c"))
    assert [i.event_id for i in c.delivered] == ["a", "c"]
    (dead,) = c.dead
    assert dead.message.key == b"b"
    assert (dead.reason, dead.error, dead.http_status) == ("rejected", error, 200)
    assert dead.entity is Entity.AGENT
    assert h.value("items_rejected_total", entity="agent", code="FAIL_BAD_PARAMS") == 1
    assert len(h.script.requests) == 1


def test_400_per_item_dead_letters_all_and_never_resends(
    harness: Callable[..., Harness],
) -> None:
    def all_bad(request: httpx.Request) -> httpx.Response:
        response = ok(request, {e: f"BAD_{e.upper()}: no" for e in sent_ids(request)})
        return httpx.Response(400, content=response.content)

    h = harness(all_bad)
    c = h.run(batch("a", "b"))
    assert c.delivered == []
    assert [(d.message.key, d.reason, d.error, d.http_status) for d in c.dead] == [
        (b"a", "rejected", "BAD_A: no", 400),
        (b"b", "rejected", "BAD_B: no", 400),
    ]
    assert len(h.script.requests) == 1


def test_409_for_a_single_item_counts_as_delivered(harness: Callable[..., Harness]) -> None:
    h = harness(status(409))
    c = h.run(batch("a"))
    assert [i.event_id for i in c.delivered] == ["a"]
    assert c.dead == []
    assert len(h.script.requests) == 1


def test_409_for_a_batch_is_split_down_to_single_items(harness: Callable[..., Harness]) -> None:
    """ASAPP documents 409 for one entity: a batch's 409 never marks the whole batch delivered
    (the old code did, after one request)."""

    def conflict_or_reject(request: httpx.Request) -> httpx.Response:
        ids = sent_ids(request)
        if len(ids) > 1:
            return status(409)(request)
        return ok(request, {"c": "FAIL_BAD_PARAMS: no"})

    h = harness(then=conflict_or_reject)
    c = h.run(batch("a", "b", "c", "d"))
    assert h.script.requests == [
        ["a", "b", "c", "d"],
        ["a", "b"],
        ["a"],
        ["b"],
        ["c", "d"],
        ["c"],
        ["d"],
    ]
    assert sorted(i.event_id for i in c.delivered) == ["a", "b", "d"]
    assert [(d.message.key, d.reason) for d in c.dead] == [(b"c", "rejected")]
    assert h.value("retries_total", entity="agent", cause="409_split") == 3


def test_409_for_single_items_after_a_split_are_delivered(
    harness: Callable[..., Harness],
) -> None:
    h = harness(then=status(409))
    c = h.run(batch("a", "b"))
    assert sorted(i.event_id for i in c.delivered) == ["a", "b"]
    assert h.script.requests == [["a", "b"], ["a"], ["b"]]


def test_400_whose_results_cannot_be_read_is_dead_lettered_not_resent(
    harness: Callable[..., Harness],
) -> None:
    h = harness(status(400, body=b"<html>bad request</html>"))
    c = h.run(batch("a", "b"))
    assert c.delivered == []
    assert {(d.reason, d.http_status) for d in c.dead} == {("http", 400)}
    assert all(d.error == "HTTP 400: <html>bad request</html>" for d in c.dead)
    assert len(h.script.requests) == 1


def test_an_errorcount_naming_no_failed_item_is_never_delivered(
    harness: Callable[..., Harness],
) -> None:
    def says_one_failed(request: httpx.Request) -> httpx.Response:
        results = [{"eventId": e, "error": ""} for e in sent_ids(request)]
        return httpx.Response(200, json={"errorCount": 1, "results": results})

    h = harness(then=says_one_failed, malformed_max_attempts=2)
    c = h.run(batch("a", "b"))
    assert c.delivered == []
    assert {(d.reason, d.http_status) for d in c.dead} == {("http", 200)}
    assert all("errorCount 1 but 0 failed" in d.error for d in c.dead)
    assert len(h.script.requests) == 2


@pytest.mark.parametrize("code", [404, 422])
def test_other_4xx_dead_letters_with_status(harness: Callable[..., Harness], code: int) -> None:
    h = harness(status(code))
    c = h.run(batch("a", "b"))
    assert {(d.reason, d.http_status) for d in c.dead} == {("http", code)}
    assert all(d.error.startswith(f"HTTP {code}: ") for d in c.dead)
    assert len(h.script.requests) == 1


def test_413_splits_until_the_single_large_item_is_dead(
    harness: Callable[..., Harness],
) -> None:
    def too_large_with_big(request: httpx.Request) -> httpx.Response:
        return status(413)(request) if "big" in sent_ids(request) else ok(request)

    h = harness(then=too_large_with_big)
    c = h.run(batch("a", "b", "c", "big"))
    assert sorted(i.event_id for i in c.delivered) == ["a", "b", "c"]
    (dead,) = c.dead
    assert dead.message.key == b"big"
    assert (dead.reason, dead.http_status) == ("http", 413)
    assert dead.error.startswith("413 for a single item")
    assert h.script.requests == [["a", "b", "c", "big"], ["a", "b"], ["c", "big"], ["c"], ["big"]]
    assert h.value("retries_total", entity="agent", cause="413_split") == 2


def test_429_with_retry_after_pauses_then_delivers(harness: Callable[..., Harness]) -> None:
    h = harness(status(429, {"Retry-After": "0.05"}))
    c = h.run(batch("a", "b"))
    assert [i.event_id for i in c.delivered] == ["a", "b"]
    assert c.dead == []
    assert len(h.script.requests) == 2
    assert h.value("retries_total", entity="agent", cause="429") == 1
    assert h.value("backoff_seconds_total", cause="429") == pytest.approx(0.05)
    assert h.value("http_requests_total", entity="agent", status="429") == 1


def test_503s_are_retried_and_never_dead_lettered(harness: Callable[..., Harness]) -> None:
    h = harness(status(503), status(503), status(503))
    c = h.run(batch("a", "b"))
    assert [i.event_id for i in c.delivered] == ["a", "b"]
    assert c.dead == [] and c.abandoned == []
    assert len(h.script.requests) == 4
    assert h.value("retries_total", entity="agent", cause="5xx") == 3
    assert h.value("http_requests_total", entity="agent", status="503") == 3


def test_network_errors_are_retried(harness: Callable[..., Harness]) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    h = harness(refuse, refuse)
    c = h.run(batch("a"))
    assert [i.event_id for i in c.delivered] == ["a"]
    assert h.value("retries_total", entity="agent", cause="network") == 2
    assert h.value("http_requests_total", entity="agent", status="error") == 2


def test_401_rejects_credentials_until_accepted_again(harness: Callable[..., Harness]) -> None:
    seen_while_retrying: list[tuple[bool, float]] = []
    h = harness(status(401))

    def observe_then_ok(request: httpx.Request) -> httpx.Response:
        seen_while_retrying.append((h.credentials.rejected, h.value("credentials_rejected")))
        return ok(request)

    h.script.then = observe_then_ok
    c = h.run(batch("a"))
    assert seen_while_retrying == [(True, 1.0)]
    assert [i.event_id for i in c.delivered] == ["a"]
    assert c.dead == []
    assert h.credentials.rejected is False
    assert h.value("credentials_rejected") == 0
    assert h.value("retries_total", entity="agent", cause="auth") == 1


def test_403_streak_is_never_dead_lettered(harness: Callable[..., Harness]) -> None:
    h = harness(status(403), status(403), status(403))
    c = h.run(batch("a"))
    assert [i.event_id for i in c.delivered] == ["a"]
    assert len(h.script.requests) == 4
    assert h.credentials.failures == 0  # reset on acceptance


def test_malformed_bodies_dead_letter_after_the_attempt_limit(
    harness: Callable[..., Harness],
) -> None:
    h = harness(then=status(200, body=b"<html>proxy</html>"), malformed_max_attempts=3)
    c = h.run(batch("a", "b"))
    assert c.delivered == []
    assert {(d.reason, d.http_status) for d in c.dead} == {("http", 200)}
    assert all("malformed response after 3 attempts" in d.error for d in c.dead)
    assert len(h.script.requests) == 3
    assert h.value("retries_total", entity="agent", cause="malformed") == 2


def test_malformed_then_good_answer_delivers(harness: Callable[..., Harness]) -> None:
    h = harness(status(200, body=b"{}"), malformed_max_attempts=3)
    c = h.run(batch("a"))
    assert [i.event_id for i in c.delivered] == ["a"]
    assert len(h.script.requests) == 2


def test_cancel_during_503_backoff_abandons(harness: Callable[..., Harness]) -> None:
    h = harness(then=status(503))
    h.sender.transient_backoff = Backoff(base_s=30.0, cap_s=30.0, jitter=False)
    b = batch("a", "b")
    h.sender.submit(b)
    assert h.script.seen.wait(5)
    b.cancel.set()
    c = h.sender.completions.get(timeout=2)
    assert_partitioned(c)
    assert [i.event_id for i in c.abandoned] == ["a", "b"]
    assert c.delivered == [] and c.dead == []
    assert len(h.script.requests) == 1


def test_cancel_while_throttled_abandons_without_a_request(
    harness: Callable[..., Harness],
) -> None:
    h = harness()
    h.sender.throttle.pause(30.0)
    b = batch("a")
    h.sender.submit(b)
    timer = threading.Timer(0.05, b.cancel.set)
    timer.start()
    try:
        c = h.sender.completions.get(timeout=2)
    finally:
        timer.cancel()
    assert [i.event_id for i in c.abandoned] == ["a"]
    assert h.script.requests == []


def test_cancelled_before_sending_abandons(harness: Callable[..., Harness]) -> None:
    h = harness()
    b = batch("a", "b")
    b.cancel.set()
    c = h.run(b)
    assert len(c.abandoned) == 2
    assert h.script.requests == []


def test_a_crash_in_the_sink_abandons_and_the_thread_survives(
    harness: Callable[..., Harness],
) -> None:
    def crash(_request: httpx.Request) -> httpx.Response:
        raise RuntimeError("bug")

    h = harness(crash, crash)  # two threads: each may take one
    for _ in range(2):
        c = h.run(batch("a", "b"))
        assert len(c.abandoned) == 2
    c = h.run(batch("c"))
    assert [i.event_id for i in c.delivered] == ["c"]


def test_concurrent_batches_each_complete_once(harness: Callable[..., Harness]) -> None:
    h = harness(status(503), status(429, {"Retry-After": "0.01"}))
    batches = [batch(f"{n}-a", f"{n}-b", entity=e) for n, e in enumerate(Entity)]
    for b in batches:
        h.sender.submit(b)
    completions = [h.sender.completions.get(timeout=5) for _ in batches]
    assert sorted(id(c.batch) for c in completions) == sorted(id(b) for b in batches)
    for c in completions:
        assert_partitioned(c)
        assert len(c.delivered) == 2


def test_clip_keeps_utf8_valid_under_the_limit() -> None:
    text = "€" * 1000  # 3000 bytes
    clipped = clip(text)
    assert len(clipped.encode()) <= MAX_ERROR_BYTES
    assert text.startswith(clipped)
    assert clip("short") == "short"


def wait_for(condition: Callable[[], bool], timeout_s: float = 2.0) -> bool:
    """Poll ``condition`` (threads elsewhere make it true); its last value."""
    end = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < end:
        threading.Event().wait(0.005)
    return condition()


def test_has_capacity_per_entity_only_while_a_thread_of_its_lane_is_free() -> None:
    release = threading.Event()

    def slow(request: httpx.Request) -> httpx.Response:
        release.wait(5)
        return ok(request)

    h = Harness(Script(then=slow))  # two threads per entity
    try:
        assert wait_for(lambda: all(h.sender.has_capacity(e) for e in Entity))
        h.sender.submit(batch("a"))
        h.sender.submit(batch("b"))
        assert wait_for(lambda: not h.sender.has_capacity(Entity.AGENT)), "both threads busy"
        assert h.sender.has_capacity(Entity.CUSTOMER), "another entity's lane is free"
        assert h.sender.has_capacity(), "some lane is free"
        h.sender.submit(batch("c"))
        assert not h.sender.has_capacity(Entity.AGENT), "a queued batch is ahead of a new one"
        release.set()
        for _ in range(3):
            h.sender.completions.get(timeout=5)
        assert wait_for(lambda: h.sender.has_capacity(Entity.AGENT))
    finally:
        release.set()
        h.close()


def test_has_capacity_is_false_during_a_pod_wide_pause(harness: Callable[..., Harness]) -> None:
    h = harness()
    assert wait_for(h.sender.has_capacity)
    h.sender.throttle.pause(30.0)
    assert not h.sender.has_capacity()
    assert not h.sender.has_capacity(Entity.CUSTOMER)


def test_a_hanging_conversation_endpoint_does_not_hold_agent_threads() -> None:
    """Both conversation batches hang; an agent batch is still delivered at once (with one
    shared pool, the two threads were both held by the hanging endpoint)."""
    release = threading.Event()

    def hang_conversations(request: httpx.Request) -> httpx.Response:
        if "convo" in request.url.path:
            release.wait(10)
        return ok(request)

    h = Harness(Script(then=hang_conversations))
    try:
        h.sender.submit(batch("c1", entity=Entity.CONVERSATION))
        h.sender.submit(batch("c2", entity=Entity.CONVERSATION))
        assert wait_for(lambda: not h.sender.has_capacity(Entity.CONVERSATION))
        agents = batch("a")
        h.sender.submit(agents)
        first = h.sender.completions.get(timeout=3)
        assert first.batch is agents
        assert [i.event_id for i in first.delivered] == ["a"]
    finally:
        release.set()
        for _ in range(2):
            h.sender.completions.get(timeout=5)
        h.close()


def test_403_holds_only_its_entity_never_dead_letters_and_logs_once(
    harness: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="consumer.sender")
    forbidden = threading.Event()
    forbidden.set()
    problems: list[str | None] = []

    def convo_forbidden(request: httpx.Request) -> httpx.Response:
        if "convo" in request.url.path and forbidden.is_set():
            return status(403)(request)
        return ok(request)

    h = harness(then=convo_forbidden)
    convo = batch("c1", entity=Entity.CONVERSATION)
    h.sender.submit(convo)
    assert wait_for(lambda: len(h.script.requests) >= 3), "the lane probes again"
    problems.append(h.credentials.problem())
    assert h.credentials.rejected is True  # health reads this until it uses problem()
    assert h.value("credentials_rejected") == 1
    c = h.run(batch("a"))  # another entity is not held
    assert [i.event_id for i in c.delivered] == ["a"]
    assert h.credentials.problem() is not None, "an agent answer does not clear the 403"
    forbidden.clear()
    done = h.sender.completions.get(timeout=5)
    assert done.batch is convo
    assert_partitioned(done)
    assert [i.event_id for i in done.delivered] == ["c1"]
    assert done.dead == []
    assert problems == ["ASAPP API forbids many-convo-metadata for this app (HTTP 403)"]
    assert h.credentials.problem() is None
    assert h.credentials.rejected is False
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("endpoint_forbidden") == 1
    assert events.count("endpoint_allowed") == 1
    assert h.value("retries_total", entity="conversation", cause="forbidden") >= 2


def test_401_holds_the_whole_pod(harness: Callable[..., Harness]) -> None:
    h = harness(status(401))
    h.sender.auth_backoff = Backoff(base_s=30.0, cap_s=30.0, jitter=False)
    b = batch("a")
    h.sender.submit(b)
    assert wait_for(lambda: h.credentials.problem() is not None)
    assert h.credentials.problem() == "ASAPP API rejects the credentials (HTTP 401)"
    assert not h.sender.has_capacity(Entity.CUSTOMER), "every entity waits for the probe"
    b.cancel.set()
    c = h.sender.completions.get(timeout=2)
    assert [i.event_id for i in c.abandoned] == ["a"]
    assert c.dead == []


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_a_redirect_is_a_configuration_error_never_a_dead_letter(
    harness: Callable[..., Harness], caplog: pytest.LogCaptureFixture, code: int
) -> None:
    problems: list[str | None] = []
    h = harness(status(code, {"Location": "https://elsewhere.test/"}), status(code))

    def observe_then_ok(request: httpx.Request) -> httpx.Response:
        problems.append(h.credentials.problem())
        return ok(request)

    h.script.then = observe_then_ok
    c = h.run(batch("a"))
    assert [i.event_id for i in c.delivered] == ["a"]
    assert c.dead == []
    assert problems == [f"ASAPP API answers HTTP {code}: check ASAPP_API_BASE_URL"]
    assert h.credentials.problem() is None
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("api_redirected") == 1
    assert h.value("retries_total", entity="agent", cause="redirect") == 2


def test_concurrent_429s_of_one_episode_pause_once() -> None:
    """Two requests on the wire together both get a 429: one episode, one 1-step pause (the
    old code counted the second answer as the next step and doubled the pause)."""
    together = threading.Barrier(2, timeout=5)
    calls: list[int] = []
    lock = threading.Lock()

    def both_limited(request: httpx.Request) -> httpx.Response:
        with lock:
            calls.append(1)
            n = len(calls)
        if n <= 2:
            together.wait()
            return status(429)(request)
        return ok(request)

    h = Harness(Script(then=both_limited))
    h.sender.limited_backoff = Backoff(base_s=0.05, cap_s=1.0, jitter=False)
    try:
        h.sender.submit(batch("a"))
        h.sender.submit(batch("b"))
        done = [h.sender.completions.get(timeout=5) for _ in range(2)]
        assert all(len(c.delivered) == 1 for c in done)
        assert h.value("retries_total", entity="agent", cause="429") == 2
        assert h.value("backoff_seconds_total", cause="429") == pytest.approx(0.05)
        assert h.sender.throttle.gate.episodes == 0, "the retries' success ended the episode"
    finally:
        h.close()


@pytest.mark.parametrize(
    "retry_after",
    [
        pytest.param("0", id="zero"),
        pytest.param("Wed, 21 Oct 2015 07:28:00 GMT", id="past-date"),
    ],
)
def test_retry_after_zero_or_past_pauses_the_advised_step_not_zero(
    harness: Callable[..., Harness], retry_after: str
) -> None:
    h = harness(status(429, {"Retry-After": retry_after}))
    h.sender.limited_backoff = Backoff(base_s=0.05, cap_s=1.0, jitter=False)
    c = h.run(batch("a"))
    assert [i.event_id for i in c.delivered] == ["a"]
    assert h.value("backoff_seconds_total", cause="429") == pytest.approx(0.05)


def test_retrying_is_set_while_waiting_and_cleared_on_completion(
    harness: Callable[..., Harness],
) -> None:
    h = harness(then=status(503))
    h.sender.transient_backoff = Backoff(base_s=30.0, cap_s=30.0, jitter=False)
    b = batch("a")
    h.sender.submit(b)
    assert wait_for(lambda: b.retrying)
    b.cancel.set()
    c = h.sender.completions.get(timeout=2)
    assert c.batch.retrying is False
    assert [i.event_id for i in c.abandoned] == ["a"]
