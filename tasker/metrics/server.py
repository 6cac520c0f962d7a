"""The worker node's HTTP endpoint: ``/metrics``, ``/metrics.json``, ``/healthz``.

Built for a port anyone may reach (Compose binds ``0.0.0.0``):

* one selector thread accepts connections and reads request heads without
  blocking. A connection's ``REQUEST_TIMEOUT`` starts when it is accepted
  (not when a thread gets round to it), so a client that sends nothing, or
  one byte a second, is dropped after 2 s whatever else is going on;
* at most ``MAX_PENDING`` connections are open while their head arrives;
  one more closes the oldest connection of the peer address holding the most
  of them. A flood of idle connections therefore costs the node a bounded
  number of descriptors and churns through the attacker's own connections
  (another address, say the orchestrator's health check, is not evicted for
  it), while a fresh client, which sends its head at once, is read within
  one pass of the loop (accepts come in batches smaller than
  ``MAX_PENDING``, so a new connection is never evicted unread);
* a complete request is answered by a small pool: one thread for
  ``/healthz`` (never queued behind a slow scrape) and ``SERVER_THREADS``
  for ``/metrics`` and ``/metrics.json``. At most ``MAX_ANSWERING`` answers
  per pool are queued or being written; beyond that the client gets 503 at
  once. Errors (400, 401, 404, 405, 503) are written by the selector thread.

Descriptors the endpoint holds at most: ``MAX_DESCRIPTORS`` (pending heads,
answers in progress, the listening socket and the epoll descriptor).
"""

from __future__ import annotations

import email.utils
import hmac
import http
import json
import logging
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric

from tasker.metrics.exposition import TextExposition
from tasker.metrics.protobuf import CONTENT_TYPE as PROTOBUF_CONTENT_TYPE
from tasker.metrics.protobuf import accepts_protobuf

__all__ = ["MetricsServer", "MetricsServerError", "REQUEST_TIMEOUT", "SERVER_THREADS",
           "MAX_PENDING", "MAX_ANSWERING", "MAX_DESCRIPTORS"]

logger = logging.getLogger("tasker.metrics")

#: Seconds from accept to a complete request head; also the bound on writing the answer.
REQUEST_TIMEOUT = 2.0
#: Threads rendering ``/metrics`` and ``/metrics.json`` (``/healthz`` has its own).
SERVER_THREADS = 4
#: Connections open while their request head arrives; one more closes the oldest.
MAX_PENDING = 64
#: Answers per pool (health, scrape) queued or being written; more get 503 at once.
MAX_ANSWERING = 8
#: Every descriptor the endpoint can hold: pending heads, answers, listener, epoll.
MAX_DESCRIPTORS = MAX_PENDING + 2 * MAX_ANSWERING + 2
#: Connections accepted per loop pass; smaller than MAX_PENDING, see the module doc.
ACCEPT_BATCH = 16
#: Largest request head accepted (request line and headers).
MAX_HEAD_BYTES = 16384
#: Kernel queue of connections not yet accepted (they hold no descriptor of ours).
LISTEN_BACKLOG = 128
#: Longest wait of the selector loop, so :meth:`MetricsServer.stop` is prompt.
_POLL = 0.25


class MetricsServerError(RuntimeError):
    """The server could not start (e.g. the port is taken)."""


class _FamiliesCollector:
    def __init__(self, families: Callable[[], list[Metric]]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families()


@dataclass
class _Pending:
    sock: socket.socket
    deadline: float
    head: bytearray
    peer: str = ""


class _PendingSet:
    """Connections waiting for their head, in accept order (hence deadline order)."""

    def __init__(self) -> None:
        self._conns: dict[socket.socket, _Pending] = {}
        self._per_peer: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._conns)

    def add(self, conn: _Pending) -> None:
        self._conns[conn.sock] = conn
        self._per_peer[conn.peer] += 1

    def pop(self, sock: socket.socket) -> _Pending | None:
        conn = self._conns.pop(sock, None)
        if conn is not None:
            self._per_peer[conn.peer] -= 1
            if not self._per_peer[conn.peer]:
                del self._per_peer[conn.peer]
        return conn

    def oldest(self) -> _Pending:
        return next(iter(self._conns.values()))

    def victim(self) -> _Pending:
        """The oldest connection of the peer holding the most: a flood evicts its own."""
        busiest = max(self._per_peer, key=self._per_peer.__getitem__)
        return next(c for c in self._conns.values() if c.peer == busiest)

    def all(self) -> list[_Pending]:
        return list(self._conns.values())


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    authorization: str | None
    accept: str | None = None


