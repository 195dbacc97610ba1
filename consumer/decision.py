"""The pure retry decision: what the sender does with one classified answer.

:func:`decide` maps an :class:`~consumer.sink.Outcome`, the request's earlier attempts and the
policy to one :data:`Decision`. It performs no I/O, reads no clock and touches no shared state;
the only impurity it can reach is the jitter of the policy's :class:`~consumer.retry.Backoff`
(seed its ``rng`` for a reproducible answer). The sender's loop carries the decision out.

=====================  ===================================================================
outcome                decision
=====================  ===================================================================
DELIVERED              :class:`Deliver`: the ``rejected`` items dead (``rejected``), the
                       others delivered
ALL_REJECTED (400)     :class:`Deliver` with every item rejected: never resent unchanged
CONFLICT (409)         one item: :class:`Deliver` (already persisted); a batch:
                       :class:`Split` (``409_split``), ASAPP documents 409 for one entity only
TOO_LARGE (413)        a batch: :class:`Split` (``413_split``); one item:
                       :class:`DeadLetterAll` (``http``)
RATE_LIMITED (429)     :class:`RateLimited`: pod-wide pause (``Retry-After`` or the episode's
                       1 s, 2 s, 4 s …), then retry
TRANSIENT              :class:`Retry` with the 5xx backoff (at least a ``Retry-After`` hint),
                       without limit (cause ``5xx``, or ``network`` without a status)
AUTH (401)             :class:`Hold` pod-wide (cause ``auth``), never dead-lettered
REDIRECTED (3xx)       :class:`Hold` pod-wide (cause ``redirect``): a wrong base URL
FORBIDDEN (403)        :class:`Hold` of this entity only (cause ``forbidden``)
CLIENT_ERROR           :class:`DeadLetterAll` (``http``) with status and excerpt
MALFORMED              :class:`Retry` (``malformed``) until ``malformed_max_attempts`` answers,
                       then :class:`DeadLetterAll` (``http``)
=====================  ===================================================================
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from consumer.records import Entity, Item
from consumer.retry import Backoff
from consumer.sink import Kind, Outcome


class Scope(enum.Enum):
    """How much a :class:`Hold` stops: the whole pod, or the answering entity's lane."""

    POD = "pod"
    ENTITY = "entity"


@dataclass(frozen=True, slots=True)
class Attempts:
    """Earlier answers to the same request (the same items) that each led to a :class:`Retry`."""

    transient: int = 0
    malformed: int = 0

    def after(self, cause: str) -> Attempts:
        """The attempts once a :class:`Retry` of ``cause`` is carried out."""
        if cause == "malformed":
            return Attempts(self.transient, self.malformed + 1)
        return Attempts(self.transient + 1, self.malformed)

    def __bool__(self) -> bool:
        return bool(self.transient or self.malformed)


@dataclass(frozen=True, slots=True)
class Policy:
    """The knobs of the decision (a projection of Settings)."""

    malformed_max_attempts: int
    transient_backoff: Backoff


@dataclass(frozen=True, slots=True)
class Deliver:
    """Done: the ``rejected`` items are dead letters (``rejected``), every other item is
    delivered. ``status`` is the answer's, for the dead letters."""

    rejected: Sequence[tuple[Item, str]]
    status: int | None


@dataclass(frozen=True, slots=True)
class DeadLetterAll:
    """Done: every item of the request is a dead letter with ``reason`` and ``error``."""

    reason: str
    error: str
    status: int | None


@dataclass(frozen=True, slots=True)
class Split:
    """Send the two halves as requests of their own (each decided afresh)."""

    cause: str


@dataclass(frozen=True, slots=True)
class Retry:
    """Wait ``delay_s`` (this request only), then resend the same items."""

    delay_s: float
    cause: str


@dataclass(frozen=True, slots=True)
class RateLimited:
    """Pause every request of the pod (``retry_after_s`` when the server said), then resend."""

    retry_after_s: float | None


@dataclass(frozen=True, slots=True)
class Hold:
    """Stop sending in ``scope`` and probe slowly until an answer proves the ``problem`` gone;
    never a dead letter. ``problem`` is the not-ready reason."""

    scope: Scope
    cause: str
    problem: str


Decision = Deliver | DeadLetterAll | Split | Retry | RateLimited | Hold


def decide(
    outcome: Outcome, *, entity: Entity, items: int, attempts: Attempts, policy: Policy
) -> Decision:
    """What to do with ``outcome``, the answer to a request of ``items`` items of ``entity``.

    Total: every Outcome yields a Decision, never an exception. See the module table.
    """
    kind, status = outcome.kind, outcome.status
    if kind is Kind.DELIVERED or kind is Kind.ALL_REJECTED:
        return Deliver(tuple(outcome.rejected), status)
    if kind is Kind.CONFLICT:
        return Deliver((), status) if items <= 1 else Split("409_split")
    if kind is Kind.TOO_LARGE:
        if items <= 1:
            return DeadLetterAll("http", f"413 for a single item: {outcome.detail}", status)
        return Split("413_split")
    if kind is Kind.RATE_LIMITED:
        return RateLimited(outcome.retry_after_s)
    if kind is Kind.TRANSIENT:
        return _transient(outcome, attempts, policy)
    if kind is Kind.MALFORMED:
        return _malformed(outcome, attempts, policy)
    if kind is Kind.CLIENT_ERROR:
        return DeadLetterAll("http", f"HTTP {status}: {outcome.detail}", status)
    return _hold(kind, status, entity)


def _transient(outcome: Outcome, attempts: Attempts, policy: Policy) -> Retry:
    backoff = policy.transient_backoff
    delay = backoff.delay(attempts.transient)
    if outcome.retry_after_s is not None:
        delay = max(delay, min(outcome.retry_after_s, backoff.cap_s))
    return Retry(delay, "5xx" if outcome.status is not None else "network")


def _malformed(outcome: Outcome, attempts: Attempts, policy: Policy) -> Retry | DeadLetterAll:
    answers = attempts.malformed + 1
    if answers >= policy.malformed_max_attempts:
        return DeadLetterAll(
            "http", f"malformed response after {answers} attempts: {outcome.detail}", outcome.status
        )
    return Retry(policy.transient_backoff.delay(answers - 1), "malformed")


def _hold(kind: Kind, status: int | None, entity: Entity) -> Hold:
    if kind is Kind.FORBIDDEN:
        endpoint = entity.endpoint.rsplit("/", 1)[-1]
        problem = f"ASAPP API forbids {endpoint} for this app (HTTP {status})"
        return Hold(Scope.ENTITY, "forbidden", problem)
    if kind is Kind.REDIRECTED:
        return Hold(
            Scope.POD, "redirect", f"ASAPP API answers HTTP {status}: check ASAPP_API_BASE_URL"
        )
    return Hold(Scope.POD, "auth", f"ASAPP API rejects the credentials (HTTP {status})")
