"""The poll loop: the only place that knows about pausing, rebalancing, committing and stopping.

Commit invariant
----------------
**A committed offset N for a partition means every message of that partition below N was
delivered to the API (accepted, or 409 already persisted) or acknowledged by the dead-letter
topic.** Several batches are in flight at once and complete in any order; the
:class:`~consumer.offsets.OffsetTracker` only lets a partition's commit advance over the
contiguous run of finished offsets. Messages that are held (schema registry outage), still
being retried (API outage), waiting for a dead-letter acknowledgement, or abandoned on
revoke/shutdown are never finished, so nothing past them is committed: after a crash or a
rebalance they are read again (at-least-once; a redelivered message carries the same
``eventId``).

Flow per message (poll-loop thread): decode → map → validate → batch. Closed batches go to
the :class:`~consumer.sender.Sender` threads (a batch past its linger window stays open while
every thread is busy, so a slow or throttled API gets fewer, fuller requests); their
:class:`~consumer.records.Completion` comes back here, where delivered items are finished
and dead letters are produced. A dead letter's offset is finished only in the producer's
delivery callback; if the DLQ cannot be written the partition is paused and the write
retried, never skipped.

Pausing: a partition is paused while a batch holding its items is being retried, while its
messages wait for the schema registry, while a dead letter of it failed to be written, and all
partitions are paused once ``max_buffered_messages`` are unfinished (until fewer than 80 % are).

Lifecycle: a signal handler only calls :meth:`Pipeline.request_stop`. Revoke and stop both
flush open batches, wait for their outcome within a bound, give up on (cancel) the rest
without committing it, commit what is finished, and only then release the partitions.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from consumer.batcher import Batcher
from consumer.errors import DecodeError, RegistryUnavailable, ValidationError
from consumer.metrics import Metrics
from consumer.offsets import OffsetTracker
from consumer.records import Batch, Completion, DeadLetter, Entity, Item, Message, TopicPartition
from consumer.retry import Backoff, server_error_backoff

log = logging.getLogger(__name__)


class Decoder(Protocol):
    def decode(self, value: bytes | None) -> dict[str, Any]: ...


class Validator(Protocol):
    def error(self, item: Mapping[str, Any]) -> str | None: ...


class Mapper(Protocol):
    def __call__(
        self, entity: Entity, record: Mapping[str, Any], *, topic: str, partition: int, offset: int
    ) -> dict[str, Any]: ...


class Source(Protocol):
    def subscribe(
        self,
        topics: Iterable[str],
        *,
        on_assign: Callable[[list[TopicPartition]], None],
        on_revoke: Callable[[list[TopicPartition]], None],
        on_lost: Callable[[list[TopicPartition]], None],
        on_commit: Callable[[str | None, dict[TopicPartition, int]], None] | None = None,
    ) -> None: ...
    def consume(self, max_messages: int, timeout_s: float) -> list[Message]: ...
    def pause(self, tps: Iterable[TopicPartition]) -> None: ...
    def resume(self, tps: Iterable[TopicPartition]) -> None: ...
    def commit(
        self, offsets: Mapping[TopicPartition, int], timeout_s: float
    ) -> dict[TopicPartition, int]: ...
    def commit_async(self, offsets: Mapping[TopicPartition, int]) -> None: ...
    def high_watermark(self, tp: TopicPartition) -> int | None: ...
    def committed(
        self, tps: Iterable[TopicPartition], timeout_s: float
    ) -> dict[TopicPartition, int | None]: ...
    def close(self, timeout_s: float) -> bool: ...


class DeadLetters(Protocol):
    def produce(
        self, dl: DeadLetter, on_done: Callable[[DeadLetter, str | None], None]
    ) -> bool: ...
    def poll(self) -> None: ...
    def flush(self, timeout_s: float) -> int: ...


class SenderLike(Protocol):
    completions: Any  # queue.Queue[Completion]

    def submit(self, batch: Batch) -> None: ...
    def has_capacity(self) -> bool: ...
    def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """The pipeline's knobs (a projection of Settings)."""

    topic_entities: Mapping[str, Entity]
    max_buffered_messages: int = 50_000
    revoke_timeout_s: float = 10.0
    shutdown_timeout_s: float = 25.0
    commit_timeout_s: float = 5.0
    commit_interval_s: float = 1.0
    lag_interval_s: float = 5.0
    consume_batch: int = 500
    retry_max_backoff_s: float = 60.0


