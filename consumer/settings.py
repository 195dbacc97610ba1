"""Configuration: read once from the environment (12-factor), validated, then frozen.

``Settings.from_env()`` raises :class:`ConfigErrors` (a :class:`~consumer.errors.ConfigError`)
listing every problem at once, each naming its variable and what is wrong with it, so ``run``
fails fast instead of crash-looping later and an empty environment takes one run, not three.

:func:`config_warnings` lists what is valid but probably wrong (a variable that looks like one
of ours, a rate above the API's spike arrest); the service logs them, ``check`` shows them.

Every variable the service reads is listed in :data:`ENV_VARS` (plus any ``KAFKA_<PROPERTY>``,
passed to librdkafka as ``<property>`` with ``_`` → ``.``); deployment checks compare their
ConfigMaps and compose files against it mechanically.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlparse

from consumer.errors import ConfigError
from consumer.records import Entity

#: Default topic per entity.
DEFAULT_TOPICS = {
    Entity.AGENT: "asapp.metadata.agent",
    Entity.CONVERSATION: "asapp.metadata.conversation",
    Entity.CUSTOMER: "asapp.metadata.customer",
}

#: Default ``MAX_BUFFERED_BYTES`` (64 MiB).
DEFAULT_MAX_BUFFERED_BYTES = 64 * 1024 * 1024

#: The API's hard maximum items per many-* request.
API_MAX_ITEMS = 1000

#: Variables read by name (``KAFKA_*`` pass-through properties come on top of these).
ENV_VARS: frozenset[str] = frozenset(
    {
        "KAFKA_BOOTSTRAP_SERVERS",
        "KAFKA_GROUP_ID",
        "TOPIC_AGENT",
        "TOPIC_CONVERSATION",
        "TOPIC_CUSTOMER",
        "SCHEMA_REGISTRY_URL",
        "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO",
        "ASAPP_API_BASE_URL",
        "ASAPP_API_ID",
        "ASAPP_API_SECRET",
        "BATCH_MAX_ITEMS",
        "BATCH_MAX_BYTES",
        "BATCH_LINGER_MS",
        "MAX_IN_FLIGHT",
        "INGEST_WORKERS",
        "MAX_BUFFERED_MESSAGES",
        "MAX_BUFFERED_BYTES",
        "BATCH_COALESCE",
        "RATE_LIMIT_RPS",
        "DAILY_REQUEST_QUOTA",
        "QUOTA_TOPIC",
        "QUOTA_RESERVE",
        "QUOTA_MAX_WAIT_S",
        "QUOTA_PACING",
        "HTTP_TIMEOUT_S",
        "RETRY_MAX_BACKOFF_S",
        "MALFORMED_RESPONSE_MAX_ATTEMPTS",
        "DLQ_TOPIC",
        "METRICS_PORT",
        "METRICS_HOST",
        "SHUTDOWN_TIMEOUT_S",
        "REVOKE_TIMEOUT_S",
        "COMMIT_TIMEOUT_S",
        "HEALTH_STALL_TIMEOUT_S",
        "HEALTH_OUTAGE_S",
        "LOG_FORMAT",
        "LOG_LEVEL",
    }
)

#: ASAPP's published spike arrest (requests per second per app); ``RATE_LIMIT_RPS`` above it
#: only earns 429s.
API_SPIKE_ARREST_RPS = 100.0

#: How close (difflib ratio) an unknown variable must be to one of ours to be called a typo.
LOOKALIKE_CUTOFF = 0.85

_T = TypeVar("_T")


class ConfigErrors(ConfigError):
    """Every configuration problem found in one pass; ``problems`` holds one line each (each
    names its variable), ``str()`` lists them all."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        if len(problems) == 1:
            text = problems[0]
        else:
            text = f"{len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems)
        super().__init__(text)


def lookalikes(env: Mapping[str, str]) -> list[tuple[str, str]]:
    """``(unknown name, the variable it probably meant)`` for every variable of ``env`` that is
    not ours but close to one of :data:`ENV_VARS` (``BATCH_MAX_ITEM``, ``topic_agent``).

    ``KAFKA_*`` names are pass-through librdkafka properties, never reported here (the client
    rejects an unknown property itself, naming it). Sorted by name.
    """
    known = sorted(ENV_VARS)
    found: list[tuple[str, str]] = []
    for name in sorted(env):
        if name in ENV_VARS or name.upper().startswith("KAFKA_"):
            continue
        if name.upper() in ENV_VARS:
            found.append((name, name.upper()))
            continue
        close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=LOOKALIKE_CUTOFF)
        if close:
            found.append((name, close[0]))
    return found


