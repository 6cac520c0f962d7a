"""The SQL of task requests and their steps (tables ``tasker_tasks``, ``tasker_steps``).

Every function takes the connection of the caller's transaction. Concurrency
rules, in one place:

* a step runs while its transaction holds the step row's lock (``FOR UPDATE``);
  a duplicate delivery waits for it, then finds the step complete and skips;
* completing a step takes the task row's lock before looking for dependents
  to dispatch, so two siblings finishing at once are serialized: the second
  sees the first's completion and the join is dispatched exactly once;
* the recovery poller skips locked (running) steps (``SKIP LOCKED``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tasker.workflows.definition import Workflow

__all__ = ["StepRow", "insert_request", "lock_step", "dependency_results", "start_task",
           "complete_step", "lock_task", "dispatch_ready", "record_failed_attempt", "finalize",
           "claim_overdue", "counts_by_state", "find_tasks", "steps_of"]


@dataclass(frozen=True)
class StepRow:
    uuid: str
    task_uuid: str
    name: str
    state: str
    attempts: int
    max_attempts: int
    workflow: str
    correlation_id: str
    parent_correlation_id: str | None
    task_state: str
    context: dict[str, Any]


def insert_request(conn: psycopg.Connection, wf: Workflow, context: dict[str, Any],
                   correlation_id: str, parent_correlation_id: str | None
                   ) -> tuple[str, list[tuple[str, str]]]:
    """Record a task and all its steps; roots are recorded as dispatched.

    Returns the task uuid and the (uuid, name) of the root steps to publish.
    """
    task_uuid = str(uuid.uuid4())
    conn.execute(
        "INSERT INTO tasker_tasks (uuid, namespace, name, version, state, context,"
        " correlation_id, parent_correlation_id) VALUES (%s, %s, %s, %s, 'pending', %s, %s, %s)",
        [task_uuid, wf.namespace, wf.name, wf.version, Jsonb(context), correlation_id,
         parent_correlation_id])
    roots: list[tuple[str, str]] = []
    rows = []
    for step in wf.steps:
        step_uuid = str(uuid.uuid4())
        is_root = not step.after
        rows.append((step_uuid, task_uuid, step.name, step.name, list(step.after),
                     "dispatched" if is_root else "waiting", step.max_attempts,
                     "event" if is_root else None, correlation_id, parent_correlation_id,
                     is_root))
        if is_root:
            roots.append((step_uuid, step.name))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO tasker_steps (uuid, task_uuid, name, handler, depends_on, state,"
            " max_attempts, delivery, correlation_id, parent_correlation_id, dispatched_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " CASE WHEN %s THEN now() END)", rows)
    return task_uuid, roots


def lock_step(conn: psycopg.Connection, step_uuid: str) -> StepRow | None:
    """The step with its task, its row locked for this transaction."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT s.uuid::text, s.task_uuid::text, s.name, s.state, s.attempts,"
            " s.max_attempts, t.namespace || '.' || t.name AS workflow,"
            " s.correlation_id::text, s.parent_correlation_id::text, t.state AS task_state,"
            " t.context FROM tasker_steps s JOIN tasker_tasks t ON t.uuid = s.task_uuid"
            " WHERE s.uuid = %s FOR UPDATE OF s", [step_uuid]).fetchone()
    return StepRow(**row) if row else None


def dependency_results(conn: psycopg.Connection, task_uuid: str,
                       names: Iterable[str]) -> dict[str, Any]:
    names = list(names)
    if not names:
        return {}
    rows = conn.execute("SELECT name, results FROM tasker_steps WHERE task_uuid = %s"
                        " AND name = ANY(%s)", [task_uuid, names]).fetchall()
    return {name: results for name, results in rows}


def start_task(conn: psycopg.Connection, task_uuid: str) -> bool:
    """pending -> in_progress; True the first time only."""
    return conn.execute("UPDATE tasker_tasks SET state = 'in_progress', updated_at = now()"
                        " WHERE uuid = %s AND state = 'pending'", [task_uuid]).rowcount == 1


