"""What the workflow tests share: the example shapes, their answers, the records' checks."""

from __future__ import annotations

import threading
from typing import Any

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


# -- poison and timing workflows (tests only) ----------------------------------
# Declared here so both the test process (which submits them) and the workers
# (started with PYTHONPATH=tests and ``--include workflow_support``) know them.
# Each handler appends one line to ``context["runs_file"]`` before anything
# else: a side effect outside the database that no rollback undoes, so the
# file counts how many times the handler really ran.

TESTS_DIR = str(__import__("pathlib").Path(__file__).resolve().parent)


def _ran(ctx) -> None:
    path = ctx.context.get("runs_file")
    if path:
        with open(path, "a") as f:
            f.write(f"{ctx.step_name} {ctx.attempt}\n")


def _sigkill_self(ctx):
    import os
    import signal

    _ran(ctx)
    os.kill(os.getpid(), signal.SIGKILL)


def _return_nan(ctx):
    _ran(ctx)
    ctx.conn.execute("INSERT INTO tasker_workflow_ledger (task_uuid, step, value)"
                     " VALUES (%s, %s, 1)", [ctx.task_uuid, ctx.step_name])
    return {"value": float("nan")}


def _return_nul(ctx):
    _ran(ctx)
    return {"text": "a\u0000b"}


def _break_connection(ctx):
    _ran(ctx)
    ctx.conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    return {"unreachable": True}


def _sleep_and_record(ctx):
    _ran(ctx)
    ctx.conn.execute("SELECT pg_sleep(%s)", [float(ctx.context.get("seconds", 2))])
    ctx.conn.execute("INSERT INTO tasker_workflow_ledger (task_uuid, step, value)"
                     " VALUES (%s, %s, %s)", [ctx.task_uuid, ctx.step_name, ctx.attempt])
    return {"slept": True}


def _fail_once_sibling_runs(ctx):
    """Fail for good, but only once the sibling root "slow" is running (claimed)."""
    import time

    _ran(ctx)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and ctx.conn.execute(
            "SELECT state FROM tasker_steps WHERE task_uuid = %s AND name = 'slow'",
            [ctx.task_uuid]).fetchone()[0] != "running":
        time.sleep(0.05)
    raise RuntimeError("fails on purpose")


def _after(ctx):
    _ran(ctx)
    return {"after": True}


def _declare_poison() -> dict[str, object]:
    from tasker.workflows import Step, Workflow

    def poison(name, handler):
        return Workflow("poison", name, steps=[Step("bad", handler, max_attempts=2),
                                               Step("after", _after, after=["bad"])])

    return {
        "sigkill": poison("sigkill", _sigkill_self),
        "nan": poison("nan", _return_nan),
        "nul": poison("nul", _return_nul),
        "broken_connection": poison("broken_connection", _break_connection),
        "two_roots": Workflow("poison", "two_roots", steps=[
            Step("left", _sleep_and_record), Step("right", _sleep_and_record),
            Step("join", _after, after=["left", "right"])]),
        "hold": Workflow("poison", "hold", steps=[Step("hold", _sleep_and_record)]),
        # One root fails for good while its sibling root still runs: the task is
        # finalized and the sibling, cancelled, must leave no effect behind.
        "fail_beside_slow": Workflow("poison", "fail_beside_slow", steps=[
            Step("slow", _sleep_and_record), Step("fail", _fail_once_sibling_runs, max_attempts=1),
            Step("join", _after, after=["slow", "fail"])]),
    }


POISON = _declare_poison()


def runs(path) -> list[str]:
    """The lines a poison handler wrote: one per run of its handler."""
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def poison_env(step_queue: str, **extra: str) -> dict[str, str]:
    """Environment of a worker that knows the poison workflows."""
    import os

    path = os.pathsep.join(p for p in (TESTS_DIR, os.environ.get("PYTHONPATH")) if p)
    return {"TASKER_STEP_QUEUE": step_queue, "PYTHONPATH": path, **extra}


POISON_ARGS = ["--include", "workflow_support"]


def queued_step_messages(redis_client, queue: str) -> dict[str, int]:
    """Step uuid -> ``tasker.run_step`` messages waiting in ``queue`` (every priority level)."""
    import base64
    import json
    from collections import Counter

    found: Counter[str] = Counter()
    for key in redis_client.scan_iter(match=f"{queue}*"):
        if redis_client.type(key) != b"list":
            continue
        for raw in redis_client.lrange(key, 0, -1):
            message = json.loads(raw)
            if message.get("headers", {}).get("task") != "tasker.run_step":
                continue
            args = json.loads(base64.b64decode(message["body"]))[0]
            found[args[0]] += 1
    return dict(found)


def open_work_mismatch(url: str) -> list[tuple]:
    """Open steps of finalized tasks (there must be none)."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT t.uuid, t.state, s.name, s.state FROM tasker_steps s"
            " JOIN tasker_tasks t ON t.uuid = s.task_uuid"
            " WHERE t.state IN ('complete', 'error')"
            " AND s.state IN ('waiting', 'dispatched', 'running', 'waiting_retry')").fetchall()


class Poller:
    """Sends ``tasker.recover_steps`` to ``queue`` every second, as beat does.

    With ``broker_url`` it publishes through its own Celery app (a private broker
    the test process's app is not configured for).
    """

    def __init__(self, app: Any, queue: str, interval: float = 1.0,
                 broker_url: str | None = None) -> None:
        self._stop = threading.Event()
        self._broker_url = broker_url
        self._thread = threading.Thread(target=self._run, args=(app, queue, interval),
                                        daemon=True)

    def _run(self, app: Any, queue: str, interval: float) -> None:
        own = None
        if self._broker_url:
            from celery import Celery

            app = own = Celery("test-poller", broker=self._broker_url)
        try:
            while not self._stop.wait(interval):
                try:
                    app.send_task("tasker.recover_steps", queue=queue, expires=interval * 3)
                except Exception:  # noqa: BLE001 - a broker restart: next second
                    pass
        finally:
            if own is not None:
                own.close()

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