def config_warnings(env: Mapping[str, str], settings: Settings) -> list[str]:
    """What is valid but probably a mistake: look-alike variable names (with a did-you-mean)
    and a ``RATE_LIMIT_RPS`` above :data:`API_SPIKE_ARREST_RPS`. One line each; never fatal."""
    out = [
        f"{name} is not a variable this service reads: did you mean {meant}?"
        for name, meant in lookalikes(env)
    ]
    if settings.rate_limit_rps > API_SPIKE_ARREST_RPS:
        out.append(
            f"RATE_LIMIT_RPS={settings.rate_limit_rps:g} is above ASAPP's spike arrest of "
            f"{API_SPIKE_ARREST_RPS:g} requests/s: the excess is answered 429"
        )
    return out


#: Variables whose Settings field is not simply the lower-cased name.
_FIELDS = {
    "KAFKA_BOOTSTRAP_SERVERS": "bootstrap_servers",
    "KAFKA_GROUP_ID": "group_id",
    "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "schema_registry_auth",
    "ASAPP_API_BASE_URL": "api_base_url",
    "ASAPP_API_ID": "api_id",
    "ASAPP_API_SECRET": "api_secret",
}


def env_defaults() -> list[tuple[str, str]]:
    """``(variable, default as text)`` for every variable of :data:`ENV_VARS`, sorted;
    ``(required)`` for the three without a default and ``(unset)`` for optional ones."""
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    out: list[tuple[str, str]] = []
    for name in sorted(ENV_VARS):
        if name.startswith("TOPIC_"):
            value: object = DEFAULT_TOPICS[Entity[name[len("TOPIC_") :]]]
        else:
            value = defaults.get(_FIELDS.get(name, name.lower()), dataclasses.MISSING)
        if value is dataclasses.MISSING:
            text = "(required)"
        elif name == "INGEST_WORKERS":
            text = "auto (the CPUs the container may use - 1; 0 below 2)"
        elif value is None:
            text = "(unset)"
        elif isinstance(value, bool):
            text = str(value).lower()
        else:
            text = str(value).lower() if name == "LOG_LEVEL" else str(value)
        out.append((name, text))
    return out


def _collect(problems: list[str], read: Callable[[], _T], fallback: _T) -> _T:
    """``read()``, or ``fallback`` after recording its ConfigError in ``problems``."""
    try:
        return read()
    except ConfigError as exc:
        problems.append(str(exc))
        return fallback


#: KAFKA_* names that are settings of ours rather than librdkafka properties.
_OWN_KAFKA_VARS = {"KAFKA_BOOTSTRAP_SERVERS", "KAFKA_GROUP_ID"}

#: librdkafka properties the service owns; setting them through KAFKA_* would break guarantees.
_RESERVED_PROPERTIES = {"enable.auto.commit", "enable.auto.offset.store", "group.id"}

#: Substrings that mark a property's value as secret (never logged).
SECRET_MARKERS = ("password", "secret", "key", "token", "jaas", "credentials")


def _int(env: Mapping[str, str], name: str, default: int, *, lo: int, hi: int | None = None) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise ConfigError(f"{name}={value} is out of range: must be {bound}")
    return value


def _workers(env: Mapping[str, str]) -> int | None:
    """INGEST_WORKERS: unset or ``auto`` → None (from the CPU quota), else 0-16."""
    raw = env.get("INGEST_WORKERS", "").strip()
    if raw.lower() in ("", "auto"):
        return None
    return _int(env, "INGEST_WORKERS", 0, lo=0, hi=16)


