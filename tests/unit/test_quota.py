"""The request budget: the pure policy as a table, then the real pacer and batcher over
simulated spans of a day (a fake clock; nothing sleeps)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from consumer.metrics import Metrics
from consumer.quota import (
    MemberRecord,
    Pacer,
    QuotaPolicy,
    budget,
    group_usage,
    seconds_to_midnight,
    utc_day,
)
from tests.quota_sim import Profile, business_hours, cost_report, markdown, simulate, trickle

MIDNIGHT = 1_796_083_200.0  # 2026-12-01 00:00 UTC
POLICY = QuotaPolicy(
    daily_quota=50_000,
    reserve=2_500,
    max_wait_s=60.0,
    rate_limit_rps=90.0,
    linger_s=1.0,
    entities=3,
)


def member(
    pod: str, requests: int, demand: float = 1.0, ts: float = MIDNIGHT + 3600
) -> MemberRecord:
    return MemberRecord(pod, utc_day(ts), requests, demand, ts)


def test_day_arithmetic() -> None:
    assert utc_day(MIDNIGHT) == "2026-12-01"
    assert utc_day(MIDNIGHT - 1) == "2026-11-30"
    assert seconds_to_midnight(MIDNIGHT + 3600) == 82_800
    assert seconds_to_midnight(MIDNIGHT) == 86_400


def test_usage_sums_every_pod_of_the_day_including_vanished_ones() -> None:
    members = {
        "old": member("old", 700, demand=0, ts=MIDNIGHT + 60),  # crashed an hour ago
        "me": member("me", 5),
        "other": member("other", 300),
        "yesterday": MemberRecord("yesterday", "2026-11-30", 9_999, 0.0, MIDNIGHT - 10),
    }
    assert group_usage(members, me="me", day="2026-12-01", my_requests=10) == 1_010


@pytest.mark.parametrize(
    "now, used, demand, others, expect",
    [
        pytest.param(
            MIDNIGHT + 3600,
            0,
            1.0,
            {},
            dict(tight=True, backlog=True, exhausted=False),
            id="morning-trickle-is-tight-but-a-backlog-may-spend",
        ),
        pytest.param(
            MIDNIGHT + 23 * 3600,
            0,
            1.0,
            {},
            dict(tight=False, exhausted=False),
            id="plenty-late-in-the-day-latency-stays-at-the-linger",
        ),
        pytest.param(
            MIDNIGHT + 3600,
            47_000,
            1.0,
            {},
            dict(tight=True, backlog=False, exhausted=False),
            id="little-left-everything-paced",
        ),
        pytest.param(
            MIDNIGHT + 3600, 47_500, 1.0, {}, dict(exhausted=True), id="reserve-reached-is-the-wall"
        ),
    ],
)
def test_budget_table(
    now: float, used: int, demand: float, others: dict[str, MemberRecord], expect: dict[str, bool]
) -> None:
    b = budget(POLICY, me="me", my_requests=used, my_demand=demand, members=others, now_unix=now)
    assert b.remaining == POLICY.daily_quota - POLICY.reserve - used
    assert b.sustainable_rps == pytest.approx(max(0, b.remaining) / seconds_to_midnight(now))
    if "tight" in expect:
        assert b.tight is expect["tight"]
        assert (b.linger_rps is not None) is expect["tight"]
    if "backlog" in expect:
        assert (b.rps == pytest.approx(POLICY.rate_limit_rps)) is expect["backlog"]
    assert b.exhausted is expect["exhausted"]


def test_shares_follow_demand_and_an_idle_pod_holds_none() -> None:
    now = MIDNIGHT + 3600
    others = {"busy": member("busy", 100, demand=3.0, ts=now - 1)}
    idle = budget(POLICY, me="me", my_requests=0, my_demand=0.0, members=others, now_unix=now)
    busy = budget(POLICY, me="me", my_requests=0, my_demand=1.0, members=others, now_unix=now)
    assert idle.share == 0.0
    # both have work: equal shares (they add up to one whenever each pod looked)
    assert busy.share == pytest.approx(0.5)
    assert busy.rps == pytest.approx(90.0 * 0.5)
    assert busy.live_pods == 2


def test_a_silent_pod_counts_its_requests_but_holds_no_share() -> None:
    now = MIDNIGHT + 7200
    others = {"gone": member("gone", 1_000, demand=5.0, ts=now - 600)}
    b = budget(POLICY, me="me", my_requests=10, my_demand=1.0, members=others, now_unix=now)
    assert b.used == 1_010
    assert b.share == 1.0


def test_without_the_ledger_the_safe_share_and_the_last_known_usage_apply() -> None:
    b = budget(
        POLICY,
        me="me",
        my_requests=10,
        my_demand=1.0,
        members=None,
        now_unix=MIDNIGHT + 3600,
        fallback_share=0.5,
        others_used=990,
    )
    assert b.fallback and b.share == 0.5 and b.used == 1_000
    assert b.rps == pytest.approx(45.0)


def test_no_daily_quota_means_only_the_spike_limit() -> None:
    policy = QuotaPolicy(0, 0, 60.0, 90.0, 1.0, 3)
    b = budget(policy, me="me", my_requests=10**6, my_demand=1.0, members={}, now_unix=MIDNIGHT)
    assert not b.exhausted and b.linger_rps is None and b.rps == 90.0


# --------------------------------------------------------------------------- simulated spans
def test_a_trickle_on_two_pods_stays_within_the_sustainable_rate_with_full_requests() -> None:
    # the measurement: 2 events/s per entity, two pods, a quota allowing 0.2 req/s
    allowed_rps = 0.2
    quota = round(allowed_rps * 86_400 / 0.95)  # 5 % of it is the reserve
    r = simulate(Profile("trickle", trickle(2.0)), pods=2, quota=quota, hours=1.0)
    assert r.requests / 3600 <= 1.2 * allowed_rps
    assert r.requests / 3600 >= 0.8 * allowed_rps  # it spends what is there
    assert r.items_per_request >= 20
    assert r.wait(1.0) <= 60.0 + 1.0 + 0.5
    assert not r.wall_hit


def test_with_plenty_of_quota_latency_stays_at_the_linger() -> None:
    r = simulate(
        Profile("trickle", trickle(2.0)), pods=1, quota=50_000, start_s=23 * 3600, hours=0.5
    )
    assert r.wait(0.99) <= 1.0 + 0.5
    assert r.items_per_request >= 1.5


def test_a_backlog_spends_the_backlog_allowance_at_the_spike_rate() -> None:
    profile = Profile("backfill", trickle(0.0), bursts={9 * 3600.0: 200_000})
    r = simulate(profile, pods=3, quota=50_000, start_s=9 * 3600, hours=0.25)
    assert r.items == 600_000
    assert r.items_per_request >= 990
    assert r.wait(1.0) < 60  # 600 requests at up to 90/s: drained in well under a minute


def test_the_wall_stops_every_request_until_midnight() -> None:
    r = simulate(
        Profile("trickle", trickle(2.0)), pods=2, quota=10_000, used_before=9_500, hours=0.2
    )
    assert r.wall_hit
    assert r.requests == 0


def test_never_above_the_budget_in_any_minute_over_business_hours() -> None:
    quota = 10_000
    r = simulate(
        Profile("business", business_hours(peak=20.0, night=0.5)),
        pods=3,
        quota=quota,
        start_s=8 * 3600,
        hours=2.0,
    )
    sustainable_per_min = (quota * 0.95) / (16 * 3600) * 60
    assert r.per_minute_max <= 3 * sustainable_per_min + 3  # shares, bursts of one per pod
    assert r.requests <= 2 * 3600 * (quota * 0.95) / (16 * 3600) * 1.2


# --------------------------------------------------------------------------- the pacer
class FakeLedger:
    def __init__(self) -> None:
        self.records: dict[str, MemberRecord] = {}
        self.up = True

    def publish(self, record: MemberRecord) -> None:
        self.records[record.pod] = record

    def members(self) -> dict[str, MemberRecord] | None:
        return dict(self.records) if self.up else None


class PacerRig:
    def __init__(self, policy: QuotaPolicy = POLICY, *, at: float = MIDNIGHT + 3600) -> None:
        self.mono = 0.0
        self.unix = at
        self.rates: list[float] = []
        self.pauses: list[float] = []
        self.requests = 0
        self.episodes = 0
        self.registry = CollectorRegistry()
        self.ledger = FakeLedger()
        self.pacer = Pacer(
            policy,
            pod="me",
            ledger=self.ledger,
            set_rate=self.rates.append,
            pause=self.pauses.append,
            requests_today=lambda: self.requests,
            metrics=Metrics(self.registry),
            clock=lambda: self.mono,
            wall=lambda: self.unix,
            limited_episodes=lambda: self.episodes,
        )

    def tick(self, seconds: float = 1.0, demand: float = 1.0) -> None:
        self.mono += seconds
        self.unix += seconds
        self.pacer.refresh(demand)

    def sample(self, name: str) -> float | None:
        return self.registry.get_sample_value(f"asapp_consumer_{name}")


def test_the_wall_pauses_until_just_after_midnight_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = PacerRig(at=MIDNIGHT + 20 * 3600)
    rig.ledger.records["old"] = member("old", 47_500, ts=MIDNIGHT + 10)
    rig.tick()
    rig.tick()
    assert rig.pacer.exhausted and rig.sample("quota_exhausted") == 1
    [pause] = rig.pauses
    assert 4 * 3600 + 5 <= pause <= 4 * 3600 + 60  # to 00:00 UTC plus a little jitter
    assert sum("quota spent" in r.getMessage() for r in caplog.records) == 1
    rig.unix = MIDNIGHT + 86_400 + 61  # the next day: everyone starts from zero
    rig.ledger.records.clear()
    rig.tick()
    assert not rig.pacer.exhausted and rig.sample("quota_exhausted") == 0


def test_rates_rise_slowly_and_fall_at_once() -> None:
    rig = PacerRig()
    for _ in range(6):
        rig.tick()
    assert rig.rates[:5] == pytest.approx([18.0, 36.0, 54.0, 72.0, 90.0])
    rig.ledger.records["busy"] = member("busy", 0, demand=1.0, ts=rig.unix)
    rig.tick()
    assert rig.rates[-1] == pytest.approx(45.0)  # the other pod's share, at once


class DelayedLedger:
    """One ledger topic seen by several pods as the real one is: each pod's latest record is
    written at that pod's next write tick (every ``write_s``, at its own phase; a pod's first
    record at once), and each reader sees a written record ``lag_s`` later."""

    def __init__(self, clock: Callable[[], float], *, write_s: float, lag: Callable[[], float]):
        self._clock, self._write_s, self._lag = clock, write_s, lag
        self._pending: dict[str, tuple[float, MemberRecord]] = {}  # pod -> (write at, record)
        self._written: list[tuple[float, MemberRecord]] = []  # (written at, record)
        self._seen: dict[tuple[str, int], float] = {}  # (reader, index) -> visible at

    def view(self, pod: str, phase: float) -> ViewOfLedger:
        return ViewOfLedger(self, pod, phase)

    def publish(self, pod: str, phase: float, record: MemberRecord) -> None:
        now = self._clock()
        if pod in self._pending:
            at = self._pending[pod][0]
        elif any(r.pod == pod for _, r in self._written):
            at = now + (phase - now) % self._write_s
        else:
            at = now
        self._pending[pod] = (at, record)

    def members(self, reader: str) -> dict[str, MemberRecord]:
        now = self._clock()
        for pod, (at, record) in list(self._pending.items()):
            if at <= now:
                self._written.append((at, record))
                del self._pending[pod]
        latest: dict[str, MemberRecord] = {}
        for i, (at, record) in enumerate(self._written):
            visible = self._seen.setdefault((reader, i), at + self._lag())
            if visible <= now:
                latest[record.pod] = record
        return latest


class ViewOfLedger:
    def __init__(self, shared: DelayedLedger, pod: str, phase: float) -> None:
        self._shared, self._pod, self._phase = shared, pod, phase

    def publish(self, record: MemberRecord) -> None:
        self._shared.publish(self._pod, self._phase, record)

    def members(self) -> dict[str, MemberRecord]:
        return self._shared.members(self._pod)


@pytest.mark.parametrize(
    "flap, used",
    [
        pytest.param(0.0, 0.8, id="a-backlog-every-pod-busy"),
        pytest.param(0.25, 0.25, id="demand-comes-and-goes"),
    ],
)
@pytest.mark.parametrize("seed", range(4))
def test_the_group_never_exceeds_the_spike_limit_while_views_lag(
    seed: int, flap: float, used: float
) -> None:
    """Three pods join at different moments, their demand comes and goes (``flap``: the
    chance per second that a pod's demand switches between none and some), the ledger shows
    each pod the others up to 1.5 s late: the sum of the rates they apply never exceeds
    RATE_LIMIT_RPS, and the group still uses at least ``used`` of it over the minute.
    (With no settle window, the same runs reach 120 req/s.)"""
    rng = random.Random(seed)
    policy = dataclasses.replace(POLICY, daily_quota=0)  # only the spike limit
    clock = [0.0]
    shared = DelayedLedger(lambda: clock[0], write_s=1.0, lag=lambda: rng.uniform(0.05, 0.5))
    starts = {"a": 0.0, "b": rng.uniform(2, 8), "c": rng.uniform(10, 20)}
    rates: dict[str, float] = {}
    pacers: dict[str, Pacer] = {}
    next_refresh: dict[str, float] = {}
    demand = dict.fromkeys(starts, 1.0)
    step, worst, total = 0.05, 0.0, 0.0
    for i in range(int(60 / step)):
        now = clock[0] = i * step
        for pod, start in starts.items():
            if pod not in pacers and now >= start:
                pacers[pod] = Pacer(
                    policy,
                    pod=pod,
                    ledger=shared.view(pod, phase=rng.uniform(0, 1)),
                    set_rate=lambda r, pod=pod: rates.__setitem__(pod, r),
                    pause=lambda s: None,
                    requests_today=lambda: 0,
                    metrics=Metrics(CollectorRegistry()),
                    clock=lambda: clock[0],
                    wall=lambda: MIDNIGHT + 3600 + clock[0],
                )
                next_refresh[pod] = now
        for pod, pacer in pacers.items():
            if now >= next_refresh[pod]:
                next_refresh[pod] = now + rng.uniform(0.9, 1.1)  # the loop's refresh cadence
                if rng.random() < flap:
                    demand[pod] = 0.0 if demand[pod] else rng.uniform(1, 100)
                pacer.refresh(demand[pod])
        applied = sum(r for r in rates.values() if r > 0.01)
        worst = max(worst, applied)
        total += applied * step
    assert worst <= policy.rate_limit_rps * 1.0001, f"the group applied {worst:.1f} req/s"
    assert total / 60 >= used * policy.rate_limit_rps  # and it is not idle doing so


def test_a_lost_ledger_falls_back_to_the_assigned_share_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = PacerRig()
    rig.ledger.up = False
    for _ in range(8):
        rig.mono += 1
        rig.unix += 1
        rig.pacer.refresh(1.0, assigned_share=1 / 3)
    assert rig.sample("quota_ledger_fallback") == 1
    assert rig.rates[-1] == pytest.approx(30.0)
    warnings = [r for r in caplog.records if "ledger unavailable" in r.message]
    assert len(warnings) == 1
    rig.ledger.up = True
    rig.tick()
    assert rig.sample("quota_ledger_fallback") == 0


def test_429s_that_keep_coming_read_as_exhausted() -> None:
    rig = PacerRig()
    rig.episodes = 4
    rig.tick()
    assert rig.sample("quota_exhausted") == 0
    rig.episodes = 5
    rig.tick()
    assert rig.sample("quota_exhausted") == 1


def test_lingering_batches_are_metered_at_the_paced_rate_when_tight() -> None:
    rig = PacerRig()
    rig.requests = 40_000  # 7,500 left for 23 h: tight, and no backlog allowance
    rig.tick()
    budget_now = rig.pacer.budget
    assert budget_now is not None and budget_now.linger_rps is not None
    assert rig.pacer.linger_allowance() == 1
    rig.pacer.spent_linger(1)
    assert rig.pacer.linger_allowance() == 0
    rig.mono += 1 / budget_now.linger_rps
    assert rig.pacer.linger_allowance() == 1


@pytest.mark.slow
def test_cost_report_of_a_simulated_day() -> None:
    """``make bench``: the README's "API economy" table, printed."""
    rows = cost_report()
    print("\n" + markdown(rows))
    for row in rows:
        # never before the day's last minute: the allowance lasts the day
        assert row["wall hit"] == "no" or str(row["wall hit"]).startswith("at 23:59"), row
        assert row["wait max s"] <= 60 + 1 or "backfill" in str(row["profile"])
