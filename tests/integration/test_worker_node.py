"""A real prefork worker node: diagnostics run, counts are exact, the endpoint behaves."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psycopg
from support import REPO, http_get, parse_metrics, total, wait_for


def test_diagnostics_run_and_counts_match_what_was_published(start_node, app, database_url):
    node = start_node(concurrency=2)
    q = node.queue
    for _ in range(40):
        app.send_task("diagnostics.noop", queue=q)
    for _ in range(6):
        app.send_task("diagnostics.sleep", args=(0.05,), queue=q)
    for _ in range(5):
        app.send_task("diagnostics.fail", args=("boom",), queue=q)
    app.send_task("diagnostics.hold_db", args=(3,), queue=q)

    # hold_db really holds a PostgreSQL connection while it sleeps.
    db_name = database_url.rsplit("/", 1)[1]

    def holding() -> bool:
        with psycopg.connect("postgresql://127.0.0.1:5432/postgres") as conn:
            rows = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                " AND application_name = 'tasker' AND query ILIKE '%%pg_sleep%%'"
                " AND state = 'active'", [db_name]).fetchone()
        return rows[0] == 1

    wait_for(holding, timeout=30, message="hold_db visible in pg_stat_activity")

    def done() -> bool:
        s = node.scrape()
        return total(s, "tasker_tasks_succeeded_total") + total(s, "tasker_tasks_failed_total") \
            == 52
    wait_for(done, timeout=60, message="52 finished tasks")

    s = node.scrape()
    assert total(s, "tasker_tasks_received_total", queue=q) == 52
    assert total(s, "tasker_tasks_started_total", task="diagnostics.noop", queue=q) == 40
    assert total(s, "tasker_tasks_succeeded_total", task="diagnostics.noop") == 40
    assert total(s, "tasker_tasks_succeeded_total", task="diagnostics.sleep") == 6
    assert total(s, "tasker_tasks_succeeded_total", task="diagnostics.hold_db") == 1
    assert total(s, "tasker_tasks_failed_total", task="diagnostics.fail",
                 exception="DiagnosticFailure") == 5
    # Runtime histogram sees every outcome, failures included.
    assert total(s, "tasker_task_runtime_seconds_count") == 52
    assert total(s, "tasker_task_queue_wait_seconds_count") == 52
    from tasker.registry import discover_handler_modules, registry
    from tasker.workflows.definition import workflows

    workflows()  # imports every workers/ module, as the worker did
    # Only the namespaces of workers/ (unit tests may have declared others here).
    shipped = {m.split(".")[1] for m in discover_handler_modules()}
    expected_handlers = {ns: n for ns, n in registry.counts().items() if ns in shipped}
    assert expected_handlers["diagnostics"] >= 5
    assert total(s, "tasker_worker_handlers", namespace="diagnostics") == \
        expected_handlers["diagnostics"]
    assert total(s, "tasker_worker_pool_processes") == 2

    # Both pool processes did work: each wrote its own counter file.
    main_pid = node.proc.pid
    owners = {p.name.split("_", 1)[1][:-3] for p in node.directory().glob("counter_*.db")}
    child_owners = {o for o in owners if not o.startswith(f"{main_pid}-")}
    assert len(child_owners) >= 2, owners

    snap = node.snapshot()
    assert snap["total_runs"] == 52 and snap["succeeded"] == 47 and snap["failed"] == 5
    assert snap["success_rate"] == round(100 * 47 / 52, 2)
    assert snap["handlers"] == expected_handlers
    assert snap["handler_count"] == sum(expected_handlers.values())
    assert snap["pool_processes"] == 2
    assert snap["min_execution_ms"] <= snap["avg_execution_ms"] <= snap["max_execution_ms"]
    assert snap["max_execution_ms"] >= 3000  # the hold_db(3)
    assert snap["last_run_time"] is not None


def test_inspect_stats_carries_the_snapshot(start_node, app):
    node = start_node()
    for _ in range(3):
        app.send_task("diagnostics.noop", queue=node.queue)
    wait_for(lambda: node.snapshot()["total_runs"] == 3, timeout=30, message="3 runs")
    replies = app.control.inspect(destination=[node.hostname], timeout=5).stats()
    assert replies and node.hostname in replies, replies
    tasker_stats = replies[node.hostname]["tasker"]
    assert tasker_stats["worker"] == node.hostname
    assert tasker_stats["total_runs"] == 3
    assert tasker_stats["metrics_port"] == node.port


def test_endpoint_auth_paths_and_methods(start_node):
    node = start_node(env={"TASKER_METRICS_TOKEN": "t0ken-for-tests"})
    assert http_get(f"{node.url}/metrics")[0] == 401
    assert http_get(f"{node.url}/metrics.json")[0] == 401
    assert http_get(f"{node.url}/metrics", {"Authorization": "Bearer wrong"})[0] == 401
    status, headers, body = http_get(f"{node.url}/metrics", node.auth())
    assert status == 200 and "tasker_worker_info" in body.decode()
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    status, _, body = http_get(f"{node.url}/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert http_get(f"{node.url}/nope", node.auth())[0] == 404
    assert http_get(f"{node.url}/metrics", node.auth(), method="POST")[0] == 405


def test_port_in_use_is_a_clear_error_and_tasks_still_run(start_node, app):
    import socket

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        node = start_node(env={"TASKER_METRICS_PORT": str(port)})
        assert f"127.0.0.1:{port}" in node.log() and "TASKER_METRICS_PORT" in node.log()
        app.send_task("diagnostics.noop", queue=node.queue)
        wait_for(lambda: '"task.succeeded"' in node.log() or "succeeded in" in node.log(),
                 timeout=30, message="task ran without a metrics server")
    finally:
        blocker.close()


def test_periodic_metrics_report_line(start_node, app):
    node = start_node(env={"TASKER_METRICS_INTERVAL": "1"})
    app.send_task("diagnostics.noop", queue=node.queue)

    def reported() -> dict | None:
        for event in node.log_events():
            if event.get("event") == "worker.metrics_report" and event.get("total_runs") == 1:
                return event
        return None
    event = wait_for(reported, timeout=30, message="worker.metrics_report with total_runs=1")
    assert event["worker"] == node.hostname and event["success_rate"] == 100.0


def test_bad_setting_stops_startup_with_one_redacted_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "TASKER_METRICS_PORT": "abc",
           "TASKER_BROKER_URL": "redis://user:hunter2@127.0.0.1:6379/0"}
    result = subprocess.run([sys.executable, "-m", "celery", "-A", "tasker", "worker"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "TASKER_METRICS_PORT='abc' is invalid" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout

    env = {"PATH": "/usr/bin:/bin", "TASKER_BROKER_URL": "redis://user:hunter2@127.0.0.1:bad/0"}
    result = subprocess.run([sys.executable, "-m", "tasker.cli.main", "migrate"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "TASKER_BROKER_URL" in lines[0], result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_stats_command_reports_reachable_and_unreachable_nodes(start_node, app):
    node = start_node()
    app.send_task("diagnostics.noop", queue=node.queue)
    wait_for(lambda: node.snapshot()["total_runs"] == 1, timeout=30, message="1 run")
    cmd = [sys.executable, "-m", "tasker.cli.main", "stats", "--json",
           f"127.0.0.1:{node.port}", "127.0.0.1:1"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc[f"http://127.0.0.1:{node.port}/metrics.json"]["total_runs"] == 1
    assert doc["http://127.0.0.1:1/metrics.json"]["error"].startswith("unreachable")
    none = subprocess.run([sys.executable, "-m", "tasker.cli.main", "stats", "127.0.0.1:1"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert none.returncode == 1 and "unreachable" in none.stdout


def test_exposition_stays_valid_while_scraped_under_load(start_node, app):
    node = start_node()
    for _ in range(200):
        app.send_task("diagnostics.noop", queue=node.queue)
    deadline = time.monotonic() + 30
    seen = 0.0
    while time.monotonic() < deadline and seen < 200:
        status, _, body = http_get(f"{node.url}/metrics")
        assert status == 200
        now = total(parse_metrics(body.decode()), "tasker_tasks_succeeded_total")
        assert now >= seen  # counters never go backwards
        seen = now
    assert seen == 200


def test_malformed_and_unknown_messages_are_counted_and_the_node_goes_on(start_node, app):
    from kombu import Connection, Exchange, Producer

    node = start_node()
    with Connection(app.conf.broker_url) as conn:
        producer = Producer(conn.channel())
        exchange = Exchange(node.queue, type="direct")
        # Undecodable body: claims JSON, is not.
        producer.publish(b"{not json", exchange=exchange, routing_key=node.queue,
                         content_type="application/json", content_encoding="utf-8",
                         serializer=None, headers={"task": "diagnostics.noop", "id": "x1"})
    app.send_task("no.such.task", queue=node.queue)
    app.send_task("diagnostics.noop", queue=node.queue)

    def counted():
        s = node.scrape()
        return (total(s, "tasker_tasks_rejected_total", reason="decode_error") == 1 and
                total(s, "tasker_tasks_rejected_total", reason="unknown_task") == 1 and
                total(s, "tasker_tasks_succeeded_total") == 1)
    wait_for(counted, timeout=30, message="decode error, unknown task and one success")


def test_slow_clients_do_not_stop_the_endpoint(start_node):
    import socket

    node = start_node()
    slow = []
    for _ in range(40):  # many clients that never finish their request
        s = socket.create_connection(("127.0.0.1", node.port))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line: never complete
        slow.append(s)
    try:
        started = time.monotonic()
        status, _, body = http_get(f"{node.url}/metrics", timeout=30)
        assert status == 200 and b"tasker_worker_info" in body
        assert time.monotonic() - started < 20
        import psutil

        threads = psutil.Process(node.proc.pid).num_threads()
        assert threads < 40, threads  # bounded: not one thread per client
    finally:
        for s in slow:
            s.close()
