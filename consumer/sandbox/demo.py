"""``metadata-consumer demo``: the whole service on this machine, no Docker, no network.

Starts the local broker and the emulated ASAPP API (and, for ``--wire-format confluent``, the
schema registry stand-in), creates the topics (the quota ledger compacted), starts the real
service and, once the group has assigned it every partition, produces realistic events for
each entity (one in ``--bad-every`` deliberately bad, to show dead-lettering). It runs until
every message is delivered or dead-lettered and committed, then prints a summary in plain
words and writes a report (``report.json`` and ``report.html``, the latter with charts of
throughput and latency over the run) into ``--report-dir`` (default ``./demo-report``).

Unless ``--no-faults``, the emulated API plays one short fault episode at the start (:data:`
FAULT_EPISODE`: a 429 with ``Retry-After: 1``, then three 503s); the summary tells what the API
answered (counted from its request log) and what the service did (from its metrics).

While it runs: on a terminal, one progress line rewritten in place (produced, delivered and
dead-lettered per entity, API requests, lag); otherwise a few plain milestone lines.

Guarantees: the verdict and the figures are taken when everything was committed, so
``--hold-s`` (serving metrics afterwards) neither counts as delivery time nor changes the
result, whatever is produced meanwhile; no temporary file or folder is created (the broker's
log goes to the report directory), and the broker, API and registry are stopped on every
exit, Ctrl-C and SIGTERM included. Exit status 0 when every produced message is accounted for.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar, TextIO

from confluent_kafka import Consumer, KafkaException
from confluent_kafka import TopicPartition as KTopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from prometheus_client import Counter as PromCounter

from consumer import logs
from consumer.ingest import ID_FIELDS
from consumer.records import Entity
from consumer.sandbox import report as rpt
from consumer.sandbox.api import EmulatedApi, Faults, steps
from consumer.sandbox.broker import LocalBroker
from consumer.sandbox.produce import Produced, create_topics, produce_events, register_schemas
from consumer.service import Service, build_service, install_signal_handlers
from consumer.settings import DEFAULT_TOPICS, Settings

DLQ_TOPIC = "asapp.metadata.dlq"
#: The quota ledger: the service's default QUOTA_TOPIC.
QUOTA_TOPIC = "asapp.metadata.quota"
#: The ledger's production configuration (consumer.kafka.QuotaLedger's docstring); the local
#: broker accepts it on create.
QUOTA_TOPIC_CONFIG = {"cleanup.policy": "compact,delete", "retention.ms": "172800000"}
PARTITIONS = 3
API_ID, API_SECRET = "demo-app", "demo-secret-value"
#: The default run's fault episode: the first API request is answered 429 with Retry-After 1 s,
#: the next three 503 (each step is one request, retries included).
FAULT_EPISODE = Faults(sequence=steps(429, 503, 503, 503), retry_after_s=1.0)
DEFAULT_REPORT_DIR = "demo-report"
_TICK_S = 0.25


def committed_offsets(bootstrap: str, topics: list[str], group: str) -> dict[str, int]:
    """The group's committed offset per ``topic[partition]`` (0 when none)."""
    with _committed_probe(bootstrap, group) as probe:
        return probe(topics)


