"""Task requests and workflows: submit latency, dispatch, per-step overhead, SQL plans.

    python -m bench.workflows [--quick] [--requests 200] [--rate 5]
                              [--sizes 100,1000,10000,50000]

Part 1, end to end on a real node (prefork ``-c 2``, Redis, a private
PostgreSQL database): submit ``bench.chain10`` (ten steps in a line) and then
``bench.wide10`` (ten independent steps) at a steady rate, timing each
``submit()`` call (validate, record the task and its steps, publish the ready
ones). The handlers (:mod:`bench.workflow_shapes`) do nothing, so what the
records show afterwards is tasker's own cost:

* ``submit``: the call, for one root step (chain10) and ten (wide10);
* per step of chain10: *handoff* (the previous step's completion -> this step's
  transaction start: commit, publish, broker, pool) and *in step* (lock,
  dependency results, empty handler, completion, dispatch of the next one);
* per task: end to end (request recorded -> finalized), and that over ten.

Per step, tasker pays for its safety: a lease (advisory lock) and a claim
committed before the handler runs (so a killed attempt is counted), then the
outcome's transaction: compare ``in_step``/``handoff`` with a run at an older
commit to see that price.

Part 2, SQL plans: a data generator records N tasks across the four example
shapes (linear, diamond, tree, mixed) in every state (complete, in progress,
waiting for retry, error, pending), then runs ``EXPLAIN (ANALYZE, BUFFERS)``
on the very statements tasker executes (captured from
:mod:`tasker.workflows.records`): the step claim's read, readiness (dispatch
of unblocked steps), the recovery poller's candidates, and the backlog count
the sampler reads. Updates are rolled back. Sizes grow in one database, so each
size adds to the previous one.

Part 3, the recovery poller's queue read (what proving that a message still
waits costs) for 1,000 / 5,000 / 10,000 waiting messages.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Variant, progress

BENCH = "workflows"
SHAPES = ("linear.sequence", "diamond.fan_out_in", "tree.fan_out_twice", "mixed.converging")
#: Share of generated tasks per state (a day of history plus an open backlog).
STATE_MIX = (("complete", 0.70), ("error", 0.05), ("in_progress", 0.12),
             ("waiting_retry", 0.03), ("pending", 0.10))
#: Share of open tasks whose messages were lost (the recovery poller's work).
OVERDUE_SHARE = 0.02
TARGETS_MS = {"submit_p99": 50.0, "dispatch10_p99": 100.0, "step_overhead": 200.0}
PERCENTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}


def dist(values_ms: list[float]) -> dict[str, float]:
    out = {name: common.quantile(values_ms, q) for name, q in PERCENTILES.items()}
    out.update({"mean": statistics.fmean(values_ms), "min": min(values_ms),
                "max": max(values_ms), "n": len(values_ms)})
    return out


# ------------------------------------------------------------ part 1: end to end


def submit_paced(workflow: str, count: int, rate: float) -> tuple[list[str], list[float]]:
    """Submit ``count`` requests at ``rate`` per second; uuids and call times (ms)."""
    from tasker.workflows.engine import submit

    uuids, took = [], []
    started = time.monotonic()
    for i in range(count):
        due = started + i / rate
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        t0 = time.perf_counter()
        sub = submit(workflow, {})
        took.append((time.perf_counter() - t0) * 1e3)
        uuids.append(sub.task_uuid)
    return uuids, took


def wait_finished(database_url: str, uuids: list[str], worker: common.Worker,
                  timeout: float) -> None:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        def check() -> tuple[bool, str]:
            open_count, errors = conn.execute(
                "SELECT count(*) FILTER (WHERE state IN ('pending', 'in_progress')),"
                " count(*) FILTER (WHERE state = 'error')"
                " FROM tasker_tasks WHERE uuid = ANY(%s::uuid[])", [uuids]).fetchone()
            if errors:
                raise RuntimeError(f"{errors} bench requests failed:\n{worker.log_tail()}")
            return open_count == 0, f"{open_count} requests still open"

        common.wait_until(worker, check, timeout)


def step_timings(database_url: str, uuids: list[str]) -> dict[str, list[float]]:
    """Per-step handoff / in-step times and per-task end-to-end times, in ms."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        tasks = conn.execute(
            "SELECT uuid, created_at, duration_ms FROM tasker_tasks"
            " WHERE uuid = ANY(%s::uuid[])", [uuids]).fetchall()
        steps = conn.execute(
            "SELECT task_uuid, name, depends_on, started_at, completed_at, attempts"
            " FROM tasker_steps WHERE task_uuid = ANY(%s::uuid[])", [uuids]).fetchall()
    created = {t[0]: t[1] for t in tasks}
    by_task: dict[Any, dict[str, tuple]] = {}
    for task_uuid, name, deps, started, completed, attempts in steps:
        if attempts != 1:
            raise RuntimeError(f"step {name} of {task_uuid} ran {attempts} times")
        by_task.setdefault(task_uuid, {})[name] = (deps, started, completed)
    handoff, in_step, first = [], [], []
    for task_uuid, named in by_task.items():
        for deps, started, completed in named.values():
            in_step.append((completed - started).total_seconds() * 1e3)
            if deps:
                ready = max(named[d][2] for d in deps)
                handoff.append((started - ready).total_seconds() * 1e3)
            else:
                first.append((started - created[task_uuid]).total_seconds() * 1e3)
    return {"handoff": handoff, "in_step": in_step, "first_start": first,
            "end_to_end": [t[2] for t in tasks]}


