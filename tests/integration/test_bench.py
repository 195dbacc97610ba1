"""Benchmarks (``make bench``; marked slow, kept out of CI). They print their figures.

- the table (:func:`test_bench_table`): the performance issue's figures on its data (200,000
  agent events of ~562 B, 3 partitions, batches of 1000, linger 500 ms, 4 requests in flight),
  for the bare-loop ceiling (``tests/bench_pipeline.py``) and the service: drain events/s, CPU
  seconds of the service process per 100k events, its peak RSS, items per request in the drain,
  p99 of message timestamp → API receipt at a steady 5k events/s, and the ratios to the
  ceiling. The emulated API runs in its own process (it validates every item it receives);
- request rate: with small batches, does one pod use ASAPP's whole request allowance
  (``RATE_LIMIT_RPS`` 90, under the 100/s spike arrest) without exceeding it.

Assertions are loose floors that only catch a collapse; the printed figures are the result.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as KTopicPartition

from consumer.decoder import PlainAvroDecoder
from consumer.records import Entity
from consumer.sandbox.broker import free_port
from consumer.sandbox.produce import create_topics
from tests import bench_pipeline as bench
from tests.integration.conftest import API_ID, API_SECRET, PARTITIONS, Env, Service, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _api(port: int, *, count_only: bool) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
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
            *(["--count-only"] if count_only else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
def api_factory() -> Iterator[Callable[..., str]]:
    """Start emulated APIs in processes of their own (so they do not share the service's
    CPU accounting): ``count_only`` keeps counts only, else items and receipts too."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*, count_only: bool = True) -> str:
        port = free_port()
        procs.append(_api(port, count_only=count_only))
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _up(url), 20, "the emulated API")
        return url

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def api_process(api_factory: Callable[..., str]) -> str:
    return api_factory()


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/_emulator/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _stats(url: str) -> dict:  # type: ignore[type-arg]
    return httpx.get(f"{url}/_emulator/stats", timeout=5).json()  # type: ignore[no-any-return]


def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    probe = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        parts = [KTopicPartition(topic, p) for p in range(PARTITIONS)]
        return {c.partition: max(c.offset, 0) for c in probe.committed(parts, timeout=10)}
    finally:
        probe.close()


#: The issue's set-up: batches of 1000, linger 500 ms, 4 requests in flight.
BENCH_SETTINGS = {
    "BATCH_MAX_ITEMS": "1000",
    "BATCH_LINGER_MS": "500",
    "MAX_IN_FLIGHT": "4",
    "RATE_LIMIT_RPS": "1000",
    "LOG_LEVEL": "WARNING",
}
#: The service rows (``BENCH_WORKERS``, default "0,1"; "0,1,2" adds two workers): in the
#: poll loop, then with ingest worker processes (a row's CPU and peak RSS count its workers).
WORKER_ROWS = tuple(
    ("service, in-process" if n == "0" else f"service, {n} ingest worker{'s' * (n != '1')}", n)
    for n in os.environ.get("BENCH_WORKERS", "0,1").split(",")
)
STEADY_RATE = 5000  # events/s
STEADY_S = 8.0


