"""A simulated day of API economy: the real :class:`~consumer.quota.Pacer` and
:class:`~consumer.batcher.Batcher` of every pod, driven by a fake clock (nothing sleeps), over a
traffic profile. Used by the pacer's unit tests (short spans) and by the cost report of
``make bench`` (whole days, several profiles, 1 and 3 pods).

Model: each pod owns an equal share of every entity's events; full batches queue and go first;
a request takes no time; each pod's request rate is the throttle rate its pacer sets; the
ledger is shared memory (what every pod published at its last refresh).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import statistics
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from consumer.batcher import Batcher
from consumer.metrics import Metrics
from consumer.quota import DAY_S, MemberRecord, Pacer, QuotaPolicy
from consumer.records import Batch, Entity, Item, Message, Position

ENTITIES = (Entity.AGENT, Entity.CONVERSATION, Entity.CUSTOMER)
BODY = b'{"eventId":"e","externalAgentId":"a"}'  # ~40 bytes: batches close by count


class SharedLedger:
    """The compacted topic, as every pod sees it at once."""

    def __init__(self) -> None:
        self.records: dict[str, MemberRecord] = {}
        self.available = True

    def publish(self, record: MemberRecord) -> None:
        if self.available:
            self.records[record.pod] = record

    def members(self) -> Mapping[str, MemberRecord] | None:
        return dict(self.records) if self.available else None


#: events per second per entity at time-of-day ``t`` (seconds since 00:00 UTC)
Rate = Callable[[float], float]


@dataclass
class Profile:
    name: str
    rate: Rate
    bursts: Mapping[float, int] = field(default_factory=dict)  # t → events per entity at once


def trickle(per_s: float) -> Rate:
    return lambda t: per_s


def business_hours(peak: float, night: float) -> Rate:
    def rate(t: float) -> float:
        hour = t / 3600
        if 8 <= hour < 18:
            return night + (peak - night) * math.sin(math.pi * (hour - 8) / 10)
        return night

    return rate


@dataclass
class Result:
    requests: int = 0
    items: int = 0
    waits: list[float] = field(default_factory=list)  # per item: arrival → request
    wall_hit: bool = False
    wall_at_s: float | None = None  # seconds after 00:00 UTC the wall first went up
    per_minute_max: int = 0

    @property
    def items_per_request(self) -> float:
        return self.items / self.requests if self.requests else 0.0

    def wait(self, q: float) -> float:
        if not self.waits:
            return 0.0
        if q >= 1.0:
            return max(self.waits)
        return statistics.quantiles(self.waits, n=100)[int(q * 100) - 1]


class _Clock:
    def __init__(self, unix: float) -> None:
        self.unix = unix
        self.start = unix

    def mono(self) -> float:
        return self.unix - self.start


class _Pod:
    def __init__(
        self, n: int, policy: QuotaPolicy, ledger: SharedLedger, clock: _Clock, step_s: float
    ) -> None:
        self.name = f"pod-{n}"
        self.step_s = step_s
        self.clock = clock
        self.rate = policy.rate_limit_rps
        self.tokens = 1.0
        self.stamp = clock.mono()
        self.sent = 0
        self.paused_until = 0.0
        self.batcher = Batcher(
            max_items=1000, max_bytes=1_000_000, linger_s=policy.linger_s, clock=clock.mono
        )
        self.full: deque[Batch] = deque()
        self.pacer = Pacer(
            policy,
            pod=self.name,
            ledger=ledger,
            set_rate=self._set_rate,
            pause=self._pause,
            requests_today=lambda: self.sent,
            metrics=Metrics(CollectorRegistry()),
            clock=clock.mono,
            wall=lambda: clock.unix,
        )

    def _set_rate(self, rps: float) -> None:
        self._refill()
        self.rate = rps

    def _pause(self, seconds: float) -> None:
        self.paused_until = self.clock.mono() + seconds

    def _refill(self) -> None:
        now = self.clock.mono()
        # the real throttle waits between tokens; a step of the model may hold several
        burst = max(1.0, self.rate * self.step_s)
        self.tokens = min(burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def _take(self) -> bool:
        if self.clock.mono() < self.paused_until:
            return False
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def add(self, item: Item) -> None:
        self.full.extend(self.batcher.add(item))

    def buffered(self) -> int:
        return self.batcher.open_items() + sum(len(b.items) for b in self.full)

    def turn(self, result: Result, minute: list[int], max_wait_s: float) -> None:
        pacer = self.pacer
        pacer.refresh(demand=float(self.batcher.open_batches() + len(self.full)))
        if pacer.exhausted:
            result.wall_hit = True
            if result.wall_at_s is None:
                result.wall_at_s = self.clock.unix % DAY_S
        while self.full and self._take():
            self._send(self.full.popleft(), result, minute)
        if self.full:
            return  # full batches first
        limit = pacer.linger_allowance()
        due = self.batcher.due(
            lambda e: self.clock.mono() >= self.paused_until, limit=limit, max_wait_s=max_wait_s
        )
        if limit is not None:
            pacer.spent_linger(len(due))
        for batch in due:
            if self._take():
                self._send(batch, result, minute)
            else:
                self.full.append(batch)

    def _send(self, batch: Batch, result: Result, minute: list[int]) -> None:
        self.sent += 1
        minute[0] += 1
        result.requests += 1
        result.items += len(batch.items)
        now = self.clock.unix
        result.waits.extend(now - (i.message.timestamp_ms or 0) / 1000 for i in batch.items)


def simulate(
    profile: Profile,
    *,
    pods: int = 1,
    quota: int = 50_000,
    reserve: int | None = None,
    max_wait_s: float = 60.0,
    linger_s: float = 1.0,
    rate_limit_rps: float = 90.0,
    start_s: float = 0.0,
    hours: float = 24.0,
    step_s: float = 0.25,
    used_before: int = 0,
    max_buffered: int = 50_000,
) -> Result:
    """Run ``profile`` from ``start_s`` after midnight for ``hours``; return the figures."""
    day0 = 1_796_083_200.0  # 2026-12-01 00:00 UTC
    clock = _Clock(day0 + start_s)
    ledger = SharedLedger()
    if used_before:
        ledger.records["earlier"] = MemberRecord("earlier", "2026-12-01", used_before, 0.0, 0.0)
    policy = QuotaPolicy(
        daily_quota=quota,
        reserve=quota // 20 if reserve is None else reserve,
        max_wait_s=max_wait_s,
        rate_limit_rps=rate_limit_rps,
        linger_s=linger_s,
        entities=len(ENTITIES),
    )
    fleet = [_Pod(n, policy, ledger, clock, step_s) for n in range(pods)]
    result = Result()
    owed = dict.fromkeys(ENTITIES, 0.0)
    # events in Kafka not yet consumed, per entity: [count, arrival unix time] chunks
    source: dict[Entity, deque[list[float]]] = {e: deque() for e in ENTITIES}
    seq = 0
    end = clock.unix + min(hours * 3600, DAY_S - start_s - 1)
    bursts = dict(profile.bursts)
    minute = [0]
    minute_end = clock.unix + 60
    room = max_buffered // pods
    while clock.unix < end:
        t = clock.unix - day0
        due_bursts = [b for b in bursts if b <= t]
        for entity in ENTITIES:
            owed[entity] += profile.rate(t) * step_s
            n = int(owed[entity])
            owed[entity] -= n
            n += sum(bursts[b] for b in due_bursts)
            if n:
                source[entity].append([float(n), clock.unix])
        for b in due_bursts:
            del bursts[b]
        for entity in ENTITIES:  # consume what the pods have room for (backpressure)
            chunks = source[entity]
            while chunks:
                free = min(room - pod.buffered() for pod in fleet)
                if free <= 0:
                    break
                take = int(min(chunks[0][0], free * pods))
                ts = int(chunks[0][1] * 1000)
                for _ in range(take):
                    seq += 1
                    msg = Message(Position(entity.value, 0, seq), None, None, ts)
                    fleet[seq % pods].add(Item(entity, str(seq), BODY, msg, key=str(seq)))
                chunks[0][0] -= take
                if chunks[0][0] <= 0:
                    chunks.popleft()
        for pod in fleet:
            pod.turn(result, minute, max_wait_s)
        clock.unix += step_s
        if clock.unix >= minute_end:
            result.per_minute_max = max(result.per_minute_max, minute[0])
            minute[0] = 0
            minute_end += 60
    return result


PROFILES = (
    Profile("steady trickle (2 events/s per entity)", trickle(2.0)),
    Profile("business hours (peak 20/s per entity at 13:00)", business_hours(20.0, 0.5)),
    Profile(
        "5M-event backfill at 09:00 on a 2/s trickle",
        trickle(2.0),
        bursts={9 * 3600.0: 5_000_000 // len(ENTITIES)},
    ),
)


def _simulate_one(job: tuple[int, int, int, float]) -> Result:
    index, pods, quota, step_s = job
    profile = [p for p in PROFILES for _ in (1, 3)][index]
    return simulate(profile, pods=pods, quota=quota, step_s=step_s)


def cost_report(quota: int = 50_000, step_s: float = 1.0) -> list[dict[str, object]]:
    """Every profile over a whole day, on 1 and 3 pods: the rows of the README's table."""
    rows: list[dict[str, object]] = []
    runs = [(profile, pods) for profile in PROFILES for pods in (1, 3)]
    # one process per CPU: the six days are independent (and each takes a while)
    workers = max(1, min(len(runs), os.cpu_count() or 1))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(
            pool.map(_simulate_one, [(i, pods, quota, step_s) for i, (_, pods) in enumerate(runs)])
        )
    for (profile, pods), r in zip(runs, results, strict=True):
        rows.append(
            {
                "profile": profile.name,
                "pods": pods,
                "requests": f"{r.requests:,} of {quota:,}",
                "items/request": round(r.items_per_request, 1),
                "wait p50 s": round(r.wait(0.5), 1),
                "wait p99 s": round(r.wait(0.99), 1),
                "wait max s": round(r.wait(1.0), 1),
                "wall hit": wall_text(r.wall_at_s),
            }
        )
    return rows


def wall_text(at_s: float | None) -> str:
    """The cost report's "wall hit" cell: "no", or the UTC time the quota wall went up (at
    23:59 it only means the day's allowance was spent to the last request, as intended)."""
    if at_s is None:
        return "no"
    h, rest = divmod(int(at_s), 3600)
    return f"at {h:02d}:{rest // 60:02d}:{rest % 60:02d} UTC"


def markdown(rows: list[dict[str, object]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
