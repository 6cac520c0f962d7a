"""tasker/broker_client.py against the real Redis: one client per channel, same behaviour.

Every kombu key of a test here is its own (queue and unacked keys carry a
unique name), and all of them are deleted at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection

from tasker import broker_client

REDIS_URL = "redis://127.0.0.1:6379/11"


@pytest.fixture
def reuse() -> Iterator[None]:
    """The change installed for the test; the process's earlier state restored after."""
    was_installed = broker_client.installed()
    assert broker_client.install()
    yield
    if not was_installed:
        broker_client.uninstall()


@pytest.fixture
def connection() -> Iterator[tuple[Connection, str]]:
    """A kombu connection whose queue and unacked keys belong to this test alone."""
    name = f"tasker-test-broker-client-{uuid.uuid4().hex[:8]}"
    options = {"unacked_key": f"{name}-unacked", "unacked_index_key": f"{name}-unacked-index",
               "unacked_mutex_key": f"{name}-unacked-mutex"}
    conn = Connection(REDIS_URL, transport_options=options)
    try:
        yield conn, name
    finally:
        conn.release()
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{name}*"):
            client.delete(key)
        client.close()


def _unacked(name: str) -> dict[bytes, bytes]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return client.hgetall(f"{name}-unacked")
    finally:
        client.close()


def test_a_channel_reuses_one_client_until_its_pool_is_replaced(
        reuse: None, connection: tuple[Connection, str]) -> None:
    conn, _ = connection
    channel: Any = conn.default_channel
    with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
        assert first is second
        assert first.connection_pool is channel.pool
    # The asynchronous client (BRPOP, publishing) stays kombu's own object.
    assert channel.client is not first
    # After a connection error kombu drops its pools; the next client uses the new one.
    channel._disconnect_pools()
    with channel.conn_or_acquire() as third:
        assert third is not first
        assert third.connection_pool is channel.pool


def test_uninstall_gives_kombus_own_client_per_command(
        reuse: None, connection: tuple[Connection, str]) -> None:
    broker_client.uninstall()
    try:
        conn, _ = connection
        channel: Any = conn.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is not second
    finally:
        broker_client.install()


def test_messages_are_taken_acked_and_requeued_as_before(
        reuse: None, connection: tuple[Connection, str]) -> None:
    """The two per-task commands the change is for: the unacked copy and the ack."""
    conn, name = connection
    queue = conn.SimpleQueue(name)
    try:
        for i in range(3):
            queue.put({"n": i})
        first = queue.get(timeout=5)
        # Taken, not acked: its copy is in the unacked hash (kombu's restore on loss).
        assert len(_unacked(name)) == 1
        first.ack()
        assert _unacked(name) == {}
        second = queue.get(timeout=5)
        second.requeue()
        assert _unacked(name) == {}
        seen = sorted(queue.get(timeout=5).payload["n"] for _ in range(2))
        assert seen == [1, 2]  # the requeued message came back, nothing was lost
        assert first.payload == {"n": 0}
    finally:
        queue.close()


def test_the_worker_configuration_installs_it_unless_turned_off() -> None:
    """``tasker.celeryconfig`` installs it by default; TASKER_REUSE_BROKER_CLIENT=false does not."""
    probe = ("from tasker import app, broker_client; app.conf.broker_url; "
             "print(broker_client.installed())")
    results = {}
    for value in ("", "false"):
        env = {**os.environ, "TASKER_REUSE_BROKER_CLIENT": value}
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                             text=True, timeout=60, check=True)
        results[value] = out.stdout.strip()
    assert results == {"": "True", "false": "False"}
