"""Submitting task requests and running their steps on the fleet.

A request is validated, then recorded with all its steps in one transaction
(nothing half-written), then its root steps are published. Each step runs as
the Celery task ``tasker.run_step``:

1. lock the step row; a step that is not waiting to run (a late duplicate
   delivery) is skipped, so its handler runs once;
2. run the handler inside a savepoint of the same transaction, so its
   database effects commit together with the step's completion;
3. lock the task row, store the result, dispatch the steps it unblocked,
   finalize the task when it is done; commit; then publish.

A message lost after the commit (or never published) leaves its step
``dispatched``: the beat-scheduled ``tasker.recover_steps`` re-publishes steps
not started within ``TASKER_RECOVERY_DEADLINE`` seconds, marked as delivered
by polling.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from dataclasses import dataclass
from typing import Any

from celery import shared_task

from tasker import db
from tasker.correlation import (
    CORRELATION_HEADER,
    DELIVERY_HEADER,
    PARENT_HEADER,
    current_correlation_id,
    uuid7,
)
from tasker.settings import get_settings
from tasker.workflows import records
from tasker.workflows.definition import ContextError, StepContext, get_workflow

__all__ = ["submit", "Submission", "run_step", "recover_steps", "retry_delay"]

logger = logging.getLogger("tasker.workflows")

#: Seconds before the first retry of a failed step; doubled each attempt, capped.
RETRY_BASE_SECONDS = 0.5
RETRY_MAX_SECONDS = 60.0


@dataclass(frozen=True)
class Submission:
    task_uuid: str
    correlation_id: str
    parent_correlation_id: str | None
    dispatched_steps: list[str]
    initialization_seconds: float


def retry_delay(attempt: int) -> float:
    """Backoff before attempt ``attempt + 1``: 0.5 s, 1 s, 2 s ... capped at 60 s."""
    return min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** max(0, attempt - 1))


def _metrics() -> Any:
    from tasker.metrics import recording

    return recording.current()


def _publish(step_uuid: str, workflow: str, correlation_id: str, parent: str | None,
             path: str = "event", countdown: float | None = None) -> None:
    from tasker.celery_app import app

    headers = {CORRELATION_HEADER: correlation_id, DELIVERY_HEADER: path}
    if parent:
        headers[PARENT_HEADER] = parent
    app.send_task("tasker.run_step", args=[step_uuid], headers=headers,
                  queue=get_settings().step_queue, countdown=countdown)
    recorder = _metrics()
    if recorder is not None:
        recorder.child(recorder.metrics.steps_dispatched, workflow, path).inc()


def submit(workflow_name: str, context: dict[str, Any] | None = None, *,
           parent_correlation_id: str | None = None) -> Submission:
    """Validate, record and start a task request.

    Raises:
        UnknownWorkflowError: no such workflow.
        ContextError: the context is too large or fails the workflow's validation.
        tasker.db.DatabaseError: the database cannot be reached (nothing recorded).
    """
    started = time.perf_counter()
    wf = get_workflow(workflow_name)
    context = {} if context is None else context
    try:
        encoded = json.dumps(context)
    except (TypeError, ValueError) as exc:
        raise ContextError(f"context is not JSON: {exc}") from None
    limit = get_settings().max_context_bytes
    if len(encoded.encode()) > limit:
        raise ContextError(f"context is {len(encoded.encode())} bytes; the limit is {limit} "
                           "(TASKER_MAX_CONTEXT_BYTES)")
    wf.check_context(context)
    correlation_id = uuid7()
    parent = parent_correlation_id or current_correlation_id()
    with db.connection() as conn:
        task_uuid, roots = records.insert_request(conn, wf, context, correlation_id, parent)
    for step_uuid, _name in roots:
        _publish(step_uuid, wf.full_name, correlation_id, parent)
    elapsed = time.perf_counter() - started
    recorder = _metrics()
    if recorder is not None:
        recorder.child(recorder.metrics.workflow_initialization, wf.full_name).observe(elapsed)
    logger.info("workflow.submitted", extra={
        "workflow": wf.full_name, "task_uuid": task_uuid, "correlation_id": correlation_id,
        "parent_correlation_id": parent, "initialization_seconds": round(elapsed, 6)})
    return Submission(task_uuid, correlation_id, parent, [u for u, _ in roots], elapsed)


@shared_task(name="tasker.run_step", bind=True, acks_late=True, reject_on_worker_lost=True,
             ignore_result=True)
def run_step(self: Any, step_uuid: str) -> str:
    """Run one step (see the module docstring); returns what happened."""
    path = getattr(self.request, DELIVERY_HEADER, None) or "event"
    to_publish: list[tuple[str, str, str, str | None, float | None]] = []
    outcome = "skipped"
    finalized: tuple[str, float] | None = None
    finalize_seconds = 0.0
    with db.connection() as conn:
        step = records.lock_step(conn, step_uuid)
        if step is None:
            logger.warning("workflow.step_unknown", extra={"step_uuid": step_uuid})
            return "unknown"
        if step.state not in ("dispatched", "waiting_retry") or step.task_state not in (
                "pending", "in_progress"):
            logger.info("workflow.step_duplicate", extra={
                "step_uuid": step_uuid, "step": step.name, "state": step.state})
            return "duplicate"
        wf = get_workflow(step.workflow)
        spec = wf.step(step.name)
        task_started = records.start_task(conn, step.task_uuid)
        results = records.dependency_results(conn, step.task_uuid, spec.after)
        attempt = step.attempts + 1
        recorder = _metrics()
        if recorder is not None:
            recorder.child(recorder.metrics.step_executions, wf.full_name, path).inc()
        try:
            with conn.transaction():  # a savepoint: the handler's effects
                result = spec.handler(StepContext(
                    context=step.context, results=results, conn=conn,
                    task_uuid=step.task_uuid, step_name=step.name, attempt=attempt,
                    correlation_id=step.correlation_id))
                json.dumps(result)  # a result that cannot be stored is a failure
        except Exception as exc:  # noqa: BLE001 - a failing step is recorded, not raised
            error = f"{type(exc).__name__}: {exc}"
            retry_in = retry_delay(attempt) if attempt < step.max_attempts else None
            state = records.record_failed_attempt(conn, step, error, retry_in)
            outcome = "retry" if state == "waiting_retry" else "error"
            log = logger.warning if outcome == "retry" else logger.error
            log("workflow.step_failed", extra={
                "workflow": wf.full_name, "task_uuid": step.task_uuid, "step": step.name,
                "attempt": attempt, "max_attempts": step.max_attempts, "error": error,
                "retry_in_seconds": retry_in,
                "traceback": "".join(traceback.format_exception(exc))[-2000:]})
            if outcome == "retry":
                to_publish.append((step.uuid, wf.full_name, step.correlation_id,
                                   step.parent_correlation_id, retry_in))
            else:
                records.lock_task(conn, step.task_uuid)
                t0 = time.perf_counter()
                finalized = records.finalize(conn, step.task_uuid,
                                             error=f"step {step.name}: {error}")
                finalize_seconds = time.perf_counter() - t0
        else:
            outcome = "complete"
            records.complete_step(conn, step, result)
            task_state = records.lock_task(conn, step.task_uuid)
            if task_state in ("pending", "in_progress"):
                for ready_uuid, _name in records.dispatch_ready(conn, step.task_uuid):
                    to_publish.append((ready_uuid, wf.full_name, step.correlation_id,
                                       step.parent_correlation_id, None))
            t0 = time.perf_counter()
            finalized = records.finalize(conn, step.task_uuid)
            finalize_seconds = time.perf_counter() - t0
    # Committed: publish what the commit made ready. A publish that fails here
    # leaves the step dispatched for the recovery poller.
    for step_id, workflow, cid, parent, countdown in to_publish:
        try:
            _publish(step_id, workflow, cid, parent, countdown=countdown)
        except Exception:  # noqa: BLE001 - the poller will re-dispatch it
            logger.exception("workflow.publish_failed", extra={"step_uuid": step_id})
    _record_outcome(wf.full_name, step.task_uuid, task_started, finalized, finalize_seconds)
    return outcome


def _record_outcome(workflow: str, task_uuid: str, started: bool,
                    finalized: tuple[str, float] | None, finalize_seconds: float) -> None:
    recorder = _metrics()
    if recorder is not None:
        m = recorder.metrics
        if started:
            recorder.child(m.workflow_requests, workflow, "started").inc()
        if finalized is not None:
            state, duration = finalized
            recorder.child(m.workflow_requests, workflow, state).inc()
            recorder.child(m.workflow_duration, workflow).observe(duration)
            recorder.child(m.workflow_finalization, workflow).observe(finalize_seconds)
    if finalized is not None:
        state, duration = finalized
        (logger.info if state == "complete" else logger.error)(
            "workflow.finished", extra={"workflow": workflow, "task_uuid": task_uuid,
                                        "state": state, "duration_seconds": round(duration, 4)})


@shared_task(name="tasker.recover_steps", ignore_result=True)
def recover_steps() -> int:
    """Beat task: re-publish steps whose message was lost (delivered by polling)."""
    settings = get_settings()
    try:
        with db.connection() as conn:
            overdue = records.claim_overdue(conn, settings.recovery_deadline)
    except db.DatabaseError as exc:
        logger.warning("workflow.recovery_failed", extra={"reason": str(exc)})
        return 0
    for step_uuid, workflow, cid, parent in overdue:
        _publish(step_uuid, workflow, cid, parent, path="poll")
    if overdue:
        logger.warning("workflow.steps_recovered", extra={"count": len(overdue)})
    return len(overdue)
