"""The MainProcess reads tasker's periodic queue without consuming it (issue 2.8, item 1).

A second consuming channel cost the event loop at every turn, so at every task
(kombu's Redis transport walks each consuming channel per turn). The periodic
queue is now taken from on a connection of its own (woken as a message arrives): these tests hold
the node to that (one blocking ``BRPOP`` per node, the task queue's) and to
what the consumer used to give for free: a reader that comes back after the
broker went away, and that is not stopped by a message it cannot read.

A private Redis (tasker.embedded) per test: its ``CLIENT LIST`` shows this
node's connections only, and its periodic queue is this test's alone.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from support import http_get, total, wait_for
from tcp_proxy import TcpProxy

from tasker.cli.embedded_services import EmbeddedRedis
from tasker.periodic import PERIODIC_QUEUE, POLL_INTERVAL


def _sampled_after(node, after: float) -> float | None:
    stamp = total(node.scrape(), "tasker_sample_timestamp_seconds", source="broker")
    return stamp if stamp > after else None


def _send_sample(url: str) -> float:
    from celery import Celery

    sent = time.time()
    Celery("publisher", broker=url).send_task("tasker.sample_fleet", queue=PERIODIC_QUEUE)
    return sent


def _blocked_in_brpop(client: redis.Redis) -> int:
    return sum(1 for c in client.client_list() if c.get("cmd") == "brpop")


@pytest.mark.timeout(120)
def test_one_blocking_read_per_node_and_periodic_work_still_taken(start_node,
                                                                   tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis") as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        node = start_node(queue="celery", env={"TASKER_BROKER_URL": url,
                                               "TASKER_SAMPLE_INTERVAL": "3600"})
        client = redis.Redis.from_url(url)
        wait_for(lambda: _blocked_in_brpop(client) >= 1, timeout=20,
                 message="the task consumer's BRPOP")
        # Over several of the reader's intervals: never a second blocked reader
        # (the old periodic consumer kept its own BRPOP waiting at all times).
        seen = []
        for _ in range(30):  # 3 s: thirty of the reader's looks
            seen.append(_blocked_in_brpop(client))
            time.sleep(0.1)
        assert max(seen) == 1, seen

        sent = _send_sample(url)
        stamp = wait_for(lambda: _sampled_after(node, sent), timeout=15,
                         message="the sample sent to the periodic queue")
        assert stamp - sent < POLL_INTERVAL + 5  # read within an interval; the round's own time
        assert client.llen(PERIODIC_QUEUE) == 0
        # The reader keeps one connection: none added read after read.
        connections = len(client.client_list())
        time.sleep(2.0)  # twenty looks
        assert len(client.client_list()) == connections


@pytest.mark.timeout(120)
def test_an_idle_node_sends_the_broker_a_look_a_second_not_more(start_node,
                                                                tmp_path: Path) -> None:
    """What the reader costs an idle node: a look (every priority level's LLEN, one
    round trip) a second and one BLMOVE wait every few seconds; never a loop."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        start_node(queue="celery", env={"TASKER_BROKER_URL": url,
                                        "TASKER_SAMPLE_INTERVAL": "3600"})
        client = redis.Redis.from_url(url)
        time.sleep(2.0)  # started, its first looks done
        client.config_resetstat()
        time.sleep(5.0)
        stats = client.info("commandstats")
        calls = {name.removeprefix("cmdstat_"): v["calls"] for name, v in stats.items()}
        assert calls.get("blmove", 0) <= 3, calls  # one wait per 5 s (WATCH_TIMEOUT)
        assert calls.get("llen", 0) <= 4 * 7, calls  # 4 levels, a look a second (about 5)
        assert calls.get("rpop", 0) == 0, calls  # nothing taken from an empty queue


def _periodic_message(url: str, **headers: object) -> bytes:
    """A kombu message for the periodic queue as a Celery client sends it, headers changed."""
    import json

    from celery import Celery

    key = f"{PERIODIC_QUEUE}.template"
    Celery("publisher", broker=url).send_task("tasker.sample_fleet", queue=key)
    client = redis.Redis.from_url(url)
    envelope = json.loads(client.rpop(key))
    envelope["headers"].update(headers)
    return json.dumps(envelope).encode()


def _unacked_routes(client: redis.Redis) -> list[str]:
    import json

    return [json.loads(v)[2] for v in client.hvals("unacked")]


