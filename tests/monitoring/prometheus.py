"""A real Prometheus server for tests: scrape one target every second, evaluate our alert rules.

Pytest-independent (plain exceptions, context manager), so unit, scrape and end-to-end tests
share it::

    with PrometheusServer(targets=["127.0.0.1:9400"]) as prom:
        prom.wait_for("up", lambda rs: rs and rs[0].value == 1, timeout_s=10)
        prom.query("asapp_consumer_ready")          # -> [Sample(labels={...}, value=1.0)]

:func:`verify_target` is the one-call check the end-to-end test makes against the running
service: Prometheus scrapes it, the expected series reach the given values, every dashboard
expression and every alert expression evaluate without error, and every rule group loads.

Contract: :meth:`PrometheusServer.start` returns only once ``/-/ready`` answers 200, or raises
:class:`PrometheusError` with the tail of the server's log; :meth:`~PrometheusServer.stop` always
terminates the process (kill after a bounded wait) and removes the temporary directory.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import yaml

from tests.monitoring.artifacts import ALERTS, alert_rules, dashboard_exprs, render_grafana_expr

#: Where Debian's ``prometheus`` package puts the server.
DEFAULT_BINARY = "/usr/bin/prometheus"
#: The scrape job the Kubernetes deployment uses; alerts that select on ``job`` expect it.
JOB = "asapp-metadata-consumer"
INSTALL_HINT = "install it with `apt-get install -y prometheus` (Debian/Ubuntu package)"


class PrometheusError(RuntimeError):
    """The server would not start, a query failed, or a wait timed out."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One element of an instant-query result (a scalar result has no labels)."""

    labels: Mapping[str, str]
    value: float


Results = list[Sample]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_binary(binary: str | None = None) -> str:
    """The Prometheus server binary, or :class:`PrometheusError` with an install hint.

    Looks at ``binary``, then ``$PROMETHEUS``, then ``PATH``, then :data:`DEFAULT_BINARY`.
    """
    found = binary or os.environ.get("PROMETHEUS") or shutil.which("prometheus") or DEFAULT_BINARY
    if not Path(found).is_file():
        raise PrometheusError(f"Prometheus server not found at {found}: {INSTALL_HINT}")
    return found


@dataclass
class PrometheusServer:
    """One Prometheus process with a temporary config and TSDB, scraping ``targets``."""

    targets: Sequence[str]
    rule_files: Sequence[Path] = (ALERTS,)
    scrape_interval_s: float = 1.0
    job: str = JOB
    binary: str | None = None
    startup_timeout_s: float = 30.0
    port: int = field(default=0)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _tmp: Path | None = field(default=None, init=False, repr=False)
    _client: httpx.Client | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self) -> dict[str, Any]:
        interval = f"{max(1, round(self.scrape_interval_s * 1000))}ms"
        return {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "rule_files": [str(Path(p).resolve()) for p in self.rule_files],
            "scrape_configs": [
                {"job_name": self.job, "static_configs": [{"targets": list(self.targets)}]}
            ],
        }

    def start(self) -> Self:
        """Launch the server and wait until it is ready; see the module contract."""
        binary = find_binary(self.binary)
        self._tmp = Path(tempfile.mkdtemp(prefix="prometheus-test-"))
        config = self._tmp / "prometheus.yml"
        config.write_text(yaml.safe_dump(self._config()), encoding="utf-8")
        self.port = self.port or free_port()
        log = (self._tmp / "prometheus.log").open("wb")
        self._proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self._tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()  # the child keeps its own descriptor
        self._client = httpx.Client(base_url=self.url, timeout=5.0)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._fail(f"Prometheus exited with code {self._proc.returncode}")
            try:
                if self._client.get("/-/ready").status_code == 200:
                    return self
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.1)
        self._fail(f"Prometheus not ready after {self.startup_timeout_s}s")
        raise AssertionError("unreachable")

    def _fail(self, message: str) -> None:
        tail = self.log()[-3000:]
        self.stop()
        raise PrometheusError(f"{message}; log tail:\n{tail}")

    def log(self) -> str:
        """The server's log so far (for failure messages)."""
        if self._tmp is None or not (self._tmp / "prometheus.log").exists():
            return ""
        return (self._tmp / "prometheus.log").read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        """Terminate the server (kill after 10 s) and delete its temporary directory."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=10)
            self._proc = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        if self._client is None:
            raise PrometheusError("Prometheus is not running; call start() first")
        response = self._client.get(path, params=params)
        body = response.json()
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> Results:
        """Evaluate ``expr`` now; raises :class:`PrometheusError` on a bad expression."""
        data = self._api("/api/v1/query", {"query": expr})
        if data["resultType"] in ("scalar", "string"):
            return [Sample(labels={}, value=float(data["result"][1]))]
        if data["resultType"] == "matrix":
            return [
                Sample(labels=r["metric"], value=float(r["values"][-1][1])) for r in data["result"]
            ]
        return [Sample(labels=r["metric"], value=float(r["value"][1])) for r in data["result"]]

    def wait_for(
        self, expr: str, predicate: Callable[[Results], bool], timeout_s: float = 15.0
    ) -> Results:
        """Poll ``expr`` until ``predicate(results)`` holds; return those results.

        Raises :class:`PrometheusError` naming the expression and the last results on timeout.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            results = self.query(expr)
            if predicate(results):
                return results
            if time.monotonic() >= deadline:
                raise PrometheusError(
                    f"timed out after {timeout_s}s waiting on {expr!r}; last results: {results}"
                )
            time.sleep(0.2)

    def rule_groups(self) -> list[dict[str, Any]]:
        """``/api/v1/rules`` groups: each rule with its ``health`` and ``lastError``."""
        groups: list[dict[str, Any]] = self._api("/api/v1/rules")["groups"]
        return groups

    def targets_health(self) -> list[dict[str, Any]]:
        """``/api/v1/targets`` active targets with ``health`` and ``lastError``."""
        active: list[dict[str, Any]] = self._api("/api/v1/targets")["activeTargets"]
        return active