def _service_row(
    name: str,
    env: Env,
    start_service: Callable[..., Service],
    api_factory: Callable[..., str],
    topics: dict[str, str],
    ends: dict[int, int],
    **extra: str,
) -> dict[str, Any]:
    """Drain the backlog topic with a fresh group (figures of the service process), then
    feed a fresh topic at STEADY_RATE and read the p99 from the API's receipts."""
    total = sum(ends.values())
    drain_api = api_factory()
    group = f"bench-{uuid.uuid4().hex[:8]}"
    service = start_service(
        ASAPP_API_BASE_URL=drain_api,
        KAFKA_GROUP_ID=group,
        TOPIC_AGENT=topics["drain"],
        **BENCH_SETTINGS,
        **extra,
    )
    wait_until(lambda: service.metric("asapp_consumer_assigned_partitions") >= 3, 30, "assignment")
    pid = service.proc.pid
    profiler = _profiler(pid, name)
    started, cpu0 = time.monotonic(), bench.tree_cpu_seconds(pid)
    bootstrap = env.bootstrap

    def drained() -> bool:
        done = _committed(bootstrap, group, topics["drain"])
        return all(done.get(p, 0) >= end for p, end in ends.items())

    wait_until(drained, 600, "the backlog committed", every_s=0.25)
    elapsed, cpu = time.monotonic() - started, bench.tree_cpu_seconds(pid) - cpu0
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)
        profiler.wait(30)
    rss = bench.tree_peak_rss_mib(pid)  # the workers' included
    stats = _stats(drain_api)
    accepted = stats["entities"]["agent"]["items_accepted"]
    assert accepted >= total, stats  # at least once: every event reached the API
    assert service.stop() == 0

    steady_api = api_factory(count_only=False)
    steady_group = f"steady-{uuid.uuid4().hex[:8]}"
    steady_topic = f"{topics['drain']}.steady-{uuid.uuid4().hex[:4]}"
    create_topics(bootstrap, [steady_topic], partitions=PARTITIONS)
    steady = start_service(
        ASAPP_API_BASE_URL=steady_api,
        KAFKA_GROUP_ID=steady_group,
        TOPIC_AGENT=steady_topic,
        **BENCH_SETTINGS,
        **extra,
    )
    wait_until(lambda: steady.metric("asapp_consumer_assigned_partitions") >= 3, 30, "assignment")
    time.sleep(1.0)  # the group's fetch positions are set before the first steady event
    n = int(STEADY_RATE * STEADY_S)
    payloads = bench.values(n, start=10_000_000)
    ends_steady = bench.produce(bootstrap, steady_topic, payloads, rate_per_s=STEADY_RATE)
    assert sum(ends_steady.values()) >= n
    wait_until(lambda: _stats(steady_api)["entities"]["agent"]["items_accepted"] >= n, 60, "steady")
    receipts = httpx.get(f"{steady_api}/_emulator/receipts", timeout=30).json()
    lat = _latencies(bootstrap, steady_topic, receipts)
    assert steady.stop() == 0
    return {
        "name": name,
        "events_per_s": total / elapsed,
        "cpu_per_100k": cpu / total * 100_000,
        "rss_mib": rss,
        "items_per_request": accepted / max(1, stats["requests"]),
        "p99_s": bench.percentile(lat, 0.99),
    }


