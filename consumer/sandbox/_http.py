"""The threaded HTTP/1.1 server both sandbox stand-ins (emulated API, schema registry) run on.

The stand-in object owns the behaviour: it is told about every connection (so ``stop()`` can
shut them all down, hanging requests included) and answers every request.
"""

from __future__ import annotations

import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol


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
