"""Per-entity micro-batches, closed by item count, request body bytes, or a linger window.

A batch closes when the next item would push the serialized request body past
``max_bytes`` (reason ``bytes``), when it reaches ``max_items`` (``count``), when its first
item is ``linger_s`` old (``linger``), or when the pipeline flushes it on revoke or shutdown.
An item that alone exceeds ``max_bytes`` is sent in a batch of its own: the API decides
(413 → split, then dead letter), not us.

The request body is ``{"items":[<item>,<item>…]}``, so its size is known exactly from the
items' pre-serialized JSON without serializing anything twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from consumer.records import Batch, Entity, Item

#: Bytes of ``{"items":[`` + ``]}``.
BODY_OVERHEAD = len(b'{"items":[]}')


def request_body(items: Sequence[Item]) -> bytes:
    """The exact bytes POSTed for ``items``."""
    return b'{"items":[' + b",".join(item.body for item in items) + b"]}"


def body_size(items: Sequence[Item]) -> int:
    """``len(request_body(items))`` without building it."""
    return BODY_OVERHEAD + sum(len(i.body) for i in items) + max(0, len(items) - 1)


class Batcher:
    """Open batches, one per entity. Not thread-safe: owned by the poll loop."""

    def __init__(
        self,
        *,
        max_items: int,
        max_bytes: int,
        linger_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.linger_s = linger_s
        self._clock = clock
        self._open: dict[Entity, Batch] = {}
        #: with coalescing on: key → index in the open batch, per entity (see :meth:`replace`)
        self.track_keys = False
        self._keys: dict[Entity, dict[str, int]] = {}

    def add(self, item: Item) -> list[Batch]:
        """Add ``item``; returns the batches this closed (zero, one or two)."""
        closed: list[Batch] = []
        batch = self._open.get(item.entity)
        # +1 for the comma that joins this item to the previous one.
        if (
            batch is not None
            and batch.items
            and batch.body_bytes + 1 + len(item.body) > self.max_bytes
        ):
            closed.append(self._close(item.entity, "bytes"))
            batch = None
        if batch is None:
            batch = Batch(entity=item.entity, body_bytes=BODY_OVERHEAD, opened_at=self._clock())
            self._open[item.entity] = batch
        batch.body_bytes += len(item.body) + (1 if batch.items else 0)
        if self.track_keys:
            self._keys.setdefault(item.entity, {})[item.key] = len(batch.items)
        batch.items.append(item)
        if len(batch.items) >= self.max_items:
            closed.append(self._close(item.entity, "count"))
        elif batch.body_bytes >= self.max_bytes:
            closed.append(self._close(item.entity, "bytes"))
        return closed

    def due(
        self,
        may_close: Callable[[Entity], bool] | None = None,
        *,
        limit: int | None = None,
        max_wait_s: float | None = None,
    ) -> list[Batch]:
        """Close and return the batches whose linger window has passed, oldest first.

        ``may_close`` (by entity) keeps the others filling; ``limit`` caps how many close
        (pacing), except that a batch open for ``max_wait_s`` or more always closes."""
        now = self._clock()
        expired = sorted(
            (b.opened_at, e)
            for e, b in self._open.items()
            if now - b.opened_at >= self.linger_s and (may_close is None or may_close(e))
        )
        closing: list[Entity] = []
        for opened_at, entity in expired:
            overdue = max_wait_s is not None and now - opened_at >= max_wait_s
            if limit is None or overdue or len(closing) < limit:
                closing.append(entity)
        return [self._close(e, "linger") for e in closing]

    def now(self) -> float:
        """The batcher's clock."""
        return self._clock()

    def replace(self, item: Item) -> Item | None:
        """If the open batch of ``item``'s entity holds a version of the same key, put
        ``item`` in its place (keeping the batch's order and exact size) and return the older
        one; else None and nothing changes."""
        batch = self._open.get(item.entity)
        n = self._keys.get(item.entity, {}).get(item.key)
        if batch is None or n is None:
            return None
        old = batch.items[n]
        batch.items[n] = item
        batch.body_bytes += len(item.body) - len(old.body)
        return old

    def drop(self, unwanted: Callable[[Item], bool]) -> int:
        """Remove matching items from the open batches (released partitions); returns how
        many. A batch left empty is discarded."""
        n = 0
        for entity, batch in list(self._open.items()):
            kept = [i for i in batch.items if not unwanted(i)]
            if len(kept) == len(batch.items):
                continue
            n += len(batch.items) - len(kept)
            if not kept:
                self._close(entity, "dropped")
                continue
            batch.items = kept
            batch.body_bytes = body_size(kept)
            if self.track_keys:
                self._keys[entity] = {i.key: idx for idx, i in enumerate(kept)}
        return n

    def next_deadline(self) -> float | None:
        """Clock time at which the oldest open batch lingers out (None when none is open)."""
        if not self._open:
            return None
        return min(b.opened_at for b in self._open.values()) + self.linger_s

    def flush(self, reason: str) -> list[Batch]:
        """Close every open batch with ``reason`` (``revoke``, ``shutdown``)."""
        return [self._close(e, reason) for e in list(self._open)]

    def open_batches(self) -> int:
        return len(self._open)

    def open_items(self) -> int:
        return sum(len(b.items) for b in self._open.values())

    def _close(self, entity: Entity, reason: str) -> Batch:
        batch = self._open.pop(entity)
        self._keys.pop(entity, None)
        batch.close_reason = reason
        return batch
