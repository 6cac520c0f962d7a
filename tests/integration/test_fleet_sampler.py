"""The fleet sampler against real Redis, RabbitMQ and PostgreSQL, through real nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
from support import REPO, SESSION, total, wait_for


def _sample_once(env: dict[str, str]) -> dict:
    result = subprocess.run([sys.executable, "-m", "tasker.cli.main", "sample", "--once",
                             "--json"], cwd=REPO, env={**os.environ, **env},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _run_sample_round_on(node, app) -> None:
    """What beat does: send tasker.sample_fleet, here to the node's own queue."""
    before = node.scrape()
    attempts = total(before, "tasker_sample_duration_seconds")
    stamp = total(before, "tasker_sample_timestamp_seconds", source="broker")
    app.send_task("tasker.sample_fleet", queue=node.queue)
    wait_for(lambda: total(node.scrape(), "tasker_sample_timestamp_seconds", source="broker")
             > stamp or total(node.scrape(), "tasker_sample_duration_seconds") != attempts,
             timeout=30, message="a sample round")


def test_redis_depth_counts_every_priority_level_and_age_grows(start_node, app):
    idle = f"{SESSION}-idle-{uuid.uuid4().hex[:6]}"
    node = start_node(env={"TASKER_SAMPLE_QUEUES": idle})
    with app.producer_or_acquire() as producer:
        for i in range(300):
            app.send_task("diagnostics.noop", queue=idle, priority=(0, 3, 9)[i % 3],
                          producer=producer)
    _run_sample_round_on(node, app)
    s = node.scrape()
    assert total(s, "tasker_sample_up", source="broker") == 1
    assert total(s, "tasker_queue_depth", queue=idle) == 300
    first_age = total(s, "tasker_queue_oldest_message_age_seconds", queue=idle)
    assert first_age > 0
    assert total(s, "tasker_queue_unacked", queue=idle) == 0
    # Redis does not tell consumers: the series is absent, not 0.
    assert ("tasker_queue_consumers", frozenset({("queue", idle)})) not in s
    snap = node.snapshot()
    assert snap["queues"][idle]["depth"] == 300
    time.sleep(1.2)
    _run_sample_round_on(node, app)
    second_age = total(node.scrape(), "tasker_queue_oldest_message_age_seconds", queue=idle)
    assert second_age >= first_age + 1.0


def test_rabbitmq_depth_and_consumers(start_node, tmp_path):
    amqp = "amqp://guest:guest@127.0.0.1:5672//"
    idle = f"{SESSION}-amqp-idle-{uuid.uuid4().hex[:6]}"
    busy = f"{SESSION}-amqp-busy-{uuid.uuid4().hex[:6]}"
    node = start_node(queue=busy, env={"TASKER_BROKER_URL": amqp})
    from celery import Celery

    publisher = Celery("publisher", broker=amqp)
    try:
        with publisher.producer_or_acquire() as producer:
            for _ in range(300):
                publisher.send_task("diagnostics.noop", queue=idle, producer=producer)
        doc = _sample_once({"TASKER_BROKER_URL": amqp, "TASKER_SAMPLE_QUEUES": f"{idle},{busy}"})
        broker = doc["sources"]["broker"]
        assert broker["up"] is True, broker
        queues = broker["values"]["queues"]
        assert queues[idle]["depth"] == 300 and queues[idle]["consumers"] == 0
        assert queues[busy]["consumers"] == 1  # the running node consumes it
        assert node.snapshot()["worker"] == node.hostname
    finally:
        with publisher.connection_for_write() as conn:
            channel = conn.default_channel
            for q in (idle, busy):
                try:
                    channel.queue_delete(q)
                except Exception:  # noqa: BLE001 - best-effort cleanup
                    channel = conn.channel()
            for ex in (idle, busy):
                try:
                    channel.exchange_delete(ex)
                except Exception:  # noqa: BLE001
                    channel = conn.channel()


def test_db_pool_saturation_and_server_connections(start_node, app, database_url):
    node = start_node(concurrency=4, env={"TASKER_DB_POOL_MAX": "2", "TASKER_DB_POOL_MIN": "1"})
    for _ in range(4):
        app.send_task("diagnostics.hold_db", args=(6,), queue=node.queue)

    def saturated():
        # A process's gauge and histogram files are read a moment apart: wait for
        # a scrape that has all four checkouts in both.
        s = node.scrape()
        held = total(s, "tasker_db_pool_size") - total(s, "tasker_db_pool_available")
        return held == 4 and total(s, "tasker_db_pool_wait_seconds_count") >= 4 and s
    s = wait_for(saturated, timeout=30, message="four held pooled connections")
    assert total(s, "tasker_db_pool_max") == 8
    assert total(s, "tasker_db_pool_utilization") == 0.5
    assert total(s, "tasker_db_pool_wait_seconds_count") >= 4
    snap = node.snapshot()["db_pool"]
    assert snap["size"] - snap["available"] == 4 and snap["max"] == 8
    assert snap["utilization"] == 0.5
    db = _sample_once({})["sources"]["database"]
    assert db["up"] is True
    assert db["values"]["connections_by_state"].get("active", 0) >= 4
    assert db["values"]["max_connections"] > 0


