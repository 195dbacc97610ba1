"""OffsetTracker: the commit invariant. A committable offset N means every tracked message
below N finished, whatever order the batches completed in."""

from __future__ import annotations

import random

import pytest

from consumer.offsets import OffsetTracker
from consumer.records import Position, TopicPartition

TP = TopicPartition("t", 0)
OTHER = TopicPartition("t", 1)


def pos(offset: int, tp: TopicPartition = TP) -> Position:
    return Position(tp.topic, tp.partition, offset)


def tracker_with(*offsets: int, tp: TopicPartition = TP) -> OffsetTracker:
    tracker = OffsetTracker()
    for offset in offsets:
        tracker.track(pos(offset, tp))
    return tracker


def test_nothing_consumed_has_nothing_to_commit() -> None:
    tracker = OffsetTracker()
    assert tracker.committable(TP) is None
    assert tracker.to_commit() == {}
    assert tracker.pending_count() == 0


def test_committable_is_first_unfinished_offset() -> None:
    tracker = tracker_with(0, 1, 2, 3)
    assert tracker.committable(TP) == 0
    assert tracker.finish(pos(0))
    assert tracker.committable(TP) == 1
    assert tracker.pending_count(TP) == 3


def test_out_of_order_finish_never_passes_the_unfinished_head() -> None:
    tracker = tracker_with(0, 1, 2, 3)
    assert tracker.finish(pos(3))
    assert tracker.finish(pos(2))
    assert tracker.finish(pos(1))
    assert tracker.committable(TP) == 0
    assert tracker.finish(pos(0))
    assert tracker.committable(TP) == 4
    assert tracker.pending_count(TP) == 0


def test_batches_finishing_in_shuffled_order() -> None:
    tracker = tracker_with(*range(12))
    batches = [range(0, 4), range(4, 8), range(8, 12)]
    # The last batch, then the first, then the middle one.
    for offset in batches[2]:
        tracker.finish(pos(offset))
    assert tracker.committable(TP) == 0
    for offset in batches[0]:
        tracker.finish(pos(offset))
    assert tracker.committable(TP) == 4
    for offset in batches[1]:
        tracker.finish(pos(offset))
    assert tracker.committable(TP) == 12


def test_gaps_from_compaction_are_skipped() -> None:
    tracker = tracker_with(10, 13, 20)
    assert tracker.committable(TP) == 10
    assert tracker.finish(pos(13))
    assert tracker.committable(TP) == 10
    assert tracker.finish(pos(10))
    assert tracker.committable(TP) == 20
    assert tracker.finish(pos(20))
    assert tracker.committable(TP) == 21


def test_finish_of_an_offset_in_a_compaction_gap_is_refused() -> None:
    """Offset 11 was never consumed (compacted away): finishing it must be refused, as
    documented, and must not be remembered as finished."""
    tracker = tracker_with(10, 12)
    assert tracker.finish(pos(11)) is False
    # If 11 were remembered, re-reading it after a seek back would let it be committed unsent.
    tracker.untrack_from(pos(11))
    tracker.track(pos(11))
    tracker.finish(pos(10))
    assert tracker.committable(TP) == 11


@pytest.mark.parametrize(
    ("position", "why"),
    [
        pytest.param(pos(0), "already at the head and popped", id="duplicate-head"),
        pytest.param(pos(9), "beyond the last consumed offset", id="never-consumed"),
        pytest.param(pos(0, OTHER), "unknown partition", id="unknown-partition"),
    ],
)
def test_finish_refuses(position: Position, why: str) -> None:
    tracker = tracker_with(0, 1)
    tracker.finish(pos(0))
    assert tracker.finish(position) is False, why
    assert tracker.committable(TP) == 1


def test_duplicate_finish_out_of_order_is_refused_and_harmless() -> None:
    tracker = tracker_with(0, 1, 2)
    assert tracker.finish(pos(2)) is True
    assert tracker.finish(pos(2)) is False
    assert tracker.committable(TP) == 0
    tracker.finish(pos(0))
    tracker.finish(pos(1))
    assert tracker.committable(TP) == 3


def test_finish_after_everything_finished_is_refused() -> None:
    tracker = tracker_with(0)
    assert tracker.finish(pos(0))
    assert tracker.finish(pos(0)) is False
    assert tracker.committable(TP) == 1


