"""Hand-written fakes of the pipeline's collaborators (Kafka source, dead-letter producer,
sender, decoder) and a fake clock. They record what the pipeline asked of them; a contract test
(tests/integration/test_source_contract.py) runs the same assertions against :class:`FakeSource`
and the real :class:`~consumer.kafka.KafkaSource` so the fake stays honest."""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from consumer.errors import BrokerError, DecodeError, RegistryUnavailable
from consumer.records import (
    Batch,
    Completion,
    DeadLetter,
    Entity,
    Item,
    Message,
    Position,
    TopicPartition,
)

TIMESTAMP_MS = 1_700_000_000_000  # every message's Kafka timestamp
ACK_DELAY_S = 2.5  # the API acknowledges each batch this long after that timestamp


# --------------------------------------------------------------------------- fakes
class FakeClock:
    """Monotonic seconds that move only when told; ``after`` schedules an action at a time."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._scheduled: list[tuple[float, int, Callable[[], None]]] = []

    def __call__(self) -> float:
        return self.now

    def after(self, delay_s: float, action: Callable[[], None]) -> None:
        self._scheduled.append((self.now + delay_s, len(self._scheduled), action))

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = sorted((s for s in self._scheduled if s[0] <= self.now), key=lambda s: s[:2])
        self._scheduled = [s for s in self._scheduled if s[0] > self.now]
        for _, _, action in due:
            action()


CommitCallback = Callable[[str | None, dict[TopicPartition, int]], None]


@dataclass(frozen=True)
class Rebalance:
    """A rebalance callback, served from inside ``consume`` as librdkafka does."""

    kind: str  # assign, revoke, lost
    partitions: tuple[TopicPartition, ...]


class FakeSource:
    """Kafka consumer stand-in: a queue of messages and rebalances, pause flags, commits.

    Messages of a paused partition stay queued (not fetched) until it is resumed. Like
    librdkafka, a pause flag survives the partition being released.
    """

    def __init__(self, finished: set[Position]) -> None:
        self._finished = finished
        self._queue: deque[Message | Rebalance] = deque()
        self._callbacks: dict[str, Callable[[list[TopicPartition]], None]] = {}
        self._on_commit: CommitCallback | None = None
        self._commit_results: deque[tuple[str | None, dict[TopicPartition, int]]] = deque()
        self.fed: dict[TopicPartition, list[int]] = {}
        self.paused: set[TopicPartition] = set()
        self.paused_at_release: set[TopicPartition] = set()
        self.log: list[tuple[str, Any]] = []
        self.commits: list[tuple[dict[TopicPartition, int], frozenset[Position]]] = []
        self.fail_commits = 0
        self.closed = False
        self.total_partitions: int | None = None

    def subscribe(
        self,
        topics: Iterable[str],
        *,
        on_assign: Callable[[list[TopicPartition]], None],
        on_revoke: Callable[[list[TopicPartition]], None],
        on_lost: Callable[[list[TopicPartition]], None],
        on_commit: CommitCallback | None = None,
    ) -> None:
        self._callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}
        self._on_commit = on_commit

    def feed(self, *entries: Message | Rebalance) -> None:
        for entry in entries:
            if isinstance(entry, Message):
                self.fed.setdefault(entry.position.tp, []).append(entry.position.offset)
            self._queue.append(entry)

    def consume(self, max_messages: int, timeout_s: float) -> list[Message]:
        while self._commit_results:  # results of asynchronous commits are served from here
            error, done = self._commit_results.popleft()
            assert self._on_commit is not None, "commit_async used without an on_commit callback"
            self._on_commit(error, done)
        out: list[Message] = []
        not_fetched: list[Message | Rebalance] = []
        while self._queue and len(out) < max_messages:
            entry = self._queue.popleft()
            if isinstance(entry, Rebalance):
                if out:  # served at the start of the next call
                    self._queue.appendleft(entry)
                    break
                self._rebalance(entry)
            elif entry.position.tp in self.paused:
                not_fetched.append(entry)
            else:
                out.append(entry)
        self._queue.extendleft(reversed(not_fetched))
        return out

    def _rebalance(self, event: Rebalance) -> None:
        tps = list(event.partitions)
        self.log.append((event.kind, frozenset(tps)))
        self._callbacks[event.kind](tps)
        if event.kind != "assign":  # librdkafka releases them now, pause flags and all
            self.paused_at_release |= self.paused & set(tps)

    def pause(self, tps: Iterable[TopicPartition]) -> None:
        tps = frozenset(tps)
        self.log.append(("pause", tps))
        self.paused |= tps

    def resume(self, tps: Iterable[TopicPartition]) -> None:
        tps = frozenset(tps)
        self.log.append(("resume", tps))
        self.paused -= tps

    def commit(
        self, offsets: Mapping[TopicPartition, int], timeout_s: float
    ) -> dict[TopicPartition, int]:
        self.log.append(("commit", dict(offsets)))
        if self.fail_commits:
            self.fail_commits -= 1
            raise BrokerError("commit timed out")
        self.commits.append((dict(offsets), frozenset(self._finished)))
        return dict(offsets)

    def commit_async(self, offsets: Mapping[TopicPartition, int]) -> None:
        """The broker takes the offsets now (recorded now); the answer comes from ``consume``."""
        self.log.append(("commit_async", dict(offsets)))
        if self.fail_commits:
            self.fail_commits -= 1
            self._commit_results.append(("commit timed out", {}))
            return
        self.commits.append((dict(offsets), frozenset(self._finished)))
        self._commit_results.append((None, dict(offsets)))

    def last_commit(self, part: TopicPartition) -> int | None:
        found = [offsets[part] for offsets, _ in self.commits if part in offsets]
        return found[-1] if found else None

    def high_watermark(self, part: TopicPartition) -> int | None:
        offsets = self.fed.get(part)
        return offsets[-1] + 1 if offsets else None

    def committed(
        self, tps: Iterable[TopicPartition], timeout_s: float
    ) -> dict[TopicPartition, int | None]:
        return {t: self.last_commit(t) for t in tps}

    def partitions_total(self, topics: Iterable[str], timeout_s: float) -> int | None:
        return self.total_partitions

    def close(self, timeout_s: float) -> bool:
        self.log.append(("close", timeout_s))
        self.closed = True
        return True


DoneCallback = Callable[[DeadLetter, "str | None"], None]


class FakeDeadLetters:
    """DLQ producer stand-in. The test answers each write with :meth:`ack` or :meth:`fail`;
    the answer reaches the pipeline at its next ``poll``/``flush``, as a librdkafka delivery
    report does. ``queue_full`` makes ``produce`` refuse (local queue full)."""

    def __init__(self, finished: set[Position]) -> None:
        self._finished = finished
        self._reports: deque[tuple[DeadLetter, DoneCallback, str | None]] = deque()
        self.produced: list[DeadLetter] = []
        self.unanswered: list[tuple[DeadLetter, DoneCallback]] = []
        self.queue_full = False

    def produce(self, dl: DeadLetter, on_done: DoneCallback) -> bool:
        if self.queue_full:
            return False
        self.produced.append(dl)
        self.unanswered.append((dl, on_done))
        return True

    def ack(self, dl: DeadLetter | None = None) -> None:
        """Acknowledge ``dl`` (every unanswered write when None)."""
        if dl is None:
            while self.unanswered:
                self._answer(self.unanswered[0][0], None)
        else:
            self._answer(dl, None)

    def fail(self, dl: DeadLetter, error: str = "broker down") -> None:
        self._answer(dl, error)

    def _answer(self, dl: DeadLetter, error: str | None) -> None:
        for n, (written, on_done) in enumerate(self.unanswered):
            if written == dl:
                del self.unanswered[n]
                self._reports.append((written, on_done, error))
                return
        raise AssertionError(f"{dl.message.position} was not written, or already answered")

    def poll(self) -> None:
        while self._reports:
            dl, on_done, error = self._reports.popleft()
            if error is None:
                self._finished.add(dl.message.position)
            on_done(dl, error)

    def flush(self, timeout_s: float) -> int:
        self.poll()
        return len(self.unanswered)


class FakeCompletions(queue.Queue[Completion]):
    """The sender's completion queue. A blocking ``get`` never blocks: the time the poll loop
    would wait passes on the fake clock, and the sender threads act meanwhile."""

    def __init__(self, clock: FakeClock, meanwhile: Callable[[], None]) -> None:
        super().__init__()
        self._clock = clock
        self._meanwhile = meanwhile

    def get(self, block: bool = True, timeout: float | None = None) -> Completion:
        self._meanwhile()
        if block and self.empty():
            self._clock.advance(0.05 if timeout is None else timeout)
            self._meanwhile()
        return super().get(block=False)


class FakeSender:
    """Sender stand-in: stores submitted batches; the test completes them in any order.

    With ``abandon_cancelled``, a batch whose ``cancel`` is set comes back abandoned as soon
    as anyone looks at the completion queue (a sender thread noticing the cancel at once).
    """

    def __init__(self, clock: FakeClock, finished: set[Position]) -> None:
        self._finished = finished
        self._done: set[int] = set()
        self.completions = FakeCompletions(clock, self._react)
        self.submitted: list[Batch] = []
        self.abandon_cancelled = False
        self.stopped = False
        self.capacity = True
        self.busy_lanes: set[Entity] = set()

    def submit(self, batch: Batch) -> None:
        self.submitted.append(batch)

    def has_capacity(self, entity: Entity | None = None) -> bool:
        """``capacity`` for every lane unless ``busy_lanes`` names the entity's."""
        if entity is not None and entity in self.busy_lanes:
            return False
        return self.capacity

    def stop(self) -> None:
        self.stopped = True

    def complete(
        self,
        batch: Batch,
        *,
        dead: Sequence[Item] = (),
        abandoned: Sequence[Item] = (),
        acked_at: float = TIMESTAMP_MS / 1000 + ACK_DELAY_S,
    ) -> None:
        """Hand back ``batch``: ``dead`` items rejected by the API, ``abandoned`` ones given
        up, every other item delivered."""
        assert id(batch) not in self._done, "batch completed twice"
        others = {id(i) for i in (*dead, *abandoned)}
        delivered = [i for i in batch.items if id(i) not in others]
        self._finished.update(i.position for i in delivered)
        self._finished.update(s.position for i in batch.items for s in i.superseded)
        self._done.add(id(batch))
        batch.retrying = False  # as the sender thread does before handing the batch back
        self.completions.put(
            Completion(
                batch=batch,
                delivered=delivered,
                dead=[
                    DeadLetter(i.message, i.entity, "rejected", "FAIL_BAD_PARAMS: no", 200)
                    for i in dead
                ],
                abandoned=list(abandoned),
                acked_at=acked_at,
            )
        )

    def _react(self) -> None:
        if not self.abandon_cancelled:
            return
        for batch in self.submitted:
            if id(batch) not in self._done and batch.cancel.is_set():
                self.complete(batch, abandoned=batch.items)


