"""The ``metadata-consumer`` command and the composition root (the only place that builds the
real adapters).

Commands:

- ``run``: the production service, configured from the environment (see ``settings``).
- ``demo``: local broker + emulated API + sample events, runs the service until everything is
  delivered or dead-lettered, prints a summary (no Docker, no network).
- ``dlq replay``: re-publish dead-lettered records to their source topics (dry run by default).
- ``emulate-api``: the emulated ASAPP Metadata Ingestion API (sandbox).
- ``produce-samples``: produce realistic events to the entity topics (sandbox).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Mapping, Sequence
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
from consumer.kafka import DeadLetterProducer, KafkaSource, consumer_config, redacted
from consumer.mapping import to_item
from consumer.metrics import Metrics
from consumer.pipeline import Decoder, Pipeline, PipelineConfig
from consumer.records import Entity
from consumer.retry import Throttle
from consumer.sender import Credentials, Sender
from consumer.settings import Settings
from consumer.sink import ApiSink
from consumer.validation import validator_for

log = logging.getLogger("consumer")


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

    def run(self) -> None:
        """Run until :meth:`Pipeline.request_stop`; always releases what it started."""
        self.health.start()
        try:
            self.pipeline.run()
        finally:
            self.dead_letters.close()
            self.sink.close()
            self.health.stop()


def build_service(settings: Settings, registry: CollectorRegistry | None = None) -> Service:
    """Compose the real service from ``settings``."""
    registry = registry if registry is not None else CollectorRegistry()
    metrics = Metrics(registry)
    metrics.daily_quota.set(settings.daily_request_quota)
    decoders: dict[Entity, Decoder] = {}
    if settings.schema_registry_url:
        client = GuardedRegistry(
            registry_client(settings.schema_registry_url, settings.schema_registry_auth)
        )
        decoders = {e: RegistryAvroDecoder(e, client) for e in settings.topics}
    else:
        decoders = {e: PlainAvroDecoder(e) for e in settings.topics}
    credentials = Credentials(metrics)
    sink = ApiSink(
        base_url=settings.api_base_url,
        api_id=settings.api_id,
        api_secret=settings.api_secret,
        timeout_s=settings.http_timeout_s,
        max_connections=settings.max_in_flight,
    )
    sender = Sender(
        sink=sink,
        throttle=Throttle(rate_rps=settings.rate_limit_rps),
        metrics=metrics,
        credentials=credentials,
        threads=settings.max_in_flight,
        retry_max_backoff_s=settings.retry_max_backoff_s,
        malformed_max_attempts=settings.malformed_response_max_attempts,
    )
    dead_letters = DeadLetterProducer(settings)
    pipeline = Pipeline(
        config=PipelineConfig(
            topic_entities=settings.topic_entities,
            max_buffered_messages=settings.max_buffered_messages,
            revoke_timeout_s=settings.revoke_timeout_s,
            shutdown_timeout_s=settings.shutdown_timeout_s,
            commit_timeout_s=settings.commit_timeout_s,
            retry_max_backoff_s=settings.retry_max_backoff_s,
        ),
        source=KafkaSource(settings),
        dead_letters=dead_letters,
        sender=sender,
        batcher=Batcher(
            max_items=settings.batch_max_items,
            max_bytes=settings.batch_max_bytes,
            linger_s=settings.batch_linger_ms / 1000.0,
        ),
        decoders=decoders,
        validators={e: validator_for(e) for e in settings.topics},
        mapper=to_item,
        metrics=metrics,
    )
    probe = Probe(
        last_iteration=lambda: pipeline.last_iteration,
        assigned=lambda: len(pipeline.assigned),
        credentials_rejected=lambda: credentials.rejected,
        stopping=lambda: pipeline.stopping,
        stall_timeout_s=settings.health_stall_timeout_s,
    )
    metrics.ready.set_function(lambda: 1.0 if probe.ready()[0] else 0.0)
    health = HealthServer(registry=registry, probe=probe, port=settings.metrics_port)
    return Service(settings, metrics, pipeline, health, sink, dead_letters, credentials)


def _secrets(settings: Settings) -> list[str]:
    from consumer.settings import SECRET_MARKERS

    found = [settings.api_secret]
    if settings.schema_registry_auth:
        found += [settings.schema_registry_auth, settings.schema_registry_auth.partition(":")[2]]
    found += [
        v for k, v in settings.kafka_properties.items() if any(m in k for m in SECRET_MARKERS)
    ]
    return found


def install_signal_handlers(pipeline: Pipeline) -> None:
    """SIGTERM / SIGINT only request a stop; the loop drains, commits and exits 0."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name, extra={"event": "signal"})
        pipeline.request_stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_run(env: Mapping[str, str] | None = None) -> int:
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        print(f"metadata-consumer: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_format, settings.log_level, secrets=_secrets(settings))
    try:
        service = build_service(settings, _process_registry())
    except (ConsumerError, ValueError, OSError) as exc:
        log.error("cannot start: %s", exc, extra={"event": "startup_failed"})
        return 2
    install_signal_handlers(service.pipeline)
    log.info(
        "starting",
        extra={
            "event": "start",
            "group": settings.group_id,
            "topics": sorted(settings.topic_entities),
            "api": settings.api_base_url,
            "wire_format": "confluent" if settings.schema_registry_url else "plain",
            "kafka": redacted(consumer_config(settings)),
        },
    )
    service.run()
    return 0


def _process_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="metadata-consumer",
        description="Deliver Avro metadata events from Kafka to ASAPP's Metadata Ingestion API.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the service (configured from the environment)")
    demo = sub.add_parser("demo", help="run the service against a local broker and emulated API")
    demo.add_argument("--events", type=int, default=3000, help="events per entity (default 3000)")
    demo.add_argument(
        "--wire-format", choices=("plain", "confluent"), default="plain", help="Avro framing"
    )
    demo.add_argument("--bad-every", type=int, default=500, help="one bad event per N (0: none)")
    demo.add_argument("--timeout-s", type=float, default=180.0)
    demo.add_argument("--hold-s", type=float, default=0.0, help="keep serving metrics after")
    dlq = sub.add_parser("dlq", help="dead-letter tools")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    replay = dlq_sub.add_parser("replay", help="re-publish dead letters to their source topics")
    replay.add_argument("--execute", action="store_true", help="really publish (default: dry run)")
    replay.add_argument("--reason", choices=("decode", "validation", "rejected", "http"))
    replay.add_argument("--entity", choices=[e.value for e in Entity])
    replay.add_argument("--since", help="ISO-8601 time: dead-lettered at or after")
    replay.add_argument("--until", help="ISO-8601 time: dead-lettered before")
    replay.add_argument("--limit", type=int, default=0, help="replay at most N (0: all)")
    sub.add_parser("emulate-api", help="run the emulated ASAPP API", add_help=False)
    sub.add_parser("produce-samples", help="produce sample events", add_help=False)

    if argv and argv[0] in ("emulate-api", "produce-samples"):
        if argv[0] == "emulate-api":
            from consumer.sandbox import api

            return int(api.main(argv[1:]))
        from consumer.sandbox import produce

        return int(produce.main(argv[1:]))
    args = parser.parse_args(argv)
    if args.command == "run":
        return cmd_run()
    if args.command == "demo":
        from consumer.sandbox import demo as demo_mod

        return demo_mod.run_demo(
            events=args.events,
            wire_format=args.wire_format,
            bad_every=args.bad_every,
            timeout_s=args.timeout_s,
            hold_s=args.hold_s,
        )
    if args.command == "dlq":
        from consumer import replay as replay_mod

        return replay_mod.main(args)
    parser.error(f"unknown command {args.command}")
    return 2
