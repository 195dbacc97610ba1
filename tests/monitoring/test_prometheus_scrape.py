"""A real Prometheus scrapes the service's instruments and answers queries about them.

This proves the harness in :mod:`tests.monitoring.prometheus` on a tiny HTTP server that exposes
``Metrics(CollectorRegistry())``; the end-to-end test points the same harness at the real
service.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from consumer.metrics import Metrics
from tests.monitoring.prometheus import (
    PrometheusError,
    PrometheusServer,
    Results,
    find_binary,
    verify_target,
)


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    try:
        return find_binary()
    except PrometheusError as exc:
        pytest.fail(str(exc))  # never skip: CI must install the package


@pytest.fixture(scope="module")
def exposed() -> Iterator[tuple[Metrics, str]]:
    """A fresh registry served on a free port, with a few instruments set."""
    metrics = Metrics(CollectorRegistry())
    metrics.messages_consumed.labels(entity="agent", topic="asapp.metadata.agent").inc(3)
    metrics.items_accepted.labels(entity="agent").inc(5)
    metrics.consumer_lag.labels(topic="asapp.metadata.agent", partition="0").set(42)
    metrics.batch_items.labels(entity="agent").observe(100)
    metrics.batch_items.labels(entity="agent").observe(300)
    metrics.http_requests.labels(entity="agent", status="200").inc()
    metrics.daily_quota.set(50_000)
    metrics.quota_used.set(47_500)  # the group's count, as the ledger has it
    metrics.quota_remaining.set(0)
    metrics.quota_exhausted.set(1)
    metrics.ready.set(1)
    metrics.credentials_rejected.set(1)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)
    try:
        yield metrics, f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_prometheus_scrapes_the_values_set(
    prometheus_binary: str, exposed: tuple[Metrics, str]
) -> None:
    _, target = exposed
    consumed = 'asapp_consumer_messages_consumed_total{entity="agent",topic="asapp.metadata.agent"}'
    results = verify_target(
        target,
        {
            consumed: 3,
            'asapp_consumer_items_accepted_total{entity="agent"}': 5,
            'asapp_consumer_consumer_lag{topic="asapp.metadata.agent",partition="0"}': 42,
            'asapp_consumer_batch_items_count{entity="agent"}': 2,
            'asapp_consumer_batch_items_sum{entity="agent"}': 400,
            'asapp_consumer_batch_items_bucket{entity="agent",le="250.0"}': 1,
            "asapp_consumer_ready": 1,
            'asapp_consumer_build_info{version!=""}': 1,
        },
        binary=prometheus_binary,
    )
    (lag,) = results['asapp_consumer_consumer_lag{topic="asapp.metadata.agent",partition="0"}']
    assert lag.labels["job"] == "asapp-metadata-consumer"
    assert lag.labels["instance"] == target


def test_alert_rules_evaluate_against_scraped_series(
    prometheus_binary: str, exposed: tuple[Metrics, str]
) -> None:
    """credentials_rejected == 1 and quota_exhausted == 1 put their alerts in ``pending`` (their
    ``for`` is not over); the quota-nearly-spent alert stays quiet while the wall is up."""
    _, target = exposed
    with PrometheusServer(targets=[target], binary=prometheus_binary) as prom:

        def pending(rs: Results) -> bool:
            return any(r.labels.get("alertstate") == "pending" for r in rs)

        (alert,) = prom.wait_for(
            'ALERTS{alertname="AsappConsumerCredentialsRejected"}', pending, timeout_s=20
        )
        assert alert.labels["severity"] == "critical"
        (wall,) = prom.wait_for(
            'ALERTS{alertname="AsappConsumerQuotaExhausted"}', pending, timeout_s=20
        )
        assert wall.labels["severity"] == "critical"
        assert prom.query('ALERTS{alertname="AsappConsumerTargetDown"}') == []
        assert prom.query('ALERTS{alertname="AsappConsumerDailyQuotaNearlySpent"}') == []
        quota = prom.query(
            "max(asapp_consumer_quota_requests_used_today)"
            " / max(asapp_consumer_daily_request_quota > 0)"
        )
        assert [r.value for r in quota] == [0.95]


def test_query_error_names_the_expression(prometheus_binary: str) -> None:
    with (
        PrometheusServer(targets=["127.0.0.1:1"], binary=prometheus_binary) as prom,
        pytest.raises(PrometheusError, match="bad_data"),
    ):
        prom.query("sum(")