def test_track_must_ascend() -> None:
    tracker = tracker_with(5)
    with pytest.raises(ValueError, match="consumed again"):
        tracker.track(pos(5))
    with pytest.raises(ValueError):
        tracker.track(pos(4))


def test_untrack_from_forgets_the_tail_for_a_reread() -> None:
    tracker = tracker_with(0, 1, 2, 3)
    tracker.finish(pos(3))  # finished, but forgotten with the tail
    tracker.untrack_from(pos(2))
    assert tracker.pending_count(TP) == 2
    tracker.finish(pos(0))
    tracker.finish(pos(1))
    assert tracker.committable(TP) == 2
    # Re-read after the seek: 2 and 3 are unfinished again.
    tracker.track(pos(2))
    tracker.track(pos(3))
    assert tracker.committable(TP) == 2
    tracker.finish(pos(2))
    assert tracker.committable(TP) == 3


def test_untrack_from_everything_pending_falls_back_before_it() -> None:
    tracker = tracker_with(5, 6)
    tracker.untrack_from(pos(5))
    assert tracker.pending_count(TP) == 0
    assert tracker.committable(TP) == 5
    tracker.track(pos(5))  # may be read again
    assert tracker.committable(TP) == 5


def test_untrack_from_beyond_last_consumed_changes_nothing() -> None:
    """Offsets 4..9 were never consumed: committing 10 would skip them."""
    tracker = tracker_with(0, 1, 2, 3)
    for offset in range(4):
        tracker.finish(pos(offset))
    tracker.untrack_from(pos(10))
    assert tracker.committable(TP) == 4


def test_untrack_from_unknown_partition_is_a_no_op() -> None:
    tracker = tracker_with(0)
    tracker.untrack_from(pos(0, OTHER))
    assert tracker.partitions() == [TP]
    assert tracker.committable(TP) == 0


def test_forget_drops_partition_and_ignores_late_completions() -> None:
    tracker = tracker_with(0, 1)
    tracker.track(pos(0, OTHER))
    tracker.forget([TP])
    assert tracker.partitions() == [OTHER]
    assert tracker.committable(TP) is None
    assert tracker.finish(pos(0)) is False
    assert TP not in tracker.to_commit()
    assert tracker.committable(OTHER) == 0


def test_to_commit_and_mark_committed() -> None:
    tracker = tracker_with(0, 1, 2)
    tracker.track(pos(7, OTHER))
    assert tracker.to_commit() == {TP: 0, OTHER: 7}
    tracker.mark_committed(TP, 0)
    tracker.mark_committed(OTHER, 7)
    assert tracker.to_commit() == {}
    tracker.finish(pos(1))
    assert tracker.to_commit() == {}  # 0 still unfinished
    tracker.finish(pos(0))
    assert tracker.to_commit() == {TP: 2}
    tracker.mark_committed(TP, 2)
    assert tracker.committed(TP) == 2
    tracker.mark_committed(TP, 1)  # never moves backwards
    assert tracker.committed(TP) == 2
    assert tracker.to_commit() == {}


def test_committed_offset_found_in_group_suppresses_older_commit() -> None:
    tracker = OffsetTracker()
    tracker.mark_committed(TP, 100)
    assert tracker.committed(TP) == 100
    assert tracker.committable(TP) is None
    assert tracker.to_commit() == {}
    tracker.track(pos(100))
    tracker.finish(pos(100))
    assert tracker.to_commit() == {TP: 101}


def test_pending_count_across_partitions() -> None:
    tracker = tracker_with(0, 1, 2)
    tracker.track(pos(0, OTHER))
    tracker.finish(pos(2))  # finished behind the unfinished head: no longer pending
    assert tracker.pending_count(TP) == 2
    assert tracker.committable(TP) == 0
    assert tracker.pending_count(OTHER) == 1
    assert tracker.pending_count() == 3
    assert tracker.pending_count(TopicPartition("x", 9)) == 0


def _lowest_unfinished(offsets: list[int], finished: set[int]) -> int:
    for offset in offsets:
        if offset not in finished:
            return offset
    return offsets[-1] + 1


