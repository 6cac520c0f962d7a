"""Submitting is safe to retry: an idempotency key, and a clear outcome with the broker down."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import psycopg
import pytest
from support import REPO, free_port, wait_for
from workflow_support import Poller, task_records


def _by_key(url: str, key: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute(
            "SELECT uuid::text FROM tasker_tasks WHERE idempotency_key = %s", [key])]


def _cli_submit(key: str, broker_url: str, step_queue: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TASKER_BROKER_URL": broker_url, "TASKER_STEP_QUEUE": step_queue}
    return subprocess.run([sys.executable, "-m", "tasker.cli.main", "submit", "linear.sequence",
                           "--context", '{"n": 4}', "--key", key], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(120)
def test_submit_with_the_broker_down_names_the_request_and_a_retry_adds_none(
        start_node, step_queue, database_url, app) -> None:
    key = f"order-{uuid.uuid4()}"
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    first = _cli_submit(key, down, step_queue)
    output = (first.stdout + first.stderr).strip().splitlines()
    assert first.returncode == 3, (first.returncode, output)
    assert len(output) <= 3 and "Traceback" not in first.stderr, output
    recorded = _by_key(database_url, key)
    assert len(recorded) == 1
    assert recorded[0] in first.stdout and f"recorded as {recorded[0]}" in first.stderr
    assert "recovery poller" in first.stderr

    retry = _cli_submit(key, down, step_queue)  # the user retries: nothing new
    assert retry.returncode == 0 and recorded[0] in retry.stdout, (retry.stdout, retry.stderr)
    assert _by_key(database_url, key) == recorded

    # The broker is back: the recovery poller dispatches the recorded request.
    env = {"TASKER_STEP_QUEUE": step_queue, "TASKER_RECOVERY_DEADLINE": "2"}
    start_node(queue=step_queue, concurrency=2, env=env)
    with Poller(app, step_queue):
        wait_for(lambda: task_records(database_url, recorded)[recorded[0]][1] == "complete",
                 timeout=60, interval=0.5, message="the recorded request completes")
    again = _cli_submit(key, os.environ["TASKER_BROKER_URL"], step_queue)
    assert again.returncode == 0 and recorded[0] in again.stdout
    assert _by_key(database_url, key) == recorded


def test_submit_key_returns_the_existing_request(step_queue, database_url) -> None:
    from tasker.workflows.engine import KeyConflictError, submit

    key = f"api-{uuid.uuid4()}"
    first = submit("diamond.fan_out_in", {"n": 3}, key=key)
    second = submit("diamond.fan_out_in", {"n": 3}, key=key)
    assert first.created and not second.created
    assert (second.task_uuid, second.correlation_id) == (first.task_uuid, first.correlation_id)
    assert second.dispatched_steps == []  # nothing published twice
    assert _by_key(database_url, key) == [first.task_uuid]
    with pytest.raises(KeyConflictError, match="another workflow or context"):
        submit("diamond.fan_out_in", {"n": 4}, key=key)
    assert _by_key(database_url, key) == [first.task_uuid]
