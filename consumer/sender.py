"""Sender threads: take closed batches, deliver them under the pod-wide throttle, and hand a
:class:`~consumer.records.Completion` back to the poll loop.

Each entity has its own **lane**: its own queue and ``threads`` worker threads, so a failing,
slow or hanging endpoint holds only its own entity's threads. The token bucket and the 429
pause stay shared by every lane (ASAPP's spike arrest counts the whole account), and so does
the credentials pause (401, 3xx).

What each outcome of :mod:`consumer.sink` becomes (decided by :func:`consumer.decision.decide`;
the failure semantics in the README):

- 200 → ``delivered``; per-item rejections → ``dead`` (reason ``rejected``). Results are
  matched by ``eventId``; an item whose result cannot be told apart from a failed one is
  ``dead`` (``rejected``, the error says so), never delivered on a guess; a 200 that says more
  items failed than it names is malformed (below);
- 400 with per-item errors → every item ``dead`` (``rejected``), never resent unchanged; a 400
  whose results cannot be read → every item ``dead`` (``http``) with the excerpt, not resent;
- 409 for a single item → ``delivered`` (already persisted); for a batch → split in halves and
  resent, recursively, like 413 (ASAPP documents 409 for one entity only);
- 413 → split in halves and resend, recursively; a single item still too large → ``dead``
  (``http``);
- 429 → pod-wide pause (``Retry-After``, else 1 s, 2 s, 4 s … per *episode*: the 429s of
  requests already in flight count once; a ``Retry-After`` of 0 or a past date is no hint)
  and retry;
- 5xx / timeout / connection error → retry with full-jitter backoff (250 ms, 500 ms …,
  capped), **without limit**: an API outage never dead-letters data;
- 401 → credentials rejected: the pod stops sending (not ready), probes slowly (5 s, 10 s …
  capped) so a fixed secret recovers without a restart; never dead-lettered;
- 3xx → a wrong ``ASAPP_API_BASE_URL``: handled like 401, never dead-lettered;
- 403 → this app may not use that endpoint: only that entity's lane stops and probes slowly,
  the other entities keep sending; the pod is not ready with the reason; one error log per
  episode; never dead-lettered;
- other 4xx → ``dead`` (``http``) with status and response excerpt;
- malformed body → retried up to ``malformed_max_attempts`` times, then ``dead`` (``http``).

A batch whose ``cancel`` event is set (revoke, shutdown) stops retrying; its unsent items come
back as ``abandoned`` and their offsets are not committed. ``batch.retrying`` is True while the
batch waits to be retried and False once its Completion is handed back.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable, Sequence

from consumer.batcher import body_size
from consumer.decision import (
    Attempts,
    DeadLetterAll,
    Deliver,
    Hold,
    Policy,
    RateLimited,
    Retry,
    Scope,
    Split,
    decide,
)
from consumer.metrics import Metrics, error_code_prefix, status_class
from consumer.outage import Outage
from consumer.records import Batch, Completion, DeadLetter, Entity, Item
from consumer.retry import (
    Backoff,
    Cancelled,
    Gate,
    Throttle,
    rate_limited_backoff,
    server_error_backoff,
)
from consumer.sink import ApiSink, Kind, Outcome

log = logging.getLogger(__name__)

#: Longest pause between 429 episodes (the quota wall someone else hit): 15 minutes.
QUOTA_WALL_BACKOFF_CAP_S = 900.0

#: Dead-letter ``error`` header limit (bytes of UTF-8).
MAX_ERROR_BYTES = 1024

#: Kinds that say the pod's configuration is wrong (credentials, base URL): pod-wide holds.
_POD_PROBLEMS = (Kind.AUTH, Kind.REDIRECTED)


def clip(text: str, limit: int = MAX_ERROR_BYTES) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes."""
    raw = text.encode("utf-8")
    return text if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore")


