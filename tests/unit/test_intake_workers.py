"""The loop with ingest workers that answer late: per-partition order across a registry hold,
a rewind and a revoke while batches are still in the workers (the rest of the pipeline's unit
tests run with such workers too: tests/unit/test_pipeline.py's ``ingest`` fixture)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit import test_pipeline
from tests.unit.fakes import Rebalance
from tests.unit.test_pipeline import Rig, assert_commit_invariant, positions, tp


@pytest.fixture(autouse=True)
def late_workers() -> Iterator[None]:
    test_pipeline.WORKERS_DELAY[0] = 3  # each batch's results three turns late
    yield
    test_pipeline.WORKERS_DELAY[0] = None


def sent(rig: Rig, partition: int) -> list[int]:
    return [o for b in rig.sender.submitted for p, o in positions(b) if p == partition]


def test_later_batches_wait_behind_a_registry_hold_in_their_partitions_order() -> None:
    test_pipeline.WORKERS_DELAY[0] = 10  # the first batch is back after about five turns
    rig = Rig(partitions=(0, 1), max_items=10, linger_s=0.5)
    rig.decoder.registry_down = True
    rig.decoder.retry_after_s = 2.0
    rig.source.feed(rig.msg(0, 0, value=b"new-schema:0:0"), rig.msg(0, 1), rig.msg(1, 0))
    rig.turn()
    for offset in (2, 3, 4):  # consumed and submitted while the first batch is out
        rig.source.feed(rig.msg(0, offset), rig.msg(1, offset - 1))
        rig.turn()
    assert rig.pipeline.intake.pending == 3  # the fourth submission waited for the first
    rig.turn(20)
    assert rig.pipeline.intake.pending == 0
    assert rig.source.paused == {tp(0)}
    rig.clock.advance(1.0)
    rig.turn()
    assert sent(rig, 0) == [] and sent(rig, 1) == [0, 1, 2, 3]
    rig.decoder.registry_down = False
    rig.clock.advance(2.0)
    rig.turn(2)
    rig.clock.advance(1.0)
    rig.turn(2)
    assert sent(rig, 0) == [0, 1, 2, 3, 4]
    for batch in rig.sender.submitted:
        rig.sender.complete(batch)
    rig.turn()
    assert (rig.committed(0), rig.committed(1)) == (5, 4)
    assert_commit_invariant(rig.source)


def test_results_of_a_partition_rewound_while_in_the_workers_are_dropped() -> None:
    rig = Rig(max_items=2, coalesce=False)  # (no coalescing to hide a second copy)
    rig.source.feed(rig.msg(0, 0), rig.msg(0, 1))
    rig.turn()
    assert rig.pipeline.intake.pending == 1
    rig.source.feed(rig.msg(0, 0), rig.msg(0, 1))  # read again from 0 (a seek back)
    rig.turn(8)
    assert rig.pipeline.intake.pending == 0
    assert sent(rig, 0) == [0, 1]  # once, from the second reading
    [batch] = rig.sender.submitted
    rig.sender.complete(batch)
    rig.clock.advance(20.0)
    rig.turn(3)
    assert len(rig.sender.submitted) == 1  # no second copy behind it either
    assert rig.committed(0) == 2
    assert_commit_invariant(rig.source)


def test_a_revoke_routes_what_is_in_the_workers_before_handing_over() -> None:
    rig = Rig(partitions=(0, 1), max_items=10, revoke_timeout_s=2.0)
    rig.source.feed(rig.msg(0, 0), rig.msg(0, 1), rig.msg(1, 0))
    rig.turn()
    assert rig.pipeline.intake.pending == 1 and rig.sender.submitted == []
    rig.source.feed(Rebalance("revoke", (tp(0),)))
    rig.turn()
    assert rig.pipeline.intake.pending == 0
    flushed = rig.sender.submitted[0]
    assert flushed.close_reason == "revoke" and sorted(positions(flushed)) == [
        (0, 0),
        (0, 1),
        (1, 0),
    ]


def test_at_most_max_pending_batches_are_out_at_once() -> None:
    test_pipeline.WORKERS_DELAY[0] = 1000  # the workers never answer by themselves
    rig = Rig(partitions=(0,), max_items=100)
    for offset in range(6):
        rig.source.feed(rig.msg(0, offset))
        rig.turn()
        assert rig.pipeline.intake.pending <= rig.pipeline.intake.max_pending
    assert rig.pipeline.intake.pending == rig.pipeline.intake.max_pending
    assert rig.batcher.open_items() == 6 - rig.pipeline.intake.max_pending  # oldest, in order


def test_a_message_of_a_held_partition_consumed_while_batches_are_out_waits_its_turn() -> None:
    """librdkafka may hand over what it fetched before the pause: such a message goes behind
    the batches still in the workers, not straight into the hold ahead of them."""
    test_pipeline.WORKERS_DELAY[0] = 4
    rig = Rig(max_items=10, linger_s=0.5)
    rig.decoder.registry_down = True
    intake = rig.pipeline.intake
    intake.process([rig.msg(0, 0, value=b"new-schema:0:0")])
    intake.process([rig.msg(0, 1)])
    intake.collect(block=True, keep=1)  # p0 is held from 0; (0, 1) is still out
    assert intake.pending == 1
    intake.process([rig.msg(0, 2)])  # tracked while p0 is held and (0, 1) is out
    intake.collect(block=True)
    [queue] = rig.pipeline.holds._queues.values()
    assert [m.position.offset for m in queue] == [0, 1, 2]