def complete_step(conn: psycopg.Connection, step: StepRow, result: Any) -> None:
    conn.execute(
        "UPDATE tasker_steps SET state = 'complete', results = %s, attempts = attempts + 1,"
        " started_at = COALESCE(started_at, now()), completed_at = clock_timestamp(),"
        " updated_at = clock_timestamp(), error = NULL WHERE uuid = %s",
        [Jsonb(result), step.uuid])


def lock_task(conn: psycopg.Connection, task_uuid: str) -> str:
    """Serialize completions of one task's steps; returns the task's state."""
    return conn.execute("SELECT state FROM tasker_tasks WHERE uuid = %s FOR UPDATE",
                        [task_uuid]).fetchone()[0]


def dispatch_ready(conn: psycopg.Connection, task_uuid: str) -> list[tuple[str, str]]:
    """Mark waiting steps whose dependencies are all complete as dispatched.

    Call with the task row locked (:func:`lock_task`).
    """
    return conn.execute(
        "UPDATE tasker_steps s SET state = 'dispatched', dispatched_at = clock_timestamp(),"
        " delivery = 'event', updated_at = clock_timestamp()"
        " WHERE s.task_uuid = %s AND s.state = 'waiting' AND NOT EXISTS ("
        "   SELECT 1 FROM tasker_steps d WHERE d.task_uuid = s.task_uuid"
        "   AND d.name = ANY(s.depends_on) AND d.state <> 'complete')"
        " RETURNING s.uuid::text, s.name", [task_uuid]).fetchall()


def record_failed_attempt(conn: psycopg.Connection, step: StepRow, error: str,
                          retry_in: float | None) -> str:
    """Count a failed attempt: ``waiting_retry`` (due in ``retry_in`` s) or ``error``."""
    state = "waiting_retry" if retry_in is not None else "error"
    conn.execute(
        "UPDATE tasker_steps SET state = %s, attempts = attempts + 1, error = %s,"
        " started_at = COALESCE(started_at, now()), updated_at = now(),"
        " next_attempt_at = CASE WHEN %s::float8 IS NULL THEN NULL"
        "   ELSE now() + make_interval(secs => %s::float8) END,"
        " dispatched_at = CASE WHEN %s::float8 IS NULL THEN dispatched_at"
        "   ELSE now() + make_interval(secs => %s::float8) END,"
        " completed_at = CASE WHEN %s::float8 IS NULL THEN now() END"
        " WHERE uuid = %s",
        [state, error[:4000], retry_in, retry_in, retry_in, retry_in, retry_in, step.uuid])
    return state


def finalize(conn: psycopg.Connection, task_uuid: str, error: str | None = None
             ) -> tuple[str, float] | None:
    """Finish the task if it failed or every step is complete.

    Returns (final state, duration in seconds) when this call finalized it.
    """
    if error is None:
        remaining = conn.execute("SELECT count(*) FROM tasker_steps WHERE task_uuid = %s"
                                 " AND state <> 'complete'", [task_uuid]).fetchone()[0]
        if remaining:
            return None
        results = {name: res for name, res in conn.execute(
            "SELECT name, results FROM tasker_steps WHERE task_uuid = %s", [task_uuid])}
        row = conn.execute(
            "UPDATE tasker_tasks SET state = 'complete', results = %s,"
            " completed_at = clock_timestamp(), updated_at = clock_timestamp(),"
            " duration_ms = 1000 * extract(epoch FROM clock_timestamp() - created_at)"
            " WHERE uuid = %s AND state IN ('pending', 'in_progress')"
            " RETURNING state, duration_ms", [Jsonb(results), task_uuid]).fetchone()
    else:
        row = conn.execute(
            "UPDATE tasker_tasks SET state = 'error', error = %s,"
            " completed_at = clock_timestamp(), updated_at = clock_timestamp(),"
            " duration_ms = 1000 * extract(epoch FROM clock_timestamp() - created_at)"
            " WHERE uuid = %s AND state IN ('pending', 'in_progress')"
            " RETURNING state, duration_ms", [error[:4000], task_uuid]).fetchone()
    return (row[0], row[1] / 1000.0) if row else None


