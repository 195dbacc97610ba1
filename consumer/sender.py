"""Sender threads: take closed batches, deliver them under the pod-wide throttle, and hand a
:class:`~consumer.records.Completion` back to the poll loop.

What each outcome of :mod:`consumer.sink` becomes (the failure semantics in the README):

- delivered / 409 → ``delivered``; per-item rejections → ``dead`` (reason ``rejected``);
- 400 with per-item errors → every item ``dead`` (``rejected``), never resent unchanged;
- 413 → split in halves and resend, recursively; a single item still too large → ``dead``
  (``http``);
- 429 → pod-wide pause (``Retry-After``, else 1 s, 2 s, 4 s …) and retry;
- 5xx / timeout / connection error → retry with full-jitter backoff (250 ms, 500 ms …,
  capped), **without limit**: an API outage never dead-letters data;
- 401 / 403 → credentials rejected: the pod stops sending (readiness fails), retries slowly so a
  fixed secret recovers without a restart; never dead-lettered;
- other 4xx → ``dead`` (``http``) with status and response excerpt;
- malformed body → retried up to ``malformed_max_attempts`` times, then ``dead`` (``http``).

A batch whose ``cancel`` event is set (revoke, shutdown) stops retrying; its unsent items come
back as ``abandoned`` and their offsets are not committed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence

from consumer.batcher import body_size
from consumer.metrics import Metrics, error_code_prefix, status_class
from consumer.records import Batch, Completion, DeadLetter, Item
from consumer.retry import Backoff, Cancelled, Throttle, rate_limited_backoff, server_error_backoff
from consumer.sink import ApiSink, Kind, Outcome

log = logging.getLogger(__name__)

#: Dead-letter ``error`` header limit (bytes of UTF-8).
MAX_ERROR_BYTES = 1024


def clip(text: str, limit: int = MAX_ERROR_BYTES) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes."""
    raw = text.encode("utf-8")
    return text if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore")


