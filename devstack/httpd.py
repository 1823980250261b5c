"""Start/stop plumbing shared by the local HTTP stand-ins (IMDS double, Jenkins double, the tests' and
benchmarks' proxies): a threading HTTP server on 127.0.0.1, served from a daemon thread, usable as a
context manager. Loopback only: nothing here ever listens on another address.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOOPBACK = "127.0.0.1"


class LoopbackHTTPServer:
    """Base of a local HTTP stand-in. A subclass's ``start()`` builds its handler class and calls
    :meth:`_serve`; ``stop()`` and the context manager come from here."""

    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def start(self) -> Any:
        raise NotImplementedError

    def _serve(self, handler: type[BaseHTTPRequestHandler], *, name: str, port: int = 0,
               server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer, poll_interval: float = 0.5) -> str:
        """Listen on 127.0.0.1:``port`` (0: any free port) and serve; returns the base URL."""
        server = server_class((LOOPBACK, port), handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": poll_interval},
                                        name=name, daemon=True)
        self._thread.start()
        return f"http://{LOOPBACK}:{server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
