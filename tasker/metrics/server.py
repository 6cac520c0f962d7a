"""The worker node's HTTP endpoint: ``/metrics``, ``/metrics.json``, ``/healthz``.

Runs in the MainProcess on a small, fixed pool of threads: a slow or hostile
client holds one thread for at most ``REQUEST_TIMEOUT`` seconds and can never
make the node spawn more.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric

from tasker.metrics.exposition import TextExposition

__all__ = ["MetricsServer", "MetricsServerError", "REQUEST_TIMEOUT", "SERVER_THREADS"]

logger = logging.getLogger("tasker.metrics")

#: Seconds a client may take to send its whole request head, or to read the answer.
REQUEST_TIMEOUT = 2.0
#: Threads answering requests; more clients wait in the listen backlog.
SERVER_THREADS = 8
#: Largest request head accepted (request line and headers).
MAX_HEAD_BYTES = 16384


class MetricsServerError(RuntimeError):
    """The server could not start (e.g. the port is taken)."""


class _FamiliesCollector:
    def __init__(self, families: Callable[[], list[Metric]]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families()


def _read_head(sock: socket.socket, timeout: float, limit: int) -> bytes:
    """The request head, read against one overall deadline.

    A per-read socket timeout alone would let a client that trickles one byte
    at a time hold a thread for ever; here the whole head must arrive within
    ``timeout``. Returns b"" for a client that is too slow or sends too much.
    """
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while b"\r\n\r\n" not in buf and b"\n\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or len(buf) > limit:
            return b""
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(4096)
        except OSError:
            return b""
        if not chunk:
            break
        buf += chunk
    sock.settimeout(timeout)  # for writing the answer
    return bytes(buf)


class _BoundedHTTPServer(HTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._executor = ThreadPoolExecutor(SERVER_THREADS, thread_name_prefix="tasker-http")
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._executor.submit(self._serve_one, request, client_address)

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - one bad client must not stop the server
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("metrics.http_error", exc_info=True)

    def server_close(self) -> None:
        super().server_close()
        self._executor.shutdown(wait=False, cancel_futures=True)


class MetricsServer:
    """Serves one node's metrics.

    Args:
        bind: address to bind.
        port: port to bind (0 = any free port; see :attr:`port` after start).
        families: builds the metric families of one scrape.
        snapshot: builds the ``/metrics.json`` document.
        health: returns (healthy, reason) for ``/healthz``.
        token: when set, ``/metrics`` and ``/metrics.json`` need ``Authorization: Bearer``.
    """

    def __init__(self, bind: str, port: int, families: Callable[[], list[Metric]],
                 snapshot: Callable[[], dict[str, Any]],
                 health: Callable[[], tuple[bool, str]], token: str | None = None) -> None:
        self.bind, self.requested_port = bind, port
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_FamiliesCollector(families))  # type: ignore[arg-type]
        self._registry = registry
        self._exposition = TextExposition()
        self._snapshot, self._health, self._token = snapshot, health, token
        self._httpd: _BoundedHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        return self._httpd.server_address[1] if self._httpd else None

    def start(self) -> None:
        try:
            self._httpd = _BoundedHTTPServer((self.bind, self.requested_port), self._handler())
        except OSError as exc:
            raise MetricsServerError(
                f"cannot serve metrics on {self.bind}:{self.requested_port} "
                f"(TASKER_METRICS_BIND / TASKER_METRICS_PORT): {exc.strerror or exc}; "
                "choose another port, or TASKER_METRICS_PORT=0 for any free port"
            ) from None
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.5},
                                        name="tasker-metrics-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def _authorized(self, header: str | None) -> bool:
        if self._token is None:
            return True
        expected = f"Bearer {self._token}".encode()
        # Constant-time comparison: the answer time tells nothing about the token.
        return hmac.compare_digest((header or "").encode(), expected)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = REQUEST_TIMEOUT
            protocol_version = "HTTP/1.1"
            server_version = "tasker"
            sys_version = ""

            def setup(self) -> None:
                super().setup()
                # GET requests have no body: parse from the head read under a deadline.
                self.rfile = io.BytesIO(_read_head(self.connection, REQUEST_TIMEOUT,
                                                   MAX_HEAD_BYTES))

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    healthy, reason = server._health()
                    self._send(200 if healthy else 503, "application/json",
                               json.dumps({"status": "ok" if healthy else "unavailable",
                                           "reason": reason}).encode())
                    return
                if path not in ("/metrics", "/metrics.json"):
                    self._send(404, "application/json", b'{"error": "not found"}')
                    return
                if not server._authorized(self.headers.get("Authorization")):
                    self._send(401, "application/json", b'{"error": "unauthorized"}',
                               extra={"WWW-Authenticate": 'Bearer realm="tasker"'})
                    return
                try:
                    if path == "/metrics":
                        body = server._exposition.render(server._registry)
                        # Classic text format 0.0.4: every Prometheus 2.x parses it, and
                        # tasker's names need none of 1.0.0's UTF-8 escaping.
                        self._send(200, CONTENT_TYPE_PLAIN_0_0_4, body)
                    else:
                        body = json.dumps(server._snapshot(), separators=(",", ":")).encode()
                        self._send(200, "application/json", body)
                except Exception:  # noqa: BLE001 - report, keep serving
                    logger.exception("metrics.scrape_failed")
                    self._send(500, "application/json", b'{"error": "scrape failed"}')

            def _not_allowed(self) -> None:
                self._send(405, "application/json", b'{"error": "method not allowed"}',
                           extra={"Allow": "GET"})

            do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed  # noqa: N815
            do_HEAD = do_OPTIONS = _not_allowed  # noqa: N815

            def _send(self, status: int, content_type: str, body: bytes,
                      extra: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                for key, value in (extra or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                logger.debug("metrics.http_request", extra={"request": format % args})

        return Handler

