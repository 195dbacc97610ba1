"""One request budget for the whole consumer group: the ledger's records and the pacing policy.

ASAPP sells requests: a daily quota per account (reset at 00:00 UTC; after it every call is
refused until midnight) and a spike arrest of 100 requests/s. Both belong to the account, not to
a pod, so every pod of a consumer group publishes what it spent today to a compacted Kafka topic
(the *ledger*, ``QUOTA_TOPIC``) and reads everyone else's: the day's usage is the sum, which
survives restarts, crashes and rescheduling (a vanished pod's requests stay spent).

This module holds the value types the ledger carries and the pure policy (no I/O, clock
injected); :mod:`consumer.kafka` reads and writes the topic.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from consumer.metrics import Metrics

log = logging.getLogger(__name__)

#: Consecutive 429 episodes (1 s, 2 s, 4 s, 8 s, 16 s of refusals) after which ASAPP is taken
#: to refuse for the day although the ledger says we are under the quota (someone else on the
#: account spent it): reported as exhausted while the sender backs off up to 15 minutes.
REFUSED_EPISODES = 5

#: The largest rise of a pod's request rate per refresh, as a fraction of RATE_LIMIT_RPS.
RAMP_STEP = 0.2

#: Seconds after start during which an idle pod still tells the group it is busy.
WARMUP_S = 15.0

#: Seconds a pod's larger share must have stood before the pod uses it: long enough for every
#: other pod to have read the claim behind it from the ledger and cut its own share (a ledger
#: write interval, a read, and a refresh). A smaller share applies at once.
SETTLE_S = 3.0

#: Seconds in a UTC day.
DAY_S = 86_400.0


def utc_day(unix_s: float) -> str:
    """The UTC date of ``unix_s`` as ``YYYY-MM-DD`` (the quota's day)."""
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%d")


def seconds_to_midnight(unix_s: float) -> float:
    """Seconds from ``unix_s`` to the next 00:00 UTC (never 0: at midnight, a whole day)."""
    return DAY_S - (unix_s % DAY_S)


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """What one pod published: its requests on ``day`` and its demand (how much it has waiting
    to send, 0 when idle), at unix time ``ts``."""

    pod: str
    day: str
    requests: int
    demand: float
    ts: float


class Ledger(Protocol):
    """The group's shared request ledger."""

    def publish(self, record: MemberRecord) -> None:
        """Make ``record`` this pod's latest (written in the background; never blocks)."""
        ...

    def members(self) -> Mapping[str, MemberRecord] | None:
        """The latest record of every pod of this group (any day), or None while the ledger
        cannot be read (the caller falls back to a safe share)."""
        ...


# --------------------------------------------------------------------------- the policy
@dataclass(frozen=True, slots=True)
class QuotaPolicy:
    """The knobs (a projection of Settings). ``daily_quota`` 0 means no daily quota."""

    daily_quota: int
    reserve: int
    max_wait_s: float
    rate_limit_rps: float  # the whole group's spike limit
    linger_s: float
    entities: int
    pacing: bool = True
    live_after_s: float = 15.0  # a pod silent longer holds no share (its requests still count)


@dataclass(frozen=True, slots=True)
class Budget:
    """What the group has and what this pod may spend, at one moment.

    ``rps`` is this pod's request rate (every request passes it); ``linger_rps`` the rate at
    which this pod may send batches that are not full (None: not gated, they go at their
    linger).
    """

    used: int  # the group's requests today
    remaining: int  # quota - used - reserve (what the group may still spend today)
    sustainable_rps: float  # remaining / seconds to midnight, for the group
    tight: bool  # sending every batch at its linger would not fit the rest of the day
    exhausted: bool  # the quota wall: nothing more until 00:00 UTC
    rps: float
    linger_rps: float | None
    share: float  # this pod's share of the group's rates
    live_pods: int
    fallback: bool  # the ledger could not be read: a safe share was assumed


def group_usage(members: Mapping[str, MemberRecord], *, me: str, day: str, my_requests: int) -> int:
    """The group's requests on ``day``: everyone else's latest count plus ours."""
    return my_requests + sum(m.requests for m in members.values() if m.day == day and m.pod != me)


def budget(
    policy: QuotaPolicy,
    *,
    me: str,
    my_requests: int,
    my_demand: float,
    members: Mapping[str, MemberRecord] | None,
    now_unix: float,
    fallback_share: float = 1.0,
    others_used: int = 0,
    share_cap: float = 1.0,
) -> Budget:
    """The pacing decision (pure). ``members`` None: the ledger is unavailable; then the
    others' usage is taken as ``others_used`` (the last known) and this pod's share as
    ``fallback_share``. This pod's share never exceeds ``share_cap`` (the pacer's settled
    share, see :class:`Pacer`).

    Policy: keep aside what the rest of the day's baseline traffic needs if every entity sent
    one request per ``max_wait_s``; a backlog (full batches) may spend the rest as fast as the
    spike limit allows; batches that are not full are paced at the sustainable rate whenever
    sending each at its linger would not fit the rest of the day, so they fill up while they
    wait. Shares follow demand: a pod with nothing to send holds no share another pod needs.
    """
    day = utc_day(now_unix)
    left_s = seconds_to_midnight(now_unix)
    if members is None:
        used = my_requests + others_used
        share, live = max(0.0, min(1.0, fallback_share)), 0
    else:
        used = group_usage(members, me=me, day=day, my_requests=my_requests)
        live_others = [
            m for m in members.values() if m.pod != me and now_unix - m.ts <= policy.live_after_s
        ]
        live = len(live_others) + 1
        # Every pod weighs the same published demands (its own as the ledger holds it, once it
        # is there), so the shares of the group add up to one instead of each pod pairing its
        # fresh demand with the others' older ones.
        own = members.get(me)
        mine = (
            own.demand
            if own is not None and now_unix - own.ts <= policy.live_after_s
            else (my_demand)
        )
        total = mine + sum(max(0.0, m.demand) for m in live_others)
        if mine > 0 and all(m.demand > 0 for m in live_others):
            # every pod has work: equal shares, which add up to one whatever moment each
            # pod's view of the others' demand is from
            share = 1.0 / live
        else:
            share = mine / total if total > 0 else 1.0 / live
    share = min(share, max(0.0, share_cap))
    spike = policy.rate_limit_rps * share
    if policy.daily_quota <= 0:  # no quota: only the spike limit
        unlimited = max(spike, 0.01)
        return Budget(used, 0, 0.0, False, False, unlimited, None, share, live, members is None)
    remaining = policy.daily_quota - used - policy.reserve
    sustainable = max(0.0, remaining) / left_s
    exhausted = remaining <= 0
    tight = remaining < policy.entities * left_s / max(policy.linger_s, 0.001)
    baseline = policy.entities * left_s / policy.max_wait_s
    backlog_allowed = remaining - baseline > 0
    paced = sustainable * share
    # a backlog may spend what the baseline does not need at the spike limit
    rps = spike if not policy.pacing or not tight or backlog_allowed else min(spike, paced)
    linger_rps = min(paced, spike) if policy.pacing and tight else None
    return Budget(
        used,
        remaining,
        sustainable,
        tight,
        exhausted,
        max(rps, 0.001),
        linger_rps,
        share,
        live,
        members is None,
    )


# --------------------------------------------------------------------------- the pacer
class Pacer:
    """Applies :func:`budget` in the poll loop: refreshes it from the ledger every
    ``refresh_s``, publishes this pod's count and demand, sets the request throttle's rate,
    raises the quota wall, and meters batches that are not full.

    ``set_rate(rps)`` and ``pause(seconds)`` act on the request throttle that every request
    passes (:class:`~consumer.retry.Throttle`); ``requests_today()`` is this pod's count since
    00:00 UTC. Loop thread only.

    Why the group's rates add up to at most RATE_LIMIT_RPS although every pod sees the others
    through a ledger that is a few seconds old: a pod's share only *falls* at once; a larger
    share is used only once it has stood for ``settle_s`` (the smallest share computed in that
    window applies), by which time every other pod has read the demand that produced it and
    cut its own. A pod starts from share 0 (with a ledger), so a new pod that sees others waits
    ``settle_s`` before its first request while they make room; one that sees only itself
    (its own claim read back, no other live pod) starts at once. A pod with nothing to send
    holds 0 and, when work arrives, waits ``settle_s`` again. The applied rate then rises by at
    most RAMP_STEP of the limit per refresh (slow start), which also covers pods that start
    in the same second and each see only themselves for a moment.
    """

    def __init__(
        self,
        policy: QuotaPolicy,
        *,
        pod: str,
        ledger: Ledger | None,
        set_rate: Callable[[float], None],
        pause: Callable[[float], None],
        requests_today: Callable[[], int],
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        refresh_s: float = 1.0,
        rng: random.Random | None = None,
        limited_episodes: Callable[[], int] | None = None,
        settle_s: float = SETTLE_S,
    ) -> None:
        self.policy = policy
        self.pod = pod
        self._ledger = ledger
        self._set_rate = set_rate
        self._pause = pause
        self._requests_today = requests_today
        self._metrics = metrics
        self._clock = clock
        self._wall = wall
        self._refresh_s = refresh_s
        self._rng = rng or random.Random()
        self._limited_episodes = limited_episodes
        self._next_refresh = 0.0
        self._started = clock()
        self._applied = 0.0  # the rate last applied to the throttle
        self._others_used = 0  # last known, for when the ledger is unavailable
        self._live_pods = 1
        self._day = ""
        self._tokens = 1.0
        self._stamp = clock()
        self._wall_until: float | None = None  # unix time the quota wall lifts
        self._fallback = False
        self._settle_s = settle_s
        # (monotonic time, share computed then); with a ledger a pod starts from share 0
        self._shares: deque[tuple[float, float]] = deque()
        if ledger is not None:
            self._shares.append((self._started, 0.0))
        self.budget: Budget | None = None

    @property
    def exhausted(self) -> bool:
        """The quota wall is up: nothing is sent until it lifts."""
        return self._wall_until is not None and self._wall() < self._wall_until

    def refresh(self, demand: float, assigned_share: float | None = None) -> Budget | None:
        """Recompute the budget when due (publishing this pod's record first).
        ``assigned_share`` (this pod's share of the topics' partitions) is the safe share
        while the ledger cannot be read; without it, one over the pods last seen."""
        now = self._clock()
        if now < self._next_refresh and self.budget is not None:
            return self.budget
        self._next_refresh = now + self._refresh_s
        unix = self._wall()
        day = utc_day(unix)
        if day != self._day:  # a new UTC day: everyone starts from zero
            self._day, self._others_used, self._wall_until = day, 0, None
        mine = self._requests_today()
        members = None
        if self._ledger is not None:
            # Until this pod knows its work (just started, no assignment yet) it tells the
            # others it is busy, so pods starting together share the spike limit from the
            # first second instead of each taking all of it until the ledger catches up.
            told = demand if demand > 0 or now - self._started > WARMUP_S else 1.0
            self._ledger.publish(MemberRecord(self.pod, day, mine, told, unix))
            members = self._ledger.members()
        if members is not None:
            self._others_used = group_usage(members, me=self.pod, day=day, my_requests=0)
        elif self._ledger is None:
            members = {}  # a group of one, by configuration: nothing to fall back from
        compute = functools.partial(
            budget,
            self.policy,
            me=self.pod,
            my_requests=mine,
            my_demand=demand,
            members=members,
            now_unix=unix,
            fallback_share=assigned_share if assigned_share is not None else 1 / self._live_pods,
            others_used=self._others_used,
        )
        b = compute()
        own = members.get(self.pod) if members else None
        if (
            self._ledger is not None
            and own is not None
            and unix - own.ts <= self.policy.live_after_s
            and b.live_pods == 1
            and not b.fallback
        ):
            # alone in a view that holds this pod's own claim: nobody has to make room (pods
            # that start in the same second are covered by the slow start)
            self._shares.clear()
        settled = self._settled(now, b.share)
        if settled < b.share:
            b = compute(share_cap=settled)
        if not b.fallback:
            self._live_pods = max(1, b.live_pods)
        self._note_fallback(b.fallback)
        self._set_rate(self._ramp(b.rps))
        if b.exhausted and not self.exhausted:
            self._raise_wall(unix, b)
        self.budget = b
        self._observe(b)
        return b

    def _settled(self, now: float, share: float) -> float:
        """The smallest share computed within the last ``settle_s`` (``share`` included)."""
        shares = self._shares
        shares.append((now, share))
        while len(shares) > 1 and shares[1][0] <= now - self._settle_s:
            shares.popleft()  # the oldest entry still covers the window's start
        return min(s for _, s in shares)

    def _ramp(self, target: float) -> float:
        """The rate to apply now: a lower target at once, a higher one by at most a fifth of
        the group's spike limit per refresh (slow start), so pods whose views of each other's
        demand differ for a moment never add up to more than the spike arrest allows."""
        step = RAMP_STEP * self.policy.rate_limit_rps
        applied = target if target <= self._applied else min(target, self._applied + step)
        self._applied = applied
        return applied

    def linger_allowance(self) -> int | None:
        """How many batches that are not full may be sent now (None: no limit)."""
        b = self.budget
        if b is None or b.linger_rps is None:
            return None
        now = self._clock()
        self._tokens = min(1.0, self._tokens + (now - self._stamp) * b.linger_rps)
        self._stamp = now
        return int(self._tokens)

    def spent_linger(self, n: int) -> None:
        """``n`` batches that were not full were sent under :meth:`linger_allowance`."""
        self._tokens -= n

    def _raise_wall(self, unix: float, b: Budget) -> None:
        # Resume a little after midnight, at a random moment, so the pods do not all
        # probe the fresh quota in the same second.
        until = unix + seconds_to_midnight(unix) + self._rng.uniform(5.0, 60.0)
        self._wall_until = until
        self._pause(until - unix)
        log.error(
            "daily request quota spent (%d of %d used, %d kept in reserve): sending stops "
            "until %s UTC; nothing is dead-lettered",
            b.used,
            self.policy.daily_quota,
            self.policy.reserve,
            datetime.fromtimestamp(until, UTC).strftime("%H:%M:%S"),
            extra={"event": "quota_exhausted", "used": b.used},
        )

    def _note_fallback(self, fallback: bool) -> None:
        if fallback and not self._fallback:
            log.warning(
                "request ledger unavailable: pacing on a safe share (1/%d of the group's "
                "rates) until it is back",
                self._live_pods,
                extra={"event": "quota_ledger_unavailable"},
            )
        elif self._fallback and not fallback:
            log.info("request ledger available again", extra={"event": "quota_ledger_recovered"})
        self._fallback = fallback

    def _observe(self, b: Budget) -> None:
        m = self._metrics
        m.quota_used.set(b.used)
        m.quota_remaining.set(max(0, b.remaining))
        m.quota_sustainable_rps.set(b.sustainable_rps)
        m.quota_share.set(b.share)
        refused = self._limited_episodes is not None and (
            self._limited_episodes() >= REFUSED_EPISODES
        )
        m.quota_exhausted.set(1 if self.exhausted or refused else 0)
        m.quota_ledger_fallback.set(1 if b.fallback else 0)
