"""Past one Redis: the sampler through Redis Sentinel (across a failover, with a
worker and beat) and on RabbitMQ quorum queues.

A master, a replica and one sentinel (Debian's ``redis-sentinel``) on loopback,
all started here on free ports (the shared Redis is never touched). The
sentinel is configured to fail over fast (down-after 1 s), so the test
measures tasker's part: how soon sampling resumes once the sentinel has
switched the master.

The worker and beat run as an operator runs them: ``celery -A tasker`` with
``TASKER_BROKER_URL=sentinel://...`` and ``TASKER_BROKER_MASTER_NAME`` (kombu's
transport option ``master_name``); the sampler code runs unchanged.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import kombu
import pytest
import redis
from servers import binary, start_beat, start_logged, start_redis_server, stop, stop_group
from support import SESSION, WorkerNode, free_port, total, wait_for

from tasker.sampler.broker import PUBLISHED_AT_HEADER, sample_queues

MASTER_NAME = "tasker-test"
#: TASKER_SAMPLE_INTERVAL of the worker test, seconds. After the switch, the node
#: takes beat's next message once Celery has reconnected, which it retries with
#: a back-off of 2, 4, 6 ... s after the loss (measured: reconnected 3.8 s after
#: the switch, the sample followed at once); 3 s intervals leave that margin.
INTERVAL = 3


@dataclass
class Trio:
    """A Redis master, its replica and one sentinel, each a process of this test."""

    master_port: int
    replica_port: int
    sentinel_port: int
    procs: dict[str, subprocess.Popen[bytes]]
    directory: Path

    @property
    def url(self) -> str:
        return f"sentinel://127.0.0.1:{self.sentinel_port}/0"

    def master_address(self) -> tuple[str, int] | None:
        sentinel = redis.Redis(port=self.sentinel_port, socket_timeout=2, decode_responses=True)
        try:
            addr = sentinel.sentinel_get_master_addr_by_name(MASTER_NAME)
        except redis.RedisError:
            return None
        finally:
            sentinel.close()
        return (addr[0], int(addr[1])) if addr else None

    def stop_master(self) -> None:
        proc = self.procs["master"]
        proc.send_signal(signal.SIGKILL)  # a crash, not a polite shutdown
        proc.wait(timeout=10)

    def wait_failover(self, timeout: float = 30.0) -> float:
        """Poll the sentinel until it names the replica; the time it did (monotonic)."""
        wait_for(lambda: self.master_address() == ("127.0.0.1", self.replica_port),
                 timeout=timeout, interval=0.05, message="the sentinel to promote the replica")
        return time.monotonic()


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[Trio]:
    sentinel_bin = binary("redis-sentinel", "apt-get install -y redis-sentinel")
    master, replica, sentinel = (free_port() for _ in range(3))
    with contextlib.ExitStack() as stack:
        procs: dict[str, subprocess.Popen[bytes]] = {}
        procs["master"] = stack.enter_context(
            start_redis_server(tmp_path, "master", port=master, wait=False)).process
        procs["replica"] = stack.enter_context(
            start_redis_server(tmp_path, "replica", port=replica, wait=False,
                               args=["--replicaof", "127.0.0.1", str(master)])).process
        conf = tmp_path / "sentinel.conf"  # the sentinel rewrites its file
        conf.write_text(
            f"port {sentinel}\nbind 127.0.0.1\ndir {tmp_path}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 1\n"
            # Fast on purpose: the test measures tasker, not the sentinel.
            f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
            f"sentinel failover-timeout {MASTER_NAME} 3000\n")
        procs["sentinel"] = start_logged([sentinel_bin, str(conf)], tmp_path / "sentinel.log")
        stack.callback(stop, procs["sentinel"])

        def ready() -> bool:
            for name, proc in procs.items():
                assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()
            try:
                info = redis.Redis(port=replica).info("replication")
                replicas = redis.Redis(port=sentinel).sentinel_slaves(MASTER_NAME)
            except redis.RedisError:
                return False
            # A failover needs the sentinel to know the replica, and the
            # replica to be in sync.
            return (info.get("master_link_status") == "up"
                    and any(int(r["port"]) == replica and "s_down" not in r["flags"]
                            for r in replicas))
        wait_for(ready, timeout=30, interval=0.1, message="master, replica and sentinel")
        yield Trio(master, replica, sentinel, procs, tmp_path)


def _connection(trio: Trio) -> kombu.Connection:
    return kombu.Connection(trio.url, transport_options={"master_name": MASTER_NAME})


def _publish(trio: Trio, queue: str, count: int) -> None:
    q = kombu.Queue(queue, kombu.Exchange(queue, "direct"), queue)
    with _connection(trio) as conn, conn.Producer() as producer:
        for i in range(count):
            producer.publish({"i": i}, exchange=q.exchange, routing_key=queue, declare=[q],
                             priority=(0, 3, 9)[i % 3],
                             headers={PUBLISHED_AT_HEADER: str(time.time())})


def _replica_has(trio: Trio, queue: str, count: int) -> None:
    """Replication is asynchronous: wait until the replica holds what was written."""
    replica = redis.Redis(port=trio.replica_port)
    wait_for(lambda: sum(replica.llen(k) for k in replica.keys(f"{queue}*")) == count,
             timeout=10, message="the replica to catch up")


def test_sample_queues_through_sentinel_is_exact_across_a_failover(trio: Trio) -> None:
    queue = f"{SESSION}-sentinel-{uuid.uuid4().hex[:6]}"
    _publish(trio, queue, 150)  # three priority levels, three lists
    with _connection(trio) as conn:
        sample = sample_queues(conn, [queue])[queue]
    assert sample.depth == 150
    assert sample.oldest_message_age_seconds is not None

    _replica_has(trio, queue, 150)
    trio.stop_master()
    trio.wait_failover()
    _publish(trio, queue, 7)  # written to the promoted replica
    with _connection(trio) as conn:
        sample = sample_queues(conn, [queue])[queue]
    assert sample.depth == 157


def _broker_stamp(node: WorkerNode) -> tuple[float, float | None]:
    s = node.scrape()
    return total(s, "tasker_sample_timestamp_seconds", source="broker"), total(
        s, "tasker_sample_up", source="broker")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_worker_and_sampler_through_sentinel_resume_after_failover(
        trio: Trio, tmp_path: Path, database_url: str) -> None:
    idle = f"{SESSION}-sentinel-idle-{uuid.uuid4().hex[:6]}"
    port = free_port()
    env = {**os.environ,
           "TASKER_BROKER_URL": trio.url,
           "TASKER_BROKER_MASTER_NAME": MASTER_NAME,
           "TASKER_SAMPLE_INTERVAL": str(INTERVAL),
           "TASKER_SAMPLE_QUEUES": idle,
           "TASKER_STEP_QUEUE": f"{SESSION}-sentinel-steps",
           "TASKER_METRICS_PORT": str(port), "TASKER_METRICS_INTERVAL": "0"}
    node = WorkerNode(name=f"sentinel-{uuid.uuid4().hex[:6]}", queue=f"{idle}-work",
                          port=port, log_path=tmp_path / "worker.log", env=env)
    beat: subprocess.Popen[bytes] | None = None
    try:
        node.start()
        beat = start_beat(env, tmp_path / "beat.log")
        _publish(trio, idle, 120)

        def depth() -> float | None:
            return node.scrape().get(("tasker_queue_depth", frozenset({("queue", idle)})))
        wait_for(lambda: depth() == 120, timeout=60, interval=0.2,
                 message="the sampler's depth of the idle queue through the sentinel")
        assert _broker_stamp(node)[1] == 1

        _replica_has(trio, idle, 120)
        killed = time.monotonic()
        trio.stop_master()
        switched = trio.wait_failover()
        switched_wall = time.time()
        _publish(trio, idle, 5)

        # The first broker sample taken after the sentinel switched, with the
        # depth read from the new master.
        def resumed() -> bool:
            stamp, up = _broker_stamp(node)
            return stamp > switched_wall and up == 1 and depth() == 125
        wait_for(resumed, timeout=60, interval=0.1, message="sampling after the failover")
        delay = time.monotonic() - switched
        print(f"the sentinel switched the master {switched - killed:.1f} s after the kill; "
              f"sampling resumed {delay:.1f} s after the switch (interval {INTERVAL} s)")
        assert delay <= 2 * INTERVAL, f"sampling resumed only after {delay:.1f} s"

        # The node works through the new master too.
        with _connection(trio) as conn:
            app = __import__("celery").Celery("publisher", broker=conn.as_uri(),
                                              broker_transport_options={
                                                  "master_name": MASTER_NAME})
            app.send_task("diagnostics.noop", queue=node.queue)
        wait_for(lambda: total(node.scrape(), "tasker_tasks_succeeded_total",
                               task="diagnostics.noop") >= 1,
                 timeout=30, message="a task through the promoted master")
    finally:
        if beat is not None:
            stop_group(beat)
        node.stop()


AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def test_sample_queues_on_rabbitmq_quorum_queues() -> None:
    """Quorum queues answer the same passive queue.declare: ready and consumers."""
    queue = f"{SESSION}-quorum-{uuid.uuid4().hex[:6]}"
    q = kombu.Queue(queue, kombu.Exchange(queue, "direct", durable=True), queue,
                    durable=True, queue_arguments={"x-queue-type": "quorum"})
    with kombu.Connection(AMQP_URL, connect_timeout=5) as conn:
        try:
            with conn.Producer() as producer:
                for i in range(40):
                    producer.publish({"i": i}, exchange=q.exchange, routing_key=queue,
                                     declare=[q], delivery_mode=2)
            # It is a quorum queue: declaring it as a classic one is refused.
            with pytest.raises(conn.channel_errors, match="x-queue-type"):
                conn.channel().queue_declare(queue=queue, durable=True, auto_delete=False,
                                             arguments={"x-queue-type": "classic"})
            sample = sample_queues(conn, [queue])[queue]
            assert (sample.depth, sample.consumers) == (40, 0)
            # A consumer holding 5 unacked deliveries: ready falls by 5, consumers 1.
            held: list[kombu.Message] = []
            consumer_channel = conn.channel()
            consumer = kombu.Consumer(consumer_channel, [q], callbacks=[
                lambda _body, message: held.append(message)], prefetch_count=5)
            consumer.qos(prefetch_count=5)
            with consumer:
                deadline = time.monotonic() + 10
                while len(held) < 5 and time.monotonic() < deadline:
                    with contextlib.suppress(TimeoutError, OSError):
                        conn.drain_events(timeout=0.5)

                def held_back() -> bool:
                    s = sample_queues(conn, [queue])[queue]
                    return (s.depth, s.consumers) == (35, 1)
                wait_for(held_back, timeout=10, message="ready 35, one consumer")
        finally:
            conn.channel().queue_delete(queue)
            conn.channel().exchange_delete(queue)
