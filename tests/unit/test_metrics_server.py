"""The endpoint in-process: answers, errors, and deadlines counted from accept."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from support import http_get

from tasker.metrics import server as server_module
from tasker.metrics.server import MetricsServer


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    release = threading.Event()

    def snapshot() -> dict[str, object]:
        release.wait(10)  # a scrape that takes as long as the test wants
        return {"worker": "w"}

    srv = MetricsServer("127.0.0.1", 0, lambda: [], snapshot, lambda: (True, "ok"),
                        token="tok")
    srv.release = release  # type: ignore[attr-defined]
    srv.start()
    yield srv
    release.set()
    srv.stop()


def _raw(port: int, data: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_errors_and_health(server: MetricsServer) -> None:
    url = f"http://127.0.0.1:{server.port}"
    assert http_get(f"{url}/healthz")[0] == 200
    assert http_get(f"{url}/metrics")[0] == 401
    assert http_get(f"{url}/nope")[0] == 404
    status, headers, _ = http_get(f"{url}/healthz", method="POST")
    assert status == 405 and headers["Allow"] == "GET"
    assert _raw(server.port, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    big = b"GET /healthz HTTP/1.1\r\n" + b"X: " + b"a" * 20000
    assert _raw(server.port, big).startswith(b"HTTP/1.1 431 ")
    server.release.set()  # type: ignore[attr-defined]
    status, _, body = http_get(f"{url}/metrics.json", {"Authorization": "Bearer tok"})
    assert status == 200 and body == b'{"worker":"w"}'


def test_health_answers_while_every_scrape_thread_is_busy(server: MetricsServer) -> None:
    url = f"http://127.0.0.1:{server.port}/metrics.json"
    stuck = [threading.Thread(target=http_get, args=(url, {"Authorization": "Bearer tok"}),
                              kwargs={"timeout": 15}, daemon=True)
             for _ in range(server_module.MAX_ANSWERING + 2)]
    for t in stuck:
        t.start()
    time.sleep(0.3)
    started = time.monotonic()
    assert http_get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)[0] == 200
    assert time.monotonic() - started < 1.0
    # Beyond the bound, a scrape is refused at once rather than queued for ever.
    status, headers, _ = http_get(url, {"Authorization": "Bearer tok"}, timeout=5)
    assert status == 503 and headers["Retry-After"] == "1"
    server.release.set()  # type: ignore[attr-defined]


def test_the_head_deadline_counts_from_accept(server: MetricsServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.settimeout(server_module.REQUEST_TIMEOUT + 3)
        started = time.monotonic()
        s.sendall(b"GET /healthz HTTP/1.1\r\n")  # never completed
        assert s.recv(100) == b""  # closed by the server
        elapsed = time.monotonic() - started
    assert server_module.REQUEST_TIMEOUT - 0.2 <= elapsed < server_module.REQUEST_TIMEOUT + 1


def test_an_ipv6_bind_serves() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    srv = MetricsServer("::1", 0, lambda: [], dict, lambda: (True, "ok"))
    try:
        srv.start()
    except server_module.MetricsServerError:
        pytest.skip("no IPv6 loopback here")
    try:
        assert http_get(f"http://[::1]:{srv.port}/healthz")[0] == 200
    finally:
        srv.stop()


def test_a_flood_from_one_address_evicts_its_own_connections(server: MetricsServer) -> None:
    port = server.port
    # A client from 127.0.0.1 connects and is slow to send its head (a far network).
    client = socket.create_connection(("127.0.0.1", port))
    time.sleep(0.2)
    # Meanwhile another address opens more connections than the server keeps pending.
    flood = []
    for _ in range(server_module.MAX_PENDING * 2):
        s = socket.socket()
        s.bind(("127.0.0.2", 0))
        s.connect(("127.0.0.1", port))
        flood.append(s)
    try:
        time.sleep(0.5)  # every flood connection accepted (and most of them evicted)
        client.settimeout(5)
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = client.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
    finally:
        client.close()
        for s in flood:
            s.close()
