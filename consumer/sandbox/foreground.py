"""``metadata-consumer sandbox``: the local broker, the emulated ASAPP API (and, with
``--registry``, the schema registry stand-in) in the foreground on fixed 127.0.0.1 ports, for
running ``metadata-consumer run`` or one's own producer against them.

Contract: creates the entity topics, the DLQ topic and the compacted quota topic (as the demo
does), prints the environment to export (one ``export`` line), then serves until SIGTERM or
SIGINT, and stops everything it started; it writes no files (the broker keeps its data in
memory), so nothing is left behind. Exit status 0 after a stop, 2 when an argument is wrong or
a port is taken (the message names the option), 1 when a component cannot start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from typing import Any

from consumer.sandbox.api import EmulatedApi, Faults
from consumer.sandbox.broker import LocalBroker, wait_for_port
from consumer.sandbox.demo import (
    API_ID,
    API_SECRET,
    DLQ_TOPIC,
    PARTITIONS,
    QUOTA_TOPIC,
    create_quota_topic,
)
from consumer.sandbox.produce import create_topics, register_schemas
from consumer.settings import DEFAULT_TOPICS

#: Fixed default ports (each has an option): the printed environment stays the same between
#: runs, so it can live in a shell profile or a .env file.
BROKER_PORT, API_PORT, REGISTRY_PORT = 19092, 18080, 18081

EXAMPLES = """\
examples:
  metadata-consumer sandbox
  metadata-consumer sandbox --registry --faults '{"sequence": [429, 503, 503]}'
  (then, in another shell: paste the printed export line, and `metadata-consumer run`)

exit codes:
  0  stopped by Ctrl-C / SIGTERM
  1  a component could not start
  2  a bad argument, or a port is already in use (the message names the option)
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="metadata-consumer sandbox",
        description=(
            "Run the local broker and the emulated ASAPP API (and the schema registry "
            "stand-in with --registry) on 127.0.0.1 until Ctrl-C, with the topics created, "
            "and print the environment for `metadata-consumer run` or your own producer."
        ),
        epilog=EXAMPLES,
        formatter_class=_Help,
    )
    p.add_argument("--broker-port", type=int, default=BROKER_PORT, help="broker port")
    p.add_argument("--api-port", type=int, default=API_PORT, help="emulated API port")
    p.add_argument("--registry", action="store_true", help="also run the schema registry")
    p.add_argument("--registry-port", type=int, default=REGISTRY_PORT, help="registry port")
    p.add_argument("--partitions", type=int, default=PARTITIONS, help="partitions per topic")
    faults = p.add_argument_group("API faults (as emulate-api's)")
    faults.add_argument("--faults", default=None, help="fault config as JSON (emulate-api docs)")
    faults.add_argument("--rate-limit-rps", type=float, default=None, help="429 above this rate")
    faults.add_argument("--retry-after", type=float, default=None, help="Retry-After (s) on 429s")
    faults.add_argument("--daily-quota", type=int, default=None, help="429-02 after N a day")
    faults.add_argument("--spike-rps", type=float, default=None, help="429-01 above N requests/s")
    faults.add_argument("--max-body-bytes", type=int, default=None, help="413 above this size")
    return p


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Raw epilog, and every option's default in its help."""


def environment(*, bootstrap: str, api_url: str, registry_url: str | None = None) -> dict[str, str]:
    """The variables that point ``metadata-consumer run`` at the sandbox."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        # The local broker completes a first JoinGroup after session.timeout.ms / 2.
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
        "ASAPP_API_BASE_URL": api_url,
        "ASAPP_API_ID": API_ID,
        "ASAPP_API_SECRET": API_SECRET,
        "DLQ_TOPIC": DLQ_TOPIC,
        "QUOTA_TOPIC": QUOTA_TOPIC,
        "METRICS_HOST": "127.0.0.1",
        "LOG_FORMAT": "text",
    }
    if registry_url is not None:
        env["SCHEMA_REGISTRY_URL"] = registry_url
    return env


def export_line(env: dict[str, str]) -> str:
    """``export A=... B=...``, each value quoted for a POSIX shell."""
    return "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())


def _port_free(option: str, port: int) -> str | None:
    """None when ``127.0.0.1:port`` can be bound, else the message naming ``option``."""
    if not 1 <= port <= 65535:
        return f"{option}={port} is not a TCP port (1-65535)"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            return f"{option}={port} cannot be bound ({exc.strerror or exc}): pick another port"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sandbox until SIGTERM/SIGINT; see the module docstring for the exit codes."""
    args = parser().parse_args(argv)
    try:
        faults = Faults.from_dict(json.loads(args.faults)) if args.faults else Faults()
    except (ValueError, TypeError) as exc:
        print(f"metadata-consumer sandbox: --faults: {exc}", file=sys.stderr)
        return 2
    ports = [("--broker-port", args.broker_port), ("--api-port", args.api_port)]
    if args.registry:
        ports.append(("--registry-port", args.registry_port))
    problems = [p for p in (_port_free(o, n) for o, n in ports) if p]
    if len({n for _, n in ports}) < len(ports):
        problems.append("--broker-port, --api-port and --registry-port must differ")
    if problems:
        for problem in problems:
            print(f"metadata-consumer sandbox: {problem}", file=sys.stderr)
        return 2

    stop = threading.Event()
    previous: dict[int, Any] = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        with contextlib.ExitStack() as stack:
            broker = stack.enter_context(LocalBroker(port=args.broker_port))
            api = stack.enter_context(
                EmulatedApi(
                    port=args.api_port,
                    api_id=API_ID,
                    api_secret=API_SECRET,
                    max_body_bytes=args.max_body_bytes,
                    rate_limit_rps=args.rate_limit_rps,
                    retry_after_s=args.retry_after,
                    faults=faults,
                    record_items=False,
                    daily_quota=args.daily_quota,
                    spike_rps=args.spike_rps,
                )
            )
            bootstrap = broker.bootstrap_servers
            topics = [*DEFAULT_TOPICS.values(), DLQ_TOPIC]
            create_topics(bootstrap, topics, partitions=args.partitions)
            create_quota_topic(bootstrap)
            registry_url = None
            if args.registry:
                from consumer.sandbox.registry import SchemaRegistryStandIn

                registry = SchemaRegistryStandIn(port=args.registry_port).start()
                stack.callback(registry.stop)
                wait_for_port("127.0.0.1", args.registry_port, 10.0)
                registry_url = registry.url
                ids = register_schemas(registry_url)
                named = ", ".join(f"{e.value} {i}" for e, i in ids.items())
                print(f"schema registry stand-in on {registry_url}: schema ids {named}")
            print(f"local broker on {bootstrap}: topics {', '.join(topics)}, {QUOTA_TOPIC}")
            print(f"emulated ASAPP API on {api.url} (api id {API_ID})")
            print("environment for `metadata-consumer run` or your producer:")
            print(
                export_line(
                    environment(bootstrap=bootstrap, api_url=api.url, registry_url=registry_url)
                )
            )
            print("sandbox ready; Ctrl-C to stop", flush=True)
            while not stop.wait(0.5):
                pass
            print("stopping the sandbox", flush=True)
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"metadata-consumer sandbox: cannot start: {exc}", file=sys.stderr)
        return 1
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 0
