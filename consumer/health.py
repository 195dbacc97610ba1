"""``/metrics``, ``/healthz`` and ``/readyz`` on one small HTTP server thread.

- ``/healthz`` (liveness) fails when the poll loop has not completed an iteration within
  ``stall_timeout_s``: this thread keeps serving while the loop is stuck, so answering 200
  merely because HTTP works would hide exactly the failure liveness exists to catch.
- ``/readyz`` (readiness) fails once stopping, while any readiness blocker names a reason
  (the API rejects our credentials, the dead-letter producer cannot write, the brokers or the
  API have been failing for longer than ``HEALTH_OUTAGE_S``: :mod:`consumer.outage`), and
  while no partition is assigned; the JSON body's ``reason`` says which.

The server binds ``METRICS_HOST`` (every interface by default, as a pod's probes need).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


#: Returns why the pod must not receive traffic (e.g. "ASAPP API rejects the credentials"),
#: or None when this component does not block readiness.
Blocker = Callable[[], str | None]


@dataclass(frozen=True, slots=True)
class Probe:
    """What the health endpoints read; each callable is cheap and thread-safe (they run on
    the health server's thread while the loop runs)."""

    last_iteration: Callable[[], float]  # monotonic time of the loop's last turn
    assigned: Callable[[], int]
    blockers: Sequence[Blocker]
    stopping: Callable[[], bool]
    stall_timeout_s: float
    clock: Callable[[], float] = time.monotonic

    def live(self) -> tuple[bool, str]:
        """(live, reason): not live once the loop has not turned for ``stall_timeout_s``."""
        stalled = self.clock() - self.last_iteration()
        if stalled > self.stall_timeout_s:
            return False, f"poll loop stalled for {stalled:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        """(ready, reason): "stopping" first, then every blocker's reason ("; "-joined, in
        the order given), then "no partitions assigned"; (True, "ok") otherwise."""
        if self.stopping():
            return False, "stopping"
        reasons = [r for r in (blocker() for blocker in self.blockers) if r]
        if reasons:
            return False, "; ".join(reasons)
        if self.assigned() == 0:
            return False, "no partitions assigned"
        return True, "ok"


class HealthServer:
    """Serves the three endpoints on ``port`` (0 picks a free one) in a daemon thread."""

    def __init__(
        self, *, registry: CollectorRegistry, probe: Probe, port: int, host: str = "0.0.0.0"
    ) -> None:
        self.registry = registry
        self.probe = probe
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, why = outer.probe.live() if path == "/healthz" else outer.probe.ready()
                    body = json.dumps({"ok": ok, "reason": why}).encode()
                    self._send(200 if ok else 503, body, "application/json")
                else:
                    self._send(404, b'{"error":"not found"}', "application/json")

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # scrapes every few seconds would drown the logs

        self.host = host
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )

    def start(self) -> HealthServer:
        self._thread.start()
        log.info(
            "metrics and health on %s port %d",
            self.host,
            self.port,
            extra={"event": "health_listen", "host": self.host, "port": self.port},
        )
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
