"""docker-compose.yml: valid, starts in order, and wires the stack the way the service expects."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import (
    DASHBOARD,
    MONITORING,
    PARTITIONS_PER_TOPIC,
    REPO,
    compose_command,
    load_alert_groups,
    run,
)
from tests.deploy.test_environment import compose_consumer_env

ONE_SHOTS = {"topics", "produce-samples"}
APP_SERVICES = {"asapp-api", "consumer", "produce-samples"}


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose["services"]
    return services


def _is_one_shot(service: dict[str, Any]) -> bool:
    return service.get("restart") == "no"


def _has_healthcheck(service: dict[str, Any]) -> bool:
    check = service.get("healthcheck") or {}
    return bool(check.get("test")) and not check.get("disable")


def test_compose_config_validates() -> None:
    result = run([*compose_command(), "-f", str(REPO / "docker-compose.yml"), "config", "-q"])
    assert result.returncode == 0, f"compose config failed:\n{result.stdout}{result.stderr}"


def test_every_service_is_healthchecked_or_one_shot(compose_file: dict[str, Any]) -> None:
    services = _services(compose_file)
    assert {n for n, s in services.items() if _is_one_shot(s)} == ONE_SHOTS
    for name, service in services.items():
        assert _has_healthcheck(service) or _is_one_shot(service), (
            f"{name}: long-running services need a healthcheck"
        )


def test_dependencies_wait_for_health_or_completion(compose_file: dict[str, Any]) -> None:
    services = _services(compose_file)
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: use the long depends_on form with conditions"
        for dep, spec in depends.items():
            want = (
                "service_completed_successfully"
                if _is_one_shot(services[dep])
                else "service_healthy"
            )
            assert spec.get("condition") == want, f"{name} -> {dep}: condition must be {want}"
    consumer_deps = set(services["consumer"]["depends_on"])
    assert {"topics", "schema-registry", "asapp-api"} <= consumer_deps


def test_images_are_pinned(compose_file: dict[str, Any]) -> None:
    for name, service in _services(compose_file).items():
        if "build" in service:
            assert service["build"]["dockerfile"] == "Dockerfile", name
            continue
        image = service["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d+(\.\d+)+[\w.-]*", image), (
            f"{name}: pin a version tag ({image})"
        )
    assert _services(compose_file)["kafka"]["image"].startswith("apache/kafka:")
    assert _services(compose_file)["schema-registry"]["image"].startswith(
        "confluentinc/cp-schema-registry:"
    )


def test_kafka_runs_kraft_single_node(compose_file: dict[str, Any]) -> None:
    env = _services(compose_file)["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"


def test_topics_job_creates_entity_topics_and_dlq(compose_file: dict[str, Any]) -> None:
    env = compose_consumer_env(compose_file)
    script = "\n".join(_services(compose_file)["topics"]["command"])
    assert "/opt/kafka/bin/kafka-topics.sh" in script
    for key in ("TOPIC_AGENT", "TOPIC_CONVERSATION", "TOPIC_CUSTOMER", "DLQ_TOPIC"):
        assert env[key] in script, f"{env[key]} is not created"
    assert f"--partitions {PARTITIONS_PER_TOPIC}" in script


def test_app_services_use_the_cli(compose_file: dict[str, Any]) -> None:
    services = _services(compose_file)
    for name in APP_SERVICES:
        assert services[name]["build"]["context"] == ".", name
    # The consumer runs the image's ENTRYPOINT (`metadata-consumer run`) unchanged.
    assert "entrypoint" not in services["consumer"] and "command" not in services["consumer"]

    api = services["asapp-api"]["entrypoint"]
    assert api[:2] == ["metadata-consumer", "emulate-api"]
    flags = dict(zip(api[2::2], api[3::2], strict=True))
    env = compose_consumer_env(compose_file)
    assert flags["--api-id"] == env["ASAPP_API_ID"]
    assert flags["--api-secret"] == env["ASAPP_API_SECRET"]
    assert env["ASAPP_API_BASE_URL"] == f"http://asapp-api:{flags['--port']}"

    producer = services["produce-samples"]["entrypoint"]
    assert producer[:2] == ["metadata-consumer", "produce-samples"]
    pflags = dict(zip(producer[2::2], producer[3::2], strict=True))
    assert pflags["--bootstrap-servers"] == env["KAFKA_BOOTSTRAP_SERVERS"]
    assert pflags["--schema-registry-url"] == env["SCHEMA_REGISTRY_URL"]


def test_consumer_gets_time_to_shut_down(compose_file: dict[str, Any]) -> None:
    consumer = _services(compose_file)["consumer"]
    grace_s = int(consumer["stop_grace_period"].rstrip("s"))
    assert grace_s > float(compose_consumer_env(compose_file).get("SHUTDOWN_TIMEOUT_S", "25"))


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (relative to the repo) of a service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        host, container = volume.split(":")[:2]
        out[container] = host.removeprefix("./")
    return out


def test_prometheus_scrapes_consumer_and_loads_alerts(compose_file: dict[str, Any]) -> None:
    services = _services(compose_file)
    mounts = _mounts(services["prometheus"])
    assert mounts["/etc/prometheus/prometheus.yml"] == "deploy/monitoring/prometheus.yml"
    assert mounts["/etc/prometheus/alerts.yml"] == "deploy/monitoring/alerts.yml"
    load_alert_groups()  # the mounted rule file exists and has groups
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text("utf-8"))
    assert "/etc/prometheus/alerts.yml" in config["rule_files"]
    port = compose_consumer_env(compose_file).get("METRICS_PORT", "9400")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    consumer_job = jobs["asapp-metadata-consumer"]  # the job alerts.yml's TargetDown selects
    targets = [t for sc in consumer_job["static_configs"] for t in sc["targets"]]
    assert targets == [f"consumer:{port}"]
    assert consumer_job.get("metrics_path", "/metrics") == "/metrics"


def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    """`promtool check config`, with the rule file path pointed at the repository's copy."""
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(promtool).is_file():
        pytest.fail(
            "promtool is not installed. Install it with:\n  apt-get install -y prometheus",
            False,
        )
    load_alert_groups()
    text = (MONITORING / "prometheus.yml").read_text("utf-8")
    config = tmp_path / "prometheus.yml"
    config.write_text(text.replace("/etc/prometheus/alerts.yml", str(MONITORING / "alerts.yml")))
    result = run([promtool, "check", "config", str(config)])
    assert result.returncode == 0, f"promtool:\n{result.stdout}{result.stderr}"


def test_grafana_provisions_the_dashboard(compose_file: dict[str, Any]) -> None:
    mounts = _mounts(_services(compose_file)["grafana"])
    assert mounts["/etc/grafana/provisioning"] == "deploy/monitoring/grafana/provisioning"
    (dashboard_path,) = [
        c for c, h in mounts.items() if h == "deploy/monitoring/grafana-dashboard.json"
    ]
    assert DASHBOARD.is_file(), (
        f"{DASHBOARD.relative_to(REPO)} does not exist: docker-compose's Grafana mounts it"
    )
    dashboard = json.loads(DASHBOARD.read_text("utf-8"))
    assert dashboard.get("panels"), "the dashboard has no panels"

    provisioning = MONITORING / "grafana" / "provisioning"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "dashboards.yml").read_text())[
        "providers"
    ]
    assert dashboard_path.rsplit("/", 1)[0] == provider["options"]["path"]
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
