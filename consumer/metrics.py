"""Every Prometheus instrument the service exports, bound to one injected registry.

Names share the ``asapp_consumer_`` prefix and end in ``_total`` / ``_seconds`` / ``_bytes``
where the unit applies. Labels are bounded: entity, topic, partition, outcome, reason, status
class, close reason, error code prefix. Never ids, offsets or payloads.

Tests build ``Metrics(CollectorRegistry())`` and read values back with
``registry.get_sample_value(name, labels)``.
"""

from __future__ import annotations

import re
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from consumer import __version__

PREFIX = "asapp_consumer"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600)
_ITEM_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 750, 900, 1000)
_BYTES_BUCKETS = (1e3, 1e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 2e6, 5e6)

_CODE_PREFIX = re.compile(r"^\s*([A-Z][A-Z0-9_]{1,40})")


def error_code_prefix(error: str) -> str:
    """Bounded label for an API item error: ``FAIL_BAD_PARAMS: ERROR: x`` → ``FAIL_BAD_PARAMS``."""
    match = _CODE_PREFIX.match(error)
    return match.group(1) if match else "OTHER"


def status_class(status: int | None) -> str:
    """``200`` → ``2xx``; ``None`` (no response: timeout, connection error) → ``error``."""
    return "error" if status is None else f"{status // 100}xx"