def claim_overdue(conn: psycopg.Connection, deadline_seconds: float, limit: int = 1000
                  ) -> list[tuple[str, str, str, str | None]]:
    """Steps dispatched (or due for retry) but not started within the deadline.

    Marks them re-dispatched by polling; running steps are locked and skipped.
    Returns (step uuid, workflow, correlation id, parent correlation id).
    """
    # The task's state is checked inside the CTE, so the update touches only
    # the claimed rows (by primary key) and never joins the whole steps table.
    return conn.execute(
        "WITH overdue AS ("
        "  SELECT s.uuid, t.namespace || '.' || t.name AS workflow FROM tasker_steps s"
        "  JOIN tasker_tasks t ON t.uuid = s.task_uuid"
        "  WHERE s.state IN ('dispatched', 'waiting_retry')"
        "  AND s.dispatched_at < now() - make_interval(secs => %s::float8)"
        "  AND t.state IN ('pending', 'in_progress')"
        "  ORDER BY s.dispatched_at LIMIT %s FOR UPDATE OF s SKIP LOCKED)"
        " UPDATE tasker_steps s SET state = 'dispatched', dispatched_at = clock_timestamp(),"
        " delivery = 'poll', updated_at = clock_timestamp()"
        " FROM overdue WHERE s.uuid = overdue.uuid"
        " RETURNING s.uuid::text, overdue.workflow, s.correlation_id::text,"
        " s.parent_correlation_id::text", [deadline_seconds, limit]).fetchall()


#: States of work not finished yet: what the ``records`` sampler source reports.
OPEN_TASK_STATES = ("pending", "in_progress")
OPEN_STEP_STATES = ("waiting", "dispatched", "running", "waiting_retry")


def counts_by_state(conn: psycopg.Connection) -> dict[str, dict[str, int]]:
    """Open tasks and steps by state (the request backlog); a state with none is 0.

    Finished ones (``complete``, ``error``) are left out on purpose: counting
    them reads the whole history every sample, which grows without end (130 ms
    at 50,000 tasks, see BENCHMARKS.md); their totals are the counters
    ``tasker_workflow_requests_total``. The open states are counted through
    partial indexes, so the cost follows the backlog.
    """
    # The state lists are literals (not parameters) so the planner can prove
    # the partial indexes' predicates.
    tasks = dict(conn.execute(
        "SELECT state, count(*) FROM tasker_tasks WHERE state IN ('pending', 'in_progress')"
        " GROUP BY state"))
    steps = dict(conn.execute(
        "SELECT state, count(*) FROM tasker_steps"
        " WHERE state IN ('waiting', 'dispatched', 'running', 'waiting_retry') GROUP BY state"))
    return {"tasks": {s: int(tasks.get(s, 0)) for s in OPEN_TASK_STATES},
            "steps": {s: int(steps.get(s, 0)) for s in OPEN_STEP_STATES}}


def find_tasks(conn: psycopg.Connection, ident: str) -> list[dict[str, Any]]:
    """Tasks whose uuid or correlation id (or parent correlation id) is ``ident``."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT uuid::text, namespace, name, version, state, context, results, error,"
            " correlation_id::text, parent_correlation_id::text, created_at, completed_at,"
            " duration_ms FROM tasker_tasks WHERE uuid = %s::uuid OR correlation_id = %s::uuid"
            " OR parent_correlation_id = %s::uuid ORDER BY created_at",
            [ident, ident, ident]).fetchall()


def steps_of(conn: psycopg.Connection, task_uuid: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT name, state, attempts, max_attempts, delivery, depends_on, results, error,"
            " dispatched_at, started_at, completed_at FROM tasker_steps WHERE task_uuid = %s"
            " ORDER BY COALESCE(started_at, 'infinity'), name", [task_uuid]).fetchall()

