"""Task requests on real workers: complete, exactly once, recovered when messages are lost."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import psycopg
import pytest
from support import REPO, busy_child, total, wait_for
from workflow_support import (
    SHAPES,
    assert_complete_with_answers,
    assert_no_step_applied_twice,
)
from workflow_support import task_records as _tasks


def _all_finished(database_url: str, uuids: list[str]) -> bool:
    return all(t[1] in ("complete", "error") for t in _tasks(database_url, uuids).values())


def _check_exactly_once(database_url: str, uuids: list[str]) -> None:
    # Every step committed exactly one ledger row and ran one attempt.
    assert_no_step_applied_twice(database_url, uuids)
    with psycopg.connect(database_url) as conn:
        steps, ledger = conn.execute(
            "SELECT (SELECT count(*) FROM tasker_steps WHERE task_uuid = ANY(%s::uuid[])),"
            " (SELECT count(*) FROM tasker_workflow_ledger WHERE task_uuid = ANY(%s::uuid[]))",
            [uuids, uuids]).fetchone()
        assert steps == ledger
        not_complete = conn.execute(
            "SELECT count(*) FROM tasker_steps WHERE task_uuid = ANY(%s::uuid[])"
            " AND (state <> 'complete' OR attempts <> 1)", [uuids]).fetchone()[0]
        assert not_complete == 0


def _submit_many(count: int, seed: int = 7) -> list[tuple[str, str, int]]:
    from tasker.workflows.engine import submit

    rng = random.Random(seed)
    submitted = []
    for i in range(count):
        workflow = SHAPES[i % len(SHAPES)]
        n = rng.randint(-50, 50)
        submitted.append((submit(workflow, {"n": n}).task_uuid, workflow, n))
    return submitted




def test_fifty_requests_across_four_shapes_complete_exactly_once(start_node, step_queue,
                                                                   database_url):
    node = start_node(queue=step_queue, concurrency=4, env={"TASKER_STEP_QUEUE": step_queue})
    submitted = _submit_many(50)
    uuids = [u for u, _, _ in submitted]
    wait_for(lambda: _all_finished(database_url, uuids), timeout=120, interval=0.5,
             message="50 requests finished")
    assert_complete_with_answers(database_url, submitted)
    _check_exactly_once(database_url, uuids)
    s = node.scrape()
    assert total(s, "tasker_workflow_requests_total", outcome="complete") == 50
    assert total(s, "tasker_step_executions_total", path="event") == sum(
            {"linear.sequence": 4, "diamond.fan_out_in": 4, "tree.fan_out_twice": 8,
             "mixed.converging": 7}[w] for _, w, _ in submitted)
    assert node.snapshot()["deployment_mode_score"] == 1.0


def test_lost_messages_are_recovered_by_the_poller(start_node, step_queue, database_url,
                                                    redis_client, tmp_path):
    env = {"TASKER_STEP_QUEUE": step_queue, "TASKER_RECOVERY_INTERVAL": "1",
           "TASKER_RECOVERY_DEADLINE": "2"}
    node = start_node(queue=step_queue, concurrency=2, env=env)
    beat_log = open(tmp_path / "beat.log", "wb")  # noqa: SIM115
    beat = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasker", "beat",
                             "--schedule", str(tmp_path / "schedule")], cwd=REPO,
                            env={**node.env, **env}, stdout=beat_log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        submitted = _submit_many(50, seed=11)
        uuids = [u for u, _, _ in submitted]
        time.sleep(0.5)
        # The broker loses every message still waiting (Redis keeps nothing on disk).
        lost = sum(redis_client.delete(key) for key in redis_client.scan_iter(
            match=f"{step_queue}*"))
        assert lost >= 1
        wait_for(lambda: _all_finished(database_url, uuids), timeout=180, interval=0.5,
                 message="50 requests finished after message loss")
    finally:
        os.killpg(beat.pid, signal.SIGTERM)
        beat.wait(timeout=20)
        beat_log.close()
    tasks = _tasks(database_url, uuids)
    assert all(t[1] == "complete" for t in tasks.values())
    _check_exactly_once(database_url, uuids)
    s = node.scrape()
    event = total(s, "tasker_step_executions_total", path="event")
    poll = total(s, "tasker_step_executions_total", path="poll")
    assert poll >= 1
    score = node.snapshot()["deployment_mode_score"]
    assert score < 1
    assert score == pytest.approx(event / (event + poll), abs=1e-4)
    assert total(s, "tasker_worker_deployment_mode_score") == pytest.approx(score, abs=1e-4)
    assert total(s, "tasker_workflow_steps_dispatched_total", path="poll") >= poll


def test_sigkill_in_the_middle_of_a_step_still_completes_once(start_node, step_queue,
                                                              database_url):
    from tasker.workflows.engine import submit

    node = start_node(queue=step_queue, concurrency=2, env={"TASKER_STEP_QUEUE": step_queue})
    task_uuid = submit("diagnostics.slow", {"seconds": 4}).task_uuid
    wait_for(lambda: total(node.scrape(), "tasker_worker_tasks_active") == 1, timeout=30,
             message="the slow step running")
    time.sleep(0.5)
    os.kill(busy_child(node), signal.SIGKILL)
    wait_for(lambda: _all_finished(database_url, [task_uuid]), timeout=60, interval=0.5,
             message="the request completes after the kill")
    assert _tasks(database_url, [task_uuid])[task_uuid][1] == "complete"
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT step, count(*) FROM tasker_workflow_ledger"
                            " WHERE task_uuid = %s GROUP BY step", [task_uuid]).fetchall()
    assert rows == [("hold", 1)]  # the killed attempt's effects were rolled back


def test_concurrent_sibling_completions_dispatch_the_join_once(start_node, step_queue,
                                                               database_url):
    start_node(queue=step_queue, concurrency=4, env={"TASKER_STEP_QUEUE": step_queue})
    start_node(queue=step_queue, concurrency=4, env={"TASKER_STEP_QUEUE": step_queue})
    from tasker.workflows.engine import submit

    uuids = [submit("diamond.fan_out_in", {"n": i}).task_uuid for i in range(60)]
    wait_for(lambda: _all_finished(database_url, uuids), timeout=120, interval=0.5,
             message="60 diamonds finished")
    assert all(t[1] == "complete" for t in _tasks(database_url, uuids).values())
    _check_exactly_once(database_url, uuids)


def test_failing_step_retries_with_backoff_then_fails_the_task(start_node, step_queue,
                                                               database_url):
    from tasker.workflows.engine import submit

    start_node(queue=step_queue, env={"TASKER_STEP_QUEUE": step_queue})
    recovered = submit("diagnostics.flaky", {"succeed_on": 3}).task_uuid
    failed = submit("diagnostics.flaky", {"succeed_on": 9}).task_uuid
    wait_for(lambda: _all_finished(database_url, [recovered, failed]), timeout=60,
             message="both flaky requests finished")
    tasks = _tasks(database_url, [recovered, failed])
    assert tasks[recovered][1] == "complete" and tasks[recovered][2]["flaky"]["attempt"] == 3
    assert tasks[failed][1] == "error"
    with psycopg.connect(database_url) as conn:
        state, attempts, error = conn.execute(
            "SELECT state, attempts, error FROM tasker_steps WHERE task_uuid = %s"
            " AND name = 'flaky'", [failed]).fetchone()
        after = conn.execute("SELECT state FROM tasker_steps WHERE task_uuid = %s"
                             " AND name = 'after'", [failed]).fetchone()[0]
        err = conn.execute("SELECT error, duration_ms FROM tasker_tasks WHERE uuid = %s",
                           [failed]).fetchone()
    assert (state, attempts) == ("error", 3) and "fails on purpose" in error
    assert after == "cancelled"  # never dispatched, closed with its task
    assert "step flaky" in err[0] and err[1] > 0


def test_bad_requests_are_refused_and_nothing_is_written(database_url, monkeypatch):
    from tasker.settings import reset_settings
    from tasker.workflows.definition import ContextError, UnknownWorkflowError
    from tasker.workflows.engine import submit

    def count() -> int:
        with psycopg.connect(database_url) as conn:
            return conn.execute("SELECT (SELECT count(*) FROM tasker_tasks) +"
                                " (SELECT count(*) FROM tasker_steps)").fetchone()[0]

    before = count()
    with pytest.raises(UnknownWorkflowError, match="unknown workflow 'nope.nothing'"):
        submit("nope.nothing", {})
    with pytest.raises(ContextError, match="integer 'n'"):
        submit("linear.sequence", {"n": "three"})
    monkeypatch.setenv("TASKER_MAX_CONTEXT_BYTES", "100")
    reset_settings()
    try:
        with pytest.raises(ContextError, match="limit is 100"):
            submit("linear.sequence", {"n": 1, "pad": "x" * 200})
    finally:
        monkeypatch.delenv("TASKER_MAX_CONTEXT_BYTES")
        reset_settings()
    assert count() == before
    cli = subprocess.run([sys.executable, "-m", "tasker.cli.main", "submit", "linear.sequence",
                          "--context", "{not json"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert cli.returncode == 2 and "not JSON" in cli.stderr
    assert count() == before