def run_end_to_end(args: Any, results: common.Results, database_url: str,
                   log_dir: Path) -> None:
    client = common.redis_client()
    queue = f"{common.SESSION}-{BENCH}"
    variant = Variant("tasker", "tasker", "tasker worker running the bench workflows", env=(
        ("TASKER_DATABASE_URL", database_url), ("TASKER_STEP_QUEUE", queue)))
    worker = common.start_worker(variant, queue, f"{queue}-w", log_dir,
                                 ["--include", "bench.workflow_shapes"])
    try:
        warm, _ = submit_paced("bench.chain10", 3, 10)
        wait_finished(database_url, warm, worker, timeout=120)
        for workflow in ("bench.chain10", "bench.wide10"):
            progress(BENCH, f"{args.requests} x {workflow} at {args.rate}/s")
            uuids, submit_ms = submit_paced(workflow, args.requests, args.rate)
            wait_finished(database_url, uuids, worker, timeout=120 + args.requests)
            timings = step_timings(database_url, uuids)
            steps = 10
            record = {
                "table": "end_to_end", "workflow": workflow, "requests": len(uuids),
                "rate": args.rate, "root_steps": 1 if workflow.endswith("chain10") else steps,
                "submit_ms": dist(submit_ms),
                "first_start_ms": dist(timings["first_start"]),
                "in_step_ms": dist(timings["in_step"]),
                "end_to_end_ms": dist(timings["end_to_end"]),
                "per_step_ms": dist([v / steps for v in timings["end_to_end"]]),
            }
            if timings["handoff"]:
                record["handoff_ms"] = dist(timings["handoff"])
            results.write("summary", record)
            progress(BENCH, f"{workflow}: submit p99 {record['submit_ms']['p99']:.1f} ms, "
                            f"end to end p50 {record['end_to_end_ms']['p50']:.1f} ms")
    finally:
        worker.stop()
        common.delete_queue_keys(client, queue)
        common.cleanup_session_keys(client)
        client.close()


# ---------------------------------------------------------------- data generator


def _pick_state(rng: random.Random) -> str:
    x = rng.random()
    for state, share in STATE_MIX:
        if x < share:
            return state
        x -= share
    return STATE_MIX[-1][0]


