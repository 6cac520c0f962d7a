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


def test_another_broker_does_not_load_kombus_redis_transport() -> None:
    """The changes are for kombu's Redis transport: an AMQP fleet never imports it (69 ms)."""
    probe = ("import sys; from tasker import app; app.conf.broker_url; "
             "print('kombu.transport.redis' in sys.modules)")
    env = {**os.environ, "TASKER_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def _kombu_copy(name: str) -> list[Any]:
    """The unacked hash's one entry, read back the way kombu restores it."""
    from kombu.utils.json import loads

    (entry,) = _unacked(name).values()
    return loads(entry.decode())


def test_the_unacked_copy_is_the_message_as_published(
        reuse: None, connection: tuple[Connection, str]) -> None:
    """The copy kombu restores from is the published text itself, whatever it holds.

    Hostile content for a text spliced into JSON: quotes, backslashes,
    non-ASCII, control characters, kombu's own typed values (a datetime,
    bytes) and a routing key that needs escaping.
    """
    import datetime

    conn, name = connection
    headers = {"tasker_correlation_id": "0192a3b4-c5d6-7e8f-9a0b-1c2d3e4f5a6b",
               "quote": 'say "hi" \\ there', "accents": "é中\u2028", "ctrl": "\x01\t"}
    body = {"text": "]} , \"x\" {[", "when": datetime.datetime(2026, 12, 2, 9, 0, 0),
            "blob": b"\x00\xff"}
    producer = conn.Producer()
    producer.publish(body, routing_key=name, headers=headers, serializer="json",
                     declare=[conn.SimpleQueue(name).queue])
    raw_published = redis.Redis.from_url(REDIS_URL).lindex(name, 0)
    queue = conn.SimpleQueue(name)
    try:
        message = queue.get(timeout=5)
        copy = _kombu_copy(name)
        from kombu.utils.json import loads

        assert copy == [loads(raw_published.decode()), "", name]
        assert message.headers == {**headers}
        assert message.payload == body
        # Restored (as after a lost worker) and taken again: the same message.
        message.channel.qos.restore_unacked()
        again = queue.get(timeout=5)
        assert {k: v for k, v in again.headers.items() if k != "redelivered"} == headers
        assert again.payload == body
        again.ack()
        assert _unacked(name) == {}
    finally:
        queue.close()


def test_a_message_from_a_foreign_producer_is_restored_unchanged(
        reuse: None, connection: tuple[Connection, str]) -> None:
    """A JSON text kombu did not write (compact, escaped non-ASCII) is kept as it came."""
    import base64
    import json

    conn, name = connection
    body = base64.b64encode(json.dumps({"n": 1}).encode()).decode()
    properties = {"body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
                  "delivery_info": {"exchange": "", "routing_key": name}, "priority": 0}
    text = ('{"body":"' + body + '","content-encoding":"utf-8",'
            '"content-type":"application/json","headers":{"who":"caf\\u00e9"},'
            '"properties":' + json.dumps(properties, separators=(",", ":")) + "}")
    queue = conn.SimpleQueue(name)
    try:
        redis.Redis.from_url(REDIS_URL).lpush(name, text)
        message = queue.get(timeout=5)
        assert message.headers == {"who": "café"} and message.payload == {"n": 1}
        assert _kombu_copy(name)[0] == json.loads(text)
        # Not encoded again: the copy holds the very text that was taken.
        (entry,) = _unacked(name).values()
        assert entry.decode().startswith(f"[{text},"), entry[:120]
        message.channel.qos.restore_unacked()
        assert redis.Redis.from_url(REDIS_URL).lindex(name, 0) is not None
        again = queue.get(timeout=5)
        assert again.headers == {"who": "café", "redelivered": True}  # kombu marks it
        assert again.payload == {"n": 1}
        again.ack()
    finally:
        queue.close()
