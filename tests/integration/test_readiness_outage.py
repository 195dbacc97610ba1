"""Readiness under a long API outage, against the real broker and the emulated API: every
request failing for longer than HEALTH_OUTAGE_S makes /readyz say so; the first answer after
the outage makes the pod ready again, and nothing is lost. The JSON start line carries every
setting with the secret masked."""

from __future__ import annotations

import json

from consumer.records import Entity
from consumer.sandbox.api import EmulatedApi, Faults
from consumer.settings import Settings
from tests.integration.conftest import API_SECRET, Env, wait_until


def test_every_api_request_failing_past_the_bound_blocks_readiness_then_recovers(
    env: Env, api: EmulatedApi, start_service
) -> None:
    api.set_faults(Faults(error_rate=1.0, error_statuses=(503,)))
    env.produce_events(Entity.AGENT, 20, seed=5)
    service = start_service(HEALTH_OUTAGE_S="2")

    def reason() -> str:
        return str(service.get("/readyz").json()["reason"])

    wait_until(lambda: "every ASAPP API request failing" in reason(), 30, "outage reported")
    assert service.get("/readyz").status_code == 503
    assert "503" in reason()  # the latest failure is named
    api.set_faults(Faults())
    wait_until(env.all_committed, 60, "all committed after the outage")
    wait_until(service.ready, 10, "ready again")

    start = next(e for e in service.logs() if e.get("event") == "start")
    assert set(start["settings"]) == set(Settings.__dataclass_fields__)
    assert start["settings"]["api_secret"] == "***"
    assert start["settings"]["health_outage_s"] == 2.0
    assert API_SECRET not in json.dumps(service.logs())
