"""``metadata-consumer quota``: the group's request budget for today, read from the ledger.

Reads the quota ledger (``QUOTA_TOPIC``, see :class:`consumer.kafka.QuotaLedger`) without
writing to it, and reports for today's UTC day: the requests the group's pods used (the sum of
each pod's latest count for today), what is left of ``DAILY_REQUEST_QUOTA``, each pod's count
and last update, and a projection: at the average rate since 00:00 UTC, when the quota runs out
(or that it lasts until 00:00 UTC).

Exit codes: 0 the report was printed; 1 the ledger could not be read (missing topic,
unreachable broker, timeout: the reason on stderr); 2 configuration error.

The report itself (:func:`build_report`) is pure: records and a clock in, values out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

from consumer.errors import ConfigError
from consumer.quota import DAY_S, MemberRecord, seconds_to_midnight, utc_day
from consumer.settings import Settings


@dataclass(frozen=True, slots=True)
class PodUsage:
    """One pod's latest count for the day and when it published it (unix seconds)."""

    pod: str
    requests: int
    updated: float


@dataclass(frozen=True, slots=True)
class QuotaReport:
    """Today's budget. ``runs_out_at`` is the unix time the quota is projected to run out
    today at ``rate_per_s`` (None: it lasts until 00:00 UTC, or nothing was used);
    ``exhausted`` when nothing remains."""

    topic: str
    day: str
    now: float
    quota: int
    used: int
    pods: tuple[PodUsage, ...]
    rate_per_s: float
    runs_out_at: float | None

    @property
    def remaining(self) -> int:
        return max(0, self.quota - self.used)

    @property
    def exhausted(self) -> bool:
        return self.used >= self.quota

    @property
    def projection(self) -> str:
        """One sentence: exhausted, runs out at HH:MM UTC, or lasts until 00:00 UTC."""
        if self.exhausted:
            return "exhausted: every request is refused until 00:00 UTC"
        if self.runs_out_at is None:
            return "lasts until 00:00 UTC at the average rate since 00:00 UTC"
        return f"runs out at {_hhmm(self.runs_out_at)} UTC at the average rate since 00:00 UTC"

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` form (times as ISO-8601 UTC)."""
        return {
            "topic": self.topic,
            "day": self.day,
            "now": _iso(self.now),
            "quota": self.quota,
            "used": self.used,
            "remaining": self.remaining,
            "exhausted": self.exhausted,
            "rate_per_s": round(self.rate_per_s, 6),
            "runs_out_at": None if self.runs_out_at is None else _iso(self.runs_out_at),
            "projection": self.projection,
            "pods": [{**asdict(p), "updated": _iso(p.updated)} for p in self.pods],
        }

    def text(self) -> str:
        """The human form."""
        lines = [
            f"quota ledger {self.topic}, day {self.day} (UTC), at {_iso(self.now)}",
            f"  used       {self.used} of {self.quota} requests",
            f"  remaining  {self.remaining}",
            f"  rate       {self.rate_per_s * 3600:.1f} requests/hour since 00:00 UTC",
            f"  projection {self.projection}",
        ]
        if not self.pods:
            lines.append("  pods       none published today")
        else:
            width = max(len(p.pod) for p in self.pods)
            lines.append(f"  pods ({len(self.pods)}):")
            for p in self.pods:
                lines.append(f"    {p.pod:<{width}}  {p.requests:>8}  updated {_iso(p.updated)}")
        return "\n".join(lines)


def _iso(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _hhmm(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%H:%M")


def build_report(
    members: Mapping[str, MemberRecord], *, now: float, quota: int, topic: str
) -> QuotaReport:
    """Today's (UTC day of ``now``) usage from the ledger's latest record per pod: records of
    other days are left out; pods are sorted by count, largest first."""
    day = utc_day(now)
    pods = tuple(
        sorted(
            (PodUsage(r.pod, r.requests, r.ts) for r in members.values() if r.day == day),
            key=lambda p: (-p.requests, p.pod),
        )
    )
    used = sum(p.requests for p in pods)
    since_midnight = max(1.0, DAY_S - seconds_to_midnight(now))
    rate = used / since_midnight
    runs_out_at: float | None = None
    if used < quota and rate > 0:
        eta = now + (quota - used) / rate
        if eta < now + seconds_to_midnight(now):
            runs_out_at = eta
    elif used >= quota:
        runs_out_at = now
    return QuotaReport(topic, day, now, quota, used, pods, rate, runs_out_at)


class LedgerReader(Protocol):
    """What the report needs of the ledger (``consumer.kafka.QuotaLedger``)."""

    def members(self) -> Mapping[str, MemberRecord] | None: ...

    def problem(self) -> str | None: ...

    def close(self) -> None: ...


def read_ledger(
    ledger: LedgerReader,
    *,
    timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[Mapping[str, MemberRecord] | None, str | None]:
    """Wait up to ``timeout_s`` for the ledger's first complete read: ``(members, None)``, or
    ``(None, reason)`` as soon as the topic is known to be missing, or at the deadline."""
    deadline = clock() + timeout_s
    while True:
        members = ledger.members()
        if members is not None:
            return members, None
        problem = ledger.problem()
        if problem is not None and "does not exist" in problem:
            return None, problem
        if clock() >= deadline:
            return None, f"{problem or 'quota ledger not read'} (after {timeout_s:g}s)"
        sleep(0.1)


def main(
    args: argparse.Namespace,
    out: TextIO = sys.stdout,
    open_ledger: Callable[[Settings, str], LedgerReader] | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> int:
    """Entry point of ``metadata-consumer quota`` (``args`` as parsed by ``consumer.cli``:
    ``json``, ``timeout_s``); see the module docstring for the exit codes."""
    try:
        settings = Settings.from_env(require_credentials=False)
    except ConfigError as exc:
        print(f"metadata-consumer: configuration error: {exc}", file=sys.stderr)
        return 2
    topic = settings.quota_topic
    try:
        ledger = (open_ledger or _open_ledger)(settings, topic)
    except ConfigError as exc:
        print(f"metadata-consumer: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        members, problem = read_ledger(ledger, timeout_s=args.timeout_s)
    finally:
        ledger.close()
    if members is None:
        print(f"metadata-consumer quota: cannot read the ledger: {problem}", file=sys.stderr)
        return 1
    report = build_report(
        members, now=wall_clock(), quota=settings.daily_request_quota, topic=topic
    )
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.text(), file=out)
    return 0


def _open_ledger(settings: Settings, topic: str) -> LedgerReader:
    """A read-only ledger: it publishes nothing, so closing it writes nothing."""
    from consumer.kafka import QuotaLedger

    return QuotaLedger(
        settings,
        group=settings.group_id,
        pod=f"quota-report-{uuid.uuid4().hex[:8]}",
        topic=topic,
        publish_interval_s=0.5,
    )
