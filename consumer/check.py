"""``metadata-consumer check``: is this configuration going to work, before it is deployed?

Contract:

- Reads the same environment as ``run`` and reports **every** configuration problem at once
  (:class:`~consumer.settings.ConfigErrors`), plus warnings for variables that look like ours
  (``BATCH_MAX_ITEM`` → did you mean ``BATCH_MAX_ITEMS``?) and for a ``RATE_LIMIT_RPS`` above
  the API's spike arrest. With configuration errors nothing else is checked (exit 2).
- Then, each check bounded by ``timeout_s`` (seconds): the broker answers (brokers counted);
  every configured source topic and the DLQ topic exist (partitions shown); the consumer
  group's committed offsets and lag per topic (read only: the check never joins the group or
  commits); the schema registry answers and holds ``<topic>-value`` subjects, when
  ``SCHEMA_REGISTRY_URL`` is set; the API host resolves; TLS handshakes (https only, with
  certificate verification); the credentials are accepted.
- The credential check costs **one API request** (counted against the daily quota): a POST
  of ``{"items": []}``, which the API refuses after authentication without ingesting
  anything (400 = credentials accepted; 401/403 = rejected). ``api_call=False``
  (``--no-api-call``) skips it, e.g. for an init container that runs on every pod start.
- Kafka goes through :class:`consumer.kafka.ClusterProbe`, the API through
  :meth:`consumer.sink.ApiSink.probe`, the registry through
  :func:`consumer.decoder.registry_client`; DNS and TLS use the standard library here.
- Never prints a secret: details hold names, counts, statuses and error texts only.

Exit codes: 0 every check passed (warnings allowed), 1 a check failed, 2 configuration errors.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, TextIO
from urllib.parse import urlparse

from consumer.decoder import registry_client
from consumer.errors import ConsumerError
from consumer.kafka import ClusterProbe, PartitionLag, TopicInfo
from consumer.settings import ConfigErrors, Settings, config_warnings
from consumer.sink import ApiSink

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
#: Default bound of each check, seconds.
DEFAULT_TIMEOUT_S = 5.0

Status = Literal["pass", "fail", "warn", "skip"]


@dataclass(frozen=True, slots=True)
class Result:
    """One row of the report: what was checked, its status and a one-line detail."""

    check: str
    status: Status
    detail: str


def exit_code(results: list[Result]) -> int:
    """2 when a configuration row failed, 1 when any other row failed, else 0."""
    if any(r.status == "fail" and r.check == "configuration" for r in results):
        return EXIT_CONFIG
    return EXIT_FAILED if any(r.status == "fail" for r in results) else EXIT_OK


def _bounded(fn: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """``fn()`` in a daemon thread, waited for at most ``timeout_s``; raises TimeoutError
    (naming ``what``) past the bound, or whatever ``fn`` raised."""
    box: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            box.append((True, fn()))
        except Exception as exc:  # handed to the caller below
            box.append((False, exc))

    thread = threading.Thread(target=target, name=f"check-{what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not box:
        raise TimeoutError(f"{what} did not answer within {timeout_s:g}s")
    ok, value = box[0]
    if not ok:
        raise value
    return value


class ClusterProbeLike(Protocol):
    """What the Kafka checks ask of the cluster (:class:`consumer.kafka.ClusterProbe`).

    Both queries raise a :class:`~consumer.errors.ConsumerError` (BrokerError) when the
    cluster does not answer within the probe's bound."""

    def describe_topics(self, topics: Iterable[str]) -> tuple[int, dict[str, TopicInfo]]: ...

    def group_offsets(self, topics: Mapping[str, int]) -> list[PartitionLag]: ...

    def close(self) -> None: ...


# ------------------------------------------------------------------------------ the checks
def configuration(env: Mapping[str, str]) -> tuple[Settings | None, list[Result]]:
    """The settings (None when invalid) and one row per problem or warning."""
    try:
        settings = Settings.from_env(env)
    except ConfigErrors as exc:
        return None, [Result("configuration", "fail", p) for p in exc.problems]
    rows = [Result("configuration", "pass", "every variable is valid")]
    rows += [Result("configuration", "warn", w) for w in config_warnings(env, settings)]
    return settings, rows


