"""The ``metadata-consumer`` command: argument parsing and dispatch only.

Commands:

- ``run``: the production service, configured from the environment (see ``settings``);
  built and run by :mod:`consumer.service`.
- ``demo``: local broker + emulated API + sample events, runs the service until everything is
  delivered or dead-lettered, prints a summary (no Docker, no network).
- ``dlq replay``: re-publish dead-lettered records to their source topics (dry run by default).
- ``emulate-api``: the emulated ASAPP Metadata Ingestion API (sandbox).
- ``produce-samples``: produce realistic events to the entity topics (sandbox).

The sandbox commands import :mod:`consumer.sandbox` lazily: this is the only module of the
service that may import it (``tests/unit/test_imports.py``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from consumer.records import Entity

DLQ_REASONS = ("decode", "validation", "rejected", "http", "consume")


def parser() -> argparse.ArgumentParser:
    """The command line, every sub-command and flag."""
    top = argparse.ArgumentParser(
        prog="metadata-consumer",
        description="Deliver Avro metadata events from Kafka to ASAPP's Metadata Ingestion API.",
    )
    sub = top.add_subparsers(dest="command", required=True)
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
    replay.add_argument("--reason", choices=DLQ_REASONS)
    replay.add_argument("--entity", choices=[e.value for e in Entity])
    replay.add_argument("--since", help="ISO-8601 time: dead-lettered at or after")
    replay.add_argument("--until", help="ISO-8601 time: dead-lettered before")
    replay.add_argument("--limit", type=int, default=0, help="replay at most N (0: all)")
    sub.add_parser("emulate-api", help="run the emulated ASAPP API", add_help=False)
    sub.add_parser("produce-samples", help="produce sample events", add_help=False)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the command; returns its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "emulate-api":  # their own parsers take the rest of the line
        from consumer.sandbox import api

        return int(api.main(argv[1:]))
    if argv and argv[0] == "produce-samples":
        from consumer.sandbox import produce

        return int(produce.main(argv[1:]))
    args = parser().parse_args(argv)
    if args.command == "run":
        from consumer import service

        return service.run_from_environment()
    if args.command == "demo":
        from consumer.sandbox import demo

        return demo.run_demo(
            events=args.events,
            wire_format=args.wire_format,
            bad_every=args.bad_every,
            timeout_s=args.timeout_s,
            hold_s=args.hold_s,
        )
    from consumer import replay

    return replay.main(args)