class Metrics:
    """The service's instruments. One instance per process (or per test, with its own registry)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        p = PREFIX

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"{p}_{name}", doc, labels, registry=r)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"{p}_{name}", doc, labels, registry=r)

        def histogram(
            name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]
        ) -> Histogram:
            return Histogram(f"{p}_{name}", doc, labels, buckets=buckets, registry=r)

        self.build_info = Info(f"{p}_build", "Version of the running consumer.", registry=r)
        self.build_info.info({"version": __version__})

        # Kafka side
        self.messages_consumed = counter(
            "messages_consumed_total", "Kafka messages consumed.", ("entity", "topic")
        )
        self.decode_failures = counter(
            "decode_failures_total",
            "Messages that could not be decoded, by reason (dead_letter: bad bytes, "
            "registry_unavailable: retried later).",
            ("entity", "reason"),
        )
        self.items_mapped = counter(
            "items_mapped_total", "Events mapped to API items and valid.", ("entity",)
        )
        self.items_invalid = counter(
            "items_invalid_total",
            "Items rejected by pre-flight validation (dead-lettered, no request spent).",
            ("entity",),
        )
        self.assigned_partitions = gauge(
            "assigned_partitions", "Partitions currently assigned to this pod."
        )
        self.paused_partitions = gauge(
            "paused_partitions", "Assigned partitions currently paused (backpressure or retry)."
        )
        self.buffered_messages = gauge(
            "buffered_messages", "Messages consumed but not yet finished (delivered or DLQ)."
        )
        self.buffered_bytes = gauge(
            "buffered_bytes",
            "Bytes of the messages consumed but not yet finished (bounded by MAX_BUFFERED_BYTES).",
        )
        self.offset_rewinds = counter(
            "offset_rewinds_total",
            "Partitions that went back to an offset at or below the last consumed one (log "
            "truncation, a seek back): their tracking restarted there.",
            ("topic",),
        )
        self.consumer_errors = counter(
            "consumer_errors_total",
            "Messages the Kafka client reported an error for (dead-lettered, reason consume).",
            ("topic",),
        )
        self.items_superseded = counter(
            "items_superseded_total",
            "Item versions replaced by a newer version of the same id before sending "
            "(BATCH_COALESCE).",
            ("entity",),
        )
        self.items_deferred = gauge(
            "items_deferred",
            "Items waiting because a request with an earlier version of their id is in flight.",
        )
        self.commits = counter("commits_total", "Offset commits, by result.", ("result",))
        self.commit_duration = histogram(
            "commit_duration_seconds", "Time spent in an offset commit.", (), _LATENCY_BUCKETS
        )
        self.committed_offset = gauge(
            "committed_offset", "Last committed offset (next to read).", ("topic", "partition")
        )
        self.consumer_lag = gauge(
            "consumer_lag",
            "Messages between the committed offset and the partition's high watermark.",
            ("topic", "partition"),
        )
        self.poll_loop_last_seconds = gauge(
            "poll_loop_last_iteration_timestamp_seconds",
            "Unix time of the last poll loop iteration (liveness).",
        )

        # Batching and HTTP
        self.batches_sent = counter(
            "batches_sent_total",
            "Batches handed to the sender, by why they closed "
            "(count, bytes, linger, revoke, shutdown).",
            ("entity", "close_reason"),
        )
        self.batch_items = histogram(
            "batch_items", "Items per request sent.", ("entity",), _ITEM_BUCKETS
        )
        self.batch_bytes = histogram(
            "batch_bytes", "Request body size in bytes.", ("entity",), _BYTES_BUCKETS
        )
        self.http_requests = counter(
            "http_requests_total",
            "API requests, by HTTP status (or 'error' when no response came back).",
            ("entity", "status"),
        )
        self.http_duration = histogram(
            "http_request_duration_seconds",
            "API request duration by status class.",
            ("entity", "status_class"),
            _LATENCY_BUCKETS,
        )
        self.in_flight = gauge("in_flight_requests", "API requests currently in flight.")
        self.retries = counter(
            "retries_total",
            "Request retries, by cause (429, 5xx, network, malformed, 413_split, 409_split, auth, "
            "forbidden, redirect).",
            ("entity", "cause"),
        )
        self.backoff_seconds = counter(
            "backoff_seconds_total", "Time spent backing off before retries.", ("cause",)
        )
        self.rate_limiter_wait = counter(
            "rate_limiter_wait_seconds_total", "Time requests waited for a rate-limit token."
        )
        self.items_accepted = counter(
            "items_accepted_total", "Items the API accepted (delivered).", ("entity",)
        )
        self.items_rejected = counter(
            "items_rejected_total",
            "Items the API rejected, by error code prefix.",
            ("entity", "code"),
        )
        self.dead_letters = counter(
            "dead_letters_total",
            "Messages written to the dead-letter topic, by reason.",
            ("entity", "reason"),
        )
        self.dlq_failures = counter(
            "dlq_write_failures_total", "Dead-letter writes that failed (partition held back)."
        )
        self.end_to_end_latency = histogram(
            "end_to_end_latency_seconds",
            "Kafka message timestamp to API acknowledgement.",
            ("entity",),
            _E2E_BUCKETS,
        )
        self.last_delivery = gauge(
            "last_delivery_timestamp_seconds", "Unix time of the last accepted item."
        )
        self.quota_used = gauge(
            "quota_requests_used_today",
            "The consumer group's API requests since 00:00 UTC, from the request ledger.",
        )
        self.quota_remaining = gauge(
            "quota_requests_remaining",
            "Requests the group may still send today (quota minus used minus QUOTA_RESERVE).",
        )
        self.quota_sustainable_rps = gauge(
            "quota_sustainable_rps",
            "The group's sustainable request rate: remaining requests / seconds to 00:00 UTC.",
        )
        self.quota_share = gauge(
            "quota_share", "This pod's share of the group's request rates (follows demand)."
        )
        self.quota_exhausted = gauge(
            "quota_exhausted",
            "1 while the daily quota is spent (ledger) or ASAPP keeps answering 429: sending "
            "stopped until 00:00 UTC or the backoff ends.",
        )
        self.quota_ledger_fallback = gauge(
            "quota_ledger_fallback",
            "1 while the request ledger cannot be read or written (pacing on a safe share).",
        )
        self.batch_wait = histogram(
            "batch_wait_seconds",
            "Time a batch waited past its linger window for its turn (pacing, busy lanes).",
            ("entity",),
            _LATENCY_BUCKETS,
        )
        self.requests_today = gauge(
            "requests_today",
            "This pod's API requests since 00:00 UTC (the group's: quota_requests_used_today).",
        )
        self.daily_quota = gauge("daily_request_quota", "Configured daily request quota.")
        self.credentials_rejected = gauge(
            "credentials_rejected", "1 while the API rejects our credentials (401/403)."
        )
        self.ready = gauge("ready", "1 when the pod is ready (assigned, credentials accepted).")
        self.daily_quota.set(0)
        self._quota_lock = threading.Lock()
        self._quota_day = -1
        self._requests_today = 0
        # Read at scrape time so the count drops to 0 at 00:00 UTC even with no traffic.
        self.requests_today.set_function(self._requests_so_far_today)
        self.start_time = gauge("start_time_seconds", "Unix time the consumer started.")
        self.start_time.set(time.time())

    def count_request(self, now: float | None = None) -> None:
        """Count one API request against today's (UTC) quota."""
        now = time.time() if now is None else now
        day = int(now // 86400)
        with self._quota_lock:
            if day != self._quota_day:
                self._quota_day = day
                self._requests_today = 0
            self._requests_today += 1

    def requests_so_far_today(self) -> int:
        """This pod's API requests since 00:00 UTC."""
        return int(self._requests_so_far_today())

    def _requests_so_far_today(self) -> float:
        with self._quota_lock:
            return float(
                self._requests_today if int(time.time() // 86400) == self._quota_day else 0
            )