def kafka(settings: Settings, probe: ClusterProbeLike) -> list[Result]:
    """Broker, topics (source and DLQ) and the group's offsets and lag."""
    wanted = {t: f"topic ({e.value})" for t, e in settings.topic_entities.items()}
    wanted[settings.dlq_topic] = "dlq topic"
    try:
        brokers, topics = probe.describe_topics(list(wanted))
    except ConsumerError as exc:
        return [
            Result("broker", "fail", f"{settings.bootstrap_servers} not reachable: {exc}"),
            Result("topics", "skip", "broker not reachable"),
        ]
    rows = [Result("broker", "pass", f"{settings.bootstrap_servers}: {brokers} broker(s)")]
    for name, what in wanted.items():
        info = topics[name]
        if info.error is None:
            rows.append(Result(f"{what} {name}", "pass", f"{info.partitions} partition(s)"))
        else:
            rows.append(Result(f"{what} {name}", "fail", info.error))
    sources = {
        t: topics[t].partitions
        for t in settings.topic_entities
        if topics[t].error is None and topics[t].partitions
    }
    try:
        lags = probe.group_offsets(sources)
    except ConsumerError as exc:
        return [*rows, Result(f"group {settings.group_id}", "fail", str(exc))]
    rows += [_lag_row(settings.group_id, t, [x for x in lags if x.topic == t]) for t in sources]
    return rows


def _lag_row(group: str, topic: str, lags: list[PartitionLag]) -> Result:
    committed = sum(1 for x in lags if x.committed is not None)
    known = [x.lag for x in lags if x.lag is not None]
    lag = f"lag {sum(known)}" if len(known) == len(lags) else "lag unknown (end offsets unread)"
    if committed == 0:
        detail = f"nothing committed yet (starts at the earliest offset), {lag}"
    else:
        detail = f"committed on {committed}/{len(lags)} partition(s), {lag}"
    return Result(f"group {group} on {topic}", "pass", detail)


def registry(settings: Settings, timeout_s: float) -> list[Result]:
    """The registry answers ``GET /subjects``; ``<topic>-value`` subjects missing are warnings
    (another subject naming strategy may be in use)."""
    if not settings.schema_registry_url:
        return [Result("schema registry", "skip", "SCHEMA_REGISTRY_URL not set (plain Avro)")]
    client: Any = registry_client(
        settings.schema_registry_url,
        settings.schema_registry_auth,
        timeout_s=timeout_s,
        max_retries=0,
    )
    try:
        subjects = set(_bounded(client.get_subjects, timeout_s, "the schema registry"))
    except Exception as exc:  # any client failure is this check's failure, reported
        text = f"{type(exc).__name__}: {exc}"[:300]
        return [Result("schema registry", "fail", f"{settings.schema_registry_url}: {text}")]
    rows = [Result("schema registry", "pass", f"{len(subjects)} subject(s)")]
    missing = sorted(f"{t}-value" for t in settings.topic_entities if f"{t}-value" not in subjects)
    if missing:
        rows.append(
            Result("registry subjects", "warn", "no subject " + ", ".join(missing) + " (yet)")
        )
    return rows


