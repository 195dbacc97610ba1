"""deploy/examples' Strimzi resources: every topic the service needs, named as its defaults,
and a KafkaUser with exactly the ACLs the service uses.

No schema for Strimzi's custom resources is bundled offline, so their shape is checked by hand
against the KafkaTopic / KafkaUser ``v1beta2`` CRDs (the fields these examples use).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from consumer.kafka import DEFAULT_QUOTA_TOPIC
from consumer.settings import DEFAULT_TOPICS, Settings
from tests.deploy.conftest import DEPLOY, PARTITIONS_PER_TOPIC, Rendered

EXAMPLES = DEPLOY / "examples"
TOPICS_FILE = EXAMPLES / "strimzi-topics.yaml"
USER_FILE = EXAMPLES / "strimzi-user.yaml"
API_VERSION = "kafka.strimzi.io/v1beta2"
_DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_RESOURCE_TYPES = {"topic", "group", "cluster", "transactionalId"}
_OPERATIONS = {
    "Read", "Write", "Create", "Delete", "Alter", "Describe", "ClusterAction", "AlterConfigs",
    "DescribeConfigs", "IdempotentWrite", "All",
}  # fmt: skip


def _field_default(name: str, fallback: str) -> str:
    field = Settings.__dataclass_fields__.get(name)
    return str(field.default) if field is not None else fallback


DLQ_TOPIC = _field_default("dlq_topic", "asapp.metadata.dlq")
QUOTA_TOPIC = _field_default("quota_topic", DEFAULT_QUOTA_TOPIC)
ENTITY_TOPICS = set(DEFAULT_TOPICS.values())


def _docs(path: Any) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text("utf-8")) if d]


def strimzi_problems(doc: dict[str, Any]) -> list[str]:
    """What a KafkaTopic or KafkaUser gets wrong against the v1beta2 CRD (empty: fine)."""
    problems: list[str] = []
    if doc.get("apiVersion") != API_VERSION:
        problems.append(f"apiVersion must be {API_VERSION}")
    meta = doc.get("metadata") or {}
    if not _DNS1123.fullmatch(str(meta.get("name", ""))):
        problems.append("metadata.name must be a DNS-1123 name")
    if not (meta.get("labels") or {}).get("strimzi.io/cluster"):
        problems.append("metadata.labels needs strimzi.io/cluster")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return [*problems, "spec missing"]
    if doc.get("kind") == "KafkaTopic":
        for key in ("partitions", "replicas"):
            value = spec.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"spec.{key} must be an integer >= 1")
        if not isinstance(spec.get("topicName"), str):
            problems.append("spec.topicName must be set (names with dots)")
        if not isinstance(spec.get("config", {}), dict):
            problems.append("spec.config must be a mapping")
        unknown = set(spec) - {"topicName", "partitions", "replicas", "config"}
        problems += [f"spec.{k}: unknown field" for k in sorted(unknown)]
    elif doc.get("kind") == "KafkaUser":
        auth = spec.get("authentication") or {}
        if auth.get("type") not in {"tls", "tls-external", "scram-sha-512"}:
            problems.append("spec.authentication.type must be tls, tls-external or scram-sha-512")
        authz = spec.get("authorization") or {}
        if authz.get("type") != "simple":
            problems.append("spec.authorization.type must be simple")
        for i, acl in enumerate(authz.get("acls") or []):
            res = acl.get("resource") or {}
            if res.get("type") not in _RESOURCE_TYPES:
                problems.append(f"acls[{i}].resource.type must be one of {_RESOURCE_TYPES}")
            if res.get("type") == "cluster" and "name" in res:
                problems.append(f"acls[{i}]: a cluster resource has no name")
            if res.get("type") != "cluster" and res.get("patternType") not in {"literal", "prefix"}:
                problems.append(f"acls[{i}].resource.patternType must be literal or prefix")
            ops = acl.get("operations")
            if not ops or not set(ops) <= _OPERATIONS:
                problems.append(f"acls[{i}].operations must be a list of {sorted(_OPERATIONS)}")
    else:
        problems.append(f"unexpected kind {doc.get('kind')!r}")
    return problems


def _topics() -> dict[str, dict[str, Any]]:
    return {d["spec"]["topicName"]: d for d in _docs(TOPICS_FILE)}


def _grants(user: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    """``(resource type, name, pattern, operation)`` for every operation the user is granted."""
    out = set()
    for acl in user["spec"]["authorization"]["acls"]:
        res = acl["resource"]
        for op in acl["operations"]:
            out.add((res["type"], res.get("name", ""), res.get("patternType", ""), op))
    return out


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in (TOPICS_FILE, USER_FILE)])
def test_examples_parse_and_match_the_strimzi_crds(path: Any) -> None:
    docs = _docs(path)
    assert docs
    problems = {d["metadata"]["name"]: errs for d in docs if (errs := strimzi_problems(d))}
    assert not problems
    clusters = {d["metadata"]["labels"]["strimzi.io/cluster"] for d in docs}
    assert len(clusters) == 1, "every resource names the same Kafka cluster"


def test_shape_checks_catch_broken_resources() -> None:
    """The hand-written checks are not vacuous."""
    broken = [
        {"apiVersion": "kafka.strimzi.io/v1", "kind": "KafkaTopic", "metadata": {}, "spec": {}},
        {
            "apiVersion": API_VERSION,
            "kind": "KafkaTopic",
            "metadata": {"name": "t", "labels": {"strimzi.io/cluster": "c"}},
            "spec": {"topicName": "t", "partitions": 0, "replicas": 1, "bogus": 1},
        },
        {
            "apiVersion": API_VERSION,
            "kind": "KafkaUser",
            "metadata": {"name": "u", "labels": {"strimzi.io/cluster": "c"}},
            "spec": {
                "authentication": {"type": "scram-sha-512"},
                "authorization": {
                    "type": "simple",
                    "acls": [{"resource": {"type": "topic", "name": "t"}, "operations": ["Eat"]}],
                },
            },
        },
    ]
    for doc in broken:
        assert strimzi_problems(doc), f"{doc['kind']} passed"


def test_topics_are_the_services_defaults() -> None:
    assert set(_topics()) == ENTITY_TOPICS | {DLQ_TOPIC, QUOTA_TOPIC}


def test_entity_topics_have_the_partitions_the_examples_assume() -> None:
    topics = _topics()
    assert {topics[t]["spec"]["partitions"] for t in ENTITY_TOPICS} == {PARTITIONS_PER_TOPIC}


def test_quota_topic_is_compacted_with_two_days_retention() -> None:
    config = _topics()[QUOTA_TOPIC]["spec"]["config"]
    assert set(config["cleanup.policy"].split(",")) == {"compact", "delete"}
    assert int(config["retention.ms"]) == 2 * 86_400_000
    assert _topics()[QUOTA_TOPIC]["spec"]["partitions"] == 1


def test_user_has_exactly_the_acls_the_service_needs() -> None:
    (user,) = _docs(USER_FILE)
    group = _field_default("group_id", "asapp-metadata-consumer")
    want = {("topic", t, "literal", op) for t in ENTITY_TOPICS for op in ("Read", "Describe")}
    want |= {("group", group, "prefix", op) for op in ("Read", "Describe")}
    want |= {("topic", DLQ_TOPIC, "literal", op) for op in ("Write", "Describe")}
    want |= {("topic", QUOTA_TOPIC, "literal", op) for op in ("Read", "Write", "Describe")}
    want |= {("cluster", "", "", "IdempotentWrite")}
    assert _grants(user) == want


def test_strimzi_examples_stay_out_of_the_overlays(rendered: dict[str, Rendered]) -> None:
    for render in rendered.values():
        assert not render.of_kind("KafkaTopic") and not render.of_kind("KafkaUser")


def test_compose_creates_the_quota_topic_compacted() -> None:
    compose = yaml.safe_load((DEPLOY.parent / "docker-compose.yml").read_text("utf-8"))
    script = "\n".join(compose["services"]["topics"]["command"])
    assert compose["services"]["consumer"]["environment"]["QUOTA_TOPIC"] == QUOTA_TOPIC
    (created,) = [c for c in script.split("kafka-topics.sh") if f"--topic {QUOTA_TOPIC} " in c]
    assert "--config cleanup.policy=compact,delete" in created
    assert "--config retention.ms=172800000" in created
