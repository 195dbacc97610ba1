"""The ingest step: consumed message → API item or dead letter (decode, map, validate, serialise).

A pure function over a list of messages: it knows nothing of the loop (offsets, pauses,
batches), keeps no state between calls and never raises for anything a message contains, so it
can be tested without the rig and run in another process. For each message, in order, it
returns exactly one of:

- an :class:`~consumer.records.Item`: valid, serialised once (``body``), with its entity
  ``key`` (the API's required id fields) that per-id ordering is decided on;
- a :class:`~consumer.records.DeadLetter`: it can never succeed — reason ``consume`` (the
  consumer reported an error at its position), ``decode`` (not a decodable event) or
  ``validation`` (breaks the API's constraints, or cannot be mapped);
- :class:`Unavailable`: the schema registry is down; the caller holds this message and every
  later one of its partition and tries again later.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from consumer.errors import DecodeError, RegistryUnavailable, ValidationError
from consumer.ports import Decoder, Mapper, Validator
from consumer.records import DeadLetter, Entity, Item, Message

#: Dead-letter ``error`` limit for ingest reasons (characters; headers are cut to bytes later).
MAX_ERROR_CHARS = 1024

#: The API's required id fields per entity: together they name the entity an item describes.
ID_FIELDS: Mapping[Entity, tuple[str, ...]] = {
    Entity.AGENT: ("externalAgentId",),
    Entity.CONVERSATION: ("externalConversationId",),
    Entity.CUSTOMER: ("externalConversationId", "externalCustomerId"),
}


@dataclass(frozen=True, slots=True)
class Unavailable:
    """The message needs the schema registry, which is unreachable: hold it, retry later."""

    message: Message
    error: str
    retry_after_s: float | None = None


Result = Item | DeadLetter | Unavailable


def entity_key(entity: Entity, payload: Mapping[str, Any]) -> str:
    """The entity's identity in ``payload``: its required id fields joined by NUL."""
    fields = ID_FIELDS[entity]
    if len(fields) == 1:
        return str(payload.get(fields[0]))
    return "\x00".join(str(payload.get(f)) for f in fields)


class Ingest:
    """Turns messages into results (see the module docstring). Thread-compatible: it holds
    only the per-entity decoders, validators and the mapper, bound at construction (replacing
    one afterwards has no effect: build another)."""

    def __init__(
        self,
        *,
        topic_entities: Mapping[str, Entity],
        decoders: Mapping[Entity, Decoder],
        validators: Mapping[Entity, Validator],
        mapper: Mapper,
    ) -> None:
        self.topic_entities = topic_entities
        self.decoders = decoders
        self.validators = validators
        self.mapper = mapper
        # per topic, bound once: (entity, decode, encode) — the hot path's lookups
        self._steps = {
            topic: (e, decoders[e].decode, validators[e].encode)
            for topic, e in topic_entities.items()
            if e in decoders and e in validators
        }

    def __call__(self, messages: Sequence[Message]) -> list[Result]:
        """One result per message, in order. Every message's topic must be subscribed."""
        return [self.one(m) for m in messages]

    def one(self, message: Message) -> Result:
        """The result for one message (never raises for its content)."""
        pos = message.position
        entity, decode, encode = self._steps[pos.topic]
        if message.error is not None:
            return DeadLetter(message, entity, "consume", message.error[:MAX_ERROR_CHARS])
        try:
            record = decode(message.value)
        except RegistryUnavailable as exc:
            return Unavailable(message, str(exc), exc.retry_after_s)
        except DecodeError as exc:
            return DeadLetter(message, entity, "decode", str(exc)[:MAX_ERROR_CHARS])
        try:
            payload = self.mapper(
                entity, record, topic=pos.topic, partition=pos.partition, offset=pos.offset
            )
            body = encode(payload)
        except ValidationError as exc:
            return DeadLetter(message, entity, "validation", str(exc)[:MAX_ERROR_CHARS])
        return Item(entity, str(payload["eventId"]), body, message, key=entity_key(entity, payload))
