"""Which offsets may be committed: the commit invariant, in one place.

Invariant: **a committed offset N for a partition means every message of that partition below
N was delivered to the API or acknowledged by the dead-letter topic.**

The tracker learns every consumed offset (:meth:`OffsetTracker.track`, in consumption order)
and every finished one (:meth:`OffsetTracker.finish`, in any order: batches complete out of
order). The committable offset of a partition is the lowest offset not yet finished, or one
past the last consumed offset when everything is finished. It never moves past an unfinished
message, however many later batches completed first.

Generations: every partition state carries the generation it was created in (a new one per
assignment) and a new generation starts when the partition rewinds (:meth:`OffsetTracker.rewind`:
a message at or below the last consumed offset, after log truncation or a seek back). A finish
names the generation its message was tracked in, so a late completion of a released partition or
of the offsets before a rewind can never finish the message that now holds that offset.

Bytes: each tracked offset remembers its message's size, so the pipeline can bound buffered
memory by bytes as well as by messages.

Used from the poll-loop thread only (completions are handed to that thread), so no locking.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from consumer.records import Position, TopicPartition


@dataclass(slots=True)
class _PartitionState:
    generation: int
    pending: deque[int] = field(default_factory=deque)  # consumed offsets from the head on
    unfinished: dict[int, int] = field(default_factory=dict)  # pending, not finished → bytes
    last_consumed: int = -1
    committed: int | None = None  # last next_offset committed (or found committed)
    #: (first offset, generation) of each rewind, ascending: offsets from there on belong to it
    rewinds: list[tuple[int, int]] = field(default_factory=list)

    def generation_of(self, offset: int) -> int:
        for start, generation in reversed(self.rewinds):
            if offset >= start:
                return generation
        return self.generation

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
        self._generations = 0
        self._bytes = 0

    def _state(self, tp: TopicPartition) -> _PartitionState:
        state = self._parts.get(tp)
        if state is None:
            self._generations += 1
            state = self._parts[tp] = _PartitionState(self._generations)
        return state

    def track(self, position: Position, size: int = 0) -> None:
        """Register a consumed message of ``size`` bytes. Offsets of a partition must arrive
        ascending: ``ValueError`` otherwise (the caller decides whether to :meth:`rewind`)."""
        state = self._state(position.tp)
        offset = position.offset
        if offset <= state.last_consumed:
            raise ValueError(f"{position} consumed again after offset {state.last_consumed}")
        state.pending.append(offset)
        state.unfinished[offset] = size
        state.last_consumed = offset
        self._bytes += size

    def rewind(self, position: Position) -> int:
        """The partition restarts at ``position`` (log truncation, a seek back): forget that
        offset and every later one, and start a new generation for what is read from there.
        Earlier unfinished offsets stay unfinished. Returns how many offsets were forgotten."""
        before = self.pending_count(position.tp)
        self.untrack_from(position)
        state = self._state(position.tp)
        self._generations += 1
        state.rewinds.append((position.offset, self._generations))
        return before - self.pending_count(position.tp)

    def generation(self, tp: TopicPartition) -> int:
        """The generation messages of ``tp`` consumed now are tracked in."""
        state = self._state(tp)
        return state.rewinds[-1][1] if state.rewinds else state.generation

    def finish(self, position: Position, generation: int | None = None) -> bool:
        """Mark a message delivered or dead-lettered. False if its partition is not tracked
        (revoked meanwhile), the offset was never tracked or already finished, or it was
        tracked in another ``generation`` than the one given (None: any)."""
        state = self._parts.get(position.tp)
        offset = position.offset
        if state is None or offset not in state.unfinished:
            return False
        if generation is not None and state.generation_of(offset) != generation:
            return False
        self._bytes -= state.unfinished.pop(offset)
        state.advance()
        return True

    def owns(self, position: Position, generation: int) -> bool:
        """Whether ``position`` is tracked, unfinished, in ``generation``: a result for it is
        still ours to act on (not a late answer for a released or rewound partition)."""
        state = self._parts.get(position.tp)
        return (
            state is not None
            and position.offset in state.unfinished
            and state.generation_of(position.offset) == generation
        )

    def untrack_from(self, position: Position) -> None:
        """Forget ``position`` and every later offset of its partition (they will be read
        again, e.g. after a seek back)."""
        state = self._parts.get(position.tp)
        if state is None:
            return
        while state.pending and state.pending[-1] >= position.offset:
            self._bytes -= state.unfinished.pop(state.pending.pop(), 0)
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

    def pending_bytes(self) -> int:
        """Bytes of the messages consumed and not yet finished, over every partition."""
        return self._bytes

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
        state = self._state(tp)
        if state.committed is None or offset > state.committed:
            state.committed = offset

    def committed(self, tp: TopicPartition) -> int | None:
        state = self._parts.get(tp)
        return state.committed if state else None

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Drop partitions (revoked): late completions for them are then ignored."""
        for tp in tps:
            state = self._parts.pop(tp, None)
            if state is not None:
                self._bytes -= sum(state.unfinished.values())

    def partitions(self) -> list[TopicPartition]:
        return list(self._parts)
