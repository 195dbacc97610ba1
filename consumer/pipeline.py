"""The poll loop: the only place that knows about assignment, pausing, committing and stopping.

Commit invariant
----------------
**A committed offset N for a partition means every message of that partition below N was
delivered to the API (accepted, or 409 already persisted) or acknowledged by the dead-letter
topic.** Several batches are in flight at once and complete in any order; the
:class:`~consumer.offsets.OffsetTracker` only lets a partition's commit advance over the
contiguous run of finished offsets. Messages that are held (schema registry outage), deferred
or still being retried (API outage), waiting for a dead-letter acknowledgement, or abandoned on
revoke/shutdown are never finished, so nothing past them is committed: after a crash or a
rebalance they are read again (at-least-once; a redelivered message carries the same
``eventId``). Every result names the tracker generation its message was consumed in, so a late
answer for a released or rewound partition never finishes the message that now holds its offset.

The loop owns the partition lifecycle and delegates each kind of state to one object, each
releasing a partition with one ``forget``:

- :class:`~consumer.intake.Intake` — each consumed message tracked, run through the pure
  :class:`~consumer.ingest.Ingest` step (message → item or dead letter) and routed;
- :class:`~consumer.holds.RegistryHolds` — messages waiting for the schema registry;
- :class:`~consumer.dispatch.Dispatcher` — open, deferred (per-id order) and in-flight batches;
- :class:`~consumer.outbox.DeadLetterOutbox` — dead letters until the DLQ acknowledges them;
- :class:`~consumer.offsets.OffsetTracker` — what may be committed.

Pausing: a partition is paused while a batch holding its items is being retried, while its
messages wait for the schema registry, while a dead letter of it failed to be written, and all
partitions are paused once ``max_buffered_messages`` or ``max_buffered_bytes`` are unfinished
(until both are below 80 %).

Lifecycle: a signal handler only calls :meth:`Pipeline.request_stop`. Revoke and stop share one
handover (:meth:`Pipeline._handover`) under one :class:`~consumer.deadline.Deadline`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from queue import Empty

from consumer.batcher import Batcher
from consumer.commits import Committer
from consumer.deadline import Deadline
from consumer.dispatch import Dispatcher
from consumer.holds import RegistryHolds
from consumer.ingest import Ingest
from consumer.intake import IngestWorkers, Intake
from consumer.metrics import Metrics
from consumer.offsets import OffsetTracker
from consumer.outbox import DeadLetterOutbox
from consumer.pauses import Pauses
from consumer.ports import DeadLetters, Decoder, Mapper, SenderLike, Source, Validator
from consumer.quota import Pacer
from consumer.records import Completion, DeadLetter, Entity, Item, TopicPartition

__all__ = ["Decoder", "Pipeline", "PipelineConfig"]

log = logging.getLogger(__name__)

#: How long a handover keeps waiting once every batch left is in a retry backoff.
STUCK_GRACE_S = 1.0


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """The pipeline's knobs (a projection of Settings)."""

    topic_entities: Mapping[str, Entity]
    max_buffered_messages: int = 50_000
    max_buffered_bytes: int = 64 * 1024 * 1024
    revoke_timeout_s: float = 10.0
    shutdown_timeout_s: float = 25.0
    commit_timeout_s: float = 5.0
    commit_interval_s: float = 1.0
    lag_interval_s: float = 5.0
    consume_batch: int = 500
    retry_max_backoff_s: float = 60.0
    coalesce: bool = False
    max_wait_s: float | None = None  # a lingering batch this old is sent whatever the pacing