def _float(env: Mapping[str, str], name: str, default: float, *, lo: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not value >= lo:  # also rejects NaN
        raise ConfigError(f"{name}={value} is out of range: must be >= {lo}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean: use true or false")


def _required(env: Mapping[str, str], name: str, hint: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is required: {hint}")
    return value


def _url(env: Mapping[str, str], name: str, default: str | None) -> str | None:
    raw = env.get(name, "").strip() or default
    if raw is None:
        return None
    parsed = urlparse(raw)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"{name}={raw!r} is not an http(s) URL")
    return raw.rstrip("/")


def _host(env: Mapping[str, str], name: str, default: str) -> str:
    """An IP address or a hostname (RFC 1123 labels), e.g. ``0.0.0.0``, ``::``, ``localhost``."""
    raw = env.get(name, "").strip() or default
    try:
        ipaddress.ip_address(raw)
        return raw
    except ValueError:
        pass
    labels = raw.rstrip(".").split(".")
    if len(raw) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ConfigError(
            f"{name}={raw!r} is not an IP address or hostname: use e.g. 0.0.0.0 (every "
            "interface) or 127.0.0.1 (this machine only)"
        )
    return raw


_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (env.get(name, "").strip() or default).lower()
    if value not in choices:
        raise ConfigError(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    """The service's whole configuration. Build with :meth:`from_env`; never mutated."""

    bootstrap_servers: str
    api_id: str
    api_secret: str = field(repr=False)
    group_id: str = "asapp-metadata-consumer"
    topics: Mapping[Entity, tuple[str, ...]] = field(
        default_factory=lambda: {e: (t,) for e, t in DEFAULT_TOPICS.items()}
    )
    kafka_properties: Mapping[str, str] = field(default_factory=dict, repr=False)
    schema_registry_url: str | None = None
    schema_registry_auth: str | None = field(default=None, repr=False)
    api_base_url: str = "https://api.sandbox.asapp.com"
    batch_max_items: int = API_MAX_ITEMS
    batch_max_bytes: int = 1_000_000
    batch_linger_ms: int = 1000
    max_in_flight: int = 16
    #: Worker processes for the ingest step (decode, map, validate, serialise); 0: in the poll
    #: loop; None: from the CPUs the container may use (consumer.workers.default_workers).
    ingest_workers: int | None = None
    max_buffered_messages: int = 50_000
    #: Bytes of buffered message values: the default leaves headroom in the shipped 384-512 MiB
    #: pod limits (each buffered byte costs about three in memory: value, item JSON, objects).
    max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES
    batch_coalesce: bool = False
    rate_limit_rps: float = 90.0
    daily_request_quota: int = 50_000
    #: The consumer group's request ledger (a compacted topic): one budget for every pod.
    quota_topic: str = "asapp.metadata.quota"
    #: Requests kept for replays and other clients of the account (default 5 % of the quota).
    quota_reserve: int = 2_500
    #: The longest an event should wait for its request when the quota is tight.
    quota_max_wait_s: float = 60.0
    quota_pacing: bool = True
    http_timeout_s: float = 30.0
    retry_max_backoff_s: float = 60.0
    malformed_response_max_attempts: int = 5
    dlq_topic: str = "asapp.metadata.dlq"
    metrics_port: int = 9400
    #: The interface the metrics/health server binds: every one by default (a pod's probes and
    #: scrapes come from outside it); the demo and the sandbox use 127.0.0.1.
    metrics_host: str = "0.0.0.0"
    shutdown_timeout_s: float = 25.0
    revoke_timeout_s: float = 10.0
    commit_timeout_s: float = 5.0
    health_stall_timeout_s: float = 60.0
    #: ``/readyz`` fails once the broker has been unreachable, or every API request has failed
    #: (no answer, or a 5xx), for longer than this.
    health_outage_s: float = 120.0
    log_format: str = "json"
    log_level: str = "INFO"

    @property
    def topic_entities(self) -> dict[str, Entity]:
        """Topic name → entity, for every enabled topic."""
        return {t: e for e, ts in self.topics.items() for t in ts}

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, require_credentials: bool = True
    ) -> Settings:
        """Read and validate the environment. Raises :class:`ConfigErrors` listing every bad
        variable (each line names it), never only the first.

        ``require_credentials=False`` is for tools that never call the API (``dlq replay``).
        """
        env = os.environ if env is None else env
        if not require_credentials:
            env = {"ASAPP_API_ID": "-", "ASAPP_API_SECRET": "-", **env}
        problems: list[str] = []
        topics: dict[Entity, tuple[str, ...]] = {}
        for entity, default in DEFAULT_TOPICS.items():
            name = f"TOPIC_{entity.name}"
            raw = env.get(name)
            raw = default if raw is None else raw
            names = tuple(t.strip() for t in raw.split(",") if t.strip())
            if names:
                topics[entity] = names
        if not topics:
            problems.append(
                "TOPIC_AGENT, TOPIC_CONVERSATION and TOPIC_CUSTOMER are all empty: enable at "
                "least one entity"
            )
        seen: dict[str, Entity] = {}
        for entity, names in topics.items():
            for t in names:
                if t in seen:
                    problems.append(
                        f"topic {t!r} is configured for both TOPIC_{seen[t].name} and "
                        f"TOPIC_{entity.name}"
                    )
                seen.setdefault(t, entity)

        kafka_properties: dict[str, str] = {}
        for key, value in env.items():
            if key.startswith("KAFKA_") and key not in _OWN_KAFKA_VARS:
                prop = key[len("KAFKA_") :].lower().replace("_", ".")
                if prop in _RESERVED_PROPERTIES:
                    problems.append(
                        f"{key} sets {prop!r}, which the service manages itself; remove it"
                    )
                    continue
                kafka_properties[prop] = value

        dlq_topic = env.get("DLQ_TOPIC", "").strip() or "asapp.metadata.dlq"
        if dlq_topic in seen:
            problems.append(f"DLQ_TOPIC={dlq_topic!r} is also a source topic")

        def read(fn: Callable[[], _T], fallback: _T) -> _T:
            return _collect(problems, fn, fallback)

        quota = read(lambda: _int(env, "DAILY_REQUEST_QUOTA", 50_000, lo=0), 0)
        quota_topic = env.get("QUOTA_TOPIC", "").strip() or "asapp.metadata.quota"
        if quota_topic in seen or quota_topic == dlq_topic:
            problems.append(f"QUOTA_TOPIC={quota_topic!r} is also a source or dead-letter topic")
        api_default = "https://api.sandbox.asapp.com"
        settings = cls(
            bootstrap_servers=read(
                lambda: _required(
                    env,
                    "KAFKA_BOOTSTRAP_SERVERS",
                    "set it to host:port[,host:port] of your brokers",
                ),
                "",
            ),
            group_id=env.get("KAFKA_GROUP_ID", "").strip() or "asapp-metadata-consumer",
            topics=topics,
            kafka_properties=kafka_properties,
            schema_registry_url=read(lambda: _url(env, "SCHEMA_REGISTRY_URL", None), None),
            schema_registry_auth=env.get("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO") or None,
            api_base_url=read(lambda: _url(env, "ASAPP_API_BASE_URL", api_default), None)
            or api_default,
            api_id=read(
                lambda: _required(env, "ASAPP_API_ID", "the asapp-api-id issued for your app"), ""
            ),
            api_secret=read(
                lambda: _required(
                    env, "ASAPP_API_SECRET", "the asapp-api-secret issued for your app"
                ),
                "",
            ),
            batch_max_items=read(
                lambda: _int(env, "BATCH_MAX_ITEMS", API_MAX_ITEMS, lo=1, hi=API_MAX_ITEMS),
                API_MAX_ITEMS,
            ),
            batch_max_bytes=read(lambda: _int(env, "BATCH_MAX_BYTES", 1_000_000, lo=1024), 0),
            batch_linger_ms=read(lambda: _int(env, "BATCH_LINGER_MS", 1000, lo=0), 0),
            max_in_flight=read(lambda: _int(env, "MAX_IN_FLIGHT", 16, lo=1, hi=256), 1),
            ingest_workers=read(lambda: _workers(env), None),
            max_buffered_messages=read(
                lambda: _int(env, "MAX_BUFFERED_MESSAGES", 50_000, lo=1000), 0
            ),
            max_buffered_bytes=read(
                lambda: _int(env, "MAX_BUFFERED_BYTES", DEFAULT_MAX_BUFFERED_BYTES, lo=1024 * 1024),
                0,
            ),
            batch_coalesce=read(lambda: _bool(env, "BATCH_COALESCE", False), False),
            rate_limit_rps=read(lambda: _float(env, "RATE_LIMIT_RPS", 90.0, lo=0.01), 0.0),
            daily_request_quota=quota,
            quota_topic=quota_topic,
            quota_reserve=read(
                lambda: _int(env, "QUOTA_RESERVE", quota // 20, lo=0, hi=max(quota, 0)), 0
            ),
            quota_max_wait_s=read(lambda: _float(env, "QUOTA_MAX_WAIT_S", 60.0, lo=1.0), 60.0),
            quota_pacing=read(lambda: _bool(env, "QUOTA_PACING", True), True),
            http_timeout_s=read(lambda: _float(env, "HTTP_TIMEOUT_S", 30.0, lo=0.1), 0.0),
            retry_max_backoff_s=read(lambda: _float(env, "RETRY_MAX_BACKOFF_S", 60.0, lo=0.1), 0.0),
            malformed_response_max_attempts=read(
                lambda: _int(env, "MALFORMED_RESPONSE_MAX_ATTEMPTS", 5, lo=1), 0
            ),
            dlq_topic=dlq_topic,
            metrics_port=read(lambda: _int(env, "METRICS_PORT", 9400, lo=0, hi=65535), 0),
            metrics_host=read(lambda: _host(env, "METRICS_HOST", "0.0.0.0"), "0.0.0.0"),
            shutdown_timeout_s=read(lambda: _float(env, "SHUTDOWN_TIMEOUT_S", 25.0, lo=1.0), 0.0),
            revoke_timeout_s=read(lambda: _float(env, "REVOKE_TIMEOUT_S", 10.0, lo=0.1), 0.0),
            commit_timeout_s=read(lambda: _float(env, "COMMIT_TIMEOUT_S", 5.0, lo=0.1), 0.0),
            health_stall_timeout_s=read(
                lambda: _float(env, "HEALTH_STALL_TIMEOUT_S", 60.0, lo=1.0), 0.0
            ),
            health_outage_s=read(lambda: _float(env, "HEALTH_OUTAGE_S", 120.0, lo=1.0), 0.0),
            log_format=read(lambda: _choice(env, "LOG_FORMAT", "json", ("json", "text")), "json"),
            log_level=read(
                lambda: _choice(env, "LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
                "info",
            ).upper(),
        )
        if problems:
            raise ConfigErrors(problems)
        return settings