@contextlib.contextmanager
def _committed_probe(bootstrap: str, group: str) -> Iterator[Callable[[list[str]], dict[str, int]]]:
    """A reusable ``committed(topics) -> {topic[partition]: offset}`` for ``group``."""
    probe = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )

    def committed(topics: list[str]) -> dict[str, int]:
        parts = [KTopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
        return {
            f"{c.topic}[{c.partition}]": max(c.offset, 0) for c in probe.committed(parts, timeout=5)
        }

    try:
        yield committed
    finally:
        probe.close()


def create_quota_topic(bootstrap: str, timeout_s: float = 15.0) -> None:
    """Create the compacted quota ledger topic (one partition; an existing one is fine)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = NewTopic(QUOTA_TOPIC, num_partitions=1, replication_factor=1, config=QUOTA_TOPIC_CONFIG)
    for fut in admin.create_topics([topic], request_timeout=timeout_s).values():
        try:
            fut.result(timeout=timeout_s)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"cannot create topic {QUOTA_TOPIC}: {exc}") from exc


def message_timestamps(
    bootstrap: str, end_offsets: Mapping[str, int], timeout_s: float = 20.0
) -> dict[tuple[str, str], int]:
    """``(topic, key) → timestamp (ms)`` of every message below ``end_offsets``
    (``topic[partition]`` → one past the last offset), read back from the broker."""
    reader = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "demo-timestamps", "enable.auto.commit": False}
    )
    out: dict[tuple[str, str], int] = {}
    ends: dict[tuple[str, int], int] = {}
    for name, end in end_offsets.items():
        topic, _, part = name.rpartition("[")
        if end > 0:
            ends[(topic, int(part.rstrip("]")))] = end
    remaining = set(ends)
    try:
        reader.assign([KTopicPartition(t, p, 0) for t, p in ends])
        deadline = time.monotonic() + timeout_s
        while remaining and time.monotonic() < deadline:
            for m in reader.consume(500, 0.2):
                tp = (str(m.topic()), int(m.partition() or 0))
                offset = int(m.offset() or 0)
                if m.error() or tp not in ends or offset >= ends[tp]:
                    continue  # produced later (e.g. during a hold): not this run's
                key = m.key()
                if key is not None:
                    out[(tp[0], key.decode("utf-8", "replace"))] = int(m.timestamp()[1])
                if offset + 1 >= ends[tp]:
                    remaining.discard(tp)
    finally:
        reader.close()
    return out


def sample_dead_letter(
    bootstrap: str, prefer_reason: str = "validation", timeout_s: float = 10.0
) -> rpt.DeadLetterSample | None:
    """One record of the DLQ topic (one with ``dlq.reason`` = ``prefer_reason`` when the first
    ones read include such), header values decoded and the API secret masked."""
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "demo-dlq-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    found: rpt.DeadLetterSample | None = None
    try:
        reader.assign([KTopicPartition(DLQ_TOPIC, p, 0) for p in range(PARTITIONS)])
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and (found is None or len(at_end) < PARTITIONS):
            m = reader.poll(0.2)
            if m is None:
                continue
            if m.error():
                at_end.add(int(m.partition() or 0))
                continue
            raw: list[Any] = list(m.headers() or [])
            headers = tuple(
                (str(k), _mask(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)))
                for k, v in raw
            )
            key = m.key()
            sample = rpt.DeadLetterSample(
                topic=DLQ_TOPIC,
                partition=int(m.partition() or 0),
                offset=int(m.offset() or 0),
                key=None if key is None else key.decode("utf-8", "replace"),
                headers=headers,
            )
            if found is None:
                found = sample
            if dict(headers).get("dlq.reason") == prefer_reason:
                return sample
    finally:
        reader.close()
    return found


def _mask(value: str) -> str:
    return value.replace(API_SECRET, "***")


# ---- the live display --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The run's counts at one moment (per entity: produced, delivered, dead-lettered)."""

    elapsed_s: float
    produced: Mapping[str, int]
    delivered: Mapping[str, int]
    dead: Mapping[str, int]
    requests: int
    lag: int | None  # None before anything was produced
    joined: bool

    @property
    def finished(self) -> int:
        return sum(self.delivered.values()) + sum(self.dead.values())


class Display:
    """Progress on ``stream``: on a terminal one line rewritten in place, otherwise a plain
    line at 25 %, 50 %, 75 % and 100 % of the events finished. Thread-safe; :meth:`say`
    prints a whole line (clearing the progress line first); :meth:`clear` is called by the
    log filter before each log line."""

    def __init__(self, stream: TextIO, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self._lock = threading.Lock()
        self._shown = False
        self._milestones = [25, 50, 75, 100]
        self._legend_shown = False

    def say(self, line: str) -> None:
        with self._lock:
            self._clear_locked()
            self.stream.write(line + "\n")
            self.stream.flush()

    def clear(self) -> None:
        with self._lock:
            self._clear_locked()
            self.stream.flush()

    def finish(self) -> None:
        """Leave the last progress line on the terminal (the next line starts below it)."""
        with self._lock:
            if self._shown:
                self.stream.write("\n")
                self.stream.flush()
                self._shown = False

    def _clear_locked(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self._shown = False

    def update(self, s: Snapshot) -> None:
        if self.tty:
            if not self._legend_shown and s.joined:
                self._legend_shown = True
                self.say(self.LEGEND)
            width = shutil.get_terminal_size((100, 24)).columns - 1
            with self._lock:
                self.stream.write("\r" + self.line(s, width) + "\x1b[K")
                self.stream.flush()
                self._shown = True
            return
        total = sum(s.produced.values())
        crossed = [m for m in self._milestones if total and s.finished * 100 >= m * total]
        if crossed:  # several at once: one line, the highest
            pct = crossed[-1]
            self._milestones = [m for m in self._milestones if m > pct]
            self.say(
                f"progress: {pct}% ({s.finished} of {total} events delivered or dead-lettered, "
                f"{s.requests} API requests, lag {s.lag}) after {s.elapsed_s:.1f} s"
            )

    #: Printed once, above the first progress line.
    LEGEND = (
        "progress: per entity delivered+dead-lettered/produced, API requests, lag (events "
        "not yet committed)"
    )

    #: Short entity names for a narrow terminal.
    SHORT: ClassVar[Mapping[str, str]] = {
        "agent": "agt",
        "conversation": "conv",
        "customer": "cust",
    }

    @staticmethod
    def line(s: Snapshot, width: int = 1000) -> str:
        """The progress line, e.g. ``[ 5.1s] agent 294+6/300 · ... · 7 requests · lag 0``;
        shorter names when that is wider than ``width``, cut at ``width`` as a last resort."""
        if not s.joined:
            return f"[{s.elapsed_s:4.1f}s] joining the consumer group..."[:width]
        lag = "-" if s.lag is None else str(s.lag)
        for names, requests in ((None, "requests"), (Display.SHORT, "req")):
            parts = [
                f"{(names or {}).get(e, e)} {s.delivered.get(e, 0)}+{s.dead.get(e, 0)}/{n}"
                for e, n in s.produced.items()
            ]
            text = f"[{s.elapsed_s:4.1f}s] " + " · ".join(
                [*parts, f"{s.requests} {requests}", f"lag {lag}"]
            )
            if len(text) <= width:
                break
        return text[:width]


class _ClearProgress(logging.Filter):
    """Clears the progress line before a log line is written (so they don't mix)."""

    def __init__(self, display: Display) -> None:
        super().__init__()
        self.display = display

    def filter(self, record: logging.LogRecord) -> bool:
        self.display.clear()
        return True


# ---- the run -----------------------------------------------------------------------------------


def _samples(metric: PromCounter, label: str | None) -> dict[str, float]:
    """A counter's ``_total`` samples summed by ``label`` (all under ``""`` when None)."""
    out: dict[str, float] = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = "" if label is None else sample.labels.get(label, "")
                out[key] = out.get(key, 0.0) + sample.value
    return out


@dataclass(slots=True)
class _Run:
    """What the watcher thread learns; read by the main thread once the service stopped."""

    service: Service
    api: EmulatedApi
    bootstrap: str
    topics: list[str]
    events: int
    bad_every: int
    schema_ids: Mapping[Entity, int] | None
    started: float = field(default_factory=time.monotonic)
    joined_at: float | None = None
    produce_mono: float | None = None
    produce_wall: float | None = None
    produced: Produced | None = None
    done_at: float | None = None
    timed_out: bool = False
    error: str | None = None
    final: Snapshot | None = None
    final_committed: dict[str, int] = field(default_factory=dict)
    dead_by_reason: dict[str, int] = field(default_factory=dict)

    def snapshot(self, committed: Mapping[str, int] | None) -> Snapshot:
        p = self.produced
        produced = {
            e.value: (p.good.get(DEFAULT_TOPICS[e], 0) + p.bad.get(DEFAULT_TOPICS[e], 0))
            if p
            else 0
            for e in Entity
        }
        dead = _samples(self.service.metrics.dead_letters, "entity")
        lag = None
        if p is not None and committed is not None:
            lag = sum(max(0, end - committed.get(k, 0)) for k, end in p.end_offsets.items())
        return Snapshot(
            elapsed_s=time.monotonic() - self.started,
            produced=produced,
            delivered={e.value: self.api.accepted_count(e) for e in Entity},
            dead={e.value: int(dead.get(e.value, 0)) for e in Entity},
            requests=self.api.request_count(),
            lag=lag,
            joined=self.joined_at is not None,
        )

    def reasons(self) -> dict[str, int]:
        """Dead letters so far by ``dlq.reason``, from the service's metrics."""
        counts = _samples(self.service.metrics.dead_letters, "reason")
        return {k: int(v) for k, v in sorted(counts.items()) if v}

    def watch(self, display: Display, timeout_s: float, hold_s: float) -> None:
        """Wait for the assignment, produce, follow the run until everything is committed (or
        ``timeout_s``), hold ``hold_s``, then stop the service."""
        pipeline = self.service.pipeline
        deadline = self.started + timeout_s
        try:
            last: dict[str, int] | None = None
            with _committed_probe(self.bootstrap, self.service.settings.group_id) as committed:
                committed(self.topics)  # the first call finds the coordinator: not mid-run
                while not pipeline.stopping and time.monotonic() < deadline:
                    if self.joined_at is None and len(pipeline.assigned) >= len(self.topics) * (
                        PARTITIONS
                    ):
                        self.joined_at = time.monotonic()
                        self._produce(display)
                    # drawn before the committed offsets are asked for (that call can take a
                    # while): the line moves with the deliveries, the lag a tick behind
                    display.update(self.snapshot(last))
                    if self.produced is not None:
                        last = committed(self.topics)
                        snap = self.snapshot(last)
                        if self._complete(snap, last):
                            self.done_at = time.monotonic()
                            display.update(snap)
                            display.finish()
                            self.final, self.final_committed = snap, dict(last)
                            self.dead_by_reason = self.reasons()
                            break
                    time.sleep(_TICK_S)
                else:
                    self.timed_out = not pipeline.stopping
            if self.done_at is not None and hold_s > 0:
                display.say(
                    f"all delivered; serving metrics for {hold_s:.0f} s more (Ctrl-C stops)"
                )
                hold_end = time.monotonic() + hold_s
                while not pipeline.stopping and time.monotonic() < hold_end:
                    time.sleep(_TICK_S)
        except Exception as exc:  # reported in the summary; the service is stopped below
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            pipeline.request_stop()

    def _produce(self, display: Display) -> None:
        self.produce_mono, self.produce_wall = time.monotonic(), time.time()
        self.produced = produce_events(
            self.bootstrap, count=self.events, schema_ids=self.schema_ids, bad_every=self.bad_every
        )
        display.say(
            f"the group assigned every partition after {self.produce_mono - self.started:.1f} s; "
            f"produced {self.produced.total} events "
            f"({sum(self.produced.bad.values())} deliberately bad) in "
            f"{time.monotonic() - self.produce_mono:.1f} s"
        )

    def _complete(self, snap: Snapshot, committed: Mapping[str, int] | None) -> bool:
        p = self.produced
        if p is None or committed is None or snap.finished < p.total:
            return False
        return all(committed.get(k, 0) >= end for k, end in p.end_offsets.items())


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_demo(
    *,
    events: int,
    wire_format: str,
    bad_every: int,
    timeout_s: float,
    hold_s: float,
    report_dir: Path | None = None,
    faults: bool = True,
    stdout: TextIO | None = None,
) -> int:
    """Run the demo (module docstring); returns the exit status (0: everything accounted for,
    1: not, 130: interrupted before the service ran)."""
    out = stdout or sys.stdout
    display = Display(out)
    logs.setup("text", os.environ.get("LOG_LEVEL", "INFO").upper())
    for handler in logging.getLogger().handlers:
        handler.addFilter(_ClearProgress(display))
    directory = (report_dir or Path.cwd() / DEFAULT_REPORT_DIR).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    broker_log = directory / "broker.log"
    broker_log.unlink(missing_ok=True)
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:  # SIGTERM unwinds like Ctrl-C until the service installs its handlers
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        with contextlib.ExitStack() as stack:
            # stop() registered before start(): an interrupt while the broker starts (within
            # LocalBroker.start, before its context is entered) still ends its process
            broker = LocalBroker(log_path=broker_log)
            stack.callback(broker.stop)
            broker.start()
            api = stack.enter_context(
                EmulatedApi(
                    api_id=API_ID,
                    api_secret=API_SECRET,
                    faults=FAULT_EPISODE if faults else Faults(),
                )
            )
            return _run(stack, display, broker, api, directory, events=events,
                        wire_format=wire_format, bad_every=bad_every, timeout_s=timeout_s,
                        hold_s=hold_s, faults=faults, main_thread=main_thread)  # fmt: skip
    except KeyboardInterrupt:
        display.say("demo interrupted; everything it started is stopped")
        return 130


def _run(
    stack: contextlib.ExitStack,
    display: Display,
    broker: LocalBroker,
    api: EmulatedApi,
    directory: Path,
    *,
    events: int,
    wire_format: str,
    bad_every: int,
    timeout_s: float,
    hold_s: float,
    faults: bool,
    main_thread: bool,
) -> int:
    bootstrap = broker.bootstrap_servers
    display.say(f"local broker on {bootstrap}; emulated ASAPP API on {api.url}")
    if faults:
        display.say(
            "the API will answer the first request 429 (Retry-After 1 s) and the next three 503"
        )
    topics = list(DEFAULT_TOPICS.values())
    create_topics(bootstrap, [*topics, DLQ_TOPIC], partitions=PARTITIONS)
    create_quota_topic(bootstrap)
    schema_ids = registry_url = None
    if wire_format == "confluent":
        from consumer.sandbox.registry import SchemaRegistryStandIn

        registry = stack.enter_context(SchemaRegistryStandIn())
        registry_url = registry.url
        schema_ids = register_schemas(registry.url)
        display.say(f"schema registry stand-in on {registry.url}: ids {[*schema_ids.values()]}")
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_GROUP_ID": "asapp-metadata-consumer-demo",
        # The local broker completes a first JoinGroup after session.timeout.ms / 2.
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
        "ASAPP_API_BASE_URL": api.url,
        "ASAPP_API_ID": API_ID,
        "ASAPP_API_SECRET": API_SECRET,
        "DLQ_TOPIC": DLQ_TOPIC,
        "QUOTA_TOPIC": QUOTA_TOPIC,
        "BATCH_LINGER_MS": "250",
        "METRICS_PORT": os.environ.get("METRICS_PORT", "0"),
        "METRICS_HOST": "127.0.0.1",
        "LOG_FORMAT": "text",
    }
    if registry_url is not None:
        env["SCHEMA_REGISTRY_URL"] = registry_url
    settings = Settings.from_env(env)
    service = build_service(settings)
    run = _Run(service, api, bootstrap, topics, events, bad_every, schema_ids)
    if main_thread:
        install_signal_handlers(service.pipeline)
    display.say(f"service metrics on http://127.0.0.1:{service.health.port}/metrics")
    watcher = threading.Thread(
        target=run.watch, args=(display, timeout_s, hold_s), name="demo-watch", daemon=True
    )
    watcher.start()
    try:
        service.run()
    finally:
        watcher.join(timeout=10)
        if main_thread:  # from here Ctrl-C/SIGTERM interrupt the read-back and clean up
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, _interrupt)
    display.finish()
    report = _report(run, wire_format, hold_s)
    for line in ["", "=== demo summary ===", *report.summary()]:
        display.say(line)
    json_path, html_path = rpt.write_report(report, directory)
    display.say(f"Report: {html_path} (data: {json_path.name}, broker log: broker.log)")
    return 0 if report.ok else 1


def _report(run: _Run, wire_format: str, hold_s: float) -> rpt.Report:
    """The figures of the run, taken when everything was committed (or now, if it never was)."""
    produced = run.produced or Produced()
    committed = run.final_committed
    final = run.final
    if final is None:  # timed out, interrupted or failed: the figures as they are now
        with contextlib.suppress(Exception):
            committed = committed_offsets(run.bootstrap, run.topics, run.service.settings.group_id)
        final = run.snapshot(committed)
        run.dead_by_reason = run.reasons()
    t0_mono = run.produce_mono or run.started
    t0_wall = run.produce_wall or time.time()
    stamps = message_timestamps(run.bootstrap, produced.end_offsets) if run.produced else {}
    per_entity: dict[str, list[float]] = {e.value: [] for e in Entity}
    receipts: list[tuple[str, float, float]] = []
    for r in run.api.receipts():
        key = r.item.get(ID_FIELDS[r.entity][0])
        ts = stamps.get((DEFAULT_TOPICS[r.entity], str(key)))
        if ts is None:  # not one of the events this run produced (e.g. added during a hold)
            continue
        lat = max(0.0, r.t_wall - ts / 1000.0)
        per_entity[r.entity.value].append(lat)
        receipts.append((r.entity.value, r.t_wall - t0_wall, lat))
    until = run.done_at if run.done_at is not None else math.inf
    requests = [q for q in run.api.requests() if q.t_monotonic <= until]
    episode = rpt.fault_episode(
        ((q.t_monotonic - t0_mono, q.status, q.retry_after) for q in requests),
        retries=int(sum(_samples(run.service.metrics.retries, None).values())),
        waited_s=sum(_samples(run.service.metrics.backoff_seconds, None).values()),
    )
    entities = tuple(
        rpt.EntityFigures(
            entity=e.value,
            produced=final.produced[e.value],
            bad_on_purpose=produced.bad.get(DEFAULT_TOPICS[e], 0),
            delivered=final.delivered[e.value],
            dead_lettered=final.dead[e.value],
            latency=rpt.latency(per_entity[e.value]),
        )
        for e in Entity
    )
    good, bad = sum(produced.good.values()), sum(produced.bad.values())
    committed_ok = bool(produced.end_offsets) and all(
        committed.get(k, 0) >= end for k, end in produced.end_offsets.items()
    )
    ok = (
        run.done_at is not None
        and run.error is None
        and sum(final.delivered.values()) == good
        and sum(final.dead.values()) == bad
        and committed_ok
    )
    notes = []
    if run.timed_out:
        notes.append("The run timed out before everything was committed (--timeout-s).")
    if run.error:
        notes.append(f"The demo failed: {run.error}")
    elif run.done_at is None and not run.timed_out:
        notes.append("The run was stopped (Ctrl-C or SIGTERM) before everything was committed.")
    statuses: dict[str, int] = {}
    for q in requests:
        statuses[str(q.status)] = statuses.get(str(q.status), 0) + 1
    end = run.done_at or time.monotonic()
    return rpt.Report(
        ok=ok,
        wire_format=wire_format,
        entities=entities,
        requests=len(requests),
        statuses=statuses,
        episode=episode,
        dead_by_reason=run.dead_by_reason,
        sample=sample_dead_letter(run.bootstrap) if sum(final.dead.values()) else None,
        committed_ok=committed_ok,
        join_s=((run.joined_at or end) - run.started),
        delivery_s=end - t0_mono,
        hold_s=hold_s,
        timeline=rpt.timeline(
            receipts, (q.t_monotonic - t0_mono for q in requests), [e.value for e in Entity]
        ),
        started_at=datetime.fromtimestamp(time.time() - (time.monotonic() - run.started), UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z"),
        notes=tuple(notes),
    )