def generated_rows(count: int, rng: random.Random, now: datetime
                   ) -> tuple[list[tuple], list[tuple]]:
    """Rows of ``count`` tasks (and their steps) across the shapes and states.

    Step states follow the task's: a complete task has every step complete; an
    open one has its first k steps (in declaration order, which is a
    topological order) complete, the steps they unblock dispatched (or, for
    ``waiting_retry``, one of them due for a retry) and the rest waiting; a
    failed one has one step in error and the rest not complete cancelled.
    """
    from tasker.workflows.definition import get_workflow

    shapes = [get_workflow(name) for name in SHAPES]
    tasks, steps = [], []
    for i in range(count):
        wf = shapes[i % len(shapes)]
        state = _pick_state(rng)
        task_uuid, cid = uuid.uuid4(), uuid.uuid4()
        finished = state in ("complete", "error")
        age = rng.uniform(60, 86_400) if finished else rng.uniform(0, 20)
        if not finished and rng.random() < OVERDUE_SHARE:
            age = rng.uniform(60, 600)  # its messages were lost: the poller's work
        created = now - timedelta(seconds=age)
        n = len(wf.steps)
        done = n if state == "complete" else (0 if state == "pending" else rng.randrange(1, n))
        complete_names = {s.name for s in wf.steps[:done]}
        duration = rng.uniform(20, 400) if finished else None
        t = created
        ready_seen = False
        for s in wf.steps:
            s_uuid = uuid.uuid4()
            if s.name in complete_names:
                t = t + timedelta(milliseconds=rng.uniform(2, 20))
                row = ("complete", 1, json.dumps({"value": 1}), None, "event", t, t, t, None)
            elif all(d in complete_names for d in s.after):
                failing = not ready_seen and state in ("error", "waiting_retry")
                ready_seen = True
                if failing and state == "error":
                    row = ("error", s.max_attempts, None, "RuntimeError: boom", "event", t, t,
                           t, None)
                elif failing:
                    due = now + timedelta(seconds=rng.uniform(0.5, 60))
                    row = ("waiting_retry", 1, None, "RuntimeError: boom", "event", due, t,
                           None, due)
                elif finished:  # a failed task closes its other steps
                    row = ("cancelled", 0, None, "cancelled", None, None, None, t, None)
                else:
                    row = ("dispatched", 0, None, None, "event", t, None, None, None)
            elif finished:
                row = ("cancelled", 0, None, "cancelled", None, None, None, t, None)
            else:
                row = ("waiting", 0, None, None, None, None, None, None, None)
            (s_state, attempts, results, error, delivery, dispatched, started, completed,
             next_at) = row
            steps.append((s_uuid, task_uuid, s.name, s.name, list(s.after), s_state, attempts,
                          s.max_attempts, results, error, delivery, cid, created, created,
                          dispatched, started, completed, next_at))
        completed_at = created + timedelta(milliseconds=duration) if finished else None
        tasks.append((task_uuid, wf.namespace, wf.name, wf.version,
                      "in_progress" if state == "waiting_retry" else state,
                      json.dumps({"n": i % 1000}),
                      json.dumps({"square": {"value": 1}}) if state == "complete" else None,
                      "step x: RuntimeError: boom" if state == "error" else None, cid, None,
                      created, created, completed_at, duration))
    return tasks, steps


TASK_COLUMNS = ("uuid, namespace, name, version, state, context, results, error, correlation_id,"
                " parent_correlation_id, created_at, updated_at, completed_at, duration_ms")
TASK_TYPES = ["uuid", "text", "text", "text", "text", "jsonb", "jsonb", "text", "uuid", "uuid",
              "timestamptz", "timestamptz", "timestamptz", "float8"]
STEP_COLUMNS = ("uuid, task_uuid, name, handler, depends_on, state, attempts, max_attempts,"
                " results, error, delivery, correlation_id, created_at, updated_at,"
                " dispatched_at, started_at, completed_at, next_attempt_at")
STEP_TYPES = ["uuid", "uuid", "text", "text", "text[]", "text", "int4", "int4", "jsonb", "text",
              "text", "uuid", "timestamptz", "timestamptz", "timestamptz", "timestamptz",
              "timestamptz", "timestamptz"]


def generate(database_url: str, count: int, seed: int) -> int:
    """Add ``count`` generated tasks with COPY; returns the number of steps added."""
    import psycopg

    tasks, steps = generated_rows(count, random.Random(seed), datetime.now(UTC))
    with psycopg.connect(database_url, autocommit=True) as conn, conn.cursor() as cur:
        for table, columns, types, rows in (("tasker_tasks", TASK_COLUMNS, TASK_TYPES, tasks),
                                            ("tasker_steps", STEP_COLUMNS, STEP_TYPES, steps)):
            with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                copy.set_types(types)
                for row in rows:
                    copy.write_row(row)
        # What autovacuum does on a live database: statistics for the planner
        # and a visibility map, without which no index-only scan is possible.
        cur.execute("VACUUM ANALYZE tasker_tasks")
        cur.execute("VACUUM ANALYZE tasker_steps")
    return len(steps)


