"""Poison steps end in ``error`` within their attempts; a finalized task leaves nothing open.

Each poison kind defeats a transaction-scoped attempt counter: a process that
SIGKILLs itself, a result PostgreSQL's jsonb rejects (NaN, NUL), a handler that
breaks its own connection, a workflow removed between submit and run. Each must
reach ``error`` with its reason, its handler run at most ``max_attempts`` (2)
times, and its task finalized with no step left open.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support import REPO, wait_for
from workflow_support import (
    POISON_ARGS,
    Poller,
    open_work_mismatch,
    poison_env,
    runs,
    task_records,
)


def _finished(url: str, uuids: list[str]) -> bool:
    tasks = task_records(url, uuids)
    return len(tasks) == len(uuids) and all(t[1] in ("complete", "error") for t in tasks.values())


def _steps(url: str, task_uuid: str) -> dict[str, tuple[str, int, int, str | None]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT name, state, attempts, max_attempts, error FROM tasker_steps"
                            " WHERE task_uuid = %s", [task_uuid]).fetchall()
    return {r[0]: r[1:] for r in rows}


def _gone(ctx: Any) -> dict:  # pragma: no cover - never runs: no worker knows it
    return {}


@pytest.mark.timeout(180)
def test_each_poison_kind_fails_within_its_attempts(start_node, step_queue, database_url, app,
                                                    tmp_path: Path) -> None:
    from tasker.workflows import Step, Workflow
    from tasker.workflows.engine import submit

    # Declared in this process only: the workers never heard of it, as after a
    # deploy that removed it between submit and run.
    Workflow("vanished", "workflow", steps=[Step("bad", _gone, max_attempts=2),
                                            Step("after", _gone, after=["bad"])])
    env = poison_env(step_queue, TASKER_RECOVERY_DEADLINE="2", TASKER_RECOVERY_INTERVAL="1")
    start_node(queue=step_queue, concurrency=2, env=env, extra_args=POISON_ARGS)
    kinds = {"poison.sigkill": "lost: attempt 2/2",
             "poison.nan": "Out of range float values are not JSON compliant",
             "poison.nul": "NUL character",
             "poison.broken_connection": "terminating connection",
             "vanished.workflow": "UnknownWorkflowError"}
    submitted: dict[str, tuple[str, Path]] = {}
    with Poller(app, step_queue):
        for workflow in kinds:
            runs_file = tmp_path / f"{workflow}.runs"
            submitted[workflow] = (submit(workflow, {"runs_file": str(runs_file)}).task_uuid,
                                   runs_file)
        uuids = [u for u, _ in submitted.values()]
        wait_for(lambda: _finished(database_url, uuids), timeout=90, interval=0.5,
                 message="every poison request finalized")
    tasks = task_records(database_url, uuids)
    for workflow, reason in kinds.items():
        task_uuid, runs_file = submitted[workflow]
        assert tasks[task_uuid][1] == "error", (workflow, tasks[task_uuid])
        steps = _steps(database_url, task_uuid)
        state, attempts, max_attempts, error = steps["bad"]
        assert state == "error" and reason in (error or ""), (workflow, steps["bad"])
        assert attempts <= max_attempts == 2, (workflow, steps["bad"])
        ran = [line for line in runs(runs_file) if line.startswith("bad ")]
        expected_runs = 0 if workflow == "vanished.workflow" else 2
        assert len(ran) == expected_runs, (workflow, ran)  # never more than max_attempts
        # The step after it never runs, and is closed with its task.
        assert steps["after"][0] == "cancelled", (workflow, steps["after"])
        status = subprocess.run([sys.executable, "-m", "tasker.cli.main", "status", task_uuid],
                                cwd=REPO, capture_output=True, text=True, timeout=60,
                                env={**os.environ, **env, "COLUMNS": "250"})
        assert status.returncode == 0, status.stderr
        assert "state=error" in status.stdout and reason[:20] in status.stdout, status.stdout
    # No effect of a failed attempt landed (the NaN handler writes a ledger row).
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM tasker_workflow_ledger WHERE task_uuid ="
                            " ANY(%s::uuid[])", [uuids]).fetchone()[0] == 0
    assert open_work_mismatch(database_url) == []


def test_finalized_tasks_leave_no_open_step_and_backlog_equals_open_work(
        start_node, step_queue, database_url) -> None:
    """Finalized either way, no step stays open; the ``records`` series equal SQL."""
    from tasker.workflows.engine import submit
    from tasker.workflows.records import counts_by_state

    start_node(queue=step_queue, concurrency=2, env={"TASKER_STEP_QUEUE": step_queue})
    failed = submit("diagnostics.flaky", {"succeed_on": 9}).task_uuid  # 'after' never runs
    done = submit("linear.sequence", {"n": 2}).task_uuid
    wait_for(lambda: _finished(database_url, [failed, done]), timeout=60, interval=0.3,
             message="both requests finalized")
    assert {t[1] for t in task_records(database_url, [failed, done]).values()} == {
        "error", "complete"}
    assert _steps(database_url, failed)["after"][0] == "cancelled"
    assert open_work_mismatch(database_url) == []
    with psycopg.connect(database_url) as conn:
        counts = counts_by_state(conn)
        direct = dict(conn.execute(
            "SELECT s.state, count(*) FROM tasker_steps s JOIN tasker_tasks t"
            " ON t.uuid = s.task_uuid WHERE t.state IN ('pending', 'in_progress')"
            " AND s.state IN ('waiting', 'dispatched', 'running', 'waiting_retry')"
            " GROUP BY s.state").fetchall())
        tasks = dict(conn.execute("SELECT state, count(*) FROM tasker_tasks"
                                  " WHERE state IN ('pending', 'in_progress') GROUP BY state"))
    assert counts["steps"] == {s: direct.get(s, 0) for s in counts["steps"]}
    assert counts["tasks"] == {s: tasks.get(s, 0) for s in counts["tasks"]}
    # And what the sampler exports as tasker_records_steps / tasker_records_tasks.
    sample = subprocess.run([sys.executable, "-m", "tasker.cli.main", "sample", "--once",
                             "--json"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert sample.returncode == 0, sample.stderr
    records_source = json.loads(sample.stdout)["sources"]["records"]
    assert records_source["up"] is True, records_source
    assert records_source["values"]["steps"] == counts["steps"]
    assert records_source["values"]["tasks"] == counts["tasks"]


def test_results_postgresql_cannot_store_are_refused_before_writing() -> None:
    from tasker.workflows.attempt import ResultError, encode_result

    for bad in (math.nan, {"x": math.inf}, ["a\x00b"], {"k\x00": 1}, {1, 2}):
        with pytest.raises(ResultError):
            encode_result(bad)
    assert encode_result({"text": "a\\u0000b"}) == '{"text": "a\\\\u0000b"}'  # an escaped slash
    assert encode_result(None) == "null"


def test_a_step_cancelled_while_it_runs_leaves_no_effect(start_node, step_queue, database_url,
                                                          tmp_path: Path) -> None:
    from tasker.workflows.engine import submit

    start_node(queue=step_queue, concurrency=2, env=poison_env(step_queue),
               extra_args=POISON_ARGS)
    runs_file = tmp_path / "runs"
    task_uuid = submit("poison.fail_beside_slow", {"seconds": 1.5,
                                                   "runs_file": str(runs_file)}).task_uuid
    wait_for(lambda: _finished(database_url, [task_uuid]), timeout=60, interval=0.2,
             message="the request finalized")
    wait_for(lambda: "slow 1" in runs(runs_file), timeout=30, message="the slow root ran")
    # The slow root finishes after its task failed: it is cancelled, its effects rolled back.
    wait_for(lambda: not open_work_mismatch(database_url), timeout=30, message="steps closed")
    import time

    time.sleep(2.0)  # past the slow root's end
    steps = _steps(database_url, task_uuid)
    assert task_records(database_url, [task_uuid])[task_uuid][1] == "error"
    assert steps["fail"][0] == "error" and steps["slow"][0] == "cancelled", steps
    assert steps["join"][0] == "cancelled", steps
    with psycopg.connect(database_url) as conn:
        ledger = conn.execute("SELECT count(*) FROM tasker_workflow_ledger WHERE task_uuid = %s",
                              [task_uuid]).fetchone()[0]
    assert ledger == 0  # a cancelled step has no effects