def _parse_head(head: bytes) -> _Request | None:
    """Method, path (without query) and Authorization of a request head; None if malformed."""
    try:
        text = head.decode("iso-8859-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
        return None
    lines = text.replace("\r\n", "\n").split("\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    authorization = accept = None
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        name = name.strip().lower()
        if name == "authorization":
            authorization = value.strip()
        elif name == "accept":
            accept = value.strip()
    return _Request(parts[0], parts[1].split("?", 1)[0], authorization, accept)


def _response(status: int, content_type: str, body: bytes,
              extra: dict[str, str] | None = None) -> bytes:
    phrase = http.HTTPStatus(status).phrase
    lines = [f"HTTP/1.1 {status} {phrase}", "Server: tasker",
             f"Date: {email.utils.formatdate(usegmt=True)}",
             f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
             "Connection: close", *(f"{k}: {v}" for k, v in (extra or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _json_error(status: int, message: str, extra: dict[str, str] | None = None) -> bytes:
    return _response(status, "application/json", json.dumps({"error": message}).encode(), extra)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


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
                 health: Callable[[], tuple[bool, str]], token: str | None = None,
                 protobuf: Callable[[], bytes] | None = None) -> None:
        self.bind, self.requested_port = bind, port
        #: The protobuf exposition, for scrapers that ask for it (native histograms).
        self._protobuf = protobuf
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_FamiliesCollector(families))  # type: ignore[arg-type]
        self._registry = registry
        self._exposition = TextExposition()
        self._snapshot, self._health, self._token = snapshot, health, token
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._pools: dict[str, tuple[ThreadPoolExecutor, threading.BoundedSemaphore]] = {}

    @property
    def port(self) -> int | None:
        return self._listener.getsockname()[1] if self._listener is not None else None

    def start(self) -> None:
        try:
            self._listener = self._listen()
        except OSError as exc:
            raise MetricsServerError(
                f"cannot serve metrics on {self.bind}:{self.requested_port} "
                f"(TASKER_METRICS_BIND / TASKER_METRICS_PORT): {exc.strerror or exc}; "
                "choose another port, or TASKER_METRICS_PORT=0 for any free port"
            ) from None
        self._stopping.clear()
        self._pools = {
            "health": (ThreadPoolExecutor(1, thread_name_prefix="tasker-http-health"),
                       threading.BoundedSemaphore(MAX_ANSWERING)),
            "scrape": (ThreadPoolExecutor(SERVER_THREADS, thread_name_prefix="tasker-http"),
                       threading.BoundedSemaphore(MAX_ANSWERING)),
        }
        self._thread = threading.Thread(target=self._serve, name="tasker-metrics-server",
                                        daemon=True)
        self._thread.start()

    def _listen(self) -> socket.socket:
        host = self.bind[1:-1] if self.bind.startswith("[") else self.bind
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, self.requested_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            # As http.server did: a restarted node can bind while old connections linger.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for executor, _ in self._pools.values():
            executor.shutdown(wait=False, cancel_futures=True)
        self._pools = {}
        if self._listener is not None:
            _close(self._listener)
            self._listener = None

    # ------------------------------------------------------------ selector thread

    def _serve(self) -> None:
        listener = self._listener
        assert listener is not None
        selector = selectors.DefaultSelector()
        pending = _PendingSet()
        selector.register(listener, selectors.EVENT_READ, None)
        try:
            while not self._stopping.is_set():
                timeout = _POLL
                if pending:
                    first = pending.oldest()
                    timeout = min(timeout, max(0.0, first.deadline - time.monotonic()))
                for key, _events in selector.select(timeout):
                    try:
                        if key.data is None:
                            self._accept(listener, selector, pending)
                        else:
                            self._read(key.data, selector, pending)
                    except Exception:  # noqa: BLE001 - one bad client must not stop the loop
                        logger.debug("metrics.http_error", exc_info=True)
                        if key.data is not None:
                            self._drop(key.data, selector, pending)
                now = time.monotonic()
                while pending:
                    conn = pending.oldest()
                    if conn.deadline > now:
                        break
                    self._drop(conn, selector, pending)  # too slow: head not sent in time
        finally:
            for conn in pending.all():
                self._drop(conn, selector, pending)
            selector.close()

    def _drop(self, conn: _Pending, selector: selectors.BaseSelector,
              pending: _PendingSet) -> None:
        if pending.pop(conn.sock) is not None:
            try:
                selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        _close(conn.sock)

    def _accept(self, listener: socket.socket, selector: selectors.BaseSelector,
                pending: _PendingSet) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                # EMFILE/ENFILE: the process is out of descriptors. Free one of
                # ours so the listener does not spin; the kernel keeps the queue.
                logger.debug("metrics.accept_failed", extra={"reason": str(exc)})
                if pending:
                    self._drop(pending.victim(), selector, pending)
                return
            if len(pending) >= MAX_PENDING:
                self._drop(pending.victim(), selector, pending)
            sock.setblocking(False)
            conn = _Pending(sock, time.monotonic() + REQUEST_TIMEOUT, bytearray(),
                            str(address[0]) if isinstance(address, tuple) else "")
            pending.add(conn)
            selector.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Pending, selector: selectors.BaseSelector,
              pending: _PendingSet) -> None:
        try:
            chunk = conn.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(conn, selector, pending)
            return
        conn.head += chunk
        end = conn.head.find(b"\r\n\r\n")
        if end < 0:
            end = conn.head.find(b"\n\n")
        if end < 0:
            if len(conn.head) > MAX_HEAD_BYTES:
                self._answer_now(conn, selector, pending,
                                 _json_error(431, "request head too large"))
            return
        # The head is complete: the connection leaves the selector and the pending set.
        pending.pop(conn.sock)
        selector.unregister(conn.sock)
        self._dispatch(conn.sock, bytes(conn.head[:end]))

    def _answer_now(self, conn: _Pending, selector: selectors.BaseSelector,
                    pending: _PendingSet, response: bytes) -> None:
        pending.pop(conn.sock)
        selector.unregister(conn.sock)
        self._send_nowait(conn.sock, response)

    @staticmethod
    def _send_nowait(sock: socket.socket, response: bytes) -> None:
        """Write a short answer from the selector thread: one attempt, never blocking."""
        try:
            sock.send(response)  # a few hundred bytes: fits the socket's send buffer
        except OSError:
            pass
        _close(sock)

    def _dispatch(self, sock: socket.socket, head: bytes) -> None:
        request = _parse_head(head)
        if request is None:
            self._send_nowait(sock, _json_error(400, "bad request"))
            return
        if request.method != "GET":
            self._send_nowait(sock, _json_error(405, "method not allowed", {"Allow": "GET"}))
            return
        if request.path == "/healthz":
            pool = "health"
        elif request.path in ("/metrics", "/metrics.json"):
            if not self._authorized(request.authorization):
                self._send_nowait(sock, _json_error(
                    401, "unauthorized", {"WWW-Authenticate": 'Bearer realm="tasker"'}))
                return
            pool = "scrape"
        else:
            self._send_nowait(sock, _json_error(404, "not found"))
            return
        executor, slots = self._pools[pool]
        if not slots.acquire(blocking=False):
            self._send_nowait(sock, _json_error(503, "busy", {"Retry-After": "1"}))
            return
        try:
            executor.submit(self._answer, sock, request.path, slots, request.accept)
        except RuntimeError:  # shut down meanwhile
            slots.release()
            _close(sock)

    # --------------------------------------------------------------- answer threads

    def _answer(self, sock: socket.socket, path: str, slots: threading.BoundedSemaphore,
                accept: str | None = None) -> None:
        try:
            self._write(sock, self._build(path, accept))
        except Exception:  # noqa: BLE001 - one bad client must not stop the server
            logger.debug("metrics.http_error", exc_info=True)
        finally:
            _close(sock)
            slots.release()

    def _build(self, path: str, accept: str | None = None) -> bytes:
        if path == "/healthz":
            healthy, reason = self._health()
            body = json.dumps({"status": "ok" if healthy else "unavailable",
                               "reason": reason}).encode()
            return _response(200 if healthy else 503, "application/json", body)
        try:
            if path == "/metrics" and self._protobuf is not None and accepts_protobuf(accept):
                # What a Prometheus with native histograms asks for (content negotiation).
                return _response(200, PROTOBUF_CONTENT_TYPE, self._protobuf())
            if path == "/metrics":
                # Classic text format 0.0.4: every Prometheus 2.x parses it, and
                # tasker's names need none of 1.0.0's UTF-8 escaping.
                return _response(200, CONTENT_TYPE_PLAIN_0_0_4,
                                 self._exposition.render(self._registry))
            body = json.dumps(self._snapshot(), separators=(",", ":")).encode()
            return _response(200, "application/json", body)
        except Exception:  # noqa: BLE001 - report, keep serving
            logger.exception("metrics.scrape_failed")
            return _json_error(500, "scrape failed")

    @staticmethod
    def _write(sock: socket.socket, data: bytes) -> None:
        """Send ``data`` within ``REQUEST_TIMEOUT`` overall: a client that reads one
        byte a second cannot hold an answer thread longer than that."""
        deadline = time.monotonic() + REQUEST_TIMEOUT
        view = memoryview(data)
        sock.setblocking(True)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            sock.settimeout(remaining)
            try:
                sent = sock.send(view)
            except OSError:
                return
            view = view[sent:]

    def _authorized(self, header: str | None) -> bool:
        if self._token is None:
            return True
        expected = f"Bearer {self._token}".encode()
        # Constant-time comparison: the answer time tells nothing about the token.
        return hmac.compare_digest((header or "").encode(), expected)