class Pipeline:
    """Consumes, ingests, dispatches, commits. See the module docstring."""

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
        pacer: Pacer | None = None,
        workers: IngestWorkers | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``workers``: where the ingest step runs (None: in the loop; see
        :mod:`consumer.intake`)."""
        self.config = config
        self.pacer = pacer
        self.source = source
        self.sender = sender
        self.metrics = metrics
        self.clock = clock
        self.tracker = OffsetTracker()
        self.holds = RegistryHolds(max_backoff_s=config.retry_max_backoff_s, clock=clock)
        batcher.track_keys = config.coalesce
        self.dispatch = Dispatcher(
            batcher=batcher, sender=sender, metrics=metrics, coalesce=config.coalesce
        )
        self.outbox = DeadLetterOutbox(
            producer=dead_letters,
            on_written=self._dead_lettered,
            metrics=metrics,
            max_backoff_s=config.retry_max_backoff_s,
            clock=clock,
        )
        self.intake = Intake(
            topic_entities=config.topic_entities,
            ingest=Ingest(
                topic_entities=config.topic_entities,
                decoders=decoders,
                validators=validators,
                mapper=mapper,
            ),
            tracker=self.tracker,
            holds=self.holds,
            dispatch=self.dispatch,
            outbox=self.outbox,
            metrics=metrics,
            workers=workers,
        )
        self.assigned: set[TopicPartition] = set()
        self.committer = Committer(
            source=source,
            tracker=self.tracker,
            metrics=metrics,
            assigned=lambda: self.assigned,
            commit_timeout_s=config.commit_timeout_s,
            commit_interval_s=config.commit_interval_s,
            lag_interval_s=config.lag_interval_s,
            clock=clock,
        )
        self.pauses = Pauses(
            source=source,
            metrics=metrics,
            max_messages=config.max_buffered_messages,
            max_bytes=config.max_buffered_bytes,
        )
        self._handing_over: set[TopicPartition] = set()  # abandoned items are not resent
        self._stop = threading.Event()
        self._stop_requested_at: float | None = None
        self._closing = False
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
            on_commit=self.committer.on_commit,
        )
        log.info("subscribed", extra={"event": "subscribe", "topics": topics})
        try:
            while not self._stop.is_set():
                self.iterate()
        finally:
            self.shutdown()

    def iterate(self) -> None:
        """One turn: consume and ingest, serve completions and dead letters, retry held
        messages, send due batches, adjust pauses, commit and report lag when due."""
        now = self.clock()
        self.last_iteration = now
        self.metrics.poll_loop_last_seconds.set(time.time())
        timeout = 0.1 if not self.intake.pending else 0.005  # results to route soon
        deadline = self.dispatch.next_deadline()
        if deadline is not None and self.sender.has_capacity():
            timeout = max(0.0, min(timeout, deadline - now))
        self.intake.process(self.source.consume(self.config.consume_batch, timeout))
        if self.intake.pending:
            self.intake.collect()
        self._drain_completions()
        self.outbox.poll()
        self.intake.retry_held()
        self._send_due()
        self._update_pauses()
        self.committer.when_due()

    def shutdown(self) -> None:
        """Hand over everything within the shutdown bound (counted from the stop request),
        then leave the group and stop the sender threads."""
        total = self.config.shutdown_timeout_s
        deadline = Deadline(total, clock=self.clock, started=self._stop_requested_at)
        close_s = min(5.0, total / 5)
        log.info("stopping: draining in-flight work", extra={"event": "stop"})
        abandoned = self._handover(
            None,
            deadline,
            reason="shutdown",
            commit_s=min(self.config.commit_timeout_s, total / 4),
            close_s=close_s,
        )
        self._closing = True
        self.source.close(max(0.1, deadline.budget(close_s)))
        self.sender.stop()
        log.info(
            "stopped",
            extra={
                "event": "stopped",
                "abandoned_batches": abandoned,
                "unfinished_messages": self.tracker.pending_count(),
                "seconds": round(deadline.elapsed(), 3),
            },
        )

    def _handover(
        self,
        tps: set[TopicPartition] | None,
        deadline: Deadline,
        *,
        reason: str,
        commit_s: float,
        close_s: float = 0.0,
    ) -> int:
        """Finish what can be finished of ``tps`` (every partition when None) within
        ``deadline``, commit it, and give up on the rest uncommitted. Steps:

        1. send every open batch now;
        2. wait for in-flight batches and dead letters of ``tps``, keeping ``commit_s``,
           ``close_s`` and a moment for the DLQ flush for the steps after;
        3. give up on (cancel) the batches still touching ``tps``: not committed;
        4. give the DLQ producer its moment, then serve its acknowledgements and completions;
        5. commit what is finished of ``tps``, synchronously, within ``commit_s``.

        Step 0 routes the results of batches still in the ingest workers (what is not back
        within the bound stays unfinished, uncommitted). Returns how many batches were given
        up on. Releasing is the caller's (revoke
        releases; shutdown leaves that to the consumer's close).
        """
        flush_s = min(1.0, (deadline.end - deadline.started) / 10)
        self._handing_over = set(self.assigned) if tps is None else set(tps)
        try:
            # 0. what is in the ingest workers comes back and is routed first
            reserve_s = commit_s + close_s + flush_s
            self.intake.collect(
                block=True, timeout_s=max(0.1, deadline.budget(deadline.end, reserve_s))
            )
            self.dispatch.flush(reason)  # 1
            until = deadline.until(commit_s + close_s + flush_s, floor_s=0.5)  # 2
            self._wait_for(self._handed_over(tps), until)
            abandoned = self.dispatch.cancel(  # 3
                (lambda parts: True) if tps is None else (lambda parts: bool(parts & tps))
            )
            if abandoned:
                log.warning(
                    "gave up on %d in-flight batches (not committed)",
                    abandoned,
                    extra={"event": "abandon", "batches": abandoned},
                )
            self.outbox.flush(deadline.budget(flush_s, commit_s + close_s))  # 4
            self._drain_completions()
            self.committer.commit(  # 5
                only=tps, final=True, timeout_s=max(0.1, deadline.budget(commit_s, close_s))
            )
        finally:
            self._handing_over = set()
        return abandoned

    def _handed_over(self, tps: set[TopicPartition] | None) -> Callable[[], bool]:
        """The handover's wait condition: every batch and dead letter of ``tps`` finished —
        or the only batches left have all been waiting in a retry backoff for
        ``STUCK_GRACE_S`` (the API is failing: waiting out the bound would only delay the
        stop; they stay uncommitted and are read again)."""
        stuck_since: list[float] = []

        def done() -> bool:
            if not self.outbox.settled(tps):
                return False
            if self.dispatch.settled(tps):
                return True
            if not self.dispatch.all_retrying(tps):
                stuck_since.clear()
                return False
            if not stuck_since:
                stuck_since.append(self.clock())
            return self.clock() - stuck_since[0] >= STUCK_GRACE_S

        return done

    # ------------------------------------------------------------------ rebalance
    def on_assign(self, tps: list[TopicPartition]) -> None:
        self.assigned.update(tps)
        self.pauses.assigned(tps)
        self.metrics.assigned_partitions.set(len(self.assigned))
        log.info(
            "partitions assigned", extra={"event": "assign", "partitions": [str(t) for t in tps]}
        )

    def on_revoke(self, tps: list[TopicPartition]) -> None:
        """Hand over ``tps`` within the revoke bound, then release them."""
        log.info(
            "partitions revoked", extra={"event": "revoke", "partitions": [str(t) for t in tps]}
        )
        revoked = set(tps) & self.assigned
        if not self._closing and revoked:
            total = self.config.revoke_timeout_s
            self._handover(
                revoked,
                Deadline(total, clock=self.clock),
                reason="revoke",
                commit_s=min(self.config.commit_timeout_s, total / 2),
            )
        self._release(set(tps))

    def on_lost(self, tps: list[TopicPartition]) -> None:
        """Partitions already owned by someone else: commit nothing, send nothing more."""
        lost = set(tps)
        log.warning("partitions lost", extra={"event": "lost", "partitions": [str(t) for t in tps]})
        self.dispatch.cancel(lambda parts: bool(parts & lost))
        self._release(lost)

    def _release(self, tps: set[TopicPartition]) -> None:
        self.pauses.release(tps)
        self.dispatch.forget(tps)
        self.holds.forget(tps)
        self.outbox.forget(tps)
        self.tracker.forget(tps)
        self.assigned -= tps
        self.metrics.assigned_partitions.set(len(self.assigned))
        for tp in tps:
            for gauge in (self.metrics.consumer_lag, self.metrics.committed_offset):
                with contextlib.suppress(KeyError):
                    gauge.remove(tp.topic, str(tp.partition))

    # ------------------------------------------------------------------ completions
    def _drain_completions(self) -> None:
        completions = self.sender.completions
        while True:
            try:
                completion = completions.get_nowait()
            except Empty:
                return
            self._complete(completion)

    def _complete(self, c: Completion) -> None:
        entity = c.batch.entity.value
        tracker = self.tracker
        if c.delivered:
            self.metrics.items_accepted.labels(entity).inc(len(c.delivered))
            self.metrics.last_delivery.set(c.acked_at)
            latency = self.metrics.end_to_end_latency.labels(entity)
            for item in c.delivered:
                if tracker.finish(item.position, item.generation):
                    self.delivered_items += 1
                for older in item.superseded:
                    tracker.finish(older.position, older.generation)
                ts = item.message.timestamp_ms
                if ts is not None:
                    latency.observe(max(0.0, c.acked_at - ts / 1000.0))
        if c.dead:
            items = {id(i.message): i for i in c.batch.items}
            for dl in c.dead:
                owner = items.get(id(dl.message))
                if owner is None or not tracker.owns(dl.message.position, owner.generation):
                    # A batch of a partition released (or rewound) meanwhile: its new owner
                    # reads the message again and decides; writing it here would duplicate.
                    continue
                for older in owner.superseded:
                    tracker.finish(older.position, older.generation)
                self.outbox.send(dl, owner.generation)
        resend: list[Item] = []
        if c.abandoned and not self._closing and not self._stop.is_set():
            resend = [  # partition still ours (cooperative rebalance): send again
                i
                for i in c.abandoned
                if i.position.tp not in self._handing_over
                and tracker.owns(i.position, i.generation)
            ]
        self.dispatch.completed(c, resend)

    def _dead_lettered(self, dl: DeadLetter, generation: int) -> None:
        if self.tracker.finish(dl.message.position, generation):
            self.dead_lettered += 1

    def _wait_for(self, done: Callable[[], bool], until: float) -> None:
        """Serve completions and dead-letter acknowledgements until ``done()`` or ``until``."""
        completions = self.sender.completions
        while not done() and self.clock() < until:
            with contextlib.suppress(Empty):
                self._complete(completions.get(timeout=0.05))
            self.outbox.poll()
            self.last_iteration = self.clock()

    # ------------------------------------------------------------------ pauses
    def _send_due(self) -> None:
        """Send the lingering batches the request budget allows now (all, without a pacer):
        the others keep filling, so requests get fuller exactly when the budget is tight."""
        pacer = self.pacer
        if pacer is None:
            self.dispatch.send_due()
            return
        pacer.refresh(demand=self.dispatch.demand(), assigned_share=self._assigned_share())
        limit = pacer.linger_allowance()
        sent = self.dispatch.send_due(limit=limit, max_wait_s=self.config.max_wait_s)
        if limit is not None:
            pacer.spent_linger(sent)

    def _assigned_share(self) -> float | None:
        """This pod's share of the subscribed partitions (the pacer's safe share)."""
        total = self.source.partitions_total(self.config.topic_entities, 2.0)
        return len(self.assigned) / total if total else None

    def _update_pauses(self) -> None:
        pending, pending_bytes = self.tracker.pending_count(), self.tracker.pending_bytes()
        walled = self.assigned if self.pacer is not None and self.pacer.exhausted else set()
        self.pauses.update(
            self.assigned,
            self.holds.partitions() | self.outbox.blocked() | self.dispatch.retrying() | walled,
            pending=pending,
            pending_bytes=pending_bytes,
        )
        self.metrics.buffered_messages.set(pending)
        self.metrics.buffered_bytes.set(pending_bytes)
        self.metrics.items_deferred.set(self.dispatch.deferred_count())
