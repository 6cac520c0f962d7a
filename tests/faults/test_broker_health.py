"""``/healthz`` follows the broker: 503 while the node cannot consume, 200 once it can again.

The broker "goes away" for one node only: the node reaches it through a loopback
proxy (``tests/tcp_proxy.py``) that resets every connection and refuses new ones.
"""

from __future__ import annotations

import json
import time

import kombu
import pytest
from conftest import TEST_REDIS_DB
from support import http_get, total, wait_for
from tcp_proxy import TcpProxy

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def _health(node) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
    status, headers, body = http_get(f"{node.url}/healthz", timeout=3)
    assert headers["Content-Type"].startswith("application/json"), headers
    assert body.strip().count(b"\n") == 0, body  # one line
    return status, json.loads(body)


def _within(seconds: float, node, status: int) -> float:  # type: ignore[no-untyped-def]
    """Seconds until /healthz answered ``status``; fails after ``seconds``."""
    started = time.monotonic()
    wait_for(lambda: _health(node)[0] == status, timeout=seconds, interval=0.1,
             message=f"/healthz {status}")
    return time.monotonic() - started


def _outage(node, proxy: TcpProxy, send) -> None:  # type: ignore[no-untyped-def]
    assert _within(30, node, 200) >= 0
    proxy.cut()
    try:
        _within(5, node, 503)
        status, body = _health(node)
        assert status == 503 and "broker" in body["reason"], body
        time.sleep(3)  # still down a few seconds later
        assert _health(node)[0] == 503
    finally:
        proxy.restore()
    _within(5, node, 200)
    send()
    wait_for(lambda: total(node.scrape(), "tasker_tasks_succeeded_total",
                           task="diagnostics.noop") >= 1, timeout=30, message="a task after")


def test_healthz_follows_a_redis_broker(start_node, app):
    with TcpProxy(6379) as proxy:
        node = start_node(env={
            "TASKER_BROKER_URL": f"redis://127.0.0.1:{proxy.port}/{TEST_REDIS_DB}"})
        _outage(node, proxy, lambda: app.send_task("diagnostics.noop", queue=node.queue))


def test_healthz_follows_a_rabbitmq_broker(start_node, app):
    try:
        with kombu.Connection(AMQP_URL, connect_timeout=3) as probe:
            probe.connect()
    except OSError as exc:  # pragma: no cover - .ci/run starts RabbitMQ
        pytest.fail(f"RabbitMQ is not reachable: {exc}")
    with TcpProxy(5672) as proxy:
        node = start_node(env={
            "TASKER_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{proxy.port}//"})

        def send() -> None:
            with kombu.Connection(AMQP_URL) as conn:
                app.send_task("diagnostics.noop", queue=node.queue, connection=conn)

        try:
            _outage(node, proxy, send)
        finally:
            with kombu.Connection(AMQP_URL) as conn:
                conn.default_channel.queue_delete(node.queue)
