"""Kubernetes manifests: each overlay renders, validates offline, and keeps its invariants.

Built-in kinds are validated against the bundled Kubernetes JSON schemas
(kubernetes-validate, strict: unknown fields fail). Custom resources have no bundled schema,
so their required fields are checked by hand below (:data:`CRD_CHECKS`).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import (
    DEPLOY,
    KUBERNETES_VERSION,
    OVERLAYS,
    PARTITIONS_PER_TOPIC,
    REPO,
    Rendered,
    load_alert_groups,
)

APP = "asapp-metadata-consumer"
CREDENTIALS_SECRET = "asapp-metadata-consumer-credentials"


def _validator() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(
            "kubernetes-validate is not installed. Install it with:\n"
            "  .venv/bin/pip install -r tests/deploy/requirements.txt",
            False,
        )
    return kubernetes_validate


# --- custom resources: hand-written required-field checks ---------------------------------


def _check_scaled_object(doc: dict[str, Any]) -> list[str]:
    spec = doc.get("spec") or {}
    errors = []
    if not (spec.get("scaleTargetRef") or {}).get("name"):
        errors.append("spec.scaleTargetRef.name is required")
    triggers = spec.get("triggers")
    if not isinstance(triggers, list) or not triggers:
        errors.append("spec.triggers must be a non-empty list")
        triggers = []
    for i, trigger in enumerate(triggers):
        if not trigger.get("type"):
            errors.append(f"spec.triggers[{i}].type is required")
        metadata = trigger.get("metadata")
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            errors.append(f"spec.triggers[{i}].metadata must map names to strings")
        elif trigger.get("type") == "kafka":
            for key in ("bootstrapServers", "consumerGroup", "topic", "lagThreshold"):
                if not metadata.get(key):
                    errors.append(f"spec.triggers[{i}].metadata.{key} is required")
    lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi):
        errors.append("need integers 0 <= minReplicaCount <= maxReplicaCount")
    return errors


def _check_trigger_authentication(doc: dict[str, Any]) -> list[str]:
    refs = (doc.get("spec") or {}).get("secretTargetRef")
    if not isinstance(refs, list) or not refs:
        return ["spec.secretTargetRef must be a non-empty list"]
    return [
        f"spec.secretTargetRef[{i}] needs parameter, name and key"
        for i, ref in enumerate(refs)
        if not all(ref.get(k) for k in ("parameter", "name", "key"))
    ]


def _check_service_monitor(doc: dict[str, Any]) -> list[str]:
    spec = doc.get("spec") or {}
    errors = []
    if not (spec.get("selector") or {}).get("matchLabels"):
        errors.append("spec.selector.matchLabels is required")
    endpoints = spec.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        errors.append("spec.endpoints must be a non-empty list")
    else:
        errors += [
            f"spec.endpoints[{i}] needs port or targetPort"
            for i, ep in enumerate(endpoints)
            if not (ep.get("port") or ep.get("targetPort"))
        ]
    return errors


def _check_prometheus_rule(doc: dict[str, Any]) -> list[str]:
    groups = (doc.get("spec") or {}).get("groups")
    if not isinstance(groups, list) or not groups:
        return ["spec.groups must be a non-empty list"]
    errors = []
    for g, group in enumerate(groups):
        if not group.get("name") or not isinstance(group.get("rules"), list):
            errors.append(f"spec.groups[{g}] needs name and rules")
            continue
        for r, rule in enumerate(group["rules"]):
            if not rule.get("expr") or not (rule.get("alert") or rule.get("record")):
                errors.append(f"spec.groups[{g}].rules[{r}] needs expr and alert or record")
    return errors


def _check_external_secret(doc: dict[str, Any]) -> list[str]:
    spec = doc.get("spec") or {}
    errors = []
    store = spec.get("secretStoreRef") or {}
    if not store.get("name") or store.get("kind") not in ("SecretStore", "ClusterSecretStore"):
        errors.append("spec.secretStoreRef needs name and kind (Cluster)SecretStore")
    if not (spec.get("target") or {}).get("name"):
        errors.append("spec.target.name is required")
    data = spec.get("data")
    if not isinstance(data, list) or not data:
        errors.append("spec.data must be a non-empty list")
    else:
        errors += [
            f"spec.data[{i}] needs secretKey and remoteRef.key"
            for i, item in enumerate(data)
            if not (item.get("secretKey") and (item.get("remoteRef") or {}).get("key"))
        ]
    return errors


CRD_CHECKS = {
    ("keda.sh/v1alpha1", "ScaledObject"): _check_scaled_object,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): _check_trigger_authentication,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _check_service_monitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): _check_prometheus_rule,
    ("external-secrets.io/v1", "ExternalSecret"): _check_external_secret,
}


def _validate(doc: dict[str, Any]) -> list[str]:
    """Schema errors of one manifest (empty when valid)."""
    kv = _validator()
    check = CRD_CHECKS.get((doc["apiVersion"], doc["kind"]))
    if check is not None:
        errors = check(doc)
        if not (doc.get("metadata") or {}).get("name"):
            errors.append("metadata.name is required")
        return errors
    try:
        kv.validate(doc, KUBERNETES_VERSION, strict=True)
    except kv.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        return [f"{path}: {exc.message}"]
    except kv.SchemaNotFoundError as exc:
        return [f"no schema and no hand-written check: {exc.message}"]
    return []


# --- rendering and validation ------------------------------------------------------------


@pytest.mark.parametrize("overlay", [pytest.param(o, id=o) for o in OVERLAYS])
def test_every_rendered_manifest_validates(rendered: dict[str, Rendered], overlay: str) -> None:
    render = rendered[overlay]
    assert render.docs, f"{overlay} rendered nothing"
    problems = {
        f"{d['kind']}/{d['metadata']['name']}": errs for d in render.docs if (errs := _validate(d))
    }
    assert not problems, f"{overlay}: invalid manifests: {problems}"


def test_crd_checks_catch_missing_fields() -> None:
    """The hand-written checks are not vacuous: broken custom resources are reported."""
    broken = [
        {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": {"name": "x"},
            "spec": {"triggers": [{"type": "kafka", "metadata": {"topic": "t"}}]},
        },
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": {"name": "x"},
            "spec": {"endpoints": []},
        },
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": {"name": "x"},
            "spec": {"groups": [{"name": "g", "rules": [{"alert": "A"}]}]},
        },
        {
            "apiVersion": "external-secrets.io/v1",
            "kind": "ExternalSecret",
            "metadata": {},
            "spec": {},
        },
        {"apiVersion": "example.com/v1", "kind": "Unknown", "metadata": {"name": "x"}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "x"},
            "spec": {"selector": {}, "template": {}, "bogus": 1},
        },
    ]
    for doc in broken:
        assert _validate(doc), f"{doc['kind']} with missing fields passed validation"


def test_external_secret_example_is_valid_and_not_rendered(
    rendered: dict[str, Rendered],
) -> None:
    path = DEPLOY / "examples" / "externalsecret.yaml"
    docs = [d for d in yaml.safe_load_all(path.read_text("utf-8")) if d]
    assert [d["kind"] for d in docs] == ["ExternalSecret"]
    assert _validate(docs[0]) == []
    spec = docs[0]["spec"]
    assert spec["target"]["name"] == CREDENTIALS_SECRET
    keys = {item["secretKey"] for item in spec["data"]}
    assert {"ASAPP_API_ID", "ASAPP_API_SECRET"} <= keys
    # Everything the production overlay reads from the Secret is provided.
    assert _secret_keys_used(rendered["production"]) <= keys
    for render in rendered.values():
        assert not render.of_kind("ExternalSecret"), "the example must stay out of the overlays"


# --- the PrometheusRule is generated from deploy/monitoring/alerts.yml ------------------


def test_prometheusrule_groups_equal_alerts_file(rendered: dict[str, Rendered]) -> None:
    groups = load_alert_groups()
    for overlay, render in rendered.items():
        rule = render.one("PrometheusRule")
        assert rule["spec"]["groups"] == groups, (
            f"{overlay}: PrometheusRule groups differ from deploy/monitoring/alerts.yml; "
            "run `python deploy/gen_prometheusrule.py`"
        )


def test_prometheusrule_file_is_up_to_date() -> None:
    """The committed deploy/base/prometheusrule.yaml is exactly what the generator writes."""
    load_alert_groups()  # fails clearly if alerts.yml is missing
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen", DEPLOY / "gen_prometheusrule.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.main(["--check"]) == 0, "run `python deploy/gen_prometheusrule.py` and commit"


def test_alert_job_label_matches_service_name(rendered: dict[str, Rendered]) -> None:
    """prometheus-operator sets job=<Service name>; the TargetDown alert selects on it."""
    jobs = set(re.findall(r'job="([^"]+)"', yaml.safe_dump(load_alert_groups())))
    for render in rendered.values():
        assert jobs <= {render.one("Service")["metadata"]["name"]}, jobs


# --- Deployment invariants --------------------------------------------------------------


def _secret_keys_used(render: Rendered) -> set[str]:
    """Keys the container needs from its Secret (optional ones excluded)."""
    return {
        e["valueFrom"]["secretKeyRef"]["key"]
        for e in render.container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
        and not e["valueFrom"]["secretKeyRef"].get("optional")
    }


@pytest.mark.parametrize("overlay", [pytest.param(o, id=o) for o in OVERLAYS])
def test_deployment_is_hardened(rendered: dict[str, Rendered], overlay: str) -> None:
    render = rendered[overlay]
    pod = render.one("Deployment")["spec"]["template"]["spec"]
    container = render.container
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] in {
        sa["metadata"]["name"] for sa in render.of_kind("ServiceAccount")
    }
    assert render.one("ServiceAccount").get("automountServiceAccountToken") is False
    pod_sc, sc = pod["securityContext"], container["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert isinstance(pod_sc["runAsUser"], int) and pod_sc["runAsUser"] >= 10000
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    assert all("emptyDir" in v for v in pod["volumes"])
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}, kind
    image = container["image"]
    assert re.fullmatch(r"[^:@]+(:[\w.-]+|@sha256:[0-9a-f]{64})", image), image
    assert not image.endswith(":latest")


@pytest.mark.parametrize("overlay", [pytest.param(o, id=o) for o in OVERLAYS])
def test_probes_and_ports_use_metrics_port(rendered: dict[str, Rendered], overlay: str) -> None:
    render = rendered[overlay]
    container = render.container
    port = int(render.config.get("METRICS_PORT", "9400"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    service = render.one("Service")
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("metrics", port, "metrics")
    ]


@pytest.mark.parametrize("overlay", [pytest.param(o, id=o) for o in OVERLAYS])
def test_grace_period_exceeds_shutdown_timeout(rendered: dict[str, Rendered], overlay: str) -> None:
    render = rendered[overlay]
    grace = render.one("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    shutdown_s = float(render.config.get("SHUTDOWN_TIMEOUT_S", "25"))
    # Leave room for the flush/commit to finish after the shutdown timeout fires.
    assert grace >= shutdown_s + 10, (grace, shutdown_s)


@pytest.mark.parametrize("overlay", [pytest.param(o, id=o) for o in OVERLAYS])
def test_references_resolve(rendered: dict[str, Rendered], overlay: str) -> None:
    """Selectors select the pods; config and secret references name what is deployed."""
    render = rendered[overlay]
    deployment = render.one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and selector.items() <= pod_labels.items()

    assert selects(deployment["spec"]["selector"]["matchLabels"])
    assert selects(render.one("Service")["spec"]["selector"])
    assert selects(render.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    assert selects(render.one("NetworkPolicy")["spec"]["podSelector"]["matchLabels"])
    monitor = render.one("ServiceMonitor")["spec"]
    service = render.one("Service")
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["endpoints"]} <= {
        p["name"] for p in service["spec"]["ports"]
    }

    (env_from,) = render.container["envFrom"]
    assert env_from["configMapRef"]["name"] == render.one("ConfigMap")["metadata"]["name"]
    secret_names = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in render.container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert secret_names == {CREDENTIALS_SECRET}
    for secret in render.of_kind("Secret"):
        assert secret["metadata"]["name"] == CREDENTIALS_SECRET
        required = _secret_keys_used(render)
        assert required <= set(secret.get("stringData", {})) | set(secret.get("data", {}))


def test_example_secret_values_are_clearly_fake(rendered: dict[str, Rendered]) -> None:
    assert not rendered["production"].of_kind("Secret"), (
        "production must not render a Secret: an apply would overwrite the real credentials"
    )
    (secret,) = rendered["sandbox"].of_kind("Secret")
    for key, value in secret["stringData"].items():
        assert "fake" in value.lower(), f"{key} does not look like a placeholder: {value!r}"


# --- KEDA ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", [pytest.param(o, id=o) for o in OVERLAYS])
def test_scaledobject_matches_consumer_config(rendered: dict[str, Rendered], overlay: str) -> None:
    render = rendered[overlay]
    spec = render.one("ScaledObject")["spec"]
    config = render.config
    assert spec["scaleTargetRef"]["name"] == render.one("Deployment")["metadata"]["name"]
    # Extra consumers in a group get no partitions and sit idle.
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= PARTITIONS_PER_TOPIC
    kafka = [t for t in spec["triggers"] if t["type"] == "kafka"]
    assert kafka, "no kafka trigger"
    topics = {config[f"TOPIC_{e}"] for e in ("AGENT", "CONVERSATION", "CUSTOMER")}
    assert {t["metadata"]["topic"] for t in kafka} == topics
    auths = {a["metadata"]["name"] for a in render.of_kind("TriggerAuthentication")}
    for trigger in kafka:
        meta = trigger["metadata"]
        assert meta["bootstrapServers"] == config["KAFKA_BOOTSTRAP_SERVERS"]
        assert meta["consumerGroup"] == config["KAFKA_GROUP_ID"]
        assert meta.get("allowIdleConsumers", "false") == "false"
        if "authenticationRef" in trigger:
            assert trigger["authenticationRef"]["name"] in auths
        if config.get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper().startswith("SASL"):
            assert "authenticationRef" in trigger and meta.get("sasl"), (
                "KEDA must authenticate to Kafka like the consumer does"
            )


def test_scaledobject_explains_the_partition_cap() -> None:
    text = (DEPLOY / "base" / "scaledobject.yaml").read_text("utf-8")
    assert "maxReplicaCount" in text and "idle" in text and "partition" in text


# --- NetworkPolicy ------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", [pytest.param(o, id=o) for o in OVERLAYS])
def test_networkpolicy_allows_only_what_the_consumer_needs(
    rendered: dict[str, Rendered], overlay: str
) -> None:
    render = rendered[overlay]
    spec = render.one("NetworkPolicy")["spec"]
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    (ingress,) = spec["ingress"]
    assert [p["port"] for p in ingress["ports"]] == ["metrics"]
    assert all("namespaceSelector" in peer or "podSelector" in peer for peer in ingress["from"])
    assert not any("ipBlock" in peer for peer in ingress["from"])

    egress_ports = set()
    for rule in spec["egress"]:
        assert rule.get("to") and rule.get("ports"), "every egress rule names peers and ports"
        ports = {p["port"] for p in rule["ports"]}
        egress_ports |= ports
        if any("ipBlock" in peer for peer in rule["to"]):
            assert ports == {443}, "only the ASAPP API (HTTPS) is reached by IP range"
    assert egress_ports == {53, 443, 8081, 9092, 9093}
    api = render.config["ASAPP_API_BASE_URL"]
    assert api.startswith("https://"), "the NetworkPolicy allows the API on 443 only"


# --- overlays differ where they must ----------------------------------------------------


def test_overlays_differ_meaningfully(rendered: dict[str, Rendered]) -> None:
    sandbox, production = rendered["sandbox"], rendered["production"]
    assert sandbox.config["ASAPP_API_BASE_URL"] == "https://api.sandbox.asapp.com"
    assert production.config["ASAPP_API_BASE_URL"] == "https://api.asapp.com"
    assert sandbox.config["DAILY_REQUEST_QUOTA"] == "10000"
    assert production.config["DAILY_REQUEST_QUOTA"] == "50000"

    def replicas(r: Rendered) -> int:
        return int(r.one("Deployment")["spec"]["replicas"])

    assert replicas(sandbox) < replicas(production)
    assert sandbox.container["resources"] != production.container["resources"]
    assert sandbox.container["image"] != production.container["image"]
    namespaces = {r.one("Namespace")["metadata"]["name"] for r in rendered.values()}
    assert len(namespaces) == 2
    for render in rendered.values():
        ns = render.one("Namespace")["metadata"]["name"]
        for doc in render.docs:
            if doc["kind"] != "Namespace":
                assert doc["metadata"].get("namespace") == ns, doc["metadata"]["name"]


def test_base_is_not_applied_with_real_looking_defaults() -> None:
    """Sanity: nothing in deploy/ carries a value that looks like a real credential."""
    for path in DEPLOY.rglob("*.y*ml"):
        text = path.read_text("utf-8")
        for key in ("ASAPP_API_SECRET", "KAFKA_SASL_PASSWORD"):
            for match in re.finditer(rf"{key}:\s*(\S+)", text):
                value = match.group(1)
                assert "fake" in value or value in ("|", ">") or value.startswith("$"), (
                    f"{path.relative_to(REPO)}: {key} has a value: {value}"
                )
