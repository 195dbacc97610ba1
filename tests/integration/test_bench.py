"""Benchmarks (``make bench``; marked slow, kept out of CI). They print their figures.

- throughput: how many events/s one service process moves from Kafka to the API, end to end
  (decode, map, validate, batch, POST, commit), with the emulated API in its own process so it
  does not share the service's CPU;
- request rate: with small batches, does one pod use ASAPP's whole request allowance
  (``RATE_LIMIT_RPS`` 90, under the 100/s spike arrest) without exceeding it.

Assertions are loose floors that only catch a collapse; the printed figures are the result.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from consumer.records import Entity
from consumer.sandbox.broker import free_port
from tests.integration.conftest import API_ID, API_SECRET, Env, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def api_process() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "consumer.sandbox.api",
            "--port",
            str(port),
            "--api-id",
            API_ID,
            "--api-secret",
            API_SECRET,
            "--count-only",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _up(url), 20, "the emulated API")
    yield url
    proc.terminate()
    proc.wait(10)


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/_emulator/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _stats(url: str) -> dict:  # type: ignore[type-arg]
    return httpx.get(f"{url}/_emulator/stats", timeout=5).json()  # type: ignore[no-any-return]


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_throughput_end_to_end(env: Env, api_process: str, start_service) -> None:
    per_entity = int(os.environ.get("BENCH_EVENTS_PER_ENTITY", "40000"))
    t0 = time.monotonic()
    for e in Entity:
        for start in range(0, per_entity, 10000):
            env.produce_events(e, min(10000, per_entity - start), seed=51, start=start)
    produced_s = time.monotonic() - t0
    total = 3 * per_entity
    service = start_service(
        ASAPP_API_BASE_URL=api_process, RATE_LIMIT_RPS="1000", LOG_LEVEL="WARNING"
    )
    wait_until(lambda: service.metric("asapp_consumer_assigned_partitions") == 9, 30, "assignment")
    started = time.monotonic()
    cpu0 = _cpu_seconds(service.proc.pid)
    wait_until(env.all_committed, 600, "all committed", every_s=0.5)
    elapsed = time.monotonic() - started
    cpu = _cpu_seconds(service.proc.pid) - cpu0
    stats = _stats(api_process)
    accepted = sum(v["items_accepted"] for v in stats["entities"].values())
    requests = stats["requests"]
    with open(f"/proc/{service.proc.pid}/status") as status:
        rss_kb = int(next(ln for ln in status if ln.startswith("VmHWM")).split()[1])
    print(
        f"\nTHROUGHPUT {total} events ({per_entity}/entity, produced in {produced_s:.1f}s): "
        f"{elapsed:.1f}s to all committed = {total / elapsed:,.0f} events/s; "
        f"service CPU {cpu:.1f}s ({total / max(cpu, 1e-9):,.0f} events per CPU-second); "
        f"{requests} requests, {accepted / max(requests, 1):.0f} items/request; "
        f"peak RSS {rss_kb / 1024:.0f} MiB"
    )
    assert accepted == total
    assert accepted / requests > 900, "batches should be nearly full under load"
    assert total / elapsed > 2000
    assert service.stop() == 0


def test_one_pod_uses_the_request_allowance_without_exceeding_it(
    env: Env, api_process: str, start_service
) -> None:
    httpx.post(f"{api_process}/_emulator/faults", json={"latency_ms": 40}, timeout=5)
    for e in Entity:
        env.produce_events(e, 4000, seed=52)
    service = start_service(
        ASAPP_API_BASE_URL=api_process,
        BATCH_MAX_ITEMS="10",
        BATCH_LINGER_MS="5",
        LOG_LEVEL="WARNING",
    )
    wait_until(lambda: _stats(api_process)["requests"] >= 50, 30, "requests to flow")
    r0, t0 = _stats(api_process)["requests"], time.monotonic()
    time.sleep(5)
    r1, t1 = _stats(api_process)["requests"], time.monotonic()
    rate = (r1 - r0) / (t1 - t0)
    statuses = _stats(api_process)["statuses"]
    print(
        f"\nREQUEST RATE with 10-item batches, 40 ms API latency: {rate:.1f} requests/s "
        f"(RATE_LIMIT_RPS 90, ASAPP spike arrest 100); statuses {statuses}"
    )
    assert 75 <= rate <= 95
    wait_until(env.all_committed, 120, "all committed")
    assert service.stop() == 0
