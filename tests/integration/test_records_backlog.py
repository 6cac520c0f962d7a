"""The ``records`` sampler source: open tasks and steps by state, read through partial indexes."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from support import REPO

SERVER = "postgresql://127.0.0.1:5432"


@pytest.fixture
def records_db() -> Iterator[str]:
    from tasker.migrate import migrate

    url = f"{SERVER}/tasker_backlog_{uuid.uuid4().hex[:10]}"
    migrate(url)
    try:
        yield url
    finally:
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def _record(conn: psycopg.Connection, workflow: str, task_state: str,
            step_states: dict[str, str] | None = None) -> str:
    from tasker.correlation import uuid7
    from tasker.workflows import records
    from tasker.workflows.definition import get_workflow

    task_uuid, _roots = records.insert_request(conn, get_workflow(workflow), {"n": 1}, uuid7(),
                                               None)
    conn.execute("UPDATE tasker_tasks SET state = %s WHERE uuid = %s", [task_state, task_uuid])
    for name, state in (step_states or {}).items():
        conn.execute("UPDATE tasker_steps SET state = %s WHERE task_uuid = %s AND name = %s",
                     [state, task_uuid, name])
    return task_uuid


def test_backlog_counts_only_open_work_with_zeros(records_db: str) -> None:
    from tasker.workflows.records import counts_by_state

    with psycopg.connect(records_db) as conn:
        # linear.sequence: add_two (root, dispatched) -> triple -> minus_one -> square
        _record(conn, "linear.sequence", "pending")
        _record(conn, "linear.sequence", "in_progress",
                {"add_two": "complete", "triple": "waiting_retry"})
        _record(conn, "linear.sequence", "complete", {n: "complete" for n in (
            "add_two", "triple", "minus_one", "square")})
        _record(conn, "linear.sequence", "error", {"add_two": "error"})
        conn.commit()
        counts = counts_by_state(conn)

    assert counts["tasks"] == {"pending": 1, "in_progress": 1}
    # pending: 1 dispatched + 3 waiting; in progress: 1 waiting_retry + 2 waiting;
    # error: 3 waiting (never dispatched). Complete and error steps are not backlog.
    assert counts["steps"] == {"waiting": 8, "dispatched": 1, "running": 0, "waiting_retry": 1}


def test_backlog_queries_can_use_the_partial_indexes(records_db: str) -> None:
    """The WHERE clauses must imply the indexes' predicates, or every sample reads the history."""
    from tasker.workflows.records import counts_by_state

    sys.path.insert(0, str(REPO))  # bench/ is not installed; its capture helper is reused
    try:
        from bench.workflows import captured
    finally:
        sys.path.remove(str(REPO))

    with psycopg.connect(records_db) as conn:
        conn.execute("SET enable_seqscan = off")
        plans = []
        for sql, params in captured(counts_by_state):
            plans.append("\n".join(r[0] for r in conn.execute("EXPLAIN " + sql, params)))
    assert "tasker_tasks_open_idx" in plans[0], plans[0]
    assert "tasker_steps_open_state_idx" in plans[1], plans[1]
