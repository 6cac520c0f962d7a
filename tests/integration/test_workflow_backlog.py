"""The recovery poller never multiplies messages waiting behind a backlog."""

from __future__ import annotations

import random

import psycopg
import pytest
from support import SESSION, wait_for
from workflow_support import (
    SHAPES,
    Poller,
    assert_complete_with_answers,
    assert_no_step_applied_twice,
    queued_step_messages,
    task_records,
)


@pytest.mark.timeout(180)
def test_no_consumer_for_20s_leaves_one_message_per_step(start_node, step_queue, database_url,
                                                         redis_client, app) -> None:
    import time

    from tasker.workflows.engine import submit

    env = {"TASKER_STEP_QUEUE": step_queue, "TASKER_RECOVERY_DEADLINE": "3",
           "TASKER_RECOVERY_INTERVAL": "1"}
    # The poller runs on its own queue, on a node that does not consume steps.
    poll_queue = f"{SESSION}-poll-{step_queue[-8:]}"
    start_node(queue=poll_queue, concurrency=1, env=env)
    rng = random.Random(5)
    submitted = [(submit(w, {"n": n}).task_uuid, w, n)
                 for w, n in ((SHAPES[i % 4], rng.randint(-50, 50)) for i in range(10))]
    uuids = [u for u, _, _ in submitted]
    with Poller(app, poll_queue):
        time.sleep(20)  # no consumer on the step queue: a 20 s backlog, deadline 3 s
        waiting = queued_step_messages(redis_client, step_queue)
        with psycopg.connect(database_url) as conn:
            roots = {r[0] for r in conn.execute(
                "SELECT uuid::text FROM tasker_steps WHERE task_uuid = ANY(%s::uuid[])"
                " AND state = 'dispatched'", [uuids])}
        assert max(waiting.values()) == 1, waiting  # one message per step, not a copy per poll
        assert set(waiting) == roots  # ...and every dispatched step has its message waiting
        start_node(queue=step_queue, concurrency=2, env=env)
        wait_for(lambda: all(t[1] in ("complete", "error")
                             for t in task_records(database_url, uuids).values()),
                 timeout=90, interval=0.5, message="every request finished")
    assert_complete_with_answers(database_url, submitted)
    assert_no_step_applied_twice(database_url, uuids)
    with psycopg.connect(database_url) as conn:
        steps, ledger, extra = conn.execute(
            "SELECT (SELECT count(*) FROM tasker_steps WHERE task_uuid = ANY(%s::uuid[])),"
            " (SELECT count(*) FROM tasker_workflow_ledger WHERE task_uuid = ANY(%s::uuid[])),"
            " (SELECT count(*) FROM tasker_steps WHERE task_uuid = ANY(%s::uuid[])"
            "  AND (attempts <> 1 OR dispatches <> 1))", [uuids, uuids, uuids]).fetchone()
    assert steps == ledger  # each handler exactly once
    assert extra == 0  # one attempt and one message per step: nothing re-dispatched


def test_poller_rules_are_pure() -> None:
    """``provably_lost``: held lease = alive; waiting message = late, not lost."""
    from datetime import UTC, datetime

    from tasker.workflows.engine import provably_lost
    from tasker.workflows.records import Candidate, lease_key

    def cand(uuid: str, state: str, dispatches: int = 1, age: float = 10.0) -> Candidate:
        return Candidate(uuid, "linear.sequence", uuid, None, state, 1, dispatches, age,
                         datetime.now(UTC))

    a, b, c, d = (f"0000000{i}-0000-4000-8000-000000000000" for i in range(4))
    found = provably_lost([cand(a, "running"), cand(b, "running"), cand(c, "dispatched"),
                           cand(d, "waiting_retry")], {lease_key(a)}, {c: 1}, 3.0)
    assert [x.uuid for x in found] == [b, d]
    # The queue cannot be read: the n-th re-dispatch waits deadline * 2**n.
    assert provably_lost([cand(c, "dispatched", dispatches=3, age=10.0)], set(), None, 3.0) == []
    assert len(provably_lost([cand(c, "dispatched", dispatches=3, age=13.0)], set(), None,
                             3.0)) == 1
