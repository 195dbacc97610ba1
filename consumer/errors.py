"""The exception tree, grouped by what the caller does with each error::

    ConsumerError
    ├── ConfigError                 crash at start-up with a message naming the variable
    ├── RetryableError              pause the partition and retry later (never dead-letter)
    │   ├── RegistryUnavailable     schema registry unreachable or 5xx
    │   └── BrokerError             a Kafka call failed or timed out (commit, committed...)
    ├── DeadLetterError             this message can never succeed: dead-letter it
    │   ├── DecodeError             bytes are not a valid event (reason ``decode``)
    │   └── ValidationError         event breaks the API's constraints (reason ``validation``)
    └── FatalError                  stop the process (cannot recover by retrying)
        └── FatalKafkaError         librdkafka reported a fatal error (fenced, ACL, ...)

HTTP answers are not exceptions: :mod:`consumer.sink` classifies each into an ``Outcome`` and
:mod:`consumer.decision` says what the sender does with it.

Foreign exceptions are translated at the boundary (``raise ... from exc``) and message-scoped
errors carry the message's position.
"""

from __future__ import annotations


class ConsumerError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(ConsumerError):
    """Configuration is missing or invalid. The message names the variable and the fix."""


class RetryableError(ConsumerError):
    """A transient condition; ``retry_after_s`` is a hint (seconds) when the peer gave one."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RegistryUnavailable(RetryableError):
    """The schema registry could not be reached or answered 5xx: an outage, not a bad message."""


class BrokerError(RetryableError):
    """A Kafka call (commit, committed offsets, ...) failed or did not finish in its bound.
    Translated from librdkafka's ``KafkaException`` in :mod:`consumer.kafka`; the caller
    retries later (offsets only move forward, so a lost commit is redone by the next)."""


class DeadLetterError(ConsumerError):
    """The message can never succeed. ``reason`` is the DLQ reason header value."""

    reason = "decode"


class DecodeError(DeadLetterError):
    """The message bytes are not a decodable event (garbage, bad magic, unknown schema...)."""

    reason = "decode"


class ValidationError(DeadLetterError):
    """The decoded event breaks the API's own constraints."""

    reason = "validation"


class FatalError(ConsumerError):
    """Unrecoverable: the process should stop."""


class FatalKafkaError(FatalError):
    """librdkafka reported a fatal error (e.g. a fenced idempotent producer, a consumer that
    can never rejoin): the client is unusable and the process must restart."""
