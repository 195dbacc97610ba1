"""The threaded HTTP/1.1 server both sandbox stand-ins (emulated API, schema registry) run on.

The stand-in object owns the behaviour: it is told about every connection (so ``stop()`` can
shut them all down, hanging requests included) and answers every request.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Protocol, Self


class StandIn(Protocol):
    def _track(self, conn: socket.socket, *, add: bool) -> None: ...
    def _serve(self, h: Handler, method: str) -> None: ...


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], stand_in: StandIn) -> None:
        self.stand_in = stand_in
        super().__init__(address, Handler)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: Server

    def setup(self) -> None:
        super().setup()
        self.server.stand_in._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.stand_in._track(self.connection, add=False)

    def do_GET(self) -> None:
        self.server.stand_in._serve(self, "GET")

    def do_POST(self) -> None:
        self.server.stand_in._serve(self, "POST")

    def do_PUT(self) -> None:
        self.server.stand_in._serve(self, "PUT")

    def do_DELETE(self) -> None:
        self.server.stand_in._serve(self, "DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: each stand-in keeps its own record of requests."""


class StandInServer:
    """Lifecycle shared by the stand-ins: bind (port 0 picks a free one), serve in a daemon
    thread, track connections so :meth:`stop` can shut every one of them down, ``with``
    support. Subclasses implement ``_serve`` and may hook ``_on_start`` / ``_on_stop``."""

    thread_name = "sandbox-stand-in"

    def __init__(self, *, host: str, port: int) -> None:
        self.host, self._port = host, port
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    def _serve(self, h: Handler, method: str) -> None:
        raise NotImplementedError

    def _on_start(self) -> None:
        """Called before serving starts."""

    def _on_stop(self) -> None:
        """Called once serving stopped, before open connections are shut down."""

    def start(self) -> Self:
        """Bind and serve in a background thread. Returns self."""
        if self._server is not None:
            raise RuntimeError(f"{self.thread_name} already started")
        self._on_start()
        self._server = Server((self.host, self._port), self)
        self._port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"{self.thread_name}:{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and shut open connections down. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        self._on_stop()
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (meaningful after :meth:`start`)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:43210`` (no trailing slash)."""
        return f"http://{self.host}:{self._port}"

    def serve_until_signalled(self, ready_line: str) -> int:
        """Serve until SIGTERM/SIGINT (the CLI entry points), printing ``ready_line`` and the
        URL once listening. The handlers only request the stop; this thread performs it."""
        stop = threading.Event()
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, lambda *_: stop.set())
        try:
            self.start()
            print(f"{ready_line} {self.url}", flush=True)
            while not stop.wait(0.5):
                pass
        finally:
            self.stop()
            for number, handler in previous.items():
                signal.signal(number, handler)
        return 0

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)