# ------------------------------------------------------------- part 2: SQL plans


class _CapturedStatements:
    """Stands in for a connection: records each statement a records function runs."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, Any]] = []
        self.rowcount = 0

    def execute(self, sql: str, params: Any = None) -> _CapturedStatements:
        self.statements.append((sql, params))
        return self

    def cursor(self, **_kwargs: Any) -> _CapturedStatements:
        return self

    def __enter__(self) -> _CapturedStatements:
        return self

    def __exit__(self, *_exc: Any) -> None:
        return None

    def fetchone(self) -> None:
        return None

    def fetchall(self) -> list[Any]:
        return []

    def __iter__(self) -> Any:
        return iter(())


def captured(fn: Callable[..., Any], *args: Any) -> list[tuple[str, Any]]:
    """The statements ``fn(conn, *args)`` executes, as (sql, params)."""
    capture = _CapturedStatements()
    fn(capture, *args)
    return capture.statements


def pick_subjects(conn: Any) -> dict[str, str]:
    """An in-progress task and one of its dispatched steps (what a worker would touch)."""
    row = conn.execute(
        "SELECT s.task_uuid::text, s.uuid::text FROM tasker_steps s"
        " JOIN tasker_tasks t ON t.uuid = s.task_uuid"
        " WHERE t.state = 'in_progress' AND s.state = 'dispatched'"
        " ORDER BY s.uuid LIMIT 1").fetchone()
    return {"task": row[0], "step": row[1]}


def explain(conn: Any, sql: str, params: Any, repeats: int) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) ``repeats`` times, rolled back; the last plan."""
    execution, planning = [], []
    plan_json: Any = None
    for _ in range(repeats):
        with conn.transaction(force_rollback=True):
            (plan_json,) = conn.execute(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params).fetchone()
        execution.append(plan_json[0]["Execution Time"])
        planning.append(plan_json[0]["Planning Time"])
    with conn.transaction(force_rollback=True):
        text = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF, SUMMARY OFF) " + sql,
            params).fetchall())
    top = plan_json[0]["Plan"]
    return {"execution_ms": common.spread(execution), "planning_ms": common.spread(planning),
            "rows": top.get("Actual Rows"), "shared_hit": top.get("Shared Hit Blocks"),
            "shared_read": top.get("Shared Read Blocks"), "scans": _scans(top),
            "plan_text": text}


def _scans(node: dict[str, Any]) -> list[str]:
    """Each scan of a plan tree as ``<node type> on <relation> [using <index>]``."""
    out = []
    if "Relation Name" in node:
        desc = f"{node['Node Type']} on {node['Relation Name']}"
        if node.get("Index Name"):
            desc += f" using {node['Index Name']}"
        out.append(desc)
    for child in node.get("Plans", []):
        out.extend(_scans(child))
    return out


def queries(subjects: dict[str, str], deadline: float) -> dict[str, tuple[str, Any]]:
    """The statements to explain, captured from tasker's own records functions."""
    from tasker.workflows import records

    claim = captured(records.claim_step, subjects["step"])[0]
    ready = captured(records.dispatch_ready, subjects["task"])[0]
    overdue = captured(records.overdue_candidates, deadline)[0]
    backlog_tasks, backlog_steps = captured(records.counts_by_state)
    return {"claim step: read (claim_step)": claim, "readiness (dispatch_ready)": ready,
            "recovery candidates (overdue_candidates)": overdue,
            "backlog: tasks by state": backlog_tasks, "backlog: steps by state": backlog_steps}


def run_plans(args: Any, results: common.Results, database_url: str) -> None:
    import psycopg

    from tasker.settings import get_settings

    deadline = get_settings().recovery_deadline
    recorded = 0
    repeats = 3 if args.quick else 15
    for size in args.sizes:
        t0 = time.monotonic()
        steps = generate(database_url, size - recorded, seed=size)
        recorded = size
        progress(BENCH, f"{size} tasks recorded (+{steps} steps in "
                        f"{time.monotonic() - t0:.1f}s); explaining")
        with psycopg.connect(database_url) as conn:
            totals = conn.execute("SELECT (SELECT count(*) FROM tasker_tasks),"
                                  " (SELECT count(*) FROM tasker_steps)").fetchone()
            subjects = pick_subjects(conn)
            conn.commit()
            for name, (sql, params) in queries(subjects, deadline).items():
                outcome = explain(conn, sql, params, repeats)
                results.write("summary", {"table": "plans", "size": size, "tasks": totals[0],
                                          "steps": totals[1], "query": name, "sql": sql,
                                          **outcome})
                progress(BENCH, f"  {name}: {outcome['execution_ms']['median']:.3f} ms, "
                                f"{', '.join(outcome['scans'])}")


