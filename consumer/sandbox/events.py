"""Realistic sample events for the demo, tests and benchmarks (the service never imports this).

:func:`generate` returns Avro-shaped records (what the decoder hands to mapping): required ids
always set, every optional field present about two times in three, ``startTs`` as an aware UTC
``datetime`` or as epoch milliseconds, ``eventId`` set on about half of them. Every record passes
the API's own constraints (patterns full-matched, lengths, at most 10 attributes, valid emails),
so a sandbox run delivers them all; tests that need bad events build them by hand.

Determinism: record ``i`` depends only on ``(entity, seed, i)``, so
``generate(e, n, seed=s, start=k) == generate(e, k + n, seed=s)[k:]``; ``start`` lets a producer
continue a stream without repeating ids.

Two streams for the end-to-end fault cases:

- :func:`generate_versions`: many versions of few entity ids. Every version of one id keeps the
  id's fields (:func:`identity`), carries its own ``eventId`` and a ``version`` attribute (both
  reach the API item, so the API's log tells which version it accepted last), and the versions
  of one id appear in increasing order in the stream.
- :func:`oversized_event`: one record that is valid Avro but whose free-text field is far
  beyond the API's ``maxLength``, sized so its plain encoding is exactly ``size_bytes`` (a
  dead letter carrying it is larger than a producer's default ``message.max.bytes`` of 1 MB).

:func:`encode_plain` and :func:`encode_confluent` (from :mod:`consumer.avro_encode`, re-exported
here) produce the two wire formats the decoder reads.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from consumer.avro_encode import encode_confluent, encode_plain
from consumer.ingest import ID_FIELDS
from consumer.records import Entity

__all__ = [
    "VERSION_ATTRIBUTE",
    "encode_confluent",
    "encode_plain",
    "generate",
    "generate_versions",
    "identity",
    "oversized_event",
    "version_of",
]

#: Name of the attribute :func:`generate_versions` numbers its versions with.
VERSION_ATTRIBUTE = "version"

_FIRST = (
    "Jane", "John", "Linda", "Carlos", "Mei", "Aisha", "Noah", "Olivia", "Ravi", "Sofia",
    "Liam", "Emma", "Kenji", "Fatima", "Lucas", "Chloe", "Omar", "Priya", "Diego", "Hannah",
)  # fmt: skip
_LAST = (
    "Doe", "Luna", "Lemon", "Garcia", "Chen", "Khan", "Smith", "Johnson", "Patel", "Rossi",
    "Nguyen", "Brown", "Tanaka", "Haddad", "Silva", "Martin", "Ali", "Sharma", "Lopez", "Weber",
)  # fmt: skip
_LOBS = (("1038", "manufacturing"), ("930", "retail"), ("2201", "telecom"), ("415", "banking"))
_GROUPS = (("group5", "XYZ"), ("group59", "Billing Team"), ("store-93", "PlazaA"),
           ("tier2_esc", "Tier 2 Escalations"))  # fmt: skip
_LOCATIONS = ("Northern-California", "Austin-TX", "Manila-PH", "Toronto-ON", "Remote")
_LANGUAGES = ("en-US", "es-US", "fr-CA", "zh-Hans-HK", "pt-BR", "de-DE", "tl-PH")
_CATEGORIES = ("Tier-1-Service", "Tier-2-Escalation", "Billing", "Tech-Support", "Retention")
_ACCESS = ("Standard", "High-Profile", "Read-Only", "Supervisor")
_VENDORS = ("Contracting", "Acme BPO", "In-house", "GlobalServe")
_JOBS = (("Customer-Service", "Support"), ("Booking-Manager", "booking"),
         ("Retention-Specialist", "retention"), ("Tech-Agent", "technical"))  # fmt: skip
_SHIFTS = ("morning", "afternoon", "night", "weekend")
_DEVICES = ("TABLET", "PHONE", "DESKTOP", "WATCH", "OTHER")
_PLATFORMS = ("SMS", "WEB", "IOS", "ANDROID", "APP", "VOICE", "APPLEBIZ", "GBM", "WAB")
_SYSTEMS = ("MAC_OS", "LINUX", "WINDOWS", "ANDROID", "IOS", "OTHER")
_SEGMENTS = ("Sales", "Marketing", "FINANCE", "Consumer", "Small-Business", "Enterprise")
_SUBDIVISIONS = ("operating", "wireless", "broadband", "cards")
_RULES = ("Apply customer's discount", "Route to retention", "Standard handling")
_ENTRY = ("reactive", "proactive", "callback")
_BROWSERS = (("Safari", "17.4.1"), ("Chrome", "124.0.6367.91"), ("Firefox", "125.0.3"),
             ("Edge", "124.0.2478.80"))  # fmt: skip
_CAMPAIGNS = ("campaign-A", "campaign-B", "spring_promo", "winback-2024")
_STATUSES = ("new", "existing", "vip", "churn-risk", "prospect")
_STATES = (("United-States", "New-York", "10001"), ("United-States", "California", "94105"),
           ("Canada", "Ontario", "M5V-2T6"), ("Mexico", "Jalisco", "44100"),
           ("United-Kingdom", "England", "SW1A-1AA"))  # fmt: skip
_ATTRIBUTES = (("tenure_band", ("0-1y", "1-3y", "3y+")), ("region", ("east", "west", "central")),
               ("csat_last", ("1", "2", "3", "4", "5")), ("plan", ("basic", "plus", "premium")),
               ("channel_pref", ("chat", "voice", "email")))  # fmt: skip
_EPOCH_2015 = datetime(2015, 1, 1, tzinfo=UTC)


def _maybe(rng: random.Random, record: dict[str, Any], name: str, value: Any) -> None:
    """Set an optional field about two times in three (else leave it absent)."""
    if rng.random() < 0.67:
        record[name] = value


def _attributes(rng: random.Random) -> list[dict[str, str]]:
    chosen = rng.sample(_ATTRIBUTES, rng.randint(0, 3))
    return [{"name": name, "value": rng.choice(values)} for name, values in chosen]


def _agent(rng: random.Random, i: int) -> dict[str, Any]:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    lob_id, lob_name = rng.choice(_LOBS)
    group_id, group_name = rng.choice(_GROUPS)
    title, role = rng.choice(_JOBS)
    start = _EPOCH_2015 + timedelta(milliseconds=rng.randrange(10 * 365 * 86_400_000))
    r: dict[str, Any] = {"externalAgentId": f"agent{1000 + i}"}
    # startTs both ways the decoder may hand it over: datetime (fastavro) or epoch millis
    _maybe(rng, r, "startTs", start if i % 2 else int(start.timestamp() * 1000))
    _maybe(rng, r, "lobId", lob_id)
    _maybe(rng, r, "lobName", lob_name)
    _maybe(rng, r, "groupId", group_id)
    _maybe(rng, r, "groupName", group_name)
    _maybe(rng, r, "agentName", f"{first} {last}")
    _maybe(rng, r, "agentLocation", rng.choice(_LOCATIONS))
    _maybe(rng, r, "supervisorId", str(rng.randint(3000, 3999)))
    _maybe(rng, r, "supervisorName", f"{rng.choice(_FIRST)} {rng.choice(_LAST)}")
    _maybe(rng, r, "languages", rng.sample(_LANGUAGES, rng.randint(1, 3)))
    _maybe(rng, r, "concurrency", rng.randint(1, 6))
    _maybe(rng, r, "categoryLabel", rng.choice(_CATEGORIES))
    _maybe(rng, r, "accountAccessLevel", rng.choice(_ACCESS))
    _maybe(rng, r, "ranking", rng.randint(0, 100))
    _maybe(rng, r, "vendor", rng.choice(_VENDORS))
    _maybe(rng, r, "jobTitle", title)
    _maybe(rng, r, "jobRole", role)
    _maybe(rng, r, "workShift", rng.choice(_SHIFTS))
    _maybe(rng, r, "emailAddress", f"{first}.{last}{i}@example.com".lower())
    _maybe(rng, r, "attributes", _attributes(rng))
    return r


def _conversation(rng: random.Random, i: int) -> dict[str, Any]:
    lob_id, lob_name = rng.choice(_LOBS)
    group_id, group_name = rng.choice(_GROUPS)
    browser, version = rng.choice(_BROWSERS)
    r: dict[str, Any] = {"externalConversationId": f"issue{100_000 + i}"}
    _maybe(rng, r, "lobId", lob_id)
    _maybe(rng, r, "lobName", lob_name)
    _maybe(rng, r, "groupId", group_id)
    _maybe(rng, r, "groupName", group_name)
    _maybe(rng, r, "agentRoutingCode", f"route-{rng.randint(1000, 99999)}")
    _maybe(rng, r, "campaign", rng.choice(_CAMPAIGNS))
    _maybe(rng, r, "deviceType", rng.choice(_DEVICES))
    _maybe(rng, r, "platform", rng.choice(_PLATFORMS))
    _maybe(rng, r, "companySegment", rng.sample(_SEGMENTS, rng.randint(1, 2)))
    _maybe(rng, r, "companySubdivision", rng.choice(_SUBDIVISIONS))
    _maybe(rng, r, "businessRule", rng.choice(_RULES))
    _maybe(rng, r, "entryType", rng.choice(_ENTRY))
    _maybe(rng, r, "operatingSystem", rng.choice(_SYSTEMS))
    _maybe(rng, r, "browserType", browser)
    _maybe(rng, r, "browserVersion", version)
    _maybe(rng, r, "attributes", _attributes(rng))
    return r


def _customer(rng: random.Random, i: int) -> dict[str, Any]:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    email = f"{first[0]}{last}{i}@example.com".lower()
    line = f"{rng.randint(0, 9999):04d}"
    phone = f"(555)555-{line}"
    country, state, zipcode = rng.choice(_STATES)
    r: dict[str, Any] = {
        "externalConversationId": f"issue{100_000 + i}",
        # the API allows [a-zA-Z0-9_.@-] here: phone-and-email, email or an opaque id
        "externalCustomerId": rng.choice((f"555.555.{line}-{email}", email, f"cust_{i}")),
    }
    _maybe(rng, r, "status", rng.choice(_STATUSES))
    _maybe(rng, r, "phoneNumber", phone if rng.random() < 0.7 else f"+1-555-555-{i % 10_000:04d}")
    _maybe(rng, r, "emailAddress", email)
    _maybe(rng, r, "userId", f"user{rng.randint(100_000, 9_999_999)}")
    _maybe(rng, r, "addressCountry", country)
    _maybe(rng, r, "addressState", state)
    _maybe(rng, r, "addressZipcode", zipcode)
    _maybe(rng, r, "attributes", _attributes(rng))
    return r


_BUILDERS: dict[Entity, Callable[[random.Random, int], dict[str, Any]]] = {
    Entity.AGENT: _agent,
    Entity.CONVERSATION: _conversation,
    Entity.CUSTOMER: _customer,
}


def generate(entity: Entity, n: int, *, seed: int = 0, start: int = 0) -> list[dict[str, Any]]:
    """Return records ``start .. start + n - 1`` of the entity's stream for ``seed``.

    Each record is valid for the entity's Avro schema and the API's constraints; about half
    carry their own ``eventId`` (``evt-<entity>-<seed>-<i>``), the rest rely on the fallback.
    """
    build = _BUILDERS[entity]
    out: list[dict[str, Any]] = []
    for i in range(start, start + n):
        rng = random.Random(f"{entity.value}:{seed}:{i}")
        record = build(rng, i)
        if rng.random() < 0.5:
            record["eventId"] = f"evt-{entity.value}-{seed}-{i}"
        out.append(record)
    return out


def identity(entity: Entity, record: Mapping[str, Any]) -> tuple[str, ...]:
    """The values of the API's required id fields of ``entity`` (the ingest step's
    :data:`~consumer.ingest.ID_FIELDS`): what makes two records versions of one entity."""
    return tuple(str(record[name]) for name in ID_FIELDS[entity])


def generate_versions(
    entity: Entity, ids: int, versions: int, *, seed: int = 0
) -> list[dict[str, Any]]:
    """``ids * versions`` records: ``versions`` rounds, each holding one new version of every id
    in a shuffled order (deterministic for ``seed``).

    Version ``v`` of id ``i`` has the id fields of :func:`generate`'s record ``i``, other fields
    drawn afresh, ``eventId`` ``ver-<entity>-<seed>-<i>-<v>`` and the attribute
    ``{"name": "version", "value": "<v>"}``; every record passes the API's constraints.
    """
    base = generate(entity, ids, seed=seed)
    build = _BUILDERS[entity]
    id_fields = ID_FIELDS[entity]
    out: list[dict[str, Any]] = []
    for v in range(versions):
        order = list(range(ids))
        random.Random(f"order:{entity.value}:{seed}:{v}").shuffle(order)
        for i in order:
            record = build(random.Random(f"{entity.value}:{seed}:{i}:v{v}"), i)
            record.update({name: base[i][name] for name in id_fields})
            record["eventId"] = f"ver-{entity.value}-{seed}-{i}-{v}"
            extra = [a for a in record.get("attributes", []) if a["name"] != VERSION_ATTRIBUTE]
            record["attributes"] = [*extra, {"name": VERSION_ATTRIBUTE, "value": str(v)}]
            out.append(record)
    return out


def version_of(item: Mapping[str, Any]) -> int | None:
    """The ``version`` attribute of a record or API item, None when it has none."""
    for attribute in item.get("attributes") or ():
        if attribute.get("name") == VERSION_ATTRIBUTE:
            return int(attribute["value"])
    return None


#: The free-text field :func:`oversized_event` fills (API ``maxLength`` 256 for each).
_OVERSIZED_FIELD = {
    Entity.AGENT: "agentName",
    Entity.CONVERSATION: "businessRule",
    Entity.CUSTOMER: "userId",
}


def oversized_event(
    entity: Entity, *, size_bytes: int = 1_040_000, seed: int = 0, index: int = 0
) -> dict[str, Any]:
    """:func:`generate`'s record ``index`` with one string field (``agentName``,
    ``businessRule`` or ``userId``) padded so that ``encode_plain(entity, record)`` is exactly
    ``size_bytes`` long. Valid Avro; the API (and our validator) reject it for ``maxLength``.

    Raises ValueError when ``size_bytes`` is too small to break the field's maximum length.
    """
    record = generate(entity, 1, seed=seed, start=index)[0]
    name = _OVERSIZED_FIELD[entity]
    record[name] = ""
    pad = size_bytes - len(encode_plain(entity, record))
    # the string's length prefix (a zigzag varint) grows with it: settle in a few steps
    for _ in range(4):
        record[name] = "x" * max(pad, 0)
        excess = len(encode_plain(entity, record)) - size_bytes
        if excess == 0:
            break
        pad -= excess
    if len(encode_plain(entity, record)) != size_bytes or pad <= 1024:
        raise ValueError(f"cannot build a {entity.value} event of exactly {size_bytes} bytes")
    return record