def api(settings: Settings, timeout_s: float, *, api_call: bool) -> list[Result]:
    """DNS, TLS (https) and, unless ``api_call`` is false, one request for the credentials."""
    url = urlparse(settings.api_base_url)
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        addresses = _bounded(
            lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout_s, "DNS"
        )
    except (OSError, TimeoutError) as exc:
        return [
            Result("api host resolves", "fail", f"{host}: {exc} (check ASAPP_API_BASE_URL)"),
            Result("api credentials", "skip", "host does not resolve"),
        ]
    first = addresses[0][4][0] if addresses else "?"
    rows = [Result("api host resolves", "pass", f"{host} → {first}")]
    if url.scheme == "https":
        try:
            version = _bounded(lambda: _tls(host, port, timeout_s), timeout_s, "TLS handshake")
            rows.append(Result("api tls", "pass", f"{host}:{port} {version}, certificate valid"))
        except (OSError, TimeoutError) as exc:
            rows.append(Result("api tls", "fail", f"{host}:{port}: {exc}"))
            return [*rows, Result("api credentials", "skip", "no TLS connection")]
    else:
        rows.append(Result("api tls", "skip", "http URL: no TLS (sandbox or emulator only)"))
    if not api_call:
        return [*rows, Result("api credentials", "skip", "--no-api-call: no request sent")]
    sink = ApiSink(
        base_url=settings.api_base_url,
        api_id=settings.api_id,
        api_secret=settings.api_secret,
        timeout_s=timeout_s,
        max_connections=1,
    )
    try:
        verdict, _status, detail = sink.probe()
    finally:
        sink.close()
    name = "api credentials (1 request)"
    if verdict == "accepted":
        return [*rows, Result(name, "pass", f"accepted ({detail})")]
    if verdict == "rejected":
        hint = "ASAPP_API_ID / ASAPP_API_SECRET rejected"
        return [*rows, Result(name, "fail", f"{hint}: {detail}")]
    return [*rows, Result(name, "fail", f"{verdict}: {detail} (check ASAPP_API_BASE_URL)")]


def _tls(host: str, port: int, timeout_s: float) -> str:
    context = ssl.create_default_context()
    with (
        socket.create_connection((host, port), timeout=timeout_s) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        return str(tls.version())


def run_checks(
    env: Mapping[str, str],
    *,
    api_call: bool = True,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    cluster: Callable[[Settings, float], ClusterProbeLike] | None = None,
) -> list[Result]:
    """Every check, in order; stops after the configuration when it is invalid.
    ``cluster(settings, timeout_s)`` builds the Kafka probe (default: ClusterProbe)."""
    settings, rows = configuration(env)
    if settings is None:
        return [*rows, Result("connectivity", "skip", "fix the configuration first")]
    try:
        probe = (cluster or _cluster)(settings, timeout_s)
    except ConsumerError as exc:
        rows.append(Result("broker", "fail", str(exc)))
    else:
        try:
            rows += kafka(settings, probe)
        finally:
            probe.close()
    rows += registry(settings, timeout_s)
    rows += api(settings, timeout_s, api_call=api_call)
    return rows


def _cluster(settings: Settings, timeout_s: float) -> ClusterProbe:
    return ClusterProbe(settings, timeout_s=timeout_s)


# ------------------------------------------------------------------------------ the report
def table(results: list[Result]) -> str:
    """The plain-text pass/fail table and a one-line verdict."""
    width = max([len("CHECK"), *(len(r.check) for r in results)])
    lines = [f"{'CHECK':<{width}}  RESULT  DETAIL"]
    lines += [f"{r.check:<{width}}  {r.status.upper():<6}  {r.detail}" for r in results]
    failed = sum(r.status == "fail" for r in results)
    warned = sum(r.status == "warn" for r in results)
    verdict = f"{failed} check(s) failed" if failed else "all checks passed"
    lines.append(f"\n{verdict}" + (f", {warned} warning(s)" if warned else ""))
    return "\n".join(lines)


def as_json(results: list[Result]) -> str:
    code = exit_code(results)
    return json.dumps(
        {"ok": code == EXIT_OK, "exit_code": code, "checks": [asdict(r) for r in results]},
        indent=2,
        ensure_ascii=False,
    )


def main(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Entry point of ``metadata-consumer check`` (``args`` as parsed by ``consumer.cli``)."""
    if args.timeout_s <= 0:
        print("metadata-consumer check: --timeout-s must be > 0", file=sys.stderr)
        return EXIT_CONFIG
    results = run_checks(os.environ, api_call=not args.no_api_call, timeout_s=args.timeout_s)
    print(as_json(results) if args.json else table(results), file=out)
    return exit_code(results)
