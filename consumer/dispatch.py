"""Dispatch: the one place that decides which batch may be sent now.

It owns the open batches (the :class:`~consumer.batcher.Batcher`), the batches in flight, and
the items deferred for per-id order. Rules:

1. **Per-id order.** For every entity key (the API's required id fields of an item), the API
   receives its versions in offset order: no request carries a version of a key while a request
   with an earlier version of it is in flight or waiting to be retried. An item whose key is in
   flight (or already has deferred versions) is *deferred*; when that request completes, the
   key's deferred versions enter the open batch in order. Several requests stay in flight for
   distinct keys. Items given back abandoned (a cooperative rebalance kept their partition)
   go back in front of their key's deferred versions.
2. **Coalescing** (``BATCH_COALESCE``, off by default: ASAPP does not say whether an item
   replaces or merges): a newer version of a key waiting in the open batch or deferred replaces
   the older one, which rides along in ``superseded`` and is finished with it (counted).
3. **Linger**: a batch past its linger window is sent only when its entity's sender lane has a
   free thread; until then it keeps filling (fewer, fuller requests when the API is slow).
   Count and byte limits close batches as usual.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from consumer.batcher import Batcher
from consumer.metrics import Metrics
from consumer.ports import SenderLike
from consumer.records import Batch, Completion, Entity, Item, TopicPartition

Key = tuple[Entity, str]


@dataclass(slots=True)
class InFlight:
    """A submitted batch and what it holds up: its partitions and keys."""

    batch: Batch
    partitions: frozenset[TopicPartition]
    keys: frozenset[Key]


class Dispatcher:
    """Open, deferred and in-flight items. Owned by the poll loop (not thread-safe)."""

    def __init__(
        self, *, batcher: Batcher, sender: SenderLike, metrics: Metrics, coalesce: bool = False
    ) -> None:
        self.batcher = batcher
        self.sender = sender
        self.coalesce = coalesce
        self._superseded = metrics.items_superseded
        self._waited = metrics.batch_wait
        self._inflight: dict[int, InFlight] = {}
        self._busy: dict[Key, int] = {}  # key → in-flight batches holding a version of it
        self._deferred: dict[Key, deque[Item]] = {}

    # ------------------------------------------------------------------ items in
    def add(self, item: Item) -> None:
        """Route a new item: deferred behind its key, or into its entity's open batch."""
        key = (item.entity, item.key)
        waiting = self._deferred.get(key)
        if waiting is not None:
            if self.coalesce:
                self._supersede(item, waiting.pop())
            waiting.append(item)
        elif key in self._busy:
            self._deferred[key] = deque([item])
        else:
            self._open(item)

    def _open(self, item: Item) -> None:
        if self.coalesce:
            older = self.batcher.replace(item)
            if older is not None:
                self._supersede(item, older)
                return
        for batch in self.batcher.add(item):
            self._submit(batch)

    def _supersede(self, newer: Item, older: Item) -> None:
        newer.superseded.extend(older.superseded)
        newer.superseded.append(older)
        older.superseded = []
        self._superseded.labels(newer.entity.value).inc()

    def send_due(self, *, limit: int | None = None, max_wait_s: float | None = None) -> int:
        """Send the lingering batches whose entity lane could take one now, oldest first, at
        most ``limit`` (pacing) but always those open ``max_wait_s`` or more. Returns how many
        were sent."""
        batches = self.batcher.due(self.sender.has_capacity, limit=limit, max_wait_s=max_wait_s)
        now = self.batcher.now()
        for batch in batches:
            self._waited.labels(batch.entity.value).observe(
                max(0.0, now - batch.opened_at - self.batcher.linger_s)
            )
            self._submit(batch)
        return len(batches)

    def flush(self, reason: str) -> None:
        """Send every open batch now (revoke, shutdown). Deferred items stay deferred: they
        wait for the in-flight versions before them."""
        for batch in self.batcher.flush(reason):
            self._submit(batch)

    def next_deadline(self) -> float | None:
        """When the oldest open batch lingers out (None when none is open)."""
        return self.batcher.next_deadline()

    def _submit(self, batch: Batch) -> None:
        keys = frozenset((i.entity, i.key) for i in batch.items)
        for key in keys:
            self._busy[key] = self._busy.get(key, 0) + 1
        parts = frozenset(i.position.tp for i in batch.items)
        self._inflight[id(batch)] = InFlight(batch, parts, keys)
        self.sender.submit(batch)

    # ------------------------------------------------------------------ completions
    def completed(self, c: Completion, resend: Iterable[Item]) -> None:
        """``c``'s batch is done: its keys are free again; ``resend`` (abandoned items still
        ours) goes first, then each freed key's deferred versions, in order."""
        flight = self._inflight.pop(id(c.batch), None)
        keys = flight.keys if flight is not None else frozenset()
        for key in keys:
            self._release_key(key)
        back: dict[Key, list[Item]] = {}
        for item in resend:
            back.setdefault((item.entity, item.key), []).append(item)
        for key, items in back.items():
            self._deferred.setdefault(key, deque()).extendleft(reversed(items))
        for key in [*back, *(k for k in keys if k not in back)]:  # resend order first
            self._undefer(key)

    def _release_key(self, key: Key) -> None:
        n = self._busy.get(key, 0) - 1
        if n > 0:
            self._busy[key] = n
        else:
            self._busy.pop(key, None)

    def _undefer(self, key: Key) -> None:
        waiting = self._deferred.get(key)
        while waiting and key not in self._busy:
            self._open(waiting.popleft())
        if waiting is not None and not waiting:
            del self._deferred[key]

    # ------------------------------------------------------------------ queries, release
    def in_flight(self) -> list[InFlight]:
        return list(self._inflight.values())

    def retrying(self) -> set[TopicPartition]:
        """Partitions of batches waiting to be retried (the loop pauses them)."""
        out: set[TopicPartition] = set()
        for f in self._inflight.values():
            if f.batch.retrying:
                out |= f.partitions
        return out

    def settled(self, tps: set[TopicPartition] | None = None) -> bool:
        """No batch in flight touches ``tps`` (any partition when None)."""
        if tps is None:
            return not self._inflight
        return not any(f.partitions & tps for f in self._inflight.values())

    def demand(self) -> float:
        """Requests this pod wants to send: open batches plus batches in flight (published to
        the request ledger, so the group's budget follows demand)."""
        return float(self.batcher.open_batches() + len(self._inflight))

    def all_retrying(self, tps: set[TopicPartition] | None = None) -> bool:
        """Batches touching ``tps`` (any when None) are in flight and every one of them is
        waiting in a retry backoff: none can finish before its next attempt."""
        flights = [f for f in self._inflight.values() if tps is None or f.partitions & tps]
        return bool(flights) and all(f.batch.retrying for f in flights)

    def deferred_count(self) -> int:
        return sum(len(q) for q in self._deferred.values())

    def cancel(self, touches: Callable[[frozenset[TopicPartition]], bool]) -> int:
        """Give up on in-flight batches whose partitions match (their completions, if any
        come, are ignored); returns how many."""
        n = 0
        for key, flight in list(self._inflight.items()):
            if touches(flight.partitions):
                flight.batch.cancel.set()
                del self._inflight[key]
                for k in flight.keys:
                    self._release_key(k)
                n += 1
        return n

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Released partitions: drop their open and deferred items (never sent; whoever owns
        the partitions next reads them again). In-flight batches are :meth:`cancel`\\ed by
        the caller first."""
        gone = set(tps)
        self.batcher.drop(lambda item: item.position.tp in gone)
        for key in list(self._deferred):
            kept = deque(i for i in self._deferred[key] if i.position.tp not in gone)
            if kept:
                self._deferred[key] = kept
            else:
                del self._deferred[key]
        for key in list(self._deferred):
            self._undefer(key)
