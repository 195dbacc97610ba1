"""Batcher: per-entity batches closed by count, exact body bytes, linger (fake clock), flush."""

from __future__ import annotations

import json

import pytest

from consumer.batcher import BODY_OVERHEAD, Batcher, body_size, request_body
from consumer.records import Batch, Entity, Item, Message, Position


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


_offsets = iter(range(10**9))


def item(entity: Entity = Entity.AGENT, size: int | None = None, event_id: str = "e") -> Item:
    """An item whose JSON body is exactly ``size`` bytes when given."""
    offset = next(_offsets)
    payload = {"eventId": f"{event_id}-{offset}"}
    body = json.dumps(payload, separators=(",", ":")).encode()
    if size is not None:
        pad = size - len(body) - len(b',"p":""')
        assert pad >= 0, "size too small for the helper"
        payload["p"] = "x" * pad
        body = json.dumps(payload, separators=(",", ":")).encode()
        assert len(body) == size
    message = Message(Position(f"t-{entity.value}", 0, offset), b"k", b"v", 0)
    return Item(entity, payload["eventId"], body, message)


def batcher(clock: FakeClock | None = None, **kw: float) -> Batcher:
    args: dict[str, float] = {"max_items": 100, "max_bytes": 10_000, "linger_s": 1.0}
    args.update(kw)
    return Batcher(
        max_items=int(args["max_items"]),
        max_bytes=int(args["max_bytes"]),
        linger_s=args["linger_s"],
        clock=clock or FakeClock(),
    )


def test_request_body_is_items_array_and_size_is_exact() -> None:
    items = [item(size=40), item(size=41), item(size=77)]
    body = request_body(items)
    assert json.loads(body) == {"items": [json.loads(i.body) for i in items]}
    assert body_size(items) == len(body)
    assert body_size([]) == len(request_body([])) == BODY_OVERHEAD
    assert body_size(items[:1]) == len(request_body(items[:1]))


def test_closes_by_count() -> None:
    b = batcher(max_items=3)
    assert b.add(item()) == []
    assert b.add(item()) == []
    (closed,) = b.add(item())
    assert len(closed) == 3
    assert closed.close_reason == "count"
    assert b.open_items() == 0


@pytest.mark.parametrize(
    ("sizes", "max_bytes"),
    [
        pytest.param([100, 100, 100], 300, id="third-would-overflow"),
        pytest.param([50] * 10, 300, id="many-small"),
        pytest.param([60, 200, 30, 90], 256, id="mixed"),
    ],
)
def test_closes_by_bytes_with_exact_body_size(sizes: list[int], max_bytes: int) -> None:
    b = batcher(max_bytes=max_bytes)
    closed: list[Batch] = []
    items = [item(size=s) for s in sizes]
    for i in items:
        closed += b.add(i)
    closed += b.flush("shutdown")
    assert [i for batch in closed for i in batch.items] == items
    for batch in closed:
        assert batch.body_bytes == len(request_body(batch.items))
        assert batch.body_bytes <= max_bytes or len(batch) == 1
    byte_closed = [batch for batch in closed if batch.close_reason == "bytes"]
    assert byte_closed
    for batch in byte_closed:
        # Closed by bytes: the next item would not have fitted (or the batch is exactly full).
        following = items[items.index(batch.items[-1]) + 1 :]
        if following and batch.body_bytes < max_bytes:
            assert len(request_body([*batch.items, following[0]])) > max_bytes


def test_batch_exactly_at_max_bytes_is_closed() -> None:
    first, second = item(size=40), item(size=40)
    exact = len(request_body([first, second]))
    b = batcher(max_bytes=exact)
    assert b.add(first) == []
    (closed,) = b.add(second)
    assert closed.close_reason == "bytes"
    assert closed.body_bytes == exact


def test_oversized_item_goes_alone() -> None:
    b = batcher(max_bytes=200)
    small = item(size=50)
    big = item(size=500)
    assert b.add(small) == []
    closed = b.add(big)
    assert [(c.items, c.close_reason) for c in closed] == [([small], "bytes"), ([big], "bytes")]
    assert b.open_items() == 0
    # And an oversized first item closes at once, on its own.
    (alone,) = b.add(item(size=500))
    assert len(alone) == 1