def _profiler(pid: int, name: str) -> subprocess.Popen[bytes] | None:
    """With ``BENCH_PROFILE_DIR`` set, py-spy samples the service during the drain and writes
    collapsed stacks (one file per row, per thread, only samples holding the GIL: CPU, not
    waits) there; ``tests/bench_pipeline.py
    breakdown FILE`` summarises one."""
    folder = os.environ.get("BENCH_PROFILE_DIR")
    if not folder:
        return None
    slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
    out = Path(folder) / f"{slug}.txt"
    spy = Path(sys.executable).with_name("py-spy")
    proc = subprocess.Popen(
        [
            str(spy),
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--threads",
            "--gil",
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # attached before the drain is timed
    return proc


def _latencies(bootstrap: str, topic: str, receipts: list[dict[str, Any]]) -> list[float]:
    """Message timestamp → API receipt, per accepted item (timestamps read back from Kafka)."""
    stamps: dict[str, float] = {}
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"ts-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    reader.subscribe([topic])
    decoder = PlainAvroDecoder(Entity.AGENT)
    deadline = time.monotonic() + 60
    want = len(receipts)
    try:
        while len(stamps) < want and time.monotonic() < deadline:
            for m in reader.consume(1000, 0.5):
                if m.error() is None:
                    stamps[str(decoder.decode(m.value())["eventId"])] = m.timestamp()[1] / 1000
    finally:
        reader.close()
    return [r["t_wall"] - stamps[r["event_id"]] for r in receipts if r["event_id"] in stamps]


def test_bench_table(env: Env, api_factory: Callable[..., str], start_service) -> None:
    """The performance issue's table: the bare-loop ceiling, then the service in-process and
    with an ingest worker."""
    n = int(os.environ.get("BENCH_EVENTS", "200000"))
    tag = uuid.uuid4().hex[:6]
    topics = {"drain": f"bench.{tag}.drain"}
    create_topics(env.bootstrap, [topics["drain"]], partitions=PARTITIONS)
    t0 = time.monotonic()
    ends = bench.produce(env.bootstrap, topics["drain"], bench.values(n))
    produced_s = time.monotonic() - t0
    assert sum(ends.values()) == n

    script = Path(bench.__file__)
    done = subprocess.run(
        [sys.executable, str(script), "ceiling", env.bootstrap, topics["drain"], str(n)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    c = json.loads(done.stdout.strip().splitlines()[-1])
    rows: list[dict[str, Any]] = [
        {
            "name": "ceiling: consume → fastavro → map → orjson",
            "events_per_s": c["events"] / c["seconds"],
            "cpu_per_100k": c["cpu_s"] / c["events"] * 100_000,
            "rss_mib": c["rss_mib"],
        }
    ]
    for name, workers in WORKER_ROWS:
        rows.append(
            _service_row(
                name, env, start_service, api_factory, topics, ends, INGEST_WORKERS=workers
            )
        )
    print(f"\nBENCH {n:,} agent events (~562 B Avro, 22 fields) produced in {produced_s:.1f}s")
    bench.table(rows)
    for service in rows[1:]:
        assert service["items_per_request"] > 900, "batches should be nearly full in a drain"
        assert service["events_per_s"] > 2000


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


#: The API outage of the RSS soak (``BENCH_OUTAGE_S``, default 40 s; the performance issue's
#: is 600 s, which alone would take ``make bench`` past its 10 minutes) and the events/s
#: produced meanwhile.
OUTAGE_S = float(os.environ.get("BENCH_OUTAGE_S", "40"))
OUTAGE_RATE = 2000


def test_rss_stays_flat_through_an_api_outage_with_a_growing_backlog(
    env: Env, api_process: str, start_service: Callable[..., Service]
) -> None:
    """Every request answers 503 for ``OUTAGE_S`` while events keep arriving: the service
    keeps its buffers within MAX_BUFFERED_BYTES (it pauses the partitions), so its memory
    (ingest workers included) levels off instead of growing with the backlog; then the API
    comes back and the backlog drains."""
    topic = f"bench.{uuid.uuid4().hex[:6]}.outage"
    create_topics(env.bootstrap, [topic], partitions=PARTITIONS)
    httpx.post(
        f"{api_process}/_emulator/faults",
        json={"error_rate": 1.0, "error_statuses": [503]},
        timeout=5,
    )
    group = f"outage-{uuid.uuid4().hex[:8]}"
    service = start_service(
        ASAPP_API_BASE_URL=api_process, KAFKA_GROUP_ID=group, TOPIC_AGENT=topic, **BENCH_SETTINGS
    )
    wait_until(lambda: service.metric("asapp_consumer_assigned_partitions") >= 3, 30, "assignment")
    pid = service.proc.pid
    ends: dict[int, int] = {}
    stop = threading.Event()

    def feed() -> None:
        start, chunk = 0, OUTAGE_RATE * 5
        while not stop.is_set():
            written = bench.produce(
                env.bootstrap, topic, bench.values(chunk, start=start), rate_per_s=OUTAGE_RATE
            )
            for p, end in written.items():
                ends[p] = max(ends.get(p, 0), end)
            start += chunk

    producer = threading.Thread(target=feed, daemon=True)
    started = time.monotonic()
    producer.start()
    samples: list[tuple[float, float]] = []
    while time.monotonic() - started < OUTAGE_S:
        time.sleep(5)
        samples.append((time.monotonic() - started, bench.tree_peak_rss_mib(pid)))
    stop.set()
    producer.join(60)
    backlog = sum(ends.values()) - sum(_committed(env.bootstrap, group, topic).values())
    httpx.post(f"{api_process}/_emulator/faults", json={}, timeout=5)
    back = time.monotonic()

    def drained() -> bool:
        done = _committed(env.bootstrap, group, topic)
        return all(done.get(p, 0) >= end for p, end in ends.items())

    wait_until(drained, 600, "the backlog drained after the outage", every_s=1.0)
    drain_s = time.monotonic() - back
    assert service.stop() == 0
    third = [rss for t, rss in samples if t <= OUTAGE_S / 3]
    late = [rss for t, rss in samples if t > OUTAGE_S / 3]
    print(
        f"\nOUTAGE {OUTAGE_S:.0f}s of 503s at {OUTAGE_RATE} events/s: backlog {backlog:,} events, "
        f"peak RSS (service + workers) {max(third):.0f} MiB after {OUTAGE_S / 3:.0f}s, "
        f"{max(late):.0f} MiB at the end; drained in {drain_s:.1f}s once the API was back\n"
        "RSS samples (s, MiB): " + ", ".join(f"{t:.0f}:{rss:.0f}" for t, rss in samples)
    )
    assert backlog > OUTAGE_RATE * OUTAGE_S / 2  # the backlog did grow
    assert max(late) <= max(third) * 1.1 + 10, "memory kept growing with the backlog"
    assert max(late) <= 300
