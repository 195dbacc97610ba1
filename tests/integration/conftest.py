"""Real parts for end-to-end tests: the local Kafka-protocol broker, the emulated ASAPP API (a
real HTTP server), the schema registry stand-in, and the real service run as a subprocess
(``python -m consumer run``) configured only through its environment.

Each test gets its own topics and consumer group, so tests share one broker but not state.
End offsets come from the producer's delivery reports (the local broker's high watermark is
unreliable, see consumer/sandbox/produce.py).

Audits shared by the end-to-end tests: :func:`audit_commits` (run after every test that
started the service) and :func:`assert_newest_versions_last` (per-id order at the API).
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as KTopicPartition

from consumer.mapping import to_item
from consumer.records import Entity
from consumer.sandbox.api import EmulatedApi
from consumer.sandbox.broker import LocalBroker, free_port
from consumer.sandbox.events import (
    encode_confluent,
    encode_plain,
    generate,
    generate_versions,
    identity,
)
from consumer.sandbox.produce import create_topics

PARTITIONS = 3
#: The test producer's ``message.max.bytes``: room for the ~1 MB events some tests need.
PRODUCER_MAX_BYTES = 4_000_000
API_ID, API_SECRET = "it-app", "it-secret-3f9a7c"


def wait_until(
    predicate: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(every_s)


@dataclass
class Sent:
    """One produced message and what the API should receive for it."""

    entity: Entity
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    expected: dict[str, Any] | None  # the API item; None for a message that must be dead-lettered
    timestamp_ms: int = 0  # the message's timestamp (producer create time)

    @property
    def event_id(self) -> str:
        assert self.expected is not None
        return str(self.expected["eventId"])


@dataclass
class Env:
    """A test's private topics, group and DLQ, on the shared broker."""

    bootstrap: str
    topics: dict[Entity, str]
    dlq: str
    group: str
    quota: str = ""  # the request ledger topic (QUOTA_TOPIC)
    sent: list[Sent] = field(default_factory=list)
    #: eventIds the API holds without having recorded them here (a 409 "already persisted").
    acknowledged: set[str] = field(default_factory=set)
    _producer: Producer | None = field(default=None, repr=False)

    # -------------------------------------------------------------- producing
    def produce(
        self,
        entity: Entity,
        values: list[tuple[bytes, dict[str, Any] | None]],
        partition: int | None = None,
        keys: list[bytes] | None = None,
    ) -> list[Sent]:
        """Produce raw values (with the item each should become, or None for dead letters),
        keyed ``k<i>`` unless ``keys`` are given; returns once every one is acknowledged.
        Thread-safe (one producer per Env)."""
        if self._producer is None:
            self._producer = Producer(
                {
                    "bootstrap.servers": self.bootstrap,
                    "linger.ms": 5,
                    "message.max.bytes": PRODUCER_MAX_BYTES,
                }
            )
        producer = self._producer
        out: list[Sent] = []
        topic = self.topics[entity]

        for i, (value, record) in enumerate(values):
            key = keys[i] if keys is not None else f"k{i}".encode()

            def report(
                err: Any, msg: Any, value: bytes = value, record: Any = record, key: bytes = key
            ) -> None:
                assert err is None, err
                expected = None
                if record is not None:
                    expected = to_item(
                        entity,
                        record,
                        topic=msg.topic(),
                        partition=msg.partition(),
                        offset=msg.offset(),
                    )
                out.append(
                    Sent(
                        entity,
                        msg.topic(),
                        msg.partition(),
                        msg.offset(),
                        key,
                        value,
                        expected,
                        msg.timestamp()[1],
                    )
                )

            kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": report}
            if partition is not None:
                kwargs["partition"] = partition
            producer.produce(topic, **kwargs)
            producer.poll(0)
        assert producer.flush(30) == 0
        assert len(out) == len(values), "a delivery report is missing"
        self.sent.extend(out)
        return out

    def produce_events(
        self,
        entity: Entity,
        n: int,
        *,
        seed: int = 1,
        start: int = 0,
        schema_id: int | None = None,
        schema: Any = None,
        partition: int | None = None,
    ) -> list[Sent]:
        records = generate(entity, n, seed=seed, start=start)
        if schema_id is not None:
            values = [(encode_confluent(schema_id, schema, r), r) for r in records]
        else:
            values = [(encode_plain(entity, r), r) for r in records]
        return self.produce(entity, values, partition=partition)  # type: ignore[arg-type]

    def produce_versions(
        self, entity: Entity, ids: int, versions: int, *, seed: int = 1
    ) -> list[Sent]:
        """:func:`generate_versions`, keyed by the entity id so that every version of one id
        lands on one partition, in version order."""
        records = generate_versions(entity, ids, versions, seed=seed)
        values = [(encode_plain(entity, r), r) for r in records]
        keys = ["/".join(identity(entity, r)).encode() for r in records]
        return self.produce(entity, values, keys=keys)  # type: ignore[arg-type]

    # -------------------------------------------------------------- reading back
    def end_offsets(self) -> dict[tuple[str, int], int]:
        ends: dict[tuple[str, int], int] = {}
        for s in self.sent:
            ends[(s.topic, s.partition)] = max(ends.get((s.topic, s.partition), 0), s.offset + 1)
        return ends

    def committed(self) -> dict[tuple[str, int], int]:
        probe = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.group,
                "enable.auto.commit": False,
            }
        )
        try:
            parts = [KTopicPartition(t, p) for t in self.topics.values() for p in range(PARTITIONS)]
            return {
                (c.topic, c.partition): max(c.offset, 0) for c in probe.committed(parts, timeout=10)
            }
        finally:
            probe.close()

    def all_committed(self) -> bool:
        committed = self.committed()
        return all(committed.get(tp, 0) >= end for tp, end in self.end_offsets().items())

    def dead_letters(self, expect: int | None = None, idle_s: float = 1.5) -> list[dict[str, Any]]:
        """Every record on this test's DLQ topic: key, value, headers (decoded)."""
        reader = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"dlq-{uuid.uuid4()}",
                "enable.auto.commit": False,
            }
        )
        reader.assign([KTopicPartition(self.dlq, p, 0) for p in range(PARTITIONS)])
        out: list[dict[str, Any]] = []
        last = time.monotonic()
        try:
            while time.monotonic() - last < idle_s and (expect is None or len(out) < expect):
                m = reader.poll(0.1)
                if m is None or m.error():
                    continue
                last = time.monotonic()
                headers = {k: (v or b"").decode("utf-8", "replace") for k, v in (m.headers() or [])}
                out.append({"key": m.key(), "value": m.value(), "headers": headers})
        finally:
            reader.close()
        return out