class Credentials:
    """Whether the API currently refuses us, and why (shared with health and metrics).

    Two kinds of refusal: pod-wide (401 rejected credentials, a 3xx from a wrong base URL),
    and per entity (403: this app may not use that endpoint). :meth:`problem` is the not-ready
    reason; :attr:`rejected` is True while either kind lasts (what health read before
    ``problem()``). Each refusal logs one error when it starts and one info when it ends.
    Thread-safe.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._lock = threading.Lock()
        self._pod: str | None = None
        self._forbidden: dict[Entity, str] = {}
        self.failures = 0  # refused answers since the last time nothing was refused

    @property
    def rejected(self) -> bool:
        """True while any refusal lasts (pod-wide or for some entity)."""
        with self._lock:
            return self._pod is not None or bool(self._forbidden)

    def problem(self) -> str | None:
        """Why the pod is not ready, e.g. ``ASAPP API rejects the credentials (HTTP 401)``;
        None when nothing is refused."""
        with self._lock:
            reasons = [self._pod] if self._pod else []
            reasons += [self._forbidden[e] for e in sorted(self._forbidden)]
        return "; ".join(reasons) or None

    def failed(self, status: int | None, detail: str, problem: str | None = None) -> int:
        """Record a pod-wide refusal (401, 3xx); logs one clear error when it starts.
        Returns the count of refused answers so far."""
        problem = problem or f"ASAPP API rejects the credentials (HTTP {status})"
        with self._lock:
            first = self._pod is None
            self._pod = problem
            self.failures += 1
            failures = self.failures
        self._metrics.credentials_rejected.set(1)
        if first and status is not None and 300 <= status < 400:
            log.error(
                "%s (%s): sending stopped, pod not ready. Retrying slowly.",
                problem,
                detail,
                extra={"event": "api_redirected", "status": status},
            )
        elif first:
            log.error(
                "ASAPP API rejected our credentials (HTTP %s: %s): sending stopped, pod not "
                "ready; check ASAPP_API_ID / ASAPP_API_SECRET. Retrying slowly.",
                status,
                detail,
                extra={"event": "auth_rejected", "status": status},
            )
        return failures

    def forbidden(self, entity: Entity, status: int | None, detail: str, problem: str) -> int:
        """Record a 403 for ``entity``; logs one clear error when its episode starts."""
        with self._lock:
            first = entity not in self._forbidden
            self._forbidden[entity] = problem
            self.failures += 1
            failures = self.failures
        self._metrics.credentials_rejected.set(1)
        if first:
            log.error(
                "%s (%s): %s sending stopped, the other entities continue; pod not ready; "
                "check the app's API permissions. Retrying slowly.",
                problem,
                detail,
                entity.value,
                extra={"event": "endpoint_forbidden", "entity": entity.value, "status": status},
            )
        return failures

    def accepted(self, entity: Entity | None = None) -> None:
        """An answer that was not a pod-wide refusal ends it; with ``entity``, an answer of
        that entity's endpoint that was not a 403 ends its refusal too."""
        with self._lock:
            was = self._pod
            self._pod = None
            allowed = self._forbidden.pop(entity, None) if entity is not None else None
            clear = not self._forbidden
            if clear:
                self.failures = 0
        if clear:
            self._metrics.credentials_rejected.set(0)
        if was is not None:
            log.info("ASAPP API accepts our requests again", extra={"event": "auth_recovered"})
        if allowed is not None and entity is not None:
            log.info(
                "ASAPP API allows %s again",
                entity.value,
                extra={"event": "endpoint_allowed", "entity": entity.value},
            )


class _Lane:
    """One entity's queue and worker threads, and the 403 gate that stops only them."""

    def __init__(self, entity: Entity, gate: Gate) -> None:
        self.entity = entity
        self.gate = gate
        self.work: queue.Queue[Batch | None] = queue.Queue()
        self.threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for work
        self._lock = threading.Lock()

    def free(self) -> bool:
        """A batch queued now would be picked up at once by an idle thread."""
        with self._lock:
            return self._idle > self.work.qsize()

    def take(self) -> Batch | None:
        with self._lock:
            self._idle += 1
        batch = self.work.get()
        with self._lock:
            self._idle -= 1
        return batch