def test_unreachable_broker_is_reported_without_values_or_password():
    doc = _sample_once({"TASKER_BROKER_URL": "redis://user:s3cret-pw@127.0.0.1:1/0"})
    broker = doc["sources"]["broker"]
    assert broker["up"] is False and broker["values"] is None
    assert "s3cret-pw" not in json.dumps(doc)
    assert doc["sources"]["database"]["up"] is True  # the other source goes on


def test_node_exports_unreachable_source_as_down(start_node, app, tmp_path):
    # A node whose database is unreachable: sample_up 0, no db series, tasks run.
    node = start_node(env={"TASKER_DATABASE_URL": "postgresql://u:pw-x@127.0.0.1:1/none"})
    _run_sample_round_on(node, app)
    s = node.scrape()
    assert total(s, "tasker_sample_up", source="database") == 0
    assert total(s, "tasker_sample_up", source="broker") == 1
    assert not any(name == "tasker_db_connections" for name, _ in s)
    assert ("tasker_sample_timestamp_seconds", frozenset({("source", "database")})) not in s
    failed = [e for e in node.log_events() if e.get("event") == "sample.failed"]
    assert failed and failed[0]["source"] == "database" and "pw-x" not in json.dumps(failed)
    app.send_task("diagnostics.noop", queue=node.queue)
    # The noop's own series: the sample round's task counts as a success too.
    wait_for(lambda: total(node.scrape(), "tasker_tasks_succeeded_total",
                           task="diagnostics.noop") == 1,
             timeout=30, message="node still works")


@pytest.mark.slow
def test_stopping_beat_ages_out_fleet_series(start_node, app, tmp_path):
    import signal

    from tasker.cli.embedded_services import EmbeddedRedis

    interval = 1
    # A private Redis: beat's periodic queue is consumed by every node on the
    # broker, and other sessions' nodes share the test database.
    with EmbeddedRedis(tmp_path / "redis") as server:
        env = {"TASKER_SAMPLE_INTERVAL": str(interval),
               "TASKER_BROKER_URL": f"redis://127.0.0.1:{server.port}/0"}
        node = start_node(env=env)
        beat_log = open(tmp_path / "beat.log", "wb")  # noqa: SIM115
        beat = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasker", "beat"],
                                cwd=tmp_path, env={**node.env, **env}, stdout=beat_log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: total(node.scrape(), "tasker_sample_up", source="broker") == 1
                     and any(n == "tasker_queue_depth" for n, _ in node.scrape()),
                     timeout=60, message="beat-driven samples exported")
        finally:
            os.killpg(beat.pid, signal.SIGTERM)
            beat.wait(timeout=20)
            beat_log.close()
        # Beat leaves no schedule file behind (it ran in tmp_path).
        assert not list(tmp_path.glob("celerybeat-schedule*"))
        # No wall-clock bound on when the series go: a loaded machine may be late
        # by any amount. What must hold is causal: they are gone only once the
        # last sample (whose stamp stays) is three intervals old.
        def aged_out():
            s = node.scrape()
            return None if any(n == "tasker_queue_depth" for n, _ in s) else s
        s = wait_for(aged_out, timeout=60, message="fleet series aged out")
        # The sampler's own series stay so that an alert can see it went stale.
        stamp = total(s, "tasker_sample_timestamp_seconds", source="broker")
        assert 0 < stamp <= time.time() - 3 * interval
        assert any(n == "tasker_worker_info" for n, _ in s)  # worker metrics stay
        node.stop()


def test_stale_sample_round_is_skipped_and_counted(start_node, app, queue_name):
    # A sample task that waited longer than one interval is worthless: skipped.
    app.send_task("tasker.sample_fleet", queue=queue_name)
    time.sleep(2.2)
    node = start_node(queue=queue_name, env={"TASKER_SAMPLE_INTERVAL": "1"})
    wait_for(lambda: total(node.scrape(), "tasker_sample_skipped_total", reason="stale") == 1,
             timeout=30, message="stale round counted")
    assert total(node.scrape(), "tasker_sample_up") == 0  # nothing was sampled
