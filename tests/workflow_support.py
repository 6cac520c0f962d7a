"""What the workflow tests share: the example shapes, their answers, the records' checks."""

from __future__ import annotations

import psycopg

SHAPES = ("linear.sequence", "diamond.fan_out_in", "tree.fan_out_twice", "mixed.converging")
#: The step whose result is the workflow's answer.
FINAL_STEP = {"linear.sequence": "square", "diamond.fan_out_in": "join",
              "tree.fan_out_twice": "merge", "mixed.converging": "g"}
#: Steps per workflow.
STEPS = {"linear.sequence": 4, "diamond.fan_out_in": 4, "tree.fan_out_twice": 8,
         "mixed.converging": 7, "diagnostics.slow": 2}


def expected(workflow: str, n: int) -> int:
    """The answer an example workflow must give for ``{"n": n}``."""
    from workers import diamond, linear, mixed, tree

    module = {"linear": linear, "diamond": diamond, "tree": tree, "mixed": mixed}
    return module[workflow.split(".")[0]].expected(n)


def task_records(url: str, uuids: list[str]) -> dict[str, tuple]:
    """uuid -> (workflow, state, results) of the recorded task requests."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT uuid::text, namespace || '.' || name, state, results"
                            " FROM tasker_tasks WHERE uuid = ANY(%s::uuid[])", [uuids]).fetchall()
    return {r[0]: r[1:] for r in rows}


def assert_complete_with_answers(url: str, submitted: list[tuple[str, str, int | None]]) -> None:
    """Every (uuid, workflow, n) is complete; with an ``n``, its answer is right."""
    tasks = task_records(url, [u for u, _, _ in submitted])
    assert len(tasks) == len(submitted)
    for task_uuid, workflow, n in submitted:
        name, state, results = tasks[task_uuid]
        assert (name, state) == (workflow, "complete"), (task_uuid, name, state)
        if n is not None:
            assert results[FINAL_STEP[workflow]]["value"] == expected(workflow, n)


def assert_no_step_applied_twice(url: str, uuids: list[str]) -> None:
    """No step committed its ledger row more than once."""
    with psycopg.connect(url) as conn:
        dupes = conn.execute(
            "SELECT task_uuid, step, count(*) FROM tasker_workflow_ledger"
            " WHERE task_uuid = ANY(%s::uuid[]) GROUP BY 1, 2 HAVING count(*) <> 1",
            [uuids]).fetchall()
    assert not dupes, dupes
