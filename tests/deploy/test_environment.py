"""The consumer's environment, wherever it is set, uses only names the service reads.

The names come from the service itself (``consumer.settings.ENV_VARS``, plus ``KAFKA_*``
pass-through properties), so a renamed or misspelt variable in docker-compose.yml, the
ConfigMap or the Deployment fails here instead of being silently ignored at run time. The
values are then fed to ``Settings.from_env`` so they are also valid, not just well named.
"""

from __future__ import annotations

from typing import Any

import pytest

from consumer.settings import ENV_VARS, Settings
from tests.deploy.conftest import OVERLAYS, Rendered

REQUIRED = {"KAFKA_BOOTSTRAP_SERVERS", "ASAPP_API_ID", "ASAPP_API_SECRET"}


def unknown_names(names: set[str]) -> set[str]:
    """Names the service would ignore."""
    return {n for n in names if n not in ENV_VARS and not n.startswith("KAFKA_")}


def compose_consumer_env(compose: dict[str, Any]) -> dict[str, str]:
    env = compose["services"]["consumer"]["environment"]
    if isinstance(env, list):  # the `- NAME=value` form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def deployment_env_names(render: Rendered) -> set[str]:
    return {e["name"] for e in render.container.get("env", [])}


def test_unknown_names_are_detected() -> None:
    assert unknown_names({"KAFKA_SECURITY_PROTOCOL", "ASAPP_API_ID"}) == set()
    assert unknown_names({"ASAPP_API_KEY", "METRICS_PROT"}) == {"ASAPP_API_KEY", "METRICS_PROT"}


def test_compose_consumer_env_names(compose_file: dict[str, Any]) -> None:
    env = compose_consumer_env(compose_file)
    assert not unknown_names(set(env)), f"unknown variables: {unknown_names(set(env))}"
    assert set(env) >= REQUIRED
    assert env.get("SCHEMA_REGISTRY_URL"), (
        "compose runs a schema registry: point the consumer at it"
    )
    Settings.from_env(env)  # raises ConfigError naming the bad variable


@pytest.mark.parametrize("overlay", [pytest.param(o, id=o) for o in OVERLAYS])
def test_kubernetes_env_names(rendered: dict[str, Rendered], overlay: str) -> None:
    render = rendered[overlay]
    config = render.config
    from_deployment = deployment_env_names(render)
    assert not unknown_names(set(config)), f"ConfigMap: {unknown_names(set(config))}"
    assert not unknown_names(from_deployment), f"Deployment env: {unknown_names(from_deployment)}"
    assert not set(config) & from_deployment, "a variable is set in both ConfigMap and env"
    assert set(config) | from_deployment >= REQUIRED
    # Credentials come from the Secret, never from the ConfigMap.
    assert not {n for n in config if "SECRET" in n or "PASSWORD" in n or "USER_INFO" in n}
    env = dict(config)
    env.update({name: f"fake-{name.lower()}" for name in from_deployment})
    settings = Settings.from_env(env)
    assert settings.metrics_port == int(config.get("METRICS_PORT", "9400"))


def test_every_setting_is_documented_somewhere() -> None:
    """ENV_VARS is importable and non-trivial (guards against a silently empty contract)."""
    assert REQUIRED <= ENV_VARS
    assert len(ENV_VARS) >= 10