class Credentials:
    """Whether the API currently rejects our credentials (shared with health and metrics)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._lock = threading.Lock()
        self.rejected = False
        self.failures = 0

    def failed(self, status: int | None, detail: str) -> int:
        """Record a 401/403; logs one clear error on the transition. Returns the streak."""
        with self._lock:
            self.failures += 1
            first = not self.rejected
            self.rejected = True
        self._metrics.credentials_rejected.set(1)
        if first:
            log.error(
                "ASAPP API rejected our credentials (HTTP %s: %s): sending stopped, pod not "
                "ready; check ASAPP_API_ID / ASAPP_API_SECRET. Retrying slowly.",
                status,
                detail,
                extra={"event": "auth_rejected", "status": status},
            )
        return self.failures

    def accepted(self) -> None:
        if not self.rejected:
            return
        with self._lock:
            was = self.rejected
            self.rejected = False
            self.failures = 0
        self._metrics.credentials_rejected.set(0)
        if was:
            log.info("ASAPP API accepts our credentials again", extra={"event": "auth_recovered"})


class Sender:
    """A fixed pool of daemon threads delivering batches. Daemon threads never hold the process
    open past the shutdown bound (an HTTP call in progress cannot be interrupted)."""

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
    ) -> None:
        self.sink = sink
        self.throttle = throttle
        self.metrics = metrics
        self.credentials = credentials
        self.malformed_max_attempts = malformed_max_attempts
        self.transient_backoff: Backoff = server_error_backoff(retry_max_backoff_s)
        self.limited_backoff: Backoff = rate_limited_backoff(retry_max_backoff_s)
        self.auth_backoff = Backoff(base_s=5.0, cap_s=max(5.0, retry_max_backoff_s), jitter=False)
        self.completions: queue.Queue[Completion] = queue.Queue()
        self._work: queue.Queue[Batch | None] = queue.Queue()
        self._idle = 0  # threads waiting for work
        self._idle_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, name=f"sender-{i}", daemon=True)
            for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    def submit(self, batch: Batch) -> None:
        """Queue a closed batch; its Completion arrives on :attr:`completions`."""
        self.metrics.batches_sent.labels(batch.entity.value, batch.close_reason).inc()
        self._work.put(batch)

    def has_capacity(self) -> bool:
        """True when a submitted batch would be sent at once (a thread is free for it).

        While every thread is busy (slow API, 429 pause, rate limit) the pipeline keeps
        lingering batches open so they fill up: fewer, fuller requests for the same items.
        """
        return self._idle > self._work.qsize()

    def stop(self) -> None:
        """Ask the threads to exit once the queue is drained (does not wait)."""
        for _ in self._threads:
            self._work.put(None)

    def _run(self) -> None:
        while True:
            with self._idle_lock:
                self._idle += 1
            batch = self._work.get()
            with self._idle_lock:
                self._idle -= 1
            if batch is None:
                return
            completion = Completion(batch)
            try:
                self._send(batch, batch.items, completion)
            except Exception:  # a bug must not kill the thread and strand the batch
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

    # One request per loop turn; recursion only for 413 halves.
    def _send(self, batch: Batch, items: Sequence[Item], out: Completion) -> None:
        entity = batch.entity.value
        transient_attempt = 0
        malformed_attempts = 0
        limited = 0
        while True:
            if batch.cancel.is_set():
                out.abandoned.extend(items)
                return
            try:
                waited = self.throttle.acquire(batch.cancel)
            except Cancelled:
                out.abandoned.extend(items)
                return
            if waited > 0:
                self.metrics.rate_limiter_wait.inc(waited)
            self.metrics.in_flight.inc()
            self.metrics.count_request()
            try:
                outcome = self.sink.post(batch.entity, items)
            finally:
                self.metrics.in_flight.dec()
            self._observe(batch, items, outcome)
            kind = outcome.kind
            if kind is not Kind.RATE_LIMITED:
                self.throttle.succeeded()
            if kind is not Kind.AUTH:
                self.credentials.accepted()

            if kind is Kind.DELIVERED or kind is Kind.ALL_REJECTED or kind is Kind.CONFLICT:
                rejected = {id(item): err for item, err in outcome.rejected}
                for item in items:
                    err = rejected.get(id(item))
                    if err is None:
                        out.delivered.append(item)
                    else:
                        self.metrics.items_rejected.labels(entity, error_code_prefix(err)).inc()
                        out.dead.append(self._dead(item, "rejected", err, outcome.status))
                if transient_attempt or malformed_attempts or limited or batch.retrying:
                    log.info(
                        "%s batch delivered after retries",
                        entity,
                        extra={"event": "backoff_end", "entity": entity},
                    )
                return
            if kind is Kind.TOO_LARGE:
                if len(items) == 1:
                    out.dead.append(
                        self._dead(
                            items[0], "http", f"413 for a single item: {outcome.detail}", 413
                        )
                    )
                    return
                self.metrics.retries.labels(entity, "413_split").inc()
                mid = len(items) // 2
                self._send(batch, items[:mid], out)
                self._send(batch, items[mid:], out)
                return
            if kind is Kind.CLIENT_ERROR:
                for item in items:
                    out.dead.append(
                        self._dead(
                            item, "http", f"HTTP {outcome.status}: {outcome.detail}", outcome.status
                        )
                    )
                return
            if kind is Kind.MALFORMED:
                malformed_attempts += 1
                if malformed_attempts >= self.malformed_max_attempts:
                    for item in items:
                        out.dead.append(
                            self._dead(
                                item,
                                "http",
                                f"malformed response after {malformed_attempts} attempts: "
                                f"{outcome.detail}",
                                outcome.status,
                            )
                        )
                    return
                cause, delay = "malformed", self.transient_backoff.delay(malformed_attempts - 1)
            elif kind is Kind.RATE_LIMITED:
                cause = "429"
                limited += 1
                delay = self.throttle.rate_limited(outcome.retry_after_s, self.limited_backoff).delay_s
                log.warning(
                    "ASAPP API answered 429: pausing all requests for %.1fs",
                    delay,
                    extra={"event": "backoff_start", "cause": cause, "delay_s": round(delay, 3)},
                )
                # The pause lives in the throttle; acquire() waits it out for every thread.
                batch.retrying = True
                self.metrics.retries.labels(entity, cause).inc()
                self.metrics.backoff_seconds.labels(cause).inc(delay)
                continue
            elif kind is Kind.AUTH:
                streak = self.credentials.failed(outcome.status, outcome.detail)
                cause, delay = "auth", self.auth_backoff.delay(streak - 1)
                self.throttle.pause(delay)
            else:  # TRANSIENT
                cause = "5xx" if outcome.status is not None else "network"
                delay = self.transient_backoff.delay(transient_attempt)
                if outcome.retry_after_s is not None:
                    delay = max(delay, min(outcome.retry_after_s, self.transient_backoff.cap_s))
                transient_attempt += 1
            if not batch.retrying or transient_attempt == 1:
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
            if batch.cancel.wait(delay):
                out.abandoned.extend(items)
                return

    def _observe(self, batch: Batch, items: Sequence[Item], outcome: Outcome) -> None:
        entity = batch.entity.value
        m = self.metrics
        m.http_requests.labels(entity, str(outcome.status) if outcome.status else "error").inc()
        m.http_duration.labels(entity, status_class(outcome.status)).observe(outcome.duration_s)
        m.batch_items.labels(entity).observe(len(items))
        m.batch_bytes.labels(entity).observe(body_size(items))

    @staticmethod
    def _dead(item: Item, reason: str, error: str, status: int | None) -> DeadLetter:
        return DeadLetter(item.message, item.entity, reason, clip(error), status)
