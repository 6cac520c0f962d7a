"""Root steps run in parallel; a duplicate delivery of a running step returns at once."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
from support import total, wait_for
from workflow_support import POISON_ARGS, poison_env, runs, task_records


def _done(url: str, task_uuid: str) -> bool:
    return task_records(url, [task_uuid])[task_uuid][1] in ("complete", "error")


def test_two_independent_root_steps_run_at_once(start_node, step_queue, database_url,
                                                 tmp_path: Path) -> None:
    from tasker.workflows.engine import submit

    start_node(queue=step_queue, concurrency=2, env=poison_env(step_queue),
               extra_args=POISON_ARGS)
    warm = submit("linear.sequence", {"n": 1}).task_uuid  # pools and imports warm
    wait_for(lambda: _done(database_url, warm), timeout=60, message="warm-up request")
    task_uuid = submit("poison.two_roots", {"seconds": 2,
                                            "runs_file": str(tmp_path / "runs")}).task_uuid
    wait_for(lambda: _done(database_url, task_uuid), timeout=60, interval=0.1,
             message="two_roots finished")
    with psycopg.connect(database_url) as conn:
        state, duration_ms = conn.execute("SELECT state, duration_ms FROM tasker_tasks"
                                          " WHERE uuid = %s", [task_uuid]).fetchone()
        starts = conn.execute("SELECT extract(epoch FROM max(started_at) - min(started_at))"
                              " FROM tasker_steps WHERE task_uuid = %s AND name IN"
                              " ('left', 'right')", [task_uuid]).fetchone()[0]
    assert state == "complete"
    # Two 2 s roots on -c 2: about 2 s, never the 4 s of one after the other.
    assert duration_ms < 3500, duration_ms
    assert float(starts) < 1.0, starts  # the second root did not wait for the first
    assert sorted(runs(tmp_path / "runs")) == ["join 1", "left 1", "right 1"]


def test_duplicate_of_a_running_step_does_not_hold_a_pool_process(
        start_node, step_queue, database_url, app, tmp_path: Path) -> None:
    from tasker.workflows.engine import submit

    node = start_node(queue=step_queue, concurrency=2, env=poison_env(step_queue),
                      extra_args=POISON_ARGS)
    task_uuid = submit("poison.hold", {"seconds": 5, "runs_file": str(tmp_path / "runs")}
                       ).task_uuid
    wait_for(lambda: runs(tmp_path / "runs"), timeout=30, interval=0.05,
             message="the hold step running")
    with psycopg.connect(database_url) as conn:
        step_uuid = conn.execute("SELECT uuid::text FROM tasker_steps WHERE task_uuid = %s",
                                 [task_uuid]).fetchone()[0]
    duplicate = f"dup-{uuid.uuid4()}"
    app.send_task("tasker.run_step", args=[step_uuid], queue=step_queue, task_id=duplicate)

    def duplicate_done() -> dict | None:
        return next((e for e in node.log_events() if e.get("task_id") == duplicate
                     and e.get("event") == "task.succeeded"), None)
    event = wait_for(duplicate_done, timeout=30, interval=0.05,
                     message="the duplicate delivery acknowledged")
    # Acknowledged while the original still runs, after well under its 5 s.
    assert not _done(database_url, task_uuid)
    assert event["runtime_seconds"] < 1.5, event
    wait_for(lambda: _done(database_url, task_uuid), timeout=30, message="hold finished")
    assert task_records(database_url, [task_uuid])[task_uuid][1] == "complete"
    assert runs(tmp_path / "runs") == ["hold 1"]  # the handler ran once
    assert total(node.scrape(), "tasker_step_executions_total") == 1
