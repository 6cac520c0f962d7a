"""``tasker submit`` and ``tasker status``: task requests and their records."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tasker import db
from tasker.celery_app import app
from tasker.db import DatabaseError, check_reachable
from tasker.redact import redact_text
from tasker.workflows.definition import ContextError, UnknownWorkflowError, get_workflow


def register(sub: Any) -> None:
    p = sub.add_parser("submit", help="submit a task request: <namespace>.<workflow>")
    p.add_argument("workflow", help="e.g. diamond.fan_out_in")
    p.add_argument("--context", default="{}", help="the request's context, a JSON object")
    p.add_argument("--parent", default=None, help="parent correlation id (nested workflows)")
    p.add_argument("--key", default=None, metavar="KEY",
                   help="idempotency key: a retry with the same key returns the request "
                        "already recorded instead of recording a second one")
    p.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                   help="wait up to SECONDS for the request to finish, then show it")
    p.set_defaults(run=run_submit)
    s = sub.add_parser("status", help="show a task request and its steps")
    s.add_argument("ident", help="task uuid or correlation id")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(run=run_status)


#: Exit code of ``tasker submit`` when the request was recorded but could not be
#: published (broker down): it is not lost, the recovery poller dispatches it.
EXIT_RECORDED_NOT_PUBLISHED = 3


def run_submit(args: argparse.Namespace) -> int:
    # lazy: the engine and its SQL cost 5 ms (python -X importtime), paid by this command only.
    from tasker.workflows.engine import submit

    try:
        context = json.loads(args.context)
    except ValueError as exc:
        print(f"tasker submit: --context is not JSON: {exc}", file=sys.stderr)
        return 2
    try:
        get_workflow(args.workflow)  # an unknown workflow is reported before the database
        check_reachable()
        with _quiet_broker_logs():
            submission = submit(args.workflow, context, parent_correlation_id=args.parent,
                                key=args.key, app=app)
    except (UnknownWorkflowError, ContextError, ValueError) as exc:
        print(f"tasker submit: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    except DatabaseError as exc:
        print(f"tasker submit: {exc} (nothing recorded)", file=sys.stderr)
        return 1
    print(json.dumps({"task_uuid": submission.task_uuid,
                      "correlation_id": submission.correlation_id,
                      "parent_correlation_id": submission.parent_correlation_id,
                      "created": submission.created,
                      "published": submission.created and submission.publish_error is None,
                      "dispatched_steps": len(submission.dispatched_steps),
                      "initialization_ms": round(submission.initialization_seconds * 1000, 3)}))
    if not submission.created:
        print(f"tasker submit: key {args.key!r} already names request {submission.task_uuid};"
              " nothing new recorded", file=sys.stderr)
    if submission.publish_error is not None:
        print(f"tasker submit: recorded as {submission.task_uuid}, but the broker is unreachable"
              f" ({redact_text(submission.publish_error)[:200]}); the recovery poller will"
              " dispatch it (do not resubmit; a retry with the same --key is safe)",
              file=sys.stderr)
        return EXIT_RECORDED_NOT_PUBLISHED
    if args.wait:
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline:
            tasks = _load(submission.task_uuid)
            if tasks and tasks[0]["state"] in ("complete", "error"):
                break
            time.sleep(0.2)
        return run_status(argparse.Namespace(ident=submission.task_uuid, json=False))
    return 0


@contextmanager
def _quiet_broker_logs() -> Iterator[None]:
    """kombu and Celery log every failed connection attempt; the outcome is reported once."""
    names = ("kombu", "celery", "amqp", "tasker.workflows")
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in names]
    for logger, _ in saved:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def _load(ident: str) -> list[dict[str, Any]]:
    # lazy: the workflow SQL costs 5 ms (python -X importtime), paid by this command only.
    from tasker.workflows import records

    if db.current_pool() is None:
        db.check_reachable()
    with db.connection() as conn:
        tasks = records.find_tasks(conn, ident)
        for task in tasks:
            task["steps"] = records.steps_of(conn, task["uuid"])
    return tasks


def run_status(args: argparse.Namespace) -> int:
    try:
        uuid.UUID(args.ident)
    except ValueError:
        print(f"tasker status: {args.ident!r} is not a uuid or correlation id", file=sys.stderr)
        return 2
    try:
        tasks = _load(args.ident)
    except DatabaseError as exc:
        print(f"tasker status: {exc}", file=sys.stderr)
        return 1
    if not tasks:
        print(f"tasker status: no task request with uuid or correlation id {args.ident}",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(tasks, default=str, indent=2))
        return 0
    # lazy: rich costs 13-19 ms (python -X importtime); only a command that draws loads it.
    from rich.console import Console
    from rich.table import Table  # lazy: rich costs 13-19 ms; only this output draws

    console = Console()
    for task in tasks:
        duration = f"{task['duration_ms']:.1f} ms" if task["duration_ms"] is not None else "-"
        console.print(f"[bold]{task['namespace']}.{task['name']}[/bold] v{task['version']} "
                      f"{task['uuid']} state={task['state']} duration={duration}\n"
                      f"  correlation_id={task['correlation_id']} "
                      f"parent={task['parent_correlation_id'] or '-'}")
        if task["error"]:
            console.print(f"  error: {task['error']}")
        table = Table()
        # "messages": how many were published for the step (event, retries, poller).
        for col in ("step", "state", "attempts", "messages", "delivery", "after",
                    "result / error"):
            table.add_column(col)
        for step in task["steps"]:
            outcome = step["error"] or json.dumps(step["results"])
            table.add_row(step["name"], step["state"],
                          f"{step['attempts']}/{step['max_attempts']}", str(step["dispatches"]),
                          step["delivery"] or "-", ",".join(step["depends_on"]) or "-",
                          outcome[:80])
        console.print(table)
    return 0