def test_linger_with_fake_clock() -> None:
    clock = FakeClock(50.0)
    b = batcher(clock, linger_s=2.0)
    assert b.next_deadline() is None
    b.add(item(Entity.AGENT))
    assert b.next_deadline() == 52.0
    clock.now = 51.0
    b.add(item(Entity.CUSTOMER))
    assert b.next_deadline() == 52.0  # the oldest batch decides
    clock.now = 51.999
    assert b.due() == []
    clock.now = 52.0
    (agent,) = b.due()
    assert agent.entity is Entity.AGENT
    assert agent.close_reason == "linger"
    assert agent.opened_at == 50.0
    assert b.next_deadline() == 53.0
    clock.now = 60.0
    (customer,) = b.due()
    assert customer.entity is Entity.CUSTOMER
    assert b.next_deadline() is None
    assert b.due() == []


def test_linger_window_starts_at_the_first_item() -> None:
    clock = FakeClock(0.0)
    b = batcher(clock, linger_s=1.0)
    b.add(item())
    clock.now = 0.9
    b.add(item())
    clock.now = 1.0
    (closed,) = b.due()
    assert len(closed) == 2


@pytest.mark.parametrize("reason", ["revoke", "shutdown"])
def test_flush_closes_every_open_batch_with_reason(reason: str) -> None:
    b = batcher()
    for entity in Entity:
        b.add(item(entity))
    b.add(item(Entity.AGENT))
    assert b.open_items() == 4
    closed = b.flush(reason)
    assert {c.entity for c in closed} == set(Entity)
    assert {c.close_reason for c in closed} == {reason}
    assert sum(len(c) for c in closed) == 4
    assert b.open_items() == 0
    assert b.flush(reason) == []


def test_entities_are_batched_separately() -> None:
    b = batcher(max_items=2)
    agent1, cust, agent2 = item(Entity.AGENT), item(Entity.CUSTOMER), item(Entity.AGENT)
    assert b.add(agent1) == []
    assert b.add(cust) == []
    (closed,) = b.add(agent2)
    assert closed.entity is Entity.AGENT
    assert closed.items == [agent1, agent2]
    assert b.open_items() == 1
    (rest,) = b.flush("shutdown")
    assert rest.items == [cust]


def test_bytes_are_counted_per_entity() -> None:
    one = item(Entity.AGENT, size=100)
    b = batcher(max_bytes=len(request_body([one])) + 50)
    assert b.add(one) == []
    # A different entity's item does not count towards the agent batch.
    assert b.add(item(Entity.CONVERSATION, size=100)) == []
    assert b.open_items() == 2


@pytest.mark.parametrize(
    "limit, max_wait_s, expected",
    [
        pytest.param(None, None, [Entity.CUSTOMER, Entity.AGENT, Entity.CONVERSATION], id="all"),
        pytest.param(1, None, [Entity.CUSTOMER], id="paced-oldest-first"),
        pytest.param(0, None, [], id="no-turn-yet"),
        pytest.param(0, 3.0, [Entity.CUSTOMER], id="overdue-goes-anyway"),
        pytest.param(2, 3.0, [Entity.CUSTOMER, Entity.AGENT], id="overdue-counts-in-the-limit"),
    ],
)
def test_due_batches_close_oldest_first_within_the_pacing_limit(
    limit: int | None, max_wait_s: float | None, expected: list[Entity]
) -> None:
    clock = FakeClock()
    b = batcher(clock)
    for entity in (Entity.CUSTOMER, Entity.AGENT, Entity.CONVERSATION):  # opened 1 s apart
        b.add(item(entity))
        clock.now += 1.0
    clock.now += 0.5  # ages: customer 3.5 s, agent 2.5 s, conversation 1.5 s
    closed = b.due(limit=limit, max_wait_s=max_wait_s)
    assert [c.entity for c in closed] == expected
    assert b.open_batches() == 3 - len(expected)  # the others keep filling


def test_replace_keeps_the_batch_order_and_its_exact_size() -> None:
    b = batcher()
    b.track_keys = True
    first, second, newer = item(), item(), item()
    first.key, second.key, newer.key = "a", "b", "a"
    b.add(first)
    b.add(second)
    assert b.replace(newer) is first
    [batch] = b.flush("test")
    assert batch.items == [newer, second]
    assert batch.body_bytes == body_size(batch.items)