def _dumps(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON of an item (orjson: about 10x faster than the stdlib here)."""
    return orjson.dumps(payload)


class Pipeline:
    """Consumes, batches, hands batches to the sender, commits. See the module docstring."""

    def __init__(
        self,
        *,
        config: PipelineConfig,
        source: Source,
        dead_letters: DeadLetters,
        sender: SenderLike,
        batcher: Batcher,
        decoders: Mapping[Entity, Decoder],
        validators: Mapping[Entity, Validator],
        mapper: Mapper,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.source = source
        self.dlq = dead_letters
        self.sender = sender
        self.batcher = batcher
        self.decoders = decoders
        self.validators = validators
        self.mapper = mapper
        self.metrics = metrics
        self.clock = clock
        self.tracker = OffsetTracker()
        self.assigned: set[TopicPartition] = set()
        self._tp_generation: dict[TopicPartition, int] = {}
        self._generation = 0
        self._inflight: dict[int, tuple[Batch, frozenset[TopicPartition]]] = {}
        self._paused: set[TopicPartition] = set()
        self._fresh: set[TopicPartition] = set()
        self._held: dict[TopicPartition, deque[Message]] = {}
        self._held_until: dict[TopicPartition, float] = {}
        self._held_attempts: dict[TopicPartition, int] = {}
        self._registry_backoff: Backoff = server_error_backoff(config.retry_max_backoff_s)
        self._dlq_backoff: Backoff = server_error_backoff(min(30.0, config.retry_max_backoff_s))
        self._dlq_retry: deque[tuple[float, DeadLetter]] = deque()
        # offsets per partition whose dead-letter write failed and is not yet rewritten
        self._dlq_blocked: dict[TopicPartition, set[int]] = {}
        # dead letters produced and not yet acknowledged, per partition
        self._dlq_unacked: dict[TopicPartition, int] = {}
        self._dlq_failures = 0
        self._stop = threading.Event()
        self._consumed_counters: dict[str, Any] = {}
        self._mapped_counters = {e: metrics.items_mapped.labels(e.value) for e in Entity}
        self._stop_requested_at: float | None = None
        self._async_commit_at: float | None = None
        self._closing = False
        self._next_commit = 0.0
        self._next_lag = 0.0
        self._throttled_all = False
        self.last_iteration = clock()
        self.delivered_items = 0
        self.dead_lettered = 0

    # ------------------------------------------------------------------ lifecycle
    def request_stop(self) -> None:
        """Ask the loop to stop (safe from a signal handler or another thread). The shutdown
        bound counts from the first request."""
        if self._stop_requested_at is None:
            self._stop_requested_at = self.clock()
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Subscribe and loop until :meth:`request_stop`; then drain, commit and close."""
        topics = list(self.config.topic_entities)
        self.source.subscribe(
            topics,
            on_assign=self.on_assign,
            on_revoke=self.on_revoke,
            on_lost=self.on_lost,
            on_commit=self._on_commit,
        )
        log.info("subscribed", extra={"event": "subscribe", "topics": topics})
        try:
            while not self._stop.is_set():
                self.iterate()
        finally:
            self.shutdown()

    def iterate(self) -> None:
        """One turn of the loop: consume, process completions and dead letters, close due
        batches, adjust pauses, commit when due."""
        now = self.clock()
        self.last_iteration = now
        self.metrics.poll_loop_last_seconds.set(time.time())
        timeout = 0.1
        deadline = self.batcher.next_deadline()
        if deadline is not None and self.sender.has_capacity():
            timeout = max(0.0, min(timeout, deadline - now))
        for message in self.source.consume(self.config.consume_batch, timeout):
            self._process(message)
        self._housekeeping()

    def _housekeeping(self) -> None:
        self._drain_completions()
        self.dlq.poll()
        self._retry_dead_letters()
        self._retry_held()
        # A batch past its linger window waits (and keeps filling) while no sender thread could
        # take it anyway; count and byte limits still close batches as usual.
        if self.sender.has_capacity():
            for batch in self.batcher.due():
                self._submit(batch)
        self._update_pauses()
        now = self.clock()
        if now >= self._next_commit:
            self._next_commit = now + self.config.commit_interval_s
            self.commit()
        if now >= self._next_lag:
            self._next_lag = now + self.config.lag_interval_s
            self._update_lag()

    def shutdown(self) -> None:
        """Flush, wait for in-flight work within the shutdown bound, commit, close."""
        started = self._stop_requested_at if self._stop_requested_at is not None else self.clock()
        total = self.config.shutdown_timeout_s
        # The bound covers everything: draining, then the final commit, then leaving the group.
        close_budget = min(5.0, total / 5)
        commit_budget = min(self.config.commit_timeout_s, total / 4)
        drain_until = started + max(0.5, total - commit_budget - close_budget - 1.0)
        log.info("stopping: draining in-flight work", extra={"event": "stop"})
        for batch in self.batcher.flush("shutdown"):
            self._submit(batch)
        self._wait_for(
            lambda: (
                not self._inflight and not any(self._dlq_unacked.values()) and not self._dlq_retry
            ),
            drain_until,
        )
        abandoned = self._cancel(lambda tps: True)
        self.dlq.flush(max(0.1, min(2.0, drain_until + 1.0 - self.clock())))
        self.dlq.poll()
        self._drain_completions()
        self._closing = True
        self.commit(final=True, timeout_s=commit_budget)
        self.source.close(close_budget)
        self.sender.stop()
        log.info(
            "stopped",
            extra={
                "event": "stopped",
                "abandoned_batches": abandoned,
                "unfinished_messages": self.tracker.pending_count(),
                "seconds": round(self.clock() - started, 3),
            },
        )

    # ------------------------------------------------------------------ rebalance
    def on_assign(self, tps: list[TopicPartition]) -> None:
        self._generation += 1
        for tp in tps:
            self._tp_generation[tp] = self._generation
        self.assigned.update(tps)
        # Newly assigned partitions start unpaused as far as we know; make librdkafka agree at
        # the next turn (pause/resume only apply once the assignment is in effect).
        self._fresh.update(tps)
        self.metrics.assigned_partitions.set(len(self.assigned))
        log.info(
            "partitions assigned", extra={"event": "assign", "partitions": [str(t) for t in tps]}
        )

    def on_revoke(self, tps: list[TopicPartition]) -> None:
        """Finish (or give up on, uncommitted) work for ``tps`` within the revoke bound,
        commit, then release them."""
        revoked = set(tps)
        log.info(
            "partitions revoked", extra={"event": "revoke", "partitions": [str(t) for t in tps]}
        )
        if not self._closing:
            for batch in self.batcher.flush("revoke"):
                self._submit(batch)
            # The bound covers waiting and the commit: keep part of it for the commit.
            commit_budget = min(self.config.commit_timeout_s, self.config.revoke_timeout_s / 2)
            deadline = self.clock() + self.config.revoke_timeout_s - commit_budget

            def settled() -> bool:
                if any(parts & revoked for _, parts in self._inflight.values()):
                    return False
                return not any(self._dlq_unacked.get(tp) for tp in revoked) and not any(
                    d.message.position.tp in revoked for _, d in self._dlq_retry
                )

            self._wait_for(settled, deadline)
            for tp in revoked:  # from here on, abandoned items of these are not ours to resend
                self._tp_generation.pop(tp, None)
            self._cancel(lambda parts: bool(parts & revoked))
            self.dlq.flush(0.5)
            self.dlq.poll()
            self._drain_completions()
            self.commit(only=revoked, final=True, timeout_s=commit_budget)
        self._release(revoked)

    def on_lost(self, tps: list[TopicPartition]) -> None:
        """Partitions already owned by someone else: commit nothing, drop everything."""
        lost = set(tps)
        log.warning("partitions lost", extra={"event": "lost", "partitions": [str(t) for t in tps]})
        self._cancel(lambda parts: bool(parts & lost))
        self._release(lost)

    def _release(self, tps: set[TopicPartition]) -> None:
        # librdkafka keeps a partition's pause flag across a rebalance: a paused partition
        # re-assigned to us would never be fetched again. Resume while it is still ours.
        paused = self._paused & tps
        if paused:
            self.source.resume(paused)
        self.tracker.forget(tps)
        for tp in tps:
            self._held.pop(tp, None)
            self._held_until.pop(tp, None)
            self._held_attempts.pop(tp, None)
            self._dlq_blocked.pop(tp, None)
            self._dlq_unacked.pop(tp, None)
            self._tp_generation.pop(tp, None)
        self._dlq_retry = deque(
            (t, d) for t, d in self._dlq_retry if d.message.position.tp not in tps
        )
        self._paused -= tps
        self.assigned -= tps
        self.metrics.assigned_partitions.set(len(self.assigned))
        for tp in tps:
            for gauge in (self.metrics.consumer_lag, self.metrics.committed_offset):
                with contextlib.suppress(KeyError):
                    gauge.remove(tp.topic, str(tp.partition))

    # ------------------------------------------------------------------ per message
    def _process(self, message: Message) -> None:
        pos = message.position
        entity = self.config.topic_entities.get(pos.topic)
        if entity is None:  # not subscribed: cannot happen unless the broker misbehaves
            log.error("message from unexpected topic %s", pos, extra={"event": "unexpected_topic"})
            return
        counter = self._consumed_counters.get(pos.topic)
        if counter is None:  # label lookups cost more than the increment: cache the child
            counter = self.metrics.messages_consumed.labels(entity.value, pos.topic)
            self._consumed_counters[pos.topic] = counter
        counter.inc()
        try:
            self.tracker.track(pos)
        except ValueError:
            # Re-read after a seek the tracker already knows about: ignore the duplicate.
            return
        tp = pos.tp
        held = self._held.get(tp)
        if held is not None:
            held.append(message)
        elif not self._handle(message, entity):
            self._held[tp] = deque([message])

    def _handle(self, message: Message, entity: Entity) -> bool:
        """Decode, map, validate and batch one message. False when it must wait for the schema
        registry (outage): the caller holds it and everything after it in its partition."""
        pos = message.position
        try:
            record = self.decoders[entity].decode(message.value)
        except RegistryUnavailable as exc:
            tp = pos.tp
            attempt = self._held_attempts.get(tp, 0)
            self._held_attempts[tp] = attempt + 1
            delay = max(exc.retry_after_s or 0.0, self._registry_backoff.delay(attempt), 0.05)
            self._held_until[tp] = self.clock() + delay
            self.metrics.decode_failures.labels(entity.value, "registry_unavailable").inc()
            log.warning(
                "schema registry unavailable at %s: %s; partition paused, retry in %.2fs",
                pos,
                exc,
                delay,
                extra={
                    "event": "registry_unavailable",
                    "topic": pos.topic,
                    "partition": pos.partition,
                    "offset": pos.offset,
                },
            )
            return False
        except DecodeError as exc:
            self.metrics.decode_failures.labels(entity.value, "dead_letter").inc()
            self._dead_letter(DeadLetter(message, entity, "decode", str(exc)[:1024]))
            return True
        self._held_attempts.pop(pos.tp, None)
        try:
            payload = self.mapper(
                entity, record, topic=pos.topic, partition=pos.partition, offset=pos.offset
            )
            error = self.validators[entity].error(payload)
        except (ValidationError, TypeError, ValueError, KeyError, AttributeError) as exc:
            payload, error = {}, f"cannot map event: {type(exc).__name__}: {exc}"
        if error is not None:
            self.metrics.items_invalid.labels(entity.value).inc()
            self._dead_letter(DeadLetter(message, entity, "validation", error[:1024]))
            return True
        self._mapped_counters[entity].inc()
        item = Item(
            entity,
            str(payload["eventId"]),
            _dumps(payload),
            message,
            self._tp_generation.get(pos.tp, 0),
        )
        for batch in self.batcher.add(item):
            self._submit(batch)
        return True

    def _retry_held(self) -> None:
        if not self._held:
            return
        now = self.clock()
        for tp in list(self._held):
            if self._held_until.get(tp, 0.0) > now:
                continue
            queue = self._held[tp]
            entity = self.config.topic_entities[tp.topic]
            while queue:
                if not self._handle(queue[0], entity):
                    break
                queue.popleft()
            if not queue:
                del self._held[tp]
                self._held_until.pop(tp, None)
                log.info(
                    "schema registry reachable again; %s resumes",
                    tp,
                    extra={"event": "registry_recovered"},
                )

    # ------------------------------------------------------------------ batches
    def _submit(self, batch: Batch) -> None:
        parts = frozenset(i.position.tp for i in batch.items)
        batch.generation = self._generation
        self._inflight[id(batch)] = (batch, parts)
        self.sender.submit(batch)

    def _drain_completions(self) -> None:
        completions = self.sender.completions
        while True:
            try:
                completion: Completion = completions.get_nowait()
            except Exception:  # queue.Empty
                return
            self._complete(completion)

    def _complete(self, c: Completion) -> None:
        self._inflight.pop(id(c.batch), None)
        entity = c.batch.entity.value
        if c.delivered:
            self.metrics.items_accepted.labels(entity).inc(len(c.delivered))
            self.metrics.last_delivery.set(c.acked_at)
            latency = self.metrics.end_to_end_latency.labels(entity)
            for item in c.delivered:
                self.tracker.finish(item.position)
                ts = item.message.timestamp_ms
                if ts is not None:
                    latency.observe(max(0.0, c.acked_at - ts / 1000.0))
            self.delivered_items += len(c.delivered)
        for dl in c.dead:
            # A batch that finished after its partition was revoked: the new owner reads the
            # message again and decides; dead-lettering it here too would only duplicate.
            if dl.message.position.tp in self.assigned:
                self._dead_letter(dl)
        if c.abandoned and not self._closing and not self._stop.is_set():
            retry = [
                i
                for i in c.abandoned
                if self._tp_generation.get(i.position.tp) == i.generation
                and i.position.tp in self.assigned
            ]
            for item in retry:  # partition still ours (cooperative rebalance): send again
                for batch in self.batcher.add(item):
                    self._submit(batch)

    def _cancel(self, touches: Callable[[frozenset[TopicPartition]], bool]) -> int:
        """Give up on in-flight batches whose partitions match; returns how many."""
        n = 0
        for key, (batch, parts) in list(self._inflight.items()):
            if touches(parts):
                batch.cancel.set()
                del self._inflight[key]
                n += 1
        if n:
            log.warning(
                "gave up on %d in-flight batches (not committed)",
                n,
                extra={"event": "abandon", "batches": n},
            )
        return n

    def _wait_for(self, done: Callable[[], bool], deadline: float) -> None:
        """Process completions and dead-letter acks until ``done()`` or ``deadline``."""
        completions = self.sender.completions
        while not done() and self.clock() < deadline:
            try:
                completion = completions.get(timeout=0.05)
            except Exception:
                completion = None
            if completion is not None:
                self._complete(completion)
            self.dlq.poll()
            self._retry_dead_letters()
            self.last_iteration = self.clock()

    # ------------------------------------------------------------------ dead letters
    def _dead_letter(self, dl: DeadLetter) -> None:
        pos = dl.message.position
        log.warning(
            "dead-lettering %s: %s: %s",
            pos,
            dl.reason,
            dl.error,
            extra={
                "event": "dead_letter",
                "topic": pos.topic,
                "partition": pos.partition,
                "offset": pos.offset,
                "reason": dl.reason,
                "entity": dl.entity.value,
                "http_status": dl.http_status,
            },
        )
        self._produce_dead_letter(dl)

    def _produce_dead_letter(self, dl: DeadLetter) -> None:
        tp = dl.message.position.tp
        if self.dlq.produce(dl, self._on_dead_letter_done):
            self._dlq_unacked[tp] = self._dlq_unacked.get(tp, 0) + 1
        else:  # local queue full: try again shortly
            self._dlq_retry.append((self.clock() + 0.1, dl))

    def _on_dead_letter_done(self, dl: DeadLetter, error: str | None) -> None:
        pos = dl.message.position
        tp = pos.tp
        if tp in self._dlq_unacked:
            self._dlq_unacked[tp] -= 1
            if self._dlq_unacked[tp] <= 0:
                del self._dlq_unacked[tp]
        if error is None:
            if self.tracker.finish(pos):
                self.dead_lettered += 1
            self.metrics.dead_letters.labels(dl.entity.value, dl.reason).inc()
            blocked = self._dlq_blocked.get(tp)
            if blocked is not None:
                blocked.discard(pos.offset)
                if not blocked:
                    del self._dlq_blocked[tp]
                    self._dlq_failures = 0
                    log.info(
                        "dead-letter topic writable again; %s resumes",
                        tp,
                        extra={"event": "dlq_recovered"},
                    )
            return
        self.metrics.dlq_failures.inc()
        self._dlq_failures += 1
        delay = self._dlq_backoff.delay(min(self._dlq_failures, 10))
        log.error(
            "dead-letter write failed for %s (%s); partition held, retry in %.1fs",
            pos,
            error,
            delay,
            extra={
                "event": "dlq_write_failed",
                "topic": pos.topic,
                "partition": pos.partition,
                "offset": pos.offset,
            },
        )
        if tp in self.assigned:
            # Held until this very dead letter is written, whatever happens to others.
            self._dlq_blocked.setdefault(tp, set()).add(pos.offset)
            self._dlq_retry.append((self.clock() + delay, dl))

    def _retry_dead_letters(self) -> None:
        if not self._dlq_retry:
            return
        now = self.clock()
        due = [d for t, d in self._dlq_retry if t <= now]
        if not due:
            return
        self._dlq_retry = deque((t, d) for t, d in self._dlq_retry if t > now)
        for dl in due:
            self._produce_dead_letter(dl)

    # ------------------------------------------------------------------ pauses, commits
    def _update_pauses(self) -> None:
        pending = self.tracker.pending_count()
        limit = self.config.max_buffered_messages
        if pending >= limit:
            self._throttled_all = True
        elif pending < limit * 0.8:
            self._throttled_all = False
        if self._throttled_all:
            want = set(self.assigned)
        else:
            want = set(self._held) | set(self._dlq_blocked)
            for batch, parts in self._inflight.values():
                if batch.retrying:
                    want |= parts
            want &= self.assigned
        to_pause = want - self._paused
        to_resume = (self._paused | (self._fresh & self.assigned)) - want
        self._fresh.clear()
        if to_pause:
            self.source.pause(to_pause)
        if to_resume:
            self.source.resume(to_resume)
        self._paused = want
        self.metrics.paused_partitions.set(len(want))
        self.metrics.buffered_messages.set(pending)

    def commit(
        self,
        *,
        only: set[TopicPartition] | None = None,
        final: bool = False,
        timeout_s: float | None = None,
    ) -> bool:
        """Commit every partition whose committable offset advanced.

        Regular commits are asynchronous (one outstanding at a time, its result arrives in
        :meth:`_on_commit`), so a slow or unreachable broker never stalls the loop. ``final``
        commits (revoke, shutdown) are synchronous and bounded by ``timeout_s``. A failure is
        logged and retried later: offsets only ever move forward."""
        offsets = self.tracker.to_commit()
        offsets = {
            tp: o
            for tp, o in offsets.items()
            if tp in self.assigned and (only is None or tp in only)
        }
        if not offsets:
            return True
        started = self.clock()
        if not final:
            pending = self._async_commit_at
            if pending is not None and started - pending < self.config.commit_timeout_s:
                return True
            self._async_commit_at = started
            try:
                self.source.commit_async(offsets)
            except Exception as exc:  # KafkaException: nothing to commit, not assigned...
                self._async_commit_at = None
                self._commit_failed(exc, final)
                return False
            return True
        try:
            done = self.source.commit(offsets, timeout_s or self.config.commit_timeout_s)
        except Exception as exc:  # KafkaException, TimeoutError: try again next time
            self._commit_failed(exc, final)
            return False
        self.metrics.commit_duration.observe(self.clock() - started)
        self._committed(done)
        log.info(
            "committed",
            extra={"event": "commit", "offsets": {str(t): o for t, o in done.items()}},
        )
        return True

    def _on_commit(self, error: str | None, done: dict[TopicPartition, int]) -> None:
        """Result of a commit, served by the consumer from within :meth:`iterate`."""
        sent_at, self._async_commit_at = self._async_commit_at, None
        if sent_at is not None:
            self.metrics.commit_duration.observe(self.clock() - sent_at)
        if error is not None:
            self._commit_failed(error, False)
        if done:
            self._committed(done)

    def _committed(self, done: Mapping[TopicPartition, int]) -> None:
        self.metrics.commits.labels("ok").inc()
        for tp, offset in done.items():
            if tp in self.assigned:  # a late answer for a released partition is history
                self.tracker.mark_committed(tp, offset)
                self.metrics.committed_offset.labels(tp.topic, str(tp.partition)).set(offset)

    def _commit_failed(self, error: object, final: bool) -> None:
        self.metrics.commits.labels("failed").inc()
        log.warning("commit failed: %s", error, extra={"event": "commit_failed", "final": final})

    def _update_lag(self) -> None:
        unknown = [tp for tp in self.assigned if self.tracker.committed(tp) is None]
        if unknown:
            try:
                for tp, offset in self.source.committed(unknown, 2.0).items():
                    if offset is not None:
                        self.tracker.mark_committed(tp, offset)
            except Exception as exc:  # lag is best effort; the commit path reports failures
                log.debug("committed offsets unavailable: %s", exc)
        for tp in self.assigned:
            high = self.source.high_watermark(tp)
            committed = self.tracker.committed(tp)
            if high is None or committed is None:
                continue
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                max(0, high - committed)
            )
