"""Which offsets may be committed: the commit invariant, in one place.

Invariant: **a committed offset N for a partition means every message of that partition below
N was delivered to the API or acknowledged by the dead-letter topic.**

The tracker learns every consumed offset (:meth:`OffsetTracker.track`, in consumption order)
and every finished one (:meth:`OffsetTracker.finish`, in any order: batches complete out of
order). The committable offset of a partition is the lowest offset not yet finished, or one
past the last consumed offset when everything is finished. It never moves past an unfinished
message, however many later batches completed first.

Used from the poll-loop thread only (completions are handed to that thread), so no locking.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from consumer.records import Position, TopicPartition


@dataclass(slots=True)
class _PartitionState:
    pending: deque[int] = field(default_factory=deque)  # consumed offsets from the head on
    unfinished: set[int] = field(default_factory=set)  # the pending ones not yet finished
    last_consumed: int = -1
    committed: int | None = None  # last next_offset committed (or found committed)

    def advance(self) -> None:
        while self.pending and self.pending[0] not in self.unfinished:
            self.pending.popleft()

    def committable(self) -> int | None:
        if self.pending:
            return self.pending[0]
        return self.last_consumed + 1 if self.last_consumed >= 0 else None


class OffsetTracker:
    """Per-partition record of consumed and finished offsets."""

    def __init__(self) -> None:
        self._parts: dict[TopicPartition, _PartitionState] = {}

    def track(self, position: Position) -> None:
        """Register a consumed message. Offsets of a partition must arrive ascending."""
        state = self._parts.setdefault(position.tp, _PartitionState())
        if position.offset <= state.last_consumed:
            raise ValueError(f"{position} consumed again after offset {state.last_consumed}")
        state.pending.append(position.offset)
        state.unfinished.add(position.offset)
        state.last_consumed = position.offset

    def finish(self, position: Position) -> bool:
        """Mark a message delivered or dead-lettered. False if its partition is not tracked
        (revoked meanwhile) or the offset was never tracked or already finished."""
        state = self._parts.get(position.tp)
        if state is None or position.offset not in state.unfinished:
            return False
        state.unfinished.discard(position.offset)
        state.advance()
        return True

    def untrack_from(self, position: Position) -> None:
        """Forget ``position`` and every later offset of its partition (they will be read
        again, e.g. after a seek back)."""
        state = self._parts.get(position.tp)
        if state is None:
            return
        while state.pending and state.pending[-1] >= position.offset:
            state.unfinished.discard(state.pending.pop())
        if state.pending:
            state.last_consumed = state.pending[-1]
        else:  # never move forward: offsets after last_consumed were not read yet
            state.last_consumed = min(state.last_consumed, position.offset - 1)

    def committable(self, tp: TopicPartition) -> int | None:
        """The offset that may be committed for ``tp`` now (None if nothing was consumed)."""
        state = self._parts.get(tp)
        return state.committable() if state else None

    def pending_count(self, tp: TopicPartition | None = None) -> int:
        """Messages consumed and not yet finished (for one partition, or all); finished ones
        waiting behind an unfinished head do not count."""
        if tp is not None:
            state = self._parts.get(tp)
            return len(state.unfinished) if state else 0
        return sum(len(s.unfinished) for s in self._parts.values())

    def to_commit(self) -> dict[TopicPartition, int]:
        """Partitions whose committable offset moved past the last committed one."""
        out: dict[TopicPartition, int] = {}
        for tp, state in self._parts.items():
            offset = state.committable()
            if offset is not None and (state.committed is None or offset > state.committed):
                out[tp] = offset
        return out

    def mark_committed(self, tp: TopicPartition, offset: int) -> None:
        """Record that ``offset`` is committed for ``tp`` (ours, or found in the group)."""
        state = self._parts.setdefault(tp, _PartitionState())
        if state.committed is None or offset > state.committed:
            state.committed = offset

    def committed(self, tp: TopicPartition) -> int | None:
        state = self._parts.get(tp)
        return state.committed if state else None

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Drop partitions (revoked): late completions for them are then ignored."""
        for tp in tps:
            self._parts.pop(tp, None)

    def partitions(self) -> list[TopicPartition]:
        return list(self._parts)