@pytest.mark.parametrize("seed", range(200))
def test_invariant_holds_for_random_batches_in_random_order(seed: int) -> None:
    rng = random.Random(seed)
    partitions = [TopicPartition(f"topic-{i % 2}", i) for i in range(rng.randint(1, 4))]
    offsets: dict[TopicPartition, list[int]] = {tp: [] for tp in partitions}
    tracker = OffsetTracker()
    messages: list[Position] = []
    for _ in range(rng.randint(1, 120)):
        tp = rng.choice(partitions)
        # Compaction leaves gaps: the next offset may jump.
        last = offsets[tp][-1] if offsets[tp] else rng.randint(0, 5)
        offset = last + rng.choice((1, 1, 1, 2, 7)) if offsets[tp] else last
        offsets[tp].append(offset)
        position = pos(offset, tp)
        tracker.track(position)
        messages.append(position)

    # Consumption order split into batches (interleaving partitions), completing shuffled.
    batches: list[list[Position]] = []
    rest = list(messages)
    while rest:
        size = rng.randint(1, 10)
        batches.append(rest[:size])
        rest = rest[size:]
    rng.shuffle(batches)

    finished: dict[TopicPartition, set[int]] = {tp: set() for tp in partitions}
    for batch in batches:
        for position in rng.sample(batch, len(batch)):  # items of a batch in any order
            assert tracker.finish(position) is True
            finished[position.tp].add(position.offset)
            for tp, tracked in offsets.items():
                if not tracked:
                    assert tracker.committable(tp) is None
                    continue
                expected = _lowest_unfinished(tracked, finished[tp])
                assert tracker.committable(tp) == expected, (seed, tp)
                assert tracker.pending_count(tp) == len(tracked) - len(finished[tp])
    for tp, tracked in offsets.items():
        if tracked:
            assert tracker.committable(tp) == tracked[-1] + 1
            assert tracker.pending_count(tp) == 0


# --------------------------------------------------------------------------- rewinds, bytes
def test_rewind_keeps_earlier_unfinished_offsets_and_starts_a_new_generation() -> None:
    tracker = tracker_with(0, 1, 2, 3)
    old = tracker.generation(TP)
    assert tracker.finish(pos(3), old)
    assert tracker.rewind(pos(2)) == 1  # offset 2 forgotten; 3 was finished already
    new = tracker.generation(TP)
    assert new != old
    tracker.track(pos(2))  # the message now at offset 2 (after truncation)
    # A late completion of the old offset 2 must not finish the new message there.
    assert not tracker.finish(pos(2), old)
    assert tracker.committable(TP) == 0
    assert tracker.finish(pos(0), old) and tracker.finish(pos(1), old)
    assert tracker.committable(TP) == 2
    assert tracker.finish(pos(2), new)
    assert tracker.committable(TP) == 3


def test_rewind_never_moves_the_commit_backwards() -> None:
    tracker = tracker_with(0, 1, 2)
    for offset in range(3):
        tracker.finish(pos(offset))
    tracker.mark_committed(TP, 3)
    tracker.rewind(pos(1))
    tracker.track(pos(1))
    tracker.finish(pos(1))
    assert tracker.to_commit() == {}  # 2 < 3 committed: nothing to commit until past it


def test_a_released_partition_gets_a_new_generation_when_tracked_again() -> None:
    tracker = tracker_with(0)
    first = tracker.generation(TP)
    tracker.forget([TP])
    tracker.track(pos(0))
    assert tracker.generation(TP) != first
    assert not tracker.finish(pos(0), first)
    assert tracker.finish(pos(0), tracker.generation(TP))


@pytest.mark.parametrize(
    "finish, rewind_at, expected",
    [
        pytest.param((), None, 60, id="all-pending"),
        pytest.param((0, 2), None, 20, id="some-finished"),
        pytest.param((), 1, 10, id="rewind-drops-the-tail"),
        pytest.param((0, 1, 2), None, 0, id="all-finished"),
    ],
)
def test_pending_bytes_follow_track_finish_and_rewind(
    finish: tuple[int, ...], rewind_at: int | None, expected: int
) -> None:
    tracker = OffsetTracker()
    for offset, size in enumerate((10, 20, 30)):
        tracker.track(pos(offset), size)
    for offset in finish:
        tracker.finish(pos(offset))
    if rewind_at is not None:
        tracker.rewind(pos(rewind_at))
    assert tracker.pending_bytes() == expected
    tracker.forget([TP])
    assert tracker.pending_bytes() == 0