class Service:
    """The real service as a subprocess; logs (JSON lines) go to a file."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.metrics_port = int(self.env["METRICS_PORT"])
        self._log = open(log_path, "ab")  # noqa: SIM115
        full_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "ASAPP_", "TOPIC_"))
        }
        full_env.update(self.env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "consumer", "run"],
            env=full_env,
            stdout=self._log,
            stderr=self._log,
        )

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5)

    def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for line in self.get("/metrics").text.splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            metric_name = series.split("{", 1)[0]
            if metric_name != name:
                continue
            if labels and not all(f'{k}="{v}"' in series for k, v in labels.items()):
                continue
            total += float(value)
        return total

    def ready(self) -> bool:
        try:
            return self.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"raw": line})
        return out

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            self._log.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    with LocalBroker(log_path=tmp_path_factory.mktemp("broker") / "broker.log") as b:
        yield b


@pytest.fixture
def api() -> Iterator[EmulatedApi]:
    with EmulatedApi(api_id=API_ID, api_secret=API_SECRET) as a:
        yield a


@pytest.fixture
def env(broker: LocalBroker, request: pytest.FixtureRequest) -> Env:
    tag = f"{request.node.name[:30]}-{uuid.uuid4().hex[:6]}".replace("[", "-").replace("]", "")
    topics = {e: f"it.{tag}.{e.value}" for e in Entity}
    dlq = f"it.{tag}.dlq"
    quota = f"it.{tag}.quota"
    create_topics(broker.bootstrap_servers, [*topics.values(), dlq], partitions=PARTITIONS)
    create_topics(broker.bootstrap_servers, [quota], partitions=1)
    return Env(broker.bootstrap_servers, topics, dlq, f"group-{tag}", quota)


def service_environment(env: Env, api_url: str, **overrides: str) -> dict[str, str]:
    """The service's environment for a test's topics and API (the only way it is configured);
    keyword arguments override or add variables."""
    out = {
        "KAFKA_BOOTSTRAP_SERVERS": env.bootstrap,
        "KAFKA_GROUP_ID": env.group,
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
        "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
        "TOPIC_AGENT": env.topics[Entity.AGENT],
        "TOPIC_CONVERSATION": env.topics[Entity.CONVERSATION],
        "TOPIC_CUSTOMER": env.topics[Entity.CUSTOMER],
        "DLQ_TOPIC": env.dlq,
        "QUOTA_TOPIC": env.quota,
        # Plenty of quota: tests not about the request budget see latency at the linger.
        "DAILY_REQUEST_QUOTA": "1000000000",
        "ASAPP_API_BASE_URL": api_url,
        "ASAPP_API_ID": API_ID,
        "ASAPP_API_SECRET": API_SECRET,
        "BATCH_LINGER_MS": "200",
        "METRICS_PORT": str(free_port()),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "RETRY_MAX_BACKOFF_S": "1",
        "SHUTDOWN_TIMEOUT_S": "15",
    }
    out.update({k: str(v) for k, v in overrides.items()})
    return out


@pytest.fixture
def start_service(env: Env, api: EmulatedApi, tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Start the real service for this test's topics; extra keyword args become env vars."""
    started: list[Service] = []

    def start(**overrides: str) -> Service:
        service_env = service_environment(env, api.url, **overrides)
        service = Service(service_env, tmp_path / f"service-{len(started)}.log")
        started.append(service)
        wait_until(lambda: _health_up(service), 20, "the service's health endpoint")
        return service

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.kill()
    if started and all(s.env["ASAPP_API_BASE_URL"] == api.url for s in started):
        audit_commits(env, api)