@pytest.mark.timeout(120)
def test_messages_that_cannot_be_handled_are_dropped_not_put_back(start_node,
                                                                 tmp_path: Path) -> None:
    """A message decoded but unusable (a body that does not decompress, a task name
    that is a list) is dropped with a line: put back, it would be read first again at
    every read and hold every sample and recovery of the fleet behind it."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(url)
        for bad in (_periodic_message(url, compression="application/x-gzip"),
                    _periodic_message(url, task=["tasker.sample_fleet"])):
            client.lpush(PERIODIC_QUEUE, bad)
        node = start_node(queue="celery", env={"TASKER_BROKER_URL": url,
                                               "TASKER_SAMPLE_INTERVAL": "3600"})
        wait_for(lambda: client.llen(PERIODIC_QUEUE) == 0, timeout=15,
                 message="the unusable messages taken")
        sent = _send_sample(url)
        wait_for(lambda: _sampled_after(node, sent), timeout=15,
                 message="a sample behind the unusable messages")
        assert client.llen(PERIODIC_QUEUE) == 0
        assert PERIODIC_QUEUE not in _unacked_routes(client)  # nothing left to come back
        dropped = [e for e in node.log_events() if e.get("event") == "periodic.message_dropped"]
        assert len(dropped) == 2, dropped


@pytest.mark.timeout(120)
def test_recovery_handed_to_the_pool_is_acked(start_node, tmp_path: Path) -> None:
    """``tasker.recover_steps`` runs in a pool process and is acked on the reader's
    connection when it ends: nothing of it stays in the unacked hash to run again."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(url)
        node = start_node(queue="celery", env={"TASKER_BROKER_URL": url,
                                               "TASKER_SAMPLE_INTERVAL": "3600",
                                               "TASKER_RECOVERY_INTERVAL": "3600"})
        from celery import Celery

        Celery("publisher", broker=url).send_task("tasker.recover_steps", queue=PERIODIC_QUEUE)
        wait_for(lambda: total(node.scrape(), "tasker_tasks_succeeded_total",
                               task="tasker.recover_steps") >= 1, timeout=30,
                 message="the recovery run in the pool")
        wait_for(lambda: PERIODIC_QUEUE not in _unacked_routes(client), timeout=10,
                 message="its message acked")
        assert client.llen(PERIODIC_QUEUE) == 0


@pytest.mark.timeout(120)
def test_unreadable_message_in_the_periodic_queue_does_not_stop_the_reader(
        start_node, tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis") as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        node = start_node(queue="celery", env={"TASKER_BROKER_URL": url,
                                               "TASKER_SAMPLE_INTERVAL": "3600"})
        client = redis.Redis.from_url(url)
        client.lpush(PERIODIC_QUEUE, b"\x00 not a kombu message {")
        time.sleep(2.0)
        sent = _send_sample(url)
        wait_for(lambda: _sampled_after(node, sent), timeout=15,
                 message="a sample after the unreadable message")
        assert node.proc is not None and node.proc.poll() is None
        status, _, body = http_get(f"{node.url}/healthz")
        assert status == 200, body
        failures = [e for e in node.log_events() if e.get("event") == "periodic.read_failed"]
        assert len(failures) == 1, failures  # said once, with what was wrong
        assert failures[0].get("error"), failures  # what was wrong, for the operator


@pytest.mark.timeout(150)
def test_reader_comes_back_after_the_broker_went_away(start_node, tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis") as server, TcpProxy(server.port) as proxy:
        direct = f"redis://127.0.0.1:{server.port}/0"
        node = start_node(queue="celery", env={
            "TASKER_BROKER_URL": f"redis://127.0.0.1:{proxy.port}/0",
            "TASKER_SAMPLE_INTERVAL": "3600"})
        sent = _send_sample(direct)
        wait_for(lambda: _sampled_after(node, sent), timeout=15, message="a first sample")

        proxy.cut()
        wait_for(lambda: http_get(f"{node.url}/healthz")[0] == 503, timeout=15,
                 message="the node noticing its broker is gone")
        time.sleep(2.0)  # reads fail meanwhile
        proxy.restore()
        wait_for(lambda: http_get(f"{node.url}/healthz")[0] == 200, timeout=60,
                 message="the node back on its broker")

        sent = _send_sample(direct)
        wait_for(lambda: _sampled_after(node, sent), timeout=20,
                 message="a sample after the broker came back")
        assert redis.Redis.from_url(direct).llen(PERIODIC_QUEUE) == 0
