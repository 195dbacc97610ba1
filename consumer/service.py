"""The composition root: the only place that builds the real adapters and wires them into the
pipeline, and the run of the production service (``metadata-consumer run``).

The CLI (:mod:`consumer.cli`) parses arguments and dispatches here; the sandbox
(:mod:`consumer.sandbox.demo`) builds the same service through :func:`build_service`.
Nothing here imports the sandbox.

Readiness (``/readyz``) is blocked, with the reason shown, by every component that knows it
cannot make progress until an operator acts: the sender's
:meth:`~consumer.sender.Credentials.problem` (credentials rejected, an endpoint forbidden), and
the dead-letter producer's :meth:`~consumer.kafka.DeadLetterProducer.problem` (a fatal producer
error, a missing ACL), and by long outages (``HEALTH_OUTAGE_S``, :mod:`consumer.outage`): the
brokers unreachable (:meth:`~consumer.kafka.KafkaSource.broker_problem`), or every API request
failing (no answer, or a 5xx; the sender feeds each answer).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import socket
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from consumer import logs
from consumer.batcher import Batcher
from consumer.decoder import (
    GuardedRegistry,
    PlainAvroDecoder,
    RegistryAvroDecoder,
    registry_client,
)
from consumer.errors import ConfigError, ConsumerError
from consumer.health import HealthServer, Probe
from consumer.ingest import Ingest
from consumer.kafka import (
    DeadLetterProducer,
    KafkaSource,
    QuotaLedger,
    consumer_config,
    redacted,
)
from consumer.mapping import to_item
from consumer.metrics import Metrics
from consumer.outage import Outage
from consumer.pipeline import Decoder, Pipeline, PipelineConfig
from consumer.quota import Pacer, QuotaPolicy
from consumer.records import Entity
from consumer.retry import Throttle
from consumer.sender import Credentials, Sender
from consumer.settings import SECRET_MARKERS, Settings
from consumer.sink import ApiSink
from consumer.validation import validator_for
from consumer.workers import IngestPool, default_workers

#: Seconds between a pod's ledger writes: with the pacer's 1 s refresh, another pod sees a
#: change of demand within about 2.5 s, inside the pacer's settle window (quota.SETTLE_S).
LEDGER_PUBLISH_S = 1.0

log = logging.getLogger("consumer")

#: Exit statuses of :func:`run_from_environment`.
EXIT_OK, EXIT_CONFIG = 0, 2


@dataclass(slots=True)
class Service:
    """Everything ``run`` starts, wired together."""

    settings: Settings
    metrics: Metrics
    pipeline: Pipeline
    health: HealthServer
    sink: ApiSink
    dead_letters: DeadLetterProducer
    credentials: Credentials
    ledger: QuotaLedger | None = None
    workers: IngestPool | None = None

    def run(self) -> None:
        """Serve health, run the pipeline until :meth:`Pipeline.request_stop`; always releases
        what it started (DLQ producer, HTTP client, health server), in that order."""
        self.health.start()
        try:
            self.pipeline.run()
        finally:
            if self.workers is not None:  # the loop routed what they had on its way out
                self.workers.close()
            if self.ledger is not None:  # the day's last count, so a restart continues from it
                self.ledger.close()
            self.dead_letters.close()
            self.sink.close()
            self.health.stop()


def _decoders(settings: Settings) -> dict[Entity, Decoder]:
    if settings.schema_registry_url:
        client = GuardedRegistry(
            registry_client(settings.schema_registry_url, settings.schema_registry_auth)
        )
        return {e: RegistryAvroDecoder(e, client) for e in settings.topics}
    return {e: PlainAvroDecoder(e) for e in settings.topics}


def build_ingest(settings: Settings) -> Ingest:
    """The ingest step for ``settings`` (what the poll loop runs in-process, and what each
    ingest worker process builds for itself from the same settings)."""
    return Ingest(
        topic_entities=settings.topic_entities,
        decoders=_decoders(settings),
        validators={e: validator_for(e) for e in settings.topics},
        mapper=to_item,
    )


def _ingest_workers(settings: Settings) -> IngestPool | None:
    """The ingest worker processes INGEST_WORKERS asks for (None: the loop ingests)."""
    n = settings.ingest_workers if settings.ingest_workers is not None else default_workers()
    log.info(
        "ingest step: %s",
        f"{n} worker processes" if n else "in the poll loop",
        extra={"event": "ingest_workers", "workers": n},
    )
    return IngestPool(settings, n) if n > 0 else None


def build_service(settings: Settings, registry: CollectorRegistry | None = None) -> Service:
    """Compose the real service from ``settings`` (nothing runs yet).

    Raises ConfigError when the Kafka client rejects the configuration and OSError when the
    metrics port cannot be bound."""
    registry = registry if registry is not None else CollectorRegistry()
    metrics = Metrics(registry)
    metrics.daily_quota.set(settings.daily_request_quota)
    credentials = Credentials(metrics)
    api_outage = Outage(
        "every ASAPP API request failing",
        bound_s=settings.health_outage_s,
        # retries keep failing at least every RETRY_MAX_BACKOFF_S while the outage lasts
        quiet_s=max(settings.health_outage_s, 2 * settings.retry_max_backoff_s),
    )
    sink = ApiSink(
        base_url=settings.api_base_url,
        api_id=settings.api_id,
        api_secret=settings.api_secret,
        timeout_s=settings.http_timeout_s,
        max_connections=settings.max_in_flight,
    )
    throttle = Throttle(rate_rps=settings.rate_limit_rps)
    sender = Sender(
        sink=sink,
        throttle=throttle,
        metrics=metrics,
        credentials=credentials,
        threads=settings.max_in_flight,
        retry_max_backoff_s=settings.retry_max_backoff_s,
        malformed_max_attempts=settings.malformed_response_max_attempts,
        outage=api_outage,
    )
    dead_letters = DeadLetterProducer(settings)
    pod = pod_name()
    ledger = QuotaLedger(
        settings,
        group=settings.group_id,
        pod=pod,
        topic=settings.quota_topic,
        publish_interval_s=LEDGER_PUBLISH_S,
    )
    pacer = Pacer(
        QuotaPolicy(
            daily_quota=settings.daily_request_quota,
            reserve=settings.quota_reserve,
            max_wait_s=settings.quota_max_wait_s,
            rate_limit_rps=settings.rate_limit_rps,
            linger_s=settings.batch_linger_ms / 1000.0,
            entities=len(settings.topics),
            pacing=settings.quota_pacing,
        ),
        pod=pod,
        ledger=ledger,
        set_rate=throttle.set_rate,
        pause=throttle.pause,
        requests_today=metrics.requests_so_far_today,
        metrics=metrics,
        limited_episodes=lambda: throttle.gate.episodes,
    )
    source = KafkaSource(settings)
    workers = _ingest_workers(settings)
    pipeline = Pipeline(
        config=PipelineConfig(
            topic_entities=settings.topic_entities,
            max_buffered_messages=settings.max_buffered_messages,
            max_buffered_bytes=settings.max_buffered_bytes,
            revoke_timeout_s=settings.revoke_timeout_s,
            shutdown_timeout_s=settings.shutdown_timeout_s,
            commit_timeout_s=settings.commit_timeout_s,
            retry_max_backoff_s=settings.retry_max_backoff_s,
            coalesce=settings.batch_coalesce,
            max_wait_s=settings.quota_max_wait_s,
        ),
        source=source,
        dead_letters=dead_letters,
        sender=sender,
        batcher=Batcher(
            max_items=settings.batch_max_items,
            max_bytes=settings.batch_max_bytes,
            linger_s=settings.batch_linger_ms / 1000.0,
        ),
        decoders=_decoders(settings),
        validators={e: validator_for(e) for e in settings.topics},
        mapper=to_item,
        metrics=metrics,
        pacer=pacer,
        workers=workers,
    )
    probe = Probe(
        last_iteration=lambda: pipeline.last_iteration,
        assigned=lambda: len(pipeline.assigned),
        blockers=[
            credentials.problem,
            dead_letters.problem,
            source.broker_problem,
            api_outage.problem,
        ],
        stopping=lambda: pipeline.stopping,
        stall_timeout_s=settings.health_stall_timeout_s,
    )
    metrics.ready.set_function(lambda: 1.0 if probe.ready()[0] else 0.0)
    try:
        health = HealthServer(
            registry=registry, probe=probe, port=settings.metrics_port, host=settings.metrics_host
        )
    except OSError as exc:  # taken between the CLI's check and here, or no check was made
        if workers is not None:
            workers.close()
        raise ConfigError(
            f"METRICS_PORT={settings.metrics_port} on METRICS_HOST={settings.metrics_host} "
            f"cannot be bound ({exc.strerror or exc}): free it or set METRICS_PORT to another "
            "port (or METRICS_HOST to an address of this machine)"
        ) from exc
    return Service(
        settings, metrics, pipeline, health, sink, dead_letters, credentials, ledger, workers
    )


def pod_name() -> str:
    """This process's name in the request ledger: the host (the pod's name in Kubernetes) and
    a random suffix, so a restarted container adds a record instead of overwriting the count
    it had before (the day's usage is the sum of every record)."""
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


def secrets(settings: Settings) -> list[str]:
    """Every configured secret value, for the log scrubber."""
    found = [settings.api_secret]
    if settings.schema_registry_auth:
        found += [settings.schema_registry_auth, settings.schema_registry_auth.partition(":")[2]]
    found += [
        v for k, v in settings.kafka_properties.items() if any(m in k for m in SECRET_MARKERS)
    ]
    return found


def effective_settings(settings: Settings) -> dict[str, object]:
    """Every :class:`Settings` field by name, as logged on the start line: secrets (the API
    secret, the registry credentials, secret-looking ``KAFKA_*`` properties) are ``***``."""
    out: dict[str, object] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.name == "api_secret":
            value = "***"
        elif f.name == "schema_registry_auth" and value:
            value = f"{value.partition(':')[0]}:***"
        elif f.name == "kafka_properties":
            value = redacted(value)
        elif f.name == "topics":
            value = {e.value: list(ts) for e, ts in value.items()}
        out[f.name] = value
    return out


def install_signal_handlers(pipeline: Pipeline) -> None:
    """SIGTERM / SIGINT only request a stop; the loop drains, commits and exits 0."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name, extra={"event": "signal"})
        pipeline.request_stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def process_registry() -> CollectorRegistry:
    """A metrics registry with the process and platform collectors."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def run_from_environment(env: Mapping[str, str] | None = None) -> int:
    """``metadata-consumer run``: configure from ``env`` (default: the process environment),
    run until SIGTERM/SIGINT, return the exit status: 0 after a clean stop, 2 for a
    configuration or start-up error (one clear line naming the variable, no traceback)."""
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        print(f"metadata-consumer: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logs.setup(settings.log_format, settings.log_level, secrets=secrets(settings))
    try:
        service = build_service(settings, process_registry())
    except (ConsumerError, ValueError, OSError) as exc:
        log.error("cannot start: %s", exc, extra={"event": "startup_failed"})
        return EXIT_CONFIG
    install_signal_handlers(service.pipeline)
    log.info(
        "starting",
        extra={
            "event": "start",
            "wire_format": "confluent" if settings.schema_registry_url else "plain",
            "settings": effective_settings(settings),
            "kafka": redacted(consumer_config(settings)),
        },
    )
    service.run()
    return EXIT_OK