class Sender:
    """Per-entity lanes of daemon threads delivering batches. Daemon threads never hold the
    process open past the shutdown bound (an HTTP call in progress cannot be interrupted).

    ``threads`` is **per entity** (the service passes ``MAX_IN_FLIGHT``): each entity's lane
    has that many threads, so up to ``threads`` requests per entity are in flight and a
    hanging endpoint can hold only its own lane. The sink's pool must hold ``threads``
    connections per entity (:class:`~consumer.sink.ApiSink` sizes it so from the same value).
    """

    def __init__(
        self,
        *,
        sink: ApiSink,
        throttle: Throttle,
        metrics: Metrics,
        credentials: Credentials,
        threads: int,
        retry_max_backoff_s: float,
        malformed_max_attempts: int,
        outage: Outage | None = None,
    ) -> None:
        self.sink = sink
        self.outage = outage  # readiness: fed every answer by _observe
        self.throttle = throttle
        self.metrics = metrics
        self.credentials = credentials
        self.malformed_max_attempts = malformed_max_attempts
        self.transient_backoff: Backoff = server_error_backoff(retry_max_backoff_s)
        # 429s that keep coming after the advised 1 s, 2 s, 4 s… mean the account's daily quota
        # is spent (by someone else, when our ledger says we are under it): keep backing off,
        # up to 15 minutes, rather than probing every minute until midnight.
        self.limited_backoff: Backoff = rate_limited_backoff(
            max(retry_max_backoff_s, QUOTA_WALL_BACKOFF_CAP_S)
        )
        self.auth_backoff = Backoff(base_s=5.0, cap_s=max(5.0, retry_max_backoff_s), jitter=False)
        self.completions: queue.Queue[Completion] = queue.Queue()
        # Every gate runs on the throttle's clock: ``sent_at`` compares across them.
        self.auth_gate = Gate(throttle.now)
        self._lanes = {e: _Lane(e, Gate(throttle.now)) for e in Entity}
        for lane in self._lanes.values():
            lane.threads = [
                threading.Thread(
                    target=self._run, args=(lane,), name=f"sender-{lane.entity}-{i}", daemon=True
                )
                for i in range(threads)
            ]
            for t in lane.threads:
                t.start()

    @property
    def policy(self) -> Policy:
        """The decision's knobs (read at each decision, so tests may swap the backoffs)."""
        return Policy(self.malformed_max_attempts, self.transient_backoff)

    def submit(self, batch: Batch) -> None:
        """Queue a closed batch on its entity's lane; its Completion arrives on
        :attr:`completions`."""
        self.metrics.batches_sent.labels(batch.entity.value, batch.close_reason).inc()
        self._lanes[batch.entity].work.put(batch)

    def has_capacity(self, entity: Entity | None = None) -> bool:
        """With ``entity``: True when a batch of it submitted now would be sent at once (a
        thread of its lane is free and neither its 403 hold nor a pod-wide pause is on).
        With None: True when that holds for some entity (the old, entity-blind question).

        While it is False (slow API, a pause, every thread busy) the pipeline keeps lingering
        batches open so they fill up: fewer, fuller requests for the same items.
        """
        if self.throttle.paused_for_s > 0 or self.auth_gate.paused_for_s > 0:
            return False
        lanes: Iterable[_Lane] = self._lanes.values() if entity is None else (self._lanes[entity],)
        return any(lane.free() and lane.gate.paused_for_s <= 0 for lane in lanes)

    def stop(self) -> None:
        """Ask the threads to exit once their queues are drained (does not wait)."""
        for lane in self._lanes.values():
            for _ in lane.threads:
                lane.work.put(None)

    def _run(self, lane: _Lane) -> None:
        while (batch := lane.take()) is not None:
            completion = Completion(batch)
            # The one broad handler left: a bug in a send must not kill the lane's thread and
            # strand the batch (its offsets would never be committed nor its partition moved).
            try:
                self._send(lane, batch, batch.items, completion)
            except Exception:
                log.exception(
                    "sender failed on a %s batch; items will be retried", batch.entity.value
                )
                # The items go back to the loop to be sent again: don't let a deterministic
                # failure turn into a hot loop against the API.
                batch.cancel.wait(1.0)
                done = {id(i.message) for i in completion.delivered}
                done |= {id(d.message) for d in completion.dead}
                done |= {id(i.message) for i in completion.abandoned}
                completion.abandoned.extend(i for i in batch.items if id(i.message) not in done)
            completion.acked_at = time.time()
            batch.retrying = False
            self.completions.put(completion)

    def _send(self, lane: _Lane, batch: Batch, items: Sequence[Item], out: Completion) -> None:
        """Send ``items`` until a decision finishes them; one request per turn of the loop,
        recursion only for the halves of a :class:`Split`."""
        attempts = Attempts()
        while True:
            answer = self._request(lane, batch, items)
            if answer is None:
                out.abandoned.extend(items)
                return
            outcome, sent_at = answer
            self._settle(lane, outcome, sent_at)
            decision = decide(
                outcome,
                entity=batch.entity,
                items=len(items),
                attempts=attempts,
                policy=self.policy,
            )
            if isinstance(decision, Retry):
                if not self._backoff(batch, items, decision, outcome, attempts):
                    out.abandoned.extend(items)
                    return
                attempts = attempts.after(decision.cause)
            elif isinstance(decision, RateLimited | Hold):
                self._pause(lane, batch, decision, outcome, sent_at)
            else:
                self._finish(lane, batch, items, out, decision, attempts)
                return

    def _request(
        self, lane: _Lane, batch: Batch, items: Sequence[Item]
    ) -> tuple[Outcome, float] | None:
        """Wait for the gates and the throttle, then POST; None when cancelled meanwhile."""
        try:
            self.auth_gate.wait(batch.cancel)
            lane.gate.wait(batch.cancel)
            waited = self.throttle.acquire(batch.cancel)
        except Cancelled:
            return None
        if waited > 0:
            self.metrics.rate_limiter_wait.inc(waited)
        sent_at = self.throttle.now()
        self.metrics.in_flight.inc()
        self.metrics.count_request()
        try:
            outcome = self.sink.post(batch.entity, items)
        finally:
            self.metrics.in_flight.dec()
        self._observe(batch, items, outcome)
        return outcome, sent_at

    def _settle(self, lane: _Lane, outcome: Outcome, sent_at: float) -> None:
        """What an answer proves about the shared pauses: any non-429 ends the 429 episodes, an
        HTTP answer that is not a refusal ends the credentials hold and this lane's 403 hold
        (only for requests sent after the episode opened: see :class:`~consumer.retry.Gate`)."""
        if outcome.kind is not Kind.RATE_LIMITED:
            self.throttle.succeeded(sent_at)
        if outcome.status is None:
            return  # no answer: proves nothing about credentials or permissions
        pod = outcome.kind not in _POD_PROBLEMS and self.auth_gate.cleared(sent_at)
        lane_ok = outcome.kind is not Kind.FORBIDDEN and lane.gate.cleared(sent_at)
        if pod or lane_ok:
            self.credentials.accepted(lane.entity if lane_ok else None)

    def _finish(
        self,
        lane: _Lane,
        batch: Batch,
        items: Sequence[Item],
        out: Completion,
        decision: Deliver | DeadLetterAll | Split,
        attempts: Attempts,
    ) -> None:
        """Carry out a final decision: deliver, dead-letter, or send the halves."""
        if isinstance(decision, Deliver):
            self._deliver(batch, items, out, decision)
            if attempts or batch.retrying:
                log.info(
                    "%s batch delivered after retries",
                    batch.entity.value,
                    extra={"event": "backoff_end", "entity": batch.entity.value},
                )
        elif isinstance(decision, DeadLetterAll):
            error = clip(decision.error)
            out.dead.extend(
                DeadLetter(i.message, i.entity, decision.reason, error, decision.status)
                for i in items
            )
        else:
            self.metrics.retries.labels(batch.entity.value, decision.cause).inc()
            mid = len(items) // 2
            self._send(lane, batch, items[:mid], out)
            self._send(lane, batch, items[mid:], out)

    def _deliver(
        self, batch: Batch, items: Sequence[Item], out: Completion, decision: Deliver
    ) -> None:
        rejected = {id(item): err for item, err in decision.rejected}
        for item in items:
            err = rejected.get(id(item))
            if err is None:
                out.delivered.append(item)
                continue
            self.metrics.items_rejected.labels(batch.entity.value, error_code_prefix(err)).inc()
            out.dead.append(self._dead(item, "rejected", err, decision.status))

    def _backoff(
        self,
        batch: Batch,
        items: Sequence[Item],
        decision: Retry,
        outcome: Outcome,
        attempts: Attempts,
    ) -> bool:
        """Wait out a :class:`Retry` of this request; False when cancelled meanwhile."""
        entity, cause, delay = batch.entity.value, decision.cause, decision.delay_s
        if not batch.retrying or not attempts:
            log.warning(
                "%s batch of %d items: %s (%s); retrying in %.2fs",
                entity,
                len(items),
                cause,
                outcome.detail,
                delay,
                extra={"event": "backoff_start", "entity": entity, "cause": cause},
            )
        batch.retrying = True
        self.metrics.retries.labels(entity, cause).inc()
        self.metrics.backoff_seconds.labels(cause).inc(delay)
        return not batch.cancel.wait(delay)

    def _pause(
        self,
        lane: _Lane,
        batch: Batch,
        decision: RateLimited | Hold,
        outcome: Outcome,
        sent_at: float,
    ) -> None:
        """Push the shared pause a 429 or a refusal calls for; the next turn's gates wait it
        out (every thread in its scope waits with this one)."""
        entity = batch.entity.value
        if isinstance(decision, RateLimited):
            cause = "429"
            pause = self.throttle.rate_limited(
                decision.retry_after_s, self.limited_backoff, sent_at
            )
            if pause.new:
                log.warning(
                    "ASAPP API answered 429: pausing all requests for %.1fs",
                    pause.delay_s,
                    extra={"event": "backoff_start", "cause": cause, "delay_s": pause.delay_s},
                )
        else:
            cause = decision.cause
            gate = self.auth_gate if decision.scope is Scope.POD else lane.gate
            pause = gate.hit(sent_at, self.auth_backoff.delay)
            if decision.scope is Scope.POD:
                self.credentials.failed(outcome.status, outcome.detail, decision.problem)
            else:
                self.credentials.forbidden(
                    lane.entity, outcome.status, outcome.detail, decision.problem
                )
        batch.retrying = True
        self.metrics.retries.labels(entity, cause).inc()
        if pause.new:
            self.metrics.backoff_seconds.labels(cause).inc(pause.delay_s)

    def _observe(self, batch: Batch, items: Sequence[Item], outcome: Outcome) -> None:
        entity = batch.entity.value
        m = self.metrics
        m.http_requests.labels(entity, str(outcome.status) if outcome.status else "error").inc()
        m.http_duration.labels(entity, status_class(outcome.status)).observe(outcome.duration_s)
        m.batch_items.labels(entity).observe(len(items))
        m.batch_bytes.labels(entity).observe(body_size(items))
        if self.outage is not None:  # no answer or a 5xx: the API is failing us
            if outcome.status is None or outcome.status >= 500:
                self.outage.failed(outcome.detail or f"HTTP {outcome.status}")
            else:
                self.outage.ok()

    @staticmethod
    def _dead(item: Item, reason: str, error: str, status: int | None) -> DeadLetter:
        return DeadLetter(item.message, item.entity, reason, clip(error), status)
