"""A real Prometheus server scrapes the real service during an end-to-end run, then its HTTP
API is queried: the series exist with values that match what happened, every dashboard and
alert expression evaluates, and every alert rule is healthy."""

from __future__ import annotations

import pytest

from consumer.records import Entity
from consumer.sandbox.api import EmulatedApi
from consumer.sandbox.events import encode_plain, generate
from tests.integration.conftest import Env, wait_until
from tests.monitoring.prometheus import Results, verify_target

pytestmark = pytest.mark.integration


def _all(predicate):  # type: ignore[no-untyped-def]
    return lambda results: bool(results) and all(predicate(r.value) for r in results)


def test_prometheus_scrapes_the_running_service(env: Env, api: EmulatedApi, start_service) -> None:
    for e in Entity:
        env.produce_events(e, 300, seed=41)
    bad = generate(Entity.AGENT, 5, seed=42, start=900)
    for r in bad:
        r["externalAgentId"] = "not valid!"
    env.produce(Entity.AGENT, [(encode_plain(Entity.AGENT, r), None) for r in bad])
    service = start_service(DAILY_REQUEST_QUOTA="10000")
    wait_until(env.all_committed, 60, "all committed")
    produced = len(env.sent)

    results: dict[str, Results] = verify_target(
        f"127.0.0.1:{service.metrics_port}",
        {
            "sum(asapp_consumer_messages_consumed_total)": produced,
            "sum(asapp_consumer_items_accepted_total)": 900,
            'sum(asapp_consumer_dead_letters_total{reason="validation"})': 5,
            "sum(asapp_consumer_consumer_lag)": 0,
            "count(asapp_consumer_consumer_lag)": 9,
            "asapp_consumer_assigned_partitions": 9,
            "asapp_consumer_ready": 1,
            "asapp_consumer_daily_request_quota": 10000,
            "asapp_consumer_requests_today": _all(lambda v: 1 <= v <= 40),
            "sum(asapp_consumer_batch_items_count)": _all(lambda v: v >= 1),
            "sum(asapp_consumer_end_to_end_latency_seconds_count)": 900,
            "asapp_consumer_last_delivery_timestamp_seconds": _all(lambda v: v > 1.7e9),
            'sum(asapp_consumer_http_requests_total{status="200"})': _all(lambda v: v >= 3),
        },
        timeout_s=30,
    )
    assert results["sum(asapp_consumer_items_accepted_total)"][0].value == api.accepted_count()
    assert service.stop() == 0