def audit_commits(env: Env, api: EmulatedApi) -> None:
    """The suite-wide guarantee, checked after every end-to-end test: no offset was committed
    past a message that was neither delivered to the API nor written to the dead-letter topic."""
    committed = env.committed()
    delivered = set(items_by_event_id(api, env)) | env.acknowledged
    dead = {
        (
            d["headers"].get("dlq.source.topic"),
            int(d["headers"].get("dlq.source.partition", -1)),
            int(d["headers"].get("dlq.source.offset", -1)),
        )
        for d in env.dead_letters(idle_s=0.5)
    }
    for s in env.sent:
        if s.offset >= committed.get((s.topic, s.partition), 0):
            continue
        ok = (s.topic, s.partition, s.offset) in dead or (
            s.expected is not None and s.event_id in delivered
        )
        assert ok, (
            f"{s.topic}[{s.partition}]@{s.offset} committed but neither delivered nor dead-lettered"
        )


def _health_up(service: Service) -> bool:
    if service.proc.poll() is not None:
        raise AssertionError(
            f"service exited with {service.proc.returncode}:\n"
            f"{service.log_path.read_text()[-3000:]}"
        )
    try:
        return service.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def stale_ids(api: EmulatedApi, env: Env) -> dict[tuple[Entity, tuple[str, ...]], str]:
    """Entity ids whose last item accepted at the API is not their newest event (the highest
    offset of the id's partition), mapped to a description; ids never accepted count as stale.

    Only messages expected to reach the API are considered; every version of one id must sit
    on one partition (produce them keyed by the id, as :meth:`Env.produce_versions` does).
    """
    newest: dict[tuple[Entity, tuple[str, ...]], Sent] = {}
    for s in env.sent:
        if s.expected is None:
            continue
        key = (s.entity, identity(s.entity, s.expected))
        held = newest.get(key)
        if held is not None:
            assert (held.topic, held.partition) == (s.topic, s.partition), (
                f"versions of {key} are on two partitions: newest is ambiguous"
            )
        if held is None or s.offset > held.offset:
            newest[key] = s
    last: dict[tuple[Entity, tuple[str, ...]], str] = {}
    for entity in {e for e, _ in newest}:
        for item in api.items(entity):
            last[(entity, identity(entity, item))] = str(item["eventId"])
    out: dict[tuple[Entity, tuple[str, ...]], str] = {}
    for key, s in newest.items():
        got = last.get(key)
        if got != s.event_id:
            out[key] = f"last accepted {got}, newest {s.event_id} (@{s.offset})"
    return out


def assert_newest_versions_last(api: EmulatedApi, env: Env) -> None:
    """Per-id order at the API: for every entity id produced, the last item the API accepted
    is the id's newest event (a retried older version never lands after a newer one)."""
    stale = stale_ids(api, env)
    assert not stale, f"{len(stale)} ids end on an older version, e.g. {list(stale.items())[:3]}"


def items_by_event_id(api: EmulatedApi, env: Env) -> dict[str, list[dict[str, Any]]]:
    """Accepted items (all entities) grouped by eventId."""
    out: dict[str, list[dict[str, Any]]] = {}
    for e in Entity:
        for item in api.items(e):
            out.setdefault(item["eventId"], []).append(item)
    return out


class Stream:
    """Produces ``per_tick`` events of every entity each ``tick_s`` in a background thread."""

    def __init__(self, env: Env, per_tick: int, tick_s: float = 0.1) -> None:
        self.env, self.per_tick, self.tick_s = env, per_tick, tick_s
        self._stop = threading.Event()
        self._next = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="stream", daemon=True)

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)
        assert self.error is None, f"the stream failed: {self.error!r}"

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                for entity in Entity:
                    self.env.produce_events(entity, self.per_tick, seed=33, start=self._next)
                self._next += self.per_tick
                self._stop.wait(max(0.0, self.tick_s - (time.monotonic() - started)))
        except BaseException as exc:  # reported by __exit__ in the test's thread
            self.error = exc


def latencies(api: EmulatedApi, sent: list[Sent], window: tuple[float, float]) -> list[float]:
    """Message timestamp → first acceptance at the API, seconds, for messages produced within
    ``window`` (wall-clock seconds); a message not accepted at all is left out."""
    first: dict[str, float] = {}
    for receipt in api.receipts():
        if receipt.event_id is not None:
            first.setdefault(receipt.event_id, receipt.t_wall)
    out = []
    for s in sent:
        t_message = s.timestamp_ms / 1000
        if window[0] <= t_message <= window[1] and s.event_id in first:
            out.append(first[s.event_id] - t_message)
    return out