class FakeDecoder:
    """Decodes the values :meth:`Rig.msg` registered. ``b"bad"`` is not an event; a value
    starting ``b"new-schema"`` needs a writer schema not cached yet, so it cannot be decoded
    while ``registry_down``."""

    def __init__(self) -> None:
        self.records: dict[bytes, dict[str, Any]] = {}
        self.registry_down = False
        self.retry_after_s: float | None = None

    def decode(self, value: bytes | None) -> dict[str, Any]:
        if value is None or value == b"bad":
            raise DecodeError("invalid Avro body for agent.avsc: garbage")
        if value.startswith(b"new-schema") and self.registry_down:
            raise RegistryUnavailable(
                "schema registry answered HTTP 503", retry_after_s=self.retry_after_s
            )
        return dict(self.records[value])


class FakePending:
    """One batch in :class:`FakeWorkers`: ingested at once, reported done once the workers
    were polled ``delay`` times after its submission (about one poll per loop turn), as worker
    processes that work on every batch at once would be later."""

    def __init__(self, workers: FakeWorkers, results: list[Any], due: int) -> None:
        self._workers, self._results, self._due = workers, results, due

    def done(self) -> bool:
        self._workers.polls += 1
        return self._workers.polls > self._due

    def result(self, timeout_s: float | None = None) -> list[Any]:
        return self._results


class FakeWorkers:
    """Where :class:`consumer.workers.IngestPool` stands: runs ``ingest`` (set it to the
    pipeline's own) in this process, each batch's results about ``delay`` turns late."""

    def __init__(self, delay: int = 1) -> None:
        self.delay = delay
        self.ingest: Callable[[Sequence[Message]], list[Any]] | None = None
        self.submitted = 0
        self.polls = 0

    def submit(self, messages: Sequence[Message]) -> FakePending:
        assert self.ingest is not None, "set FakeWorkers.ingest to the pipeline's"
        self.submitted += 1
        return FakePending(self, self.ingest(messages), self.polls + self.delay)
