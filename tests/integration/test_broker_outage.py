"""The broker becomes unreachable mid-stream (a TCP proxy in front of it is cut): commits and
shutdown stay within their own bounds instead of librdkafka's ~45 s session timeout, nothing is
committed past what was delivered, and the group picks up where it left off once the broker is
back."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumer.records import Entity
from consumer.sandbox.api import EmulatedApi, Faults
from consumer.sandbox.broker import LocalBroker, free_port
from consumer.sandbox.produce import create_topics
from tests.integration.conftest import (
    Env,
    Service,
    audit_commits,
    service_environment,
    wait_until,
)
from tests.integration.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[LocalBroker, TcpProxy]]:
    proxy_port = free_port()
    broker = LocalBroker(advertised_port=proxy_port, log_path=tmp_path / "broker.log")
    proxy = TcpProxy(proxy_port, broker.port).start()
    with broker:
        yield broker, proxy
    proxy.cut()


def test_sigterm_with_the_broker_unreachable_exits_within_the_bound(
    proxied: tuple[LocalBroker, TcpProxy], api: EmulatedApi, tmp_path: Path
) -> None:
    broker, proxy = proxied
    tag = uuid.uuid4().hex[:6]
    env = Env(
        broker.bootstrap_servers,
        {e: f"out.{tag}.{e.value}" for e in Entity},
        f"out.{tag}.dlq",
        f"g-{tag}",
    )
    create_topics(env.bootstrap, [*env.topics.values(), env.dlq], partitions=3)
    for e in Entity:
        env.produce_events(e, 100, seed=61)
    service_env = service_environment(
        env,
        api.url,
        BATCH_LINGER_MS="100",
        BATCH_MAX_ITEMS="50",
        MAX_IN_FLIGHT="2",
        SHUTDOWN_TIMEOUT_S="6",
        COMMIT_TIMEOUT_S="2",
    )
    service = Service(service_env, tmp_path / "service.log")
    try:
        wait_until(env.all_committed, 60, "the first events to be committed")
        api.set_faults(Faults(latency_ms=300))
        for e in Entity:
            env.produce_events(e, 300, seed=62, start=100)
        wait_until(lambda: api.accepted_count() >= 400, 30, "deliveries of the second wave")
        proxy.cut()
        time.sleep(2)  # commits now fail or hang; the loop must keep turning
        assert service.get("/healthz").status_code == 200
        started = time.monotonic()
        service.signal(signal.SIGTERM)
        assert service.proc.wait(12) == 0
        took = time.monotonic() - started
        assert took < 6 + 1.5, f"shutdown took {took:.1f}s with the broker unreachable (bound 6s)"
    finally:
        if service.proc.poll() is None:
            service.kill()
    proxy.restore()
    audit_commits(env, api)  # nothing committed past an undelivered message
    assert not env.all_committed(), "the outage should have left something uncommitted"

    # Back online: a new run finishes the job.
    api.set_faults(Faults())
    service_env["METRICS_PORT"] = str(free_port())
    again = Service(service_env, tmp_path / "service-2.log")
    try:
        wait_until(env.all_committed, 60, "all committed after the outage")
        delivered = {i["eventId"] for e in Entity for i in api.items(e)}
        assert {s.event_id for s in env.sent} <= delivered
        assert again.stop() == 0
    finally:
        if again.proc.poll() is None:
            again.kill()
