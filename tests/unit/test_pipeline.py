"""Pipeline: the poll loop driven turn by turn against hand-written fakes of its collaborators.

The fakes stand where librdkafka, the sender threads and the dead-letter producer stand, and
record what the pipeline asked of them. Nothing sleeps: ``Pipeline.iterate`` is called by hand,
the clock is a :class:`FakeClock`, and when the pipeline *waits* for completions (revoke,
shutdown) the fake completion queue advances that clock instead of blocking, running whatever
the test scheduled for "meanwhile" (a sender thread finishing a batch).

Every commit the source receives is stored with a snapshot of what the world had finished at
that moment (items the test delivered, dead letters the DLQ acknowledged), so
:func:`assert_commit_invariant` checks the pipeline's promise on each commit, not just the last.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from consumer.batcher import Batcher
from consumer.mapping import to_item
from consumer.metrics import Metrics
from consumer.pipeline import Pipeline, PipelineConfig
from consumer.records import (
    Batch,
    Entity,
    Message,
    Position,
    TopicPartition,
)
from consumer.sandbox.events import generate
from consumer.validation import validator_for
from tests.unit.fakes import (
    ACK_DELAY_S,
    TIMESTAMP_MS,
    FakeClock,
    FakeDeadLetters,
    FakeDecoder,
    FakeSender,
    FakeSource,
    FakeWorkers,
    Rebalance,
)

TOPIC = "asapp.metadata.agent"
TOPICS = {TOPIC: Entity.AGENT}

#: Where the rigs of the current test run the ingest step: in the loop (None), or in
#: :class:`FakeWorkers` that answer each batch a turn late (as worker processes would):
#: every test of this module runs both ways (the ``ingest`` fixture).
WORKERS_DELAY: list[int | None] = [None]


@pytest.fixture(autouse=True, params=[None, 1], ids=["in-process", "workers"])
def ingest(request: pytest.FixtureRequest) -> Any:
    WORKERS_DELAY[0] = request.param
    yield request.param
    WORKERS_DELAY[0] = None


def tp(partition: int) -> TopicPartition:
    return TopicPartition(TOPIC, partition)


def positions(batch: Batch) -> list[tuple[int, int]]:
    return [(i.position.partition, i.position.offset) for i in batch.items]


class Rig:
    """A pipeline over the fakes, real batcher, mapping, validation and metrics."""

    def __init__(
        self,
        *,
        partitions: Sequence[int] = (0,),
        max_items: int = 2,
        linger_s: float = 10.0,
        **config: Any,
    ) -> None:
        self.clock = FakeClock()
        self.finished: set[Position] = set()
        self.registry = CollectorRegistry()
        self.source = FakeSource(self.finished)
        self.dlq = FakeDeadLetters(self.finished)
        self.sender = FakeSender(self.clock, self.finished)
        self.decoder = FakeDecoder()
        self.batcher = Batcher(
            max_items=max_items, max_bytes=1_000_000, linger_s=linger_s, clock=self.clock
        )
        knobs: dict[str, Any] = {"commit_interval_s": 0.0, "retry_max_backoff_s": 1.0}
        knobs.update(config)
        delay = WORKERS_DELAY[0]
        self.workers = None if delay is None else FakeWorkers(delay)
        self.pipeline = Pipeline(
            config=PipelineConfig(topic_entities=TOPICS, **knobs),
            source=self.source,
            dead_letters=self.dlq,
            sender=self.sender,
            batcher=self.batcher,
            decoders={Entity.AGENT: self.decoder},
            validators={Entity.AGENT: validator_for(Entity.AGENT)},
            mapper=to_item,
            metrics=Metrics(self.registry),
            workers=self.workers,
            clock=self.clock,
        )
        p = self.pipeline
        if self.workers is not None:
            self.workers.ingest = p.intake.ingest
        # What Pipeline.run() subscribes with (the tests drive iterate() themselves). The commit
        # result callback exists only where regular commits are asynchronous.
        self.source.subscribe(
            list(TOPICS),
            on_assign=p.on_assign,
            on_revoke=p.on_revoke,
            on_lost=p.on_lost,
            on_commit=p.committer.on_commit,
        )
        p.on_assign([tp(n) for n in partitions])

    def msg(
        self,
        partition: int,
        offset: int,
        *,
        value: bytes | None = None,
        record: dict[str, Any] | None = None,
    ) -> Message:
        """A message of ``partition`` at ``offset``; by default a realistic, valid agent event."""
        if value is None:
            value = f"{partition}:{offset}".encode()
        if value != b"bad":
            if record is None:  # a distinct agent per message unless the test says otherwise
                record = generate(Entity.AGENT, 1, seed=partition, start=offset)[0]
                record["externalAgentId"] = f"agent-{partition}-{offset}"
            self.decoder.records[value] = record
        return Message(Position(TOPIC, partition, offset), b"key", value, TIMESTAMP_MS)

    def turn(self, times: int = 1) -> None:
        for _ in range(times):
            self.pipeline.iterate()

    def committed(self, partition: int) -> int | None:
        return self.source.last_commit(tp(partition))

    def sample(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(f"asapp_consumer_{name}", labels)

    def lowest_unfinished(self, partition: int) -> int:
        fed = self.source.fed[tp(partition)]
        unfinished = [o for o in fed if Position(TOPIC, partition, o) not in self.finished]
        return min(unfinished, default=fed[-1] + 1)


def assert_commit_invariant(source: FakeSource) -> None:
    """Every commit N of a partition came after every message below N was finished."""
    for offsets, finished in source.commits:
        for part, next_offset in offsets.items():
            unfinished = [
                o
                for o in source.fed.get(part, [])
                if o < next_offset and Position(part.topic, part.partition, o) not in finished
            ]
            assert not unfinished, f"committed {part}@{next_offset} before {unfinished} finished"


# --------------------------------------------------------------------------- commit invariant
@pytest.mark.parametrize(
    "order",
    [
        pytest.param("forward", id="in-order"),
        pytest.param("reverse", id="reverse"),
        pytest.param(1, id="shuffled-seed-1"),
        pytest.param(7, id="shuffled-seed-7"),
    ],
)
def test_commit_never_passes_an_unfinished_message_whatever_order_batches_complete(
    order: str | int,
) -> None:
    rig = Rig(partitions=(0, 1, 2), max_items=2)
    rig.source.feed(*(rig.msg(p, o) for o in range(6) for p in (0, 1, 2)))
    rig.turn()
    batches = list(rig.sender.submitted)
    assert len(batches) == 9  # all in flight at once, each mixing two partitions
    assert all(len({i.position.tp for i in b.items}) == 2 for b in batches)
    if order == "reverse":
        batches.reverse()
    elif isinstance(order, int):
        random.Random(order).shuffle(batches)
    rejected = Position(TOPIC, 1, 2)

    for batch in batches:
        rig.sender.complete(batch, dead=[i for i in batch.items if i.position == rejected])
        rig.turn()
        assert_commit_invariant(rig.source)
        # commit_interval_s=0: every turn commits as far as the invariant allows, no further
        assert {p: rig.committed(p) for p in (0, 1, 2)} == {
            p: rig.lowest_unfinished(p) for p in (0, 1, 2)
        }

    # All delivered, but the rejected item's dead letter is not acknowledged yet.
    assert [dl.message.position for dl in rig.dlq.produced] == [rejected]
    assert {p: rig.committed(p) for p in (0, 1, 2)} == {0: 6, 1: 2, 2: 6}
    rig.dlq.ack()
    rig.turn()
    assert_commit_invariant(rig.source)
    assert {p: rig.committed(p) for p in (0, 1, 2)} == {0: 6, 1: 6, 2: 6}


def test_failed_commit_is_counted_and_retried_at_the_next_turn() -> None:
    rig = Rig(max_items=2)
    rig.source.feed(rig.msg(0, 0), rig.msg(0, 1))
    rig.turn()
    rig.sender.complete(rig.sender.submitted[0])
    rig.source.fail_commits = 1
    rig.turn()
    assert rig.committed(0) == 0
    rig.turn()  # (an asynchronous commit's failure is only known at the next turn)
    assert rig.sample("commits_total", result="failed") == 1
    assert rig.committed(0) == 2
    rig.turn()
    assert rig.sample("commits_total", result="ok") == 2


# --------------------------------------------------------------------------- dead letters
def test_dead_letter_offset_is_committed_only_after_the_dlq_acknowledges_it() -> None:
    rig = Rig(max_items=2)
    rig.source.feed(rig.msg(0, 0, value=b"bad"), rig.msg(0, 1), rig.msg(0, 2))
    rig.turn()
    [dl] = rig.dlq.produced
    assert (dl.reason, dl.message.position.offset) == ("decode", 0)
    [batch] = rig.sender.submitted
    rig.sender.complete(batch)
    rig.turn(2)
    assert rig.committed(0) == 0  # written to the DLQ, not acknowledged: 1 and 2 wait behind it
    rig.dlq.ack(dl)
    rig.turn()
    assert rig.committed(0) == 3
    assert_commit_invariant(rig.source)


def test_failed_dead_letter_write_holds_its_partition_and_is_retried_after_backoff() -> None:
    rig = Rig(partitions=(0, 1), max_items=2)
    rig.source.feed(rig.msg(0, 0, value=b"bad"), rig.msg(0, 1), rig.msg(0, 2))
    rig.turn()
    [dl] = rig.dlq.produced
    rig.sender.complete(rig.sender.submitted[0])
    rig.dlq.fail(dl, "broker down")
    rig.turn()
    assert rig.source.paused == {tp(0)}
    assert rig.committed(0) == 0
    assert rig.sample("dlq_write_failures_total") == 1
    assert rig.sample("dead_letters_total", entity="agent", reason="decode") is None

    # Held: p0 is not fetched, p1 keeps flowing, nothing rewritten before the backoff.
    rig.source.feed(rig.msg(0, 3), rig.msg(1, 0), rig.msg(1, 1))
    rig.turn()
    assert [positions(b) for b in rig.sender.submitted[1:]] == [[(1, 0), (1, 1)]]
    assert rig.dlq.produced == [dl]

    rig.clock.advance(1.0)  # the DLQ backoff is capped by retry_max_backoff_s=1
    rig.turn()
    assert rig.dlq.produced == [dl, dl]
    assert rig.source.paused == {tp(0)}  # rewritten, not acknowledged yet
    assert rig.committed(0) == 0

    rig.dlq.ack(dl)
    rig.turn()
    assert rig.source.paused == set()
    assert rig.committed(0) == 3
    assert rig.sample("dead_letters_total", entity="agent", reason="decode") == 1
    rig.turn()  # resumed: (0, 3) is fetched now
    assert rig.batcher.open_items() == 1
    assert_commit_invariant(rig.source)


def test_partition_stays_held_while_a_failed_dead_letter_waits_though_another_is_acked() -> None:
    """Pipeline docstring: a partition is paused 'while a dead letter of it failed to be
    written'. A second dead letter of the same partition being acknowledged meanwhile does
    not make the first one written."""
    rig = Rig(max_items=2)
    rig.source.feed(rig.msg(0, 0, value=b"bad"), rig.msg(0, 1, value=b"bad"))
    rig.turn()
    first, second = rig.dlq.produced
    rig.dlq.fail(first)
    rig.dlq.ack(second)
    rig.turn()
    assert rig.committed(0) == 0
    assert rig.source.paused == {tp(0)}, "resumed while the failed dead letter is unwritten"
    rig.clock.advance(1.0)
    rig.turn()
    rig.dlq.ack(first)
    rig.turn()
    assert rig.source.paused == set()
    assert rig.committed(0) == 2


@pytest.mark.parametrize(
    ("value", "record", "reason", "error_part"),
    [
        pytest.param(b"bad", None, "decode", "invalid Avro body", id="undecodable-bytes"),
        pytest.param(
            b"0:0",
            {"externalAgentId": "agent 7!", "eventId": "evt-1"},
            "validation",
            "externalAgentId",
            id="breaks-api-pattern",
        ),
        pytest.param(
            b"0:0",
            # What RegistryAvroDecoder returns for a writer schema whose startTs is a plain
            # long: the value reaches mapping, which raises consumer.errors.ValidationError.
            {"externalAgentId": "agent-7", "startTs": 2**62},
            "validation",
            "out of range",
            id="timestamp-out-of-range-in-mapping",
        ),
    ],
)
def test_message_that_can_never_succeed_is_dead_lettered_and_never_sent(
    value: bytes, record: dict[str, Any] | None, reason: str, error_part: str
) -> None:
    rig = Rig(max_items=1)
    rig.source.feed(rig.msg(0, 0, value=value, record=record), rig.msg(0, 1))
    rig.turn()
    assert [positions(b) for b in rig.sender.submitted] == [[(0, 1)]]
    [dl] = rig.dlq.produced
    assert (dl.message.position.offset, dl.entity, dl.reason) == (0, Entity.AGENT, reason)
    assert error_part in dl.error
    rig.sender.complete(rig.sender.submitted[0])
    rig.dlq.ack(dl)
    rig.turn()
    assert rig.committed(0) == 2
    assert rig.sample("dead_letters_total", entity="agent", reason=reason) == 1


# --------------------------------------------------------------------------- pausing
def test_registry_outage_holds_only_its_partition_and_replays_it_in_order_after_backoff() -> None:
    rig = Rig(partitions=(0, 1), max_items=2)
    rig.decoder.registry_down = True
    rig.decoder.retry_after_s = 4.0  # wins over the backoff (capped at 1 s): deterministic
    rig.source.feed(
        rig.msg(0, 0, value=b"new-schema:0:0"),
        rig.msg(0, 1),
        rig.msg(1, 0),
        rig.msg(1, 1),
        rig.msg(0, 2),
    )
    rig.turn()
    assert rig.source.paused == {tp(0)}
    assert [positions(b) for b in rig.sender.submitted] == [[(1, 0), (1, 1)]]
    assert rig.dlq.produced == []  # an outage never dead-letters
    assert rig.sample("decode_failures_total", entity="agent", reason="registry_unavailable") == 1
    rig.sender.complete(rig.sender.submitted[0])
    rig.turn()
    assert (rig.committed(0), rig.committed(1)) == (0, 2)

    rig.clock.advance(4.0)  # retried at the hint; still down: held again for another 4 s
    rig.turn()
    assert rig.sample("decode_failures_total", entity="agent", reason="registry_unavailable") == 2
    assert rig.source.paused == {tp(0)}
    rig.decoder.registry_down = False
    rig.clock.advance(2.0)
    rig.turn()
    assert len(rig.sender.submitted) == 1
    assert rig.source.paused == {tp(0)}

    rig.clock.advance(2.0)
    rig.turn()
    assert positions(rig.sender.submitted[1]) == [(0, 0), (0, 1)]
    assert rig.batcher.open_items() == 1  # (0, 2) behind them, in order
    assert rig.source.paused == set()
    rig.source.feed(rig.msg(0, 3))
    rig.turn()
    assert positions(rig.sender.submitted[2]) == [(0, 2), (0, 3)]
    for batch in rig.sender.submitted[1:]:
        rig.sender.complete(batch)
    rig.turn()
    assert rig.committed(0) == 4
    assert_commit_invariant(rig.source)


@pytest.mark.parametrize(
    ("retrying", "paused"),
    [
        pytest.param(("p0+p1",), {0, 1}, id="batch-of-p0-and-p1"),
        pytest.param(("p2",), {2}, id="batch-of-p2"),
        pytest.param(("p0+p1", "p2"), {0, 1, 2}, id="both"),
    ],
)
def test_retrying_batch_pauses_exactly_its_partitions_until_it_completes(
    retrying: tuple[str, ...], paused: set[int]
) -> None:
    rig = Rig(partitions=(0, 1, 2), max_items=2)
    rig.source.feed(rig.msg(0, 0), rig.msg(1, 0), rig.msg(2, 0), rig.msg(2, 1))
    rig.turn()
    batches = dict(zip(("p0+p1", "p2"), rig.sender.submitted, strict=True))
    assert positions(batches["p2"]) == [(2, 0), (2, 1)]
    for name in retrying:
        batches[name].retrying = True
    rig.turn()
    assert rig.source.paused == {tp(p) for p in paused}
    assert rig.sample("paused_partitions") == len(paused)

    for name in retrying:
        rig.sender.complete(batches[name])
    rig.turn()
    assert rig.source.paused == set()
    resumes = [tps for kind, tps in rig.source.log if kind == "resume"]
    assert resumes[-1] == {tp(p) for p in paused}
    assert rig.sample("paused_partitions") == 0


def test_backpressure_pauses_every_assigned_partition_and_resumes_below_80_percent() -> None:
    rig = Rig(partitions=(0, 1, 2), max_items=1, max_buffered_messages=10)
    rig.source.feed(*(rig.msg(0, o) for o in range(5)), *(rig.msg(1, o) for o in range(4)))
    rig.turn()
    assert rig.source.paused == set()  # 9 unfinished

    rig.source.feed(rig.msg(0, 5), rig.msg(1, 4))
    rig.turn()
    everything = {tp(0), tp(1), tp(2)}  # the idle partition too
    assert rig.source.paused == everything  # 11 unfinished
    assert rig.sample("buffered_messages") == 11
    rig.source.feed(rig.msg(2, 0))
    rig.turn()
    assert rig.sample("messages_consumed_total", entity="agent", topic=TOPIC) == 11

    for batch in rig.sender.submitted[:3]:
        rig.sender.complete(batch)
    rig.turn()
    assert rig.source.paused == everything  # 8 unfinished: not below 80 % yet

    rig.sender.complete(rig.sender.submitted[3])
    rig.turn()
    assert rig.source.paused == set()  # 7 unfinished
    rig.turn()
    assert rig.sample("messages_consumed_total", entity="agent", topic=TOPIC) == 12


# --------------------------------------------------------------------------- rebalance
def test_revoke_waits_within_its_bound_commits_finished_work_and_releases_unpaused() -> None:
    # revoke bound 4 s, of which min(commit_timeout_s, 4 / 2) = 2 s are kept for the commit
    # and min(1 s, 4 / 10) = 0.4 s for the dead-letter flush: the wait ends 1.6 s in
    rig = Rig(partitions=(0, 1), max_items=2, revoke_timeout_s=4.0, commit_timeout_s=5.0)
    rig.source.feed(*(rig.msg(0, o) for o in range(6)), rig.msg(1, 0), rig.msg(1, 1))
    rig.source.feed(rig.msg(0, 6))
    rig.turn()
    a, b, c, e = rig.sender.submitted
    assert rig.batcher.open_items() == 1  # (0, 6)
    for batch in (a, c):
        rig.sender.complete(batch)
    b.retrying = True
    rig.turn()
    assert rig.source.paused == {tp(0)}
    assert (rig.committed(0), rig.committed(1)) == (2, 0)
    commits_before = len(rig.source.commits)

    # While on_revoke waits, e (p1, kept) and b get through; the flushed batch never does.
    rig.clock.after(0.5, lambda: rig.sender.complete(e))
    rig.clock.after(1.0, lambda: rig.sender.complete(b))
    started = rig.clock.now
    rig.source.feed(Rebalance("revoke", (tp(0),)))
    rig.turn()
    [flushed] = rig.sender.submitted[4:]
    assert flushed.close_reason == "revoke"
    assert positions(flushed) == [(0, 6)]
    assert flushed.cancel.is_set()
    assert not any(x.cancel.is_set() for x in (a, b, c, e))
    assert rig.clock.now == pytest.approx(started + 1.6, abs=0.06)
    # The revoke commits only the revoked partition, only as far as finished; p1 (finished
    # meanwhile, still ours) is committed by the regular commit after the callback.
    assert rig.source.commits[commits_before][0] == {tp(0): 6}
    assert rig.committed(1) == 2
    assert rig.source.paused_at_release == set()
    assert ("resume", frozenset({tp(0)})) in rig.source.log
    assert rig.pipeline.assigned == {tp(1)}
    assert rig.sample("committed_offset", topic=TOPIC, partition="0") is None

    # A late completion for the revoked partition is ignored: no crash, no commit, no resend.
    rig.sender.complete(flushed)
    rig.turn()
    assert all(tp(0) not in offsets for offsets, _ in rig.source.commits[commits_before + 1 :])
    assert len(rig.sender.submitted) == 5

    rig.source.feed(rig.msg(1, 2), rig.msg(1, 3))  # the partition we keep still flows
    rig.turn()
    rig.sender.complete(rig.sender.submitted[5])
    rig.turn()
    assert rig.committed(1) == 4
    assert_commit_invariant(rig.source)


def test_items_abandoned_while_revoking_are_not_sent_again_for_the_revoked_partition() -> None:
    """on_revoke cancels the batch, then drains completions while the partition is still in
    ``assigned`` with its generation: a sender that gives up promptly must not get the items
    re-batched and sent for a partition that is being handed to another consumer."""
    rig = Rig(partitions=(0, 1), max_items=2, revoke_timeout_s=1.0)
    rig.sender.abandon_cancelled = True  # the sender thread gives up the moment cancel is set
    rig.source.feed(rig.msg(0, 0), rig.msg(0, 1))
    rig.turn()
    [a] = rig.sender.submitted
    rig.source.feed(Rebalance("revoke", (tp(0),)))
    rig.turn()
    assert a.cancel.is_set()
    rig.clock.advance(20.0)  # past any linger
    rig.turn()
    resent = [positions(b) for b in rig.sender.submitted if b is not a]
    assert resent == [], "items of a partition no longer ours were re-batched and sent"
    assert rig.batcher.open_items() == 0


def _keep(rig: Rig) -> None:
    pass


def _assign_other_partition(rig: Rig) -> None:
    rig.pipeline.on_assign([tp(1)])


def _lose(rig: Rig) -> None:
    rig.pipeline.on_lost([tp(0)])


def _lose_and_reassign(rig: Rig) -> None:
    rig.pipeline.on_lost([tp(0)])
    rig.pipeline.on_assign([tp(0)])


def _revoke_and_reassign(rig: Rig) -> None:
    rig.pipeline.on_revoke([tp(0)])
    rig.pipeline.on_assign([tp(0)])


@pytest.mark.parametrize(
    ("between", "resent"),
    [
        pytest.param(_keep, True, id="still-assigned-same-generation"),
        pytest.param(_assign_other_partition, True, id="other-partition-assigned-meanwhile"),
        pytest.param(_lose, False, id="partition-lost"),
        pytest.param(_lose_and_reassign, False, id="lost-then-reassigned-newer-generation"),
        pytest.param(_revoke_and_reassign, False, id="revoked-then-reassigned-newer-generation"),
    ],
)
def test_abandoned_items_are_resent_only_while_their_assignment_generation_lasts(
    between: Callable[[Rig], None], resent: bool
) -> None:
    rig = Rig(max_items=2, linger_s=1.0, revoke_timeout_s=0.5)
    rig.source.feed(rig.msg(0, 0), rig.msg(0, 1))
    rig.turn()
    [a] = rig.sender.submitted
    between(rig)
    rig.sender.complete(a, abandoned=a.items)
    rig.turn()
    rig.clock.advance(2.0)
    rig.turn()
    again = [positions(b) for b in rig.sender.submitted[1:]]
    if resent:
        assert again == [[(0, 0), (0, 1)]]
        rig.sender.complete(rig.sender.submitted[1])
        rig.turn()
        assert rig.committed(0) == 2
    else:
        assert again == []
        assert rig.batcher.open_items() == 0
        assert all(o.get(tp(0), 0) == 0 for o, _ in rig.source.commits)
    assert_commit_invariant(rig.source)


# --------------------------------------------------------------------------- shutdown
@pytest.mark.parametrize(
    ("in_flight_delivered", "final_commit"),
    [
        pytest.param(True, 5, id="in-flight-batch-delivered-while-draining"),
        pytest.param(False, 2, id="in-flight-batch-given-up"),
    ],
)
def test_shutdown_flushes_commits_finished_work_cancels_the_rest_and_closes(
    in_flight_delivered: bool, final_commit: int
) -> None:
    rig = Rig(max_items=2, commit_interval_s=60.0, shutdown_timeout_s=10.0)
    rig.sender.abandon_cancelled = True
    rig.source.feed(*(rig.msg(0, o) for o in range(5)))
    rig.turn()
    a, b = rig.sender.submitted
    rig.sender.complete(a)
    rig.turn()
    assert rig.committed(0) == 0  # the next commit is not due for a minute

    rig.clock.after(0.5, lambda: rig.sender.complete(rig.sender.submitted[2]))
    if in_flight_delivered:
        rig.clock.after(1.0, lambda: rig.sender.complete(b))
    rig.pipeline.request_stop()
    rig.pipeline.shutdown()

    flushed = rig.sender.submitted[2]
    assert (flushed.close_reason, positions(flushed)) == ("shutdown", [(0, 4)])
    assert not flushed.cancel.is_set()
    assert b.cancel.is_set() is not in_flight_delivered
    assert len(rig.sender.submitted) == 3  # abandoned items are not sent again
    assert rig.committed(0) == final_commit  # abandoned (0, 2), (0, 3) not committed
    assert rig.source.closed
    assert rig.sender.stopped
    kinds = [kind for kind, _ in rig.source.log]
    assert kinds[-2:] == ["commit", "close"]
    assert_commit_invariant(rig.source)


# --------------------------------------------------------------------------- metrics
def test_metrics_read_back_from_the_registry() -> None:
    rig = Rig(partitions=(0, 1), max_items=2)
    invalid = {"externalAgentId": "agent 7!"}
    rig.source.feed(
        rig.msg(0, 0, value=b"bad"),
        rig.msg(0, 1),
        rig.msg(0, 2),
        rig.msg(1, 0, record=invalid),
        rig.msg(1, 1),
        rig.msg(1, 2),
    )
    rig.turn()
    b0, b1 = rig.sender.submitted
    b1.retrying = True
    rig.turn()
    assert rig.sample("paused_partitions") == 1
    assert rig.sample("committed_offset", topic=TOPIC, partition="0") == 0

    rig.sender.complete(b0, dead=[b0.items[1]])  # (0, 2) rejected by the API
    rig.sender.complete(b1)
    rig.turn()
    assert rig.sample("paused_partitions") == 0
    assert rig.sample("items_accepted_total", entity="agent") == 3
    assert rig.sample("end_to_end_latency_seconds_count", entity="agent") == 3
    assert rig.sample("end_to_end_latency_seconds_sum", entity="agent") == pytest.approx(
        3 * ACK_DELAY_S
    )
    for reason in ("decode", "validation", "rejected"):  # written, not acknowledged yet
        assert rig.sample("dead_letters_total", entity="agent", reason=reason) is None
    assert rig.sample("committed_offset", topic=TOPIC, partition="1") == 0

    rig.dlq.ack()
    rig.turn(2)  # (an asynchronous commit is confirmed at the next turn)
    for reason in ("decode", "validation", "rejected"):
        assert rig.sample("dead_letters_total", entity="agent", reason=reason) == 1
    assert rig.sample("committed_offset", topic=TOPIC, partition="0") == 3
    assert rig.sample("committed_offset", topic=TOPIC, partition="1") == 3


def test_a_lingering_batch_stays_open_and_fills_while_every_sender_thread_is_busy() -> None:
    """With no sender thread free, sending a small batch at linger time would only queue it:
    it stays open and keeps filling (fewer, fuller requests); count still closes batches."""
    rig = Rig(max_items=3, linger_s=1.0)
    rig.sender.capacity = False
    rig.source.feed(rig.msg(0, 0))
    rig.turn()
    rig.clock.advance(5.0)  # far past the linger window
    rig.turn()
    assert rig.sender.submitted == [], "a lingering batch was queued behind busy threads"
    rig.source.feed(rig.msg(0, 1), rig.msg(0, 2))
    rig.turn()
    assert [len(b) for b in rig.sender.submitted] == [3], "count must still close the batch"
    assert rig.sender.submitted[0].close_reason == "count"
    rig.source.feed(rig.msg(0, 3))
    rig.turn()
    rig.clock.advance(5.0)
    rig.turn()
    assert len(rig.sender.submitted) == 1
    rig.sender.capacity = True  # a thread is free again: the lingering batch goes out
    rig.turn()
    assert [b.close_reason for b in rig.sender.submitted] == ["count", "linger"]


# --------------------------------------------------------------------------- per-id order
def versioned(rig: Rig, partition: int, offset: int, agent_id: str) -> Message:
    """A valid agent event of ``agent_id`` (its versions differ by offset)."""
    record = generate(Entity.AGENT, 1, seed=partition, start=offset)[0]
    record["externalAgentId"] = agent_id
    return rig.msg(partition, offset, value=f"{agent_id}:{offset}".encode(), record=record)


def test_a_newer_version_waits_while_an_earlier_one_of_its_id_is_in_flight() -> None:
    rig = Rig(partitions=(0, 1), max_items=2)
    rig.source.feed(versioned(rig, 0, 0, "a"), versioned(rig, 0, 1, "b"))
    rig.turn()
    [first] = rig.sender.submitted
    first.retrying = True  # 503: waiting to be retried
    # a's next version, and two unrelated ids that may go out meanwhile
    rig.source.feed(versioned(rig, 1, 0, "a"), versioned(rig, 1, 1, "c"), versioned(rig, 1, 2, "d"))
    rig.turn()
    assert [positions(b) for b in rig.sender.submitted[1:]] == [[(1, 1), (1, 2)]]
    assert rig.sample("items_deferred") == 1
    rig.sender.complete(first)
    rig.turn()
    assert rig.batcher.open_items() == 1  # a@(1, 0) joined the open batch only now
    rig.source.feed(versioned(rig, 1, 3, "e"))
    rig.turn()
    assert positions(rig.sender.submitted[-1]) == [(1, 0), (1, 3)]
    assert rig.sample("items_deferred") == 0


def test_versions_of_one_id_in_one_batch_keep_their_offset_order() -> None:
    rig = Rig(max_items=3)
    rig.source.feed(*(versioned(rig, 0, o, "a") for o in range(3)))
    rig.turn()
    [batch] = rig.sender.submitted
    assert positions(batch) == [(0, 0), (0, 1), (0, 2)]


def test_abandoned_items_go_back_before_the_newer_versions_deferred_behind_them() -> None:
    rig = Rig(max_items=1)
    rig.source.feed(versioned(rig, 0, 0, "a"))
    rig.turn()
    [first] = rig.sender.submitted
    rig.source.feed(versioned(rig, 0, 1, "a"))
    rig.turn()
    assert len(rig.sender.submitted) == 1  # a@1 deferred
    rig.sender.complete(first, abandoned=first.items)  # e.g. a sender crash: items come back
    rig.turn()
    assert [positions(b) for b in rig.sender.submitted[1:]] == [[(0, 0)]]
    rig.sender.complete(rig.sender.submitted[1])
    rig.turn()
    assert [positions(b) for b in rig.sender.submitted[2:]] == [[(0, 1)]]


def test_coalescing_sends_only_the_newest_version_and_finishes_the_older_with_it() -> None:
    rig = Rig(max_items=3, linger_s=1.0, coalesce=True)
    rig.source.feed(*(versioned(rig, 0, o, "a") for o in range(3)), versioned(rig, 0, 3, "b"))
    rig.turn()
    rig.clock.advance(1.0)
    rig.turn()
    [batch] = rig.sender.submitted
    assert positions(batch) == [(0, 2), (0, 3)]
    assert rig.sample("items_superseded_total", entity="agent") == 2
    rig.sender.complete(batch)
    rig.turn()
    assert rig.committed(0) == 4
    assert_commit_invariant(rig.source)


def test_coalescing_off_by_default_sends_every_version() -> None:
    rig = Rig(max_items=3)
    rig.source.feed(*(versioned(rig, 0, o, "a") for o in range(3)))
    rig.turn()
    assert [len(b) for b in rig.sender.submitted] == [3]


# --------------------------------------------------------------------------- rebalance leftovers
def test_items_of_lost_partitions_are_dropped_not_sent() -> None:
    rig = Rig(partitions=(0, 1), max_items=10, linger_s=1.0)
    rig.source.feed(rig.msg(0, 0), rig.msg(1, 0), Rebalance("lost", (tp(0),)))
    rig.turn(2)
    rig.clock.advance(1.0)
    rig.turn()
    assert [positions(b) for b in rig.sender.submitted] == [[(1, 0)]]


def test_a_dead_letter_still_in_the_producer_is_not_written_again_after_reassignment() -> None:
    rig = Rig(revoke_timeout_s=1.0)
    rig.source.feed(rig.msg(0, 0, value=b"bad"))
    rig.turn()
    [dl] = rig.dlq.produced
    # Revoked before the DLQ acknowledged; assigned back and read again from offset 0.
    rig.source.feed(Rebalance("revoke", (tp(0),)), Rebalance("assign", (tp(0),)))
    rig.turn(2)
    rig.source.feed(rig.msg(0, 0, value=b"bad"))
    rig.turn()
    assert rig.dlq.produced == [dl]  # one write for the message, not two
    rig.dlq.ack(dl)
    rig.turn()
    assert rig.committed(0) == 1
    assert_commit_invariant(rig.source)


def test_late_dead_letters_of_an_earlier_assignment_are_not_written() -> None:
    rig = Rig(max_items=1, revoke_timeout_s=0.5)
    rig.source.feed(rig.msg(0, 0))
    rig.turn()
    [batch] = rig.sender.submitted
    rig.source.feed(Rebalance("revoke", (tp(0),)), Rebalance("assign", (tp(0),)))
    rig.turn(2)
    rig.source.feed(rig.msg(0, 0))
    rig.turn()
    rig.sender.complete(batch, dead=batch.items)  # the old request's answer arrives now
    rig.turn()
    assert rig.dlq.produced == []
    assert rig.committed(0) in (None, 0)  # nothing finished the re-read message


# --------------------------------------------------------------------------- offsets
def test_a_rewound_partition_restarts_its_tracking_instead_of_dropping_messages() -> None:
    rig = Rig(max_items=1)
    rig.source.feed(*(rig.msg(0, o) for o in range(3)))
    rig.turn()
    old = list(rig.sender.submitted)
    rig.sender.complete(old[0])
    rig.turn()
    assert rig.committed(0) == 1
    # The log was truncated at 1 (unclean leader election): offsets 1.. are new messages.
    rig.source.feed(versioned(rig, 0, 1, "new-1"), versioned(rig, 0, 2, "new-2"))
    rig.turn()
    assert rig.sample("offset_rewinds_total", topic=TOPIC) == 1
    new = rig.sender.submitted[3:]
    assert [positions(b) for b in new] == [[(0, 1)], [(0, 2)]]
    for batch in old[1:]:  # the old requests' answers must not finish the new messages
        rig.sender.complete(batch)
    rig.turn()
    assert rig.committed(0) == 1
    for batch in new:
        rig.sender.complete(batch)
    rig.turn()
    assert rig.committed(0) == 3


def test_a_consumer_error_at_a_position_is_dead_lettered_not_skipped() -> None:
    rig = Rig(max_items=1)
    broken = Message(Position(TOPIC, 0, 0), None, None, None, error="Local: Bad message format")
    rig.source.feed(broken, rig.msg(0, 1))
    rig.turn()
    [dl] = rig.dlq.produced
    assert (dl.reason, dl.message.position.offset) == ("consume", 0)
    assert rig.sample("consumer_errors_total", topic=TOPIC) == 1
    rig.sender.complete(rig.sender.submitted[0])
    rig.turn()
    assert rig.committed(0) == 0  # not past the broken message before its dead letter is acked
    rig.dlq.ack(dl)
    rig.turn()
    assert rig.committed(0) == 2


def test_buffered_bytes_bound_pauses_every_partition() -> None:
    rig = Rig(partitions=(0, 1), max_items=100, max_buffered_bytes=2 * 1024 * 1024)
    rig.source.feed(
        rig.msg(0, 0, value=b"x" * (2 * 1024 * 1024), record=generate(Entity.AGENT, 1)[0])
    )
    rig.turn()
    assert rig.source.paused == {tp(0), tp(1)}
    assert rig.sample("buffered_bytes") == 2 * 1024 * 1024


@pytest.mark.parametrize(
    "retrying, expected_s",
    [
        pytest.param(True, 1.0, id="all-in-backoff-stops-after-the-grace"),
        pytest.param(False, 10.0 - 2.5 - 2.0 - 1.0, id="a-request-on-the-wire-is-waited-for"),
    ],
)
def test_shutdown_does_not_wait_out_its_bound_for_batches_stuck_in_backoff(
    retrying: bool, expected_s: float
) -> None:
    # shutdown bound 10 s: 2.5 s kept for the commit, 2 s for the close, 1 s for the DLQ flush
    rig = Rig(max_items=2, shutdown_timeout_s=10.0)
    rig.sender.abandon_cancelled = True
    rig.source.feed(*(rig.msg(0, o) for o in range(4)))
    rig.turn()
    for batch in rig.sender.submitted:
        batch.retrying = retrying  # the API is down: both wait for their next attempt
    started = rig.clock.now
    rig.pipeline.request_stop()
    rig.pipeline.shutdown()
    assert rig.clock.now - started == pytest.approx(expected_s, abs=0.11)
    assert all(b.cancel.is_set() for b in rig.sender.submitted)
    assert rig.committed(0) in (None, 0)  # nothing finished, nothing committed past it
