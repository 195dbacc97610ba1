"""A real HealthServer on port 0; the Probe reads a hand-written fake state and a fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from consumer.health import HealthServer, Probe

CREDENTIALS = "ASAPP API rejects the credentials"
DLQ_FATAL = "dead-letter producer: _FATAL: idempotence ACL missing (fatal: restart needed)"


@dataclass
class FakeState:
    now: float = 1000.0
    last_iteration: float = 1000.0
    assigned: int = 3
    credentials: str | None = None  # the sender's Credentials.problem()
    dead_letters: str | None = None  # the DLQ producer's problem()
    stopping: bool = False

    def probe(self, stall_timeout_s: float = 60.0) -> Probe:
        return Probe(
            last_iteration=lambda: self.last_iteration,
            assigned=lambda: self.assigned,
            blockers=[lambda: self.credentials, lambda: self.dead_letters],
            stopping=lambda: self.stopping,
            stall_timeout_s=stall_timeout_s,
            clock=lambda: self.now,
        )


@dataclass
class Running:
    state: FakeState
    registry: CollectorRegistry
    client: httpx.Client


@pytest.fixture(scope="module")
def server() -> Iterator[Running]:
    """One server for the module: shutting one down takes up to half a second."""
    state = FakeState()
    registry = CollectorRegistry()
    health = HealthServer(registry=registry, probe=state.probe(), port=0, host="127.0.0.1")
    assert health.port > 0
    health.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{health.port}", timeout=5) as client:
            yield Running(state, registry, client)
    finally:
        health.stop()


@pytest.fixture
def running(server: Running) -> Running:
    fresh = FakeState()
    for key in ("now", "last_iteration", "assigned", "credentials", "dead_letters", "stopping"):
        setattr(server.state, key, getattr(fresh, key))
    return server


def test_healthz_fails_once_the_loop_stalls(running: Running) -> None:
    response = running.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True, "reason": "ok"}

    running.state.now += 60.0  # exactly the timeout: still live
    assert running.client.get("/healthz").status_code == 200

    running.state.now += 1.0
    response = running.client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["ok"] is False
    assert "stalled for 61s" in response.json()["reason"]

    running.state.last_iteration = running.state.now  # the loop turns again
    assert running.client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        pytest.param({"assigned": 0}, "no partitions assigned", id="no-partitions"),
        pytest.param({"credentials": CREDENTIALS}, CREDENTIALS, id="credentials"),
        pytest.param({"dead_letters": DLQ_FATAL}, DLQ_FATAL, id="dlq-producer"),
        pytest.param(
            {"credentials": CREDENTIALS, "dead_letters": DLQ_FATAL},
            f"{CREDENTIALS}; {DLQ_FATAL}",
            id="every-blocker-named",
        ),
        pytest.param(
            {"dead_letters": DLQ_FATAL, "assigned": 0}, DLQ_FATAL, id="blocker-before-partitions"
        ),
        pytest.param({"stopping": True}, "stopping", id="stopping"),
        pytest.param(
            {"stopping": True, "assigned": 0, "credentials": CREDENTIALS},
            "stopping",
            id="stopping-wins",
        ),
    ],
)
def test_readyz_not_ready(running: Running, change: dict[str, object], reason: str) -> None:
    assert running.client.get("/readyz").status_code == 200
    for key, value in change.items():
        setattr(running.state, key, value)
    response = running.client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"ok": False, "reason": reason}


def test_readyz_is_independent_of_liveness(running: Running) -> None:
    running.state.now += 3600.0
    assert running.client.get("/readyz").status_code == 200
    assert running.client.get("/healthz").status_code == 503


def test_metrics_serves_the_registry(running: Running) -> None:
    counter = Counter("probe_test_total", "A test counter.", registry=running.registry)
    counter.inc(42)
    response = running.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "probe_test_total 42.0" in response.text


def test_query_string_is_ignored_and_unknown_paths_404(running: Running) -> None:
    assert running.client.get("/healthz?verbose=1").status_code == 200
    assert running.client.get("/nope").status_code == 404


def test_probe_without_server() -> None:
    state = FakeState(assigned=0)
    probe = state.probe(stall_timeout_s=5.0)
    assert probe.ready() == (False, "no partitions assigned")
    state.assigned = 1
    assert probe.ready() == (True, "ok")
    state.now += 5.5
    assert probe.live()[0] is False


def test_probe_without_blockers_is_ready_with_partitions() -> None:
    probe = Probe(
        last_iteration=lambda: 0.0,
        assigned=lambda: 1,
        blockers=[],
        stopping=lambda: False,
        stall_timeout_s=1.0,
        clock=lambda: 0.0,
    )
    assert probe.ready() == (True, "ok")
