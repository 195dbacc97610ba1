"""The ``metadata-consumer`` command: argument parsing and dispatch only.

Commands:

- ``run``: the production service, configured from the environment (see ``settings``);
  built and run by :mod:`consumer.service`, after a preflight here: every configuration
  problem at once (exit 2), warnings for look-alike variables and a rate above the API's
  spike arrest, a busy ``METRICS_PORT`` named (exit 2).
- ``check``: configuration and connectivity report (:mod:`consumer.check`).
- ``demo``: local broker + emulated API + sample events, runs the service until everything is
  delivered or dead-lettered, prints a summary (no Docker, no network).
- ``quota``: the group's requests used today, remaining and the projection, from the quota
  ledger (:mod:`consumer.quota_report`).
- ``dlq inspect``: counts and samples of the dead letters (:mod:`consumer.inspect_dlq`).
- ``dlq replay``: re-publish dead-lettered records to their source topics (dry run by default).
- ``emulate-api``: the emulated ASAPP Metadata Ingestion API (sandbox).
- ``produce``: API-shaped JSON Lines (or ``--generate N`` sample events) to the entity topics
  (:mod:`consumer.backfill`).
- ``schemas check``: our Avro schemas against the API spec, and a candidate's backward
  compatibility (:mod:`consumer.schema_check`).
- ``produce-samples``: produce realistic events to the entity topics (sandbox; ``produce
  --generate`` is the same with the service's configuration).

The sandbox commands import :mod:`consumer.sandbox` lazily: this is the only module of the
service that may import it (``tests/unit/test_imports.py``).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from consumer import __version__
from consumer.errors import ConfigError
from consumer.records import Entity
from consumer.settings import Settings, config_warnings, env_defaults

DLQ_REASONS = ("decode", "validation", "rejected", "http", "consume")
README = "README.md (sections Configuration and Operating it)"

log = logging.getLogger("consumer.cli")

_RAW = argparse.RawDescriptionHelpFormatter


def _epilog(examples: str, exits: str) -> str:
    return f"examples:\n{examples}\n\nexit codes:\n{exits}"


def _run_epilog() -> str:
    width = max(len(name) for name, _ in env_defaults())
    rows = "\n".join(f"  {name:<{width}}  {default}" for name, default in env_defaults())
    return (
        "environment variables (default):\n"
        f"{rows}\n"
        "  KAFKA_<PROPERTY>  any librdkafka property, e.g. KAFKA_SECURITY_PROTOCOL=SASL_SSL\n\n"
        f"Every variable is described in {README}.\n\n"
        + _epilog(
            "  KAFKA_BOOTSTRAP_SERVERS=broker:9092 ASAPP_API_ID=app ASAPP_API_SECRET=... \\\n"
            "    metadata-consumer run",
            "  0  stopped cleanly (SIGTERM/SIGINT)\n"
            "  2  configuration or start-up error (every problem listed, no traceback)",
        )
    )


def parser() -> argparse.ArgumentParser:
    """The command line, every sub-command and flag."""
    top = argparse.ArgumentParser(
        prog="metadata-consumer",
        description="Deliver Avro metadata events from Kafka to ASAPP's Metadata Ingestion API.",
        formatter_class=_RAW,
        epilog=_epilog(
            "  metadata-consumer check --no-api-call\n"
            "  metadata-consumer run\n"
            "  metadata-consumer dlq inspect --since 2h --samples 3",
            "  0 success, 1 a failure the command reports, 2 configuration or usage error",
        ),
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = top.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "run",
        help="run the service (configured from the environment)",
        description="Run the service: consume the entity topics, deliver to the API, commit.",
        formatter_class=_RAW,
        epilog=_run_epilog(),
    )
    check = sub.add_parser(
        "check",
        help="check the configuration, the broker, topics, group lag, registry and API",
        description=(
            "Check the configuration (every error at once, look-alike variable names) and "
            "connectivity: broker, each topic and the DLQ topic, the group's offsets and lag, "
            "the schema registry (when configured), the API host (DNS, TLS) and the "
            "credentials. The credential check sends ONE request to the API (an empty batch "
            "that ingests nothing; it counts against the daily quota): --no-api-call skips it."
        ),
        formatter_class=_RAW,
        epilog=_epilog(
            "  metadata-consumer check\n"
            "  metadata-consumer check --no-api-call --json   # an init container's form",
            "  0  every check passed (warnings allowed)\n"
            "  1  a check failed\n"
            "  2  configuration errors (listed), nothing else checked",
        ),
    )
    check.add_argument(
        "--no-api-call", action="store_true", help="skip the credential check (sends no request)"
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument(
        "--timeout-s", type=float, default=5.0, help="bound of each check (default 5)"
    )
    demo = sub.add_parser(
        "demo",
        help="run the service against a local broker and emulated API",
        description=(
            "Start a local broker and the emulated ASAPP API, run the real service, produce "
            "sample events (some bad on purpose), follow them until every one is delivered or "
            "dead-lettered and committed, print a summary and write a report (report.json, "
            "report.html with charts) into --report-dir. The API plays one short fault episode "
            "(a 429 with Retry-After 1 s, then three 503s) unless --no-faults. Progress is a "
            "live line on a terminal, a few plain lines otherwise. Needs the sandbox extra "
            "(pip install '.[sandbox]'); nothing leaves this machine."
        ),
        formatter_class=_RAW,
        epilog=_epilog(
            "  metadata-consumer demo\n"
            "  metadata-consumer demo --events 300 --report-dir /tmp/demo-report\n"
            "  metadata-consumer demo --hold-s 60     # then browse the metrics URL it prints",
            "  0  everything delivered or dead-lettered as expected\n  1  it was not\n"
            "  130  interrupted (Ctrl-C/SIGTERM) before the service ran",
        ),
    )
    demo.add_argument("--events", type=int, default=3000, help="events per entity (default 3000)")
    demo.add_argument(
        "--wire-format", choices=("plain", "confluent"), default="plain", help="Avro framing"
    )
    demo.add_argument("--bad-every", type=int, default=500, help="one bad event per N (0: none)")
    demo.add_argument(
        "--timeout-s", type=float, default=180.0, help="give up after this long (default 180)"
    )
    demo.add_argument(
        "--hold-s",
        type=float,
        default=0.0,
        help="keep serving metrics this long after (not counted as delivery time)",
    )
    demo.add_argument(
        "--report-dir",
        default="demo-report",
        help="where report.json, report.html and broker.log go (default ./demo-report)",
    )
    demo.add_argument(
        "--no-faults", action="store_true", help="no fault episode: the API behaves throughout"
    )
    dlq = sub.add_parser(
        "dlq",
        help="dead-letter tools",
        formatter_class=_RAW,
        epilog=_epilog(
            "  metadata-consumer dlq inspect\n  metadata-consumer dlq replay --reason http",
            "  see each sub-command's --help",
        ),
    )
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    inspect = dlq_sub.add_parser(
        "inspect",
        help="count dead letters by reason, entity and error class; show samples",
        description=(
            "Read the DLQ topic (DLQ_TOPIC) from the beginning to its end, commit nothing, and "
            "count the dead letters by reason, entity and error class; --samples shows records "
            "with their headers and decoded payload (payloads are printed)."
        ),
        formatter_class=_RAW,
        epilog=_epilog(
            "  metadata-consumer dlq inspect\n"
            "  metadata-consumer dlq inspect --since 2h --reason validation --samples 3\n"
            "  metadata-consumer dlq inspect --since 2024-05-01T00:00:00Z --json",
            "  0  done (also for an empty DLQ)\n"
            "  1  the DLQ could not be read\n"
            "  2  configuration or usage error",
        ),
    )
    replay = dlq_sub.add_parser(
        "replay",
        help="re-publish dead letters to their source topics",
        formatter_class=_RAW,
        epilog=_epilog(
            "  metadata-consumer dlq replay --reason http            # dry run\n"
            "  metadata-consumer dlq replay --reason http --execute\n"
            "  metadata-consumer dlq replay --reason validation --revalidate --execute",
            "  0  done\n  1  replay or broker failure\n  2  configuration or usage error",
        ),
    )
    for p in (inspect, replay):
        p.add_argument("--reason", choices=DLQ_REASONS)
        p.add_argument("--entity", choices=[e.value for e in Entity])
    inspect.add_argument("--since", help="dead-lettered at or after: ISO-8601 or 30m, 2h, 7d")
    inspect.add_argument("--until", help="dead-lettered before: ISO-8601 or 30m, 2h, 7d")
    inspect.add_argument("--samples", type=int, default=0, help="show N records (default 0)")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    replay.add_argument("--execute", action="store_true", help="really publish (default: dry run)")
    replay.add_argument("--since", help="ISO-8601 time: dead-lettered at or after")
    replay.add_argument("--until", help="ISO-8601 time: dead-lettered before")
    replay.add_argument("--limit", type=int, default=0, help="replay at most N (0: all)")
    replay.add_argument(
        "--revalidate",
        action="store_true",
        help="skip (and count) records that would fail the service's checks again",
    )
    quota = sub.add_parser(
        "quota",
        help="the group's API requests used today, remaining, and when the quota runs out",
        description=(
            "Read the quota ledger (QUOTA_TOPIC, default asapp.metadata.quota) without writing "
            "to it and print today's (UTC) requests used by the group's pods (KAFKA_GROUP_ID), "
            "what remains of DAILY_REQUEST_QUOTA, each pod's count and last update, and when "
            "the quota runs out at the average rate since 00:00 UTC. Sends no API request."
        ),
        formatter_class=_RAW,
        epilog=_epilog(
            "  metadata-consumer quota\n"
            "  KAFKA_GROUP_ID=asapp-metadata-consumer metadata-consumer quota --json",
            "  0  report printed\n"
            "  1  the ledger could not be read (missing topic, broker unreachable)\n"
            "  2  configuration or usage error",
        ),
    )
    quota.add_argument("--json", action="store_true", help="print the report as JSON")
    quota.add_argument(
        "--timeout-s", type=float, default=10.0, help="bound of the ledger read (default 10)"
    )
    produce = sub.add_parser(
        "produce",
        help="produce API-shaped JSON Lines (or sample events) as Avro to the entity topics",
        description=(
            "Read one API item per line (the JSON the API takes, e.g. "
            '{"externalAgentId": "agent1", "agentName": "Jane Doe"}), check it against the '
            "API's constraints and the Avro schema, and produce it to the entity's topic "
            "(TOPIC_<ENTITY>, configured from the environment like run) keyed by the entity "
            "id: plain Avro, or the registry framing when SCHEMA_REGISTRY_URL is set. Bad "
            "lines are reported on stderr as 'line N: reason' and skipped."
        ),
        formatter_class=_RAW,
        epilog=_epilog(
            "  metadata-consumer produce --entity agent agents.jsonl\n"
            "  metadata-consumer produce --entity customer --dry-run --json customers.jsonl\n"
            "  zcat backfill.jsonl.gz | metadata-consumer produce --entity agent --rate 500 -\n"
            "  metadata-consumer produce --generate 100            # sample events, every entity",
            "  0  every line produced and acknowledged (or valid, with --dry-run)\n"
            "  1  a line was bad or not acknowledged; the broker did not answer; no topic\n"
            "  2  configuration or usage error",
        ),
    )
    produce.add_argument("file", nargs="?", help="JSON Lines file, - for stdin")
    produce.add_argument("--entity", choices=[e.value for e in Entity])
    produce.add_argument("--topic", help="produce here instead of TOPIC_<ENTITY>")
    produce.add_argument("--generate", type=int, metavar="N", help="N sample events per entity")
    produce.add_argument("--rate", type=float, metavar="N", help="at most N events/s")
    produce.add_argument(
        "--dry-run", action="store_true", help="check and count only (contacts nothing)"
    )
    produce.add_argument(
        "--json", action="store_true", help="print the summary as JSON (bad lines included)"
    )
    produce.add_argument(
        "--timeout-s", type=float, default=5.0, help="bound of the broker check (default 5)"
    )
    schemas = sub.add_parser(
        "schemas",
        help="schema tools",
        formatter_class=_RAW,
        epilog=_epilog("  metadata-consumer schemas check", "  see schemas check --help"),
    )
    schemas_sub = schemas.add_subparsers(dest="schemas_command", required=True)
    schemas_check = schemas_sub.add_parser(
        "check",
        help="check our schemas against the API spec; a candidate's backward compatibility",
        description=(
            "Check each schemas/*.avsc against the API spec (every field is an API property "
            "of a matching type; required ids non-null; enum symbols and defaults within the "
            "API's patterns, lengths and enums). With CANDIDATE files: check each against the "
            "spec too, and whether it is backward compatible with the current schema of its "
            "entity (Avro schema resolution: the consumer, reading with the current schema, "
            "can read what a producer writes with the candidate). The entity is the record's "
            "name (AgentMetadata...), else --entity, else the file name (agent.avsc...)."
        ),
        formatter_class=_RAW,
        epilog=_epilog(
            "  metadata-consumer schemas check\n"
            "  metadata-consumer schemas check agent-v2.avsc --json",
            "  0  every schema fits the API and every candidate is compatible\n"
            "  1  a problem or an incompatibility (each listed)\n"
            "  2  usage error (an unreadable file, an unknown entity)",
        ),
    )
    schemas_check.add_argument("candidates", nargs="*", metavar="CANDIDATE.avsc")
    schemas_check.add_argument("--entity", choices=[e.value for e in Entity])
    schemas_check.add_argument("--json", action="store_true", help="print the report as JSON")
    sub.add_parser(
        "emulate-api", help="run the emulated ASAPP API (see emulate-api --help)", add_help=False
    )
    sub.add_parser(
        "produce-samples", help="produce sample events (see produce-samples --help)", add_help=False
    )
    sub.add_parser(
        "sandbox",
        help="local broker + emulated API (+ registry) until Ctrl-C (see sandbox --help)",
        add_help=False,
    )
    return top


def metrics_port_problem(port: int, host: str = "0.0.0.0") -> str | None:
    """Why the metrics server could not listen on ``port`` (None when it can). Binds and
    releases the port the way the server does (``SO_REUSEADDR``); port 0 always works."""
    if port == 0:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            why = "is already in use" if exc.errno == errno.EADDRINUSE else f"failed: {exc}"
            return f"METRICS_PORT={port} {why}: free it or set METRICS_PORT to another port"
    return None


def _run() -> int:
    """``run``: the preflight (warnings, metrics port), then the service."""
    from consumer import logs, service

    try:
        settings = Settings.from_env()
    except ConfigError:
        return service.run_from_environment()  # prints every problem, returns 2
    logs.setup(settings.log_format, settings.log_level, secrets=service.secrets(settings))
    for warning in config_warnings(os.environ, settings):
        log.warning("%s", warning, extra={"event": "config_warning"})
    problem = metrics_port_problem(settings.metrics_port, settings.metrics_host)
    if problem is not None:
        log.error("cannot start: %s", problem, extra={"event": "startup_failed"})
        return 2
    return service.run_from_environment()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the command; returns its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "emulate-api":  # their own parsers take the rest of the line
        from consumer.sandbox import api

        return int(api.main(argv[1:]))
    if argv and argv[0] == "sandbox":
        from consumer.sandbox import foreground

        return foreground.main(argv[1:])
    if argv and argv[0] == "produce-samples":
        from consumer.sandbox import produce

        return int(produce.main(argv[1:]))
    args = parser().parse_args(argv)
    if args.command == "run":
        return _run()
    if args.command == "check":
        from consumer import check

        return check.main(args)
    if args.command == "demo":
        from consumer.sandbox import demo

        return demo.run_demo(
            events=args.events,
            wire_format=args.wire_format,
            bad_every=args.bad_every,
            timeout_s=args.timeout_s,
            hold_s=args.hold_s,
            report_dir=Path(args.report_dir),
            faults=not args.no_faults,
        )
    if args.command == "produce":
        from consumer import backfill

        generator = None
        if args.generate is not None:
            from consumer.sandbox.events import generate

            def generator(entity: Entity, n: int) -> list[dict[str, object]]:
                return generate(entity, n, seed=7)

        return backfill.main(args, generator=generator)
    if args.command == "schemas":
        import consumer.schema_check as schema_check

        return schema_check.main(args)
    if args.command == "quota":
        from consumer import quota_report

        return quota_report.main(args)
    if args.dlq_command == "inspect":
        from consumer import inspect_dlq

        return inspect_dlq.main(args)
    from consumer import replay

    return replay.main(args)
