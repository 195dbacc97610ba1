"""API economy end to end: real service processes in one group, the real local broker (with the
group's request ledger on it) and the emulated API counting requests, with its daily quota and
spike arrest enforced where a test says so."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest

from consumer.kafka import QuotaLedger
from consumer.quota import MemberRecord, seconds_to_midnight, utc_day
from consumer.records import Entity
from consumer.sandbox.api import EmulatedApi
from consumer.settings import Settings
from tests.integration.conftest import Env, Stream, latencies, wait_until

pytestmark = pytest.mark.integration


def figures(case: str, **values: Any) -> None:
    """One line of measured figures per case, for the closing note."""
    print(f"\n[api-economy {case}] " + ", ".join(f"{k}={v}" for k, v in values.items()))


def quota_allowing(rps: float) -> int:
    """A daily quota whose sustainable rate now is ``rps`` (after the default 5 % reserve)."""
    return math.ceil(rps * seconds_to_midnight(time.time()) / 0.95)


@pytest.mark.parametrize(
    "allowed_rps, per_tick, tick_s, steady_s, max_wait_s",
    [
        pytest.param(0.5, 1, 0.5, 20.0, 10.0, id="short"),
        # the measurement: 2 events/s per entity, 0.2 requests/s allowed, the defaults
        pytest.param(0.2, 1, 0.5, 60.0, 60.0, id="issue-size", marks=pytest.mark.slow),
    ],
)
def test_two_pods_under_a_trickle_stay_within_the_groups_sustainable_rate(
    env: Env,
    api: EmulatedApi,
    start_service: Callable[..., Any],
    allowed_rps: float,
    per_tick: int,
    tick_s: float,
    steady_s: float,
    max_wait_s: float,
) -> None:
    knobs = {
        "DAILY_REQUEST_QUOTA": str(quota_allowing(allowed_rps)),
        "QUOTA_MAX_WAIT_S": str(max_wait_s),
        "BATCH_LINGER_MS": "1000",
    }
    first, second = start_service(**knobs), start_service(**knobs)
    wait_until(lambda: first.ready() and second.ready(), 30, "both pods assigned")
    warmup_s = 6.0
    with Stream(env, per_tick=per_tick, tick_s=tick_s):
        time.sleep(warmup_s)
        steady_from, before = time.time(), len(api.requests())
        time.sleep(steady_s)
        steady_to, during = time.time(), len(api.requests()) - before
    requests = [r for r in api.requests() if r.status == 200]
    items = sum(r.item_count for r in requests)
    waits = [
        w
        for e in Entity
        for w in latencies(api, [s for s in env.sent if s.entity is e], (steady_from, steady_to))
    ]
    rate = during / (steady_to - steady_from)
    figures(
        f"trickle {allowed_rps} req/s allowed",
        requests_per_s=round(rate, 3),
        allowed_rps=allowed_rps,
        items_per_request=round(items / max(1, len(requests)), 1),
        wait_p50_s=round(statistics.median(waits), 2),
        wait_max_s=round(max(waits), 2),
        events=len(env.sent),
    )
    assert rate <= 1.2 * allowed_rps + 1 / steady_s, f"{rate:.3f} req/s for {allowed_rps} allowed"
    assert items / max(1, len(requests)) >= (20 if allowed_rps <= 0.2 else 8)
    assert max(waits) <= max_wait_s + 1.0 + 1.5  # + the linger, + ledger and poll slack
    assert first.metric("asapp_consumer_quota_share") + second.metric(
        "asapp_consumer_quota_share"
    ) == pytest.approx(1.0, abs=0.35)


def test_a_restarted_pod_continues_the_days_count_from_the_ledger(
    env: Env, api: EmulatedApi, start_service: Callable[..., Any]
) -> None:
    for entity in Entity:
        env.produce_events(entity, 100, seed=71)
    first = start_service(BATCH_MAX_ITEMS="10")
    wait_until(env.all_committed, 40, "the first pod delivered everything")
    spent = len(api.requests())
    assert first.stop() == 0  # its last count is written on the way out
    second = start_service(BATCH_MAX_ITEMS="10")
    wait_until(
        lambda: second.metric("asapp_consumer_quota_requests_used_today") >= spent,
        20,
        "the restarted pod to read the day's count",
    )
    assert second.metric("asapp_consumer_requests_today") == 0  # its own: none yet
    figures(
        "restart",
        spent_before=spent,
        seen_after=second.metric("asapp_consumer_quota_requests_used_today"),
    )


def test_a_backlog_on_two_pods_stays_under_the_spike_arrest(
    env: Env, api: EmulatedApi, start_service: Callable[..., Any]
) -> None:
    api.set_quota(spike_rps=100)
    for entity in Entity:
        env.produce_events(entity, 1500, seed=72)
    knobs = {"BATCH_MAX_ITEMS": "10", "MAX_IN_FLIGHT": "8", "RATE_LIMIT_RPS": "90"}
    start_service(**knobs)
    start_service(**knobs)
    wait_until(env.all_committed, 60, "the backlog drained")
    requests = api.requests()
    spike_refusals = api.quota()["refused"].get("429-01", 0)
    busiest = max(
        sum(1 for r in requests if t <= r.t_monotonic < t + 1.0)
        for t in (r.t_monotonic for r in requests)
    )
    figures("backlog", requests=len(requests), busiest_second=busiest, refused=spike_refusals)
    assert spike_refusals == 0
    assert len(requests) >= 450
    assert busiest <= 100


def test_a_quota_already_spent_sends_nothing_and_says_so(
    env: Env, api: EmulatedApi, start_service: Callable[..., Any]
) -> None:
    quota = 1_000
    ledger = QuotaLedger(
        Settings(bootstrap_servers=env.bootstrap, api_id="-", api_secret="-"),
        group=env.group,
        pod="earlier-pod",
        topic=env.quota,
        publish_interval_s=0.2,
    )
    now = time.time()
    ledger.publish(MemberRecord("earlier-pod", utc_day(now), quota, 0.0, now))
    ledger.close()
    for entity in Entity:
        env.produce_events(entity, 20, seed=73)
    service = start_service(DAILY_REQUEST_QUOTA=str(quota))
    wait_until(lambda: service.metric("asapp_consumer_quota_exhausted") == 1, 30, "the quota wall")
    time.sleep(3)
    assert api.requests() == []
    assert sum(env.committed().values()) == 0
    assert env.dead_letters(idle_s=0.5) == []
    assert service.metric("asapp_consumer_paused_partitions") == 9
    events = [entry.get("event") for entry in service.logs()]
    assert events.count("quota_exhausted") == 1