def _equals(expected: float) -> Callable[[Results], bool]:
    return lambda rs: len(rs) > 0 and all(math.isclose(r.value, expected) for r in rs)


def verify_target(
    target: str,
    expected: Mapping[str, float | Callable[[Results], bool]],
    *,
    timeout_s: float = 20.0,
    extra_exprs: Iterable[str] = (),
    binary: str | None = None,
) -> dict[str, Results]:
    """Scrape ``target`` ("host:port") with a real Prometheus and check what it exports.

    ``expected`` maps a PromQL expression to the value every result must have (or a predicate
    over the results); each is awaited. Then every dashboard expression, every alert expression
    and ``extra_exprs`` must evaluate without error, and every alert rule must report health
    ``ok``. Returns the results of the ``expected`` expressions. Raises :class:`PrometheusError`
    (or :class:`AssertionError` for a rule or target that is unhealthy).
    """
    results: dict[str, Results] = {}
    with PrometheusServer(targets=[target], binary=binary) as prom:
        prom.wait_for(f'up{{job="{prom.job}"}}', _equals(1.0), timeout_s=timeout_s)
        for expr, want in expected.items():
            predicate = want if callable(want) else _equals(float(want))
            results[expr] = prom.wait_for(expr, predicate, timeout_s=timeout_s)
        for _title, expr in dashboard_exprs():
            prom.query(render_grafana_expr(expr))
        for rule in alert_rules():
            prom.query(rule["expr"])
        for expr in extra_exprs:
            prom.query(expr)

        def rules_evaluated(_: Results) -> bool:
            rules = [r for g in prom.rule_groups() for r in g["rules"]]
            return len(rules) > 0 and all(r["health"] != "unknown" for r in rules)

        prom.wait_for("vector(1)", rules_evaluated, timeout_s=timeout_s)
        unhealthy = [
            (r["name"], r.get("lastError"))
            for g in prom.rule_groups()
            for r in g["rules"]
            if r["health"] != "ok"
        ]
        assert not unhealthy, f"alert rules failing to evaluate: {unhealthy}"
        down = [
            (t["scrapeUrl"], t["lastError"]) for t in prom.targets_health() if t["health"] != "up"
        ]
        assert not down, f"targets not scraped: {down}"
    return results