# ------------------------------------------------- part 3: the poller's queue read


def run_poller_scan(args: Any, results: common.Results) -> None:
    """What proving "not in flight" costs: one read of a step queue of N messages.

    The recovery poller reads the step queue (``inflight.waiting_steps``)
    only when some step is overdue; this is the price of never giving a
    waiting message a second copy (the safety side is the backlog test:
    one message per step instead of one more per poll).
    """
    from tasker.celery_app import app
    from tasker.workflows import inflight

    client = common.redis_client()
    queue = f"{common.SESSION}-scan"
    try:
        published = 0
        for size in args.scan_sizes:
            with app.producer_or_acquire() as producer:
                for _ in range(size - published):
                    app.send_task("tasker.run_step", args=[str(uuid.uuid4())], queue=queue,
                                  producer=producer)
            published = size
            took = common.timed_repeats(lambda: inflight.waiting_steps(queue, app), 3 if
                                        args.quick else 9)
            found = inflight.waiting_steps(queue, app)
            record = {"table": "poller_scan", "messages": size,
                      "found": None if found is None else sum(found.values()),
                      "scan_ms": common.spread([t * 1e3 for t in took])}
            results.write("summary", record)
            progress(BENCH, f"poller queue read, {size} messages: "
                            f"{record['scan_ms']['median']:.1f} ms")
    finally:
        common.delete_queue_keys(client, queue)
        client.close()


# -------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser("python -m bench.workflows", __doc__)
    parser.add_argument("--requests", type=int, default=None,
                        help="requests per workflow in part 1 (default 200, quick 20)")
    parser.add_argument("--rate", type=float, default=None,
                        help="requests per second (default 5, quick 10)")
    parser.add_argument("--sizes", default=None,
                        help="recorded tasks for the plans (default 100,1000,10000,50000; "
                             "quick 100,1000)")
    args = parser.parse_args(argv)
    args.requests = args.requests or (20 if args.quick else 200)
    args.rate = args.rate or (10.0 if args.quick else 5.0)
    args.scan_sizes = [1000] if args.quick else [1000, 5000, 10000]
    args.sizes = [int(s) for s in (args.sizes or (
        "100,1000" if args.quick else "100,1000,10000,50000")).split(",")]
    if args.sizes != sorted(args.sizes):
        parser.error("--sizes must grow (each size adds to the previous one)")

    db_name = f"tasker_bench_wf_{os.getpid()}"
    base = common.DATABASE_URL.rsplit("/", 1)[0]
    database_url = f"{base}/{db_name}"
    # This process submits requests: its tasker settings must name the bench's
    # broker, database and step queue before tasker reads them.
    os.environ.update({"TASKER_BROKER_URL": common.REDIS_URL,
                       "TASKER_DATABASE_URL": database_url,
                       "TASKER_STEP_QUEUE": f"{common.SESSION}-{BENCH}"})
    import bench.workflow_shapes  # noqa: F401 - declares bench.chain10 / bench.wide10
    from tasker.migrate import migrate

    results = common.Results(BENCH, args, {"requests": args.requests, "rate": args.rate,
                                           "sizes": args.sizes, "state_mix": dict(STATE_MIX),
                                           "targets_ms": TARGETS_MS})
    ok = False
    try:
        with tempfile.TemporaryDirectory(prefix="tasker-bench-") as tmp:
            migrate(database_url)
            run_end_to_end(args, results, database_url, Path(tmp))
            run_plans(args, results, database_url)
            run_poller_scan(args, results)
        ok = True
    finally:
        results.close(ok)
        _drop_database(base, db_name)
    progress(BENCH, f"results in {results.path}")
    return 0


def _drop_database(base: str, name: str) -> None:
    import psycopg

    from tasker import db

    db.close_pool()
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    raise SystemExit(main())
