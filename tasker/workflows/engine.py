"""Submitting task requests, running their steps on the fleet, recovering lost messages.

A request is validated, then recorded with all its steps in one transaction
(nothing half-written), then its root steps are published. Each step runs as
the Celery task ``tasker.run_step`` (see :mod:`tasker.workflows.attempt`: a
lease, an attempt counted before the handler runs, the outcome committed with
the handler's effects).

A message lost after the commit (or never published) leaves its step
``dispatched`` (or ``running`` with no lease, when the attempt died). The
beat-scheduled ``tasker.recover_steps`` re-publishes such a step only when its
message is provably not in flight: older than ``TASKER_RECOVERY_DEADLINE``
*and* not waiting in the step queue (:mod:`tasker.workflows.inflight`).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from celery import Celery, shared_task

from tasker import app as tasker_app
from tasker import db
from tasker.correlation import (
    CORRELATION_HEADER,
    DELIVERY_HEADER,
    PARENT_HEADER,
    current_correlation_id,
    uuid7,
)
from tasker.metrics import recording
from tasker.settings import get_settings
from tasker.workflows import attempt, inflight, records
from tasker.workflows.definition import ContextError, get_workflow

__all__ = ["submit", "Submission", "KeyConflictError", "run_step", "recover_steps",
           "retry_delay"]

logger = logging.getLogger("tasker.workflows")

#: Seconds before the first retry of a failed step; doubled each attempt, capped.
RETRY_BASE_SECONDS = 0.5
RETRY_MAX_SECONDS = 60.0
#: Where the step queue cannot be read (not Redis, or longer than
#: ``inflight.MAX_SCAN``), a step's n-th re-dispatch waits deadline * 2**n
#: (at most this many doublings): copies grow with the log of the backlog's
#: age instead of one per poll.
FALLBACK_MAX_DOUBLINGS = 6


class KeyConflictError(ContextError):
    """An idempotency key already names a request for another workflow or context."""


@dataclass(frozen=True)
class Submission:
    """What :func:`submit` did.

    ``created`` is False when the idempotency key named an existing request
    (nothing written, nothing published). ``publish_error`` is set when the
    request was recorded but its root steps could not be published (broker
    down): the recovery poller dispatches them.
    """

    task_uuid: str
    correlation_id: str
    parent_correlation_id: str | None
    dispatched_steps: list[str]
    initialization_seconds: float
    created: bool = True
    publish_error: str | None = None


def retry_delay(attempt: int) -> float:
    """Backoff before attempt ``attempt + 1``: 0.5 s, 1 s, 2 s ... capped at 60 s."""
    return min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** max(0, attempt - 1))


def _metrics() -> Any:
    return recording.current()


def _publish(app: Celery, step_uuid: str, workflow: str, correlation_id: str,
             parent: str | None, path: str = "event", countdown: float | None = None) -> None:
    headers = {CORRELATION_HEADER: correlation_id, DELIVERY_HEADER: path}
    if parent:
        headers[PARENT_HEADER] = parent
    app.send_task("tasker.run_step", args=[step_uuid], headers=headers,
                  queue=get_settings().step_queue, countdown=countdown)
    recorder = _metrics()
    if recorder is not None:
        recorder.child(recorder.metrics.steps_dispatched, workflow, path).inc()


def submit(workflow_name: str, context: dict[str, Any] | None = None, *,
           parent_correlation_id: str | None = None, key: str | None = None,
           app: Celery | None = None) -> Submission:
    """Validate, record and start a task request.

    Args:
        app: the Celery app that publishes the steps (default: tasker's app).
        key: an idempotency key. A request already recorded with it (same
            workflow and context) is returned as it is: nothing is written or
            published again, so a submit that failed half-way can be retried.

    Raises:
        UnknownWorkflowError: no such workflow.
        ContextError: the context is too large or fails the workflow's validation.
        KeyConflictError: ``key`` already names a different request.
        tasker.db.DatabaseError: the database cannot be reached (nothing recorded).
    """
    started = time.perf_counter()
    wf = get_workflow(workflow_name)
    context = {} if context is None else context
    try:
        encoded = json.dumps(context, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ContextError(f"context is not JSON: {exc}") from None
    limit = get_settings().max_context_bytes
    if len(encoded.encode()) > limit:
        raise ContextError(f"context is {len(encoded.encode())} bytes; the limit is {limit} "
                           "(TASKER_MAX_CONTEXT_BYTES)")
    wf.check_context(context)
    if key is not None and not (0 < len(key) <= 200):
        raise ContextError("the idempotency key must be 1 to 200 characters")
    correlation_id = uuid7()
    parent = parent_correlation_id or current_correlation_id()
    with db.connection() as conn:
        recorded = records.insert_request(conn, wf, context, correlation_id, parent, key)
        existing = records.find_by_key(conn, key) if recorded is None and key else None
    if recorded is None:
        return _existing(wf.full_name, context, key, existing, started)
    task_uuid, roots = recorded
    publish_error = None
    for step_uuid, _name in roots:
        try:
            _publish(app or tasker_app, step_uuid, wf.full_name, correlation_id, parent)
        except Exception as exc:  # noqa: BLE001 - recorded: the poller dispatches it
            publish_error = " ".join(f"{type(exc).__name__}: {exc}".split())
            break  # the broker is down: the other roots would fail the same way
    elapsed = time.perf_counter() - started
    recorder = _metrics()
    if recorder is not None:
        recorder.child(recorder.metrics.workflow_initialization, wf.full_name).observe(elapsed)
    (logger.warning if publish_error else logger.info)("workflow.submitted", extra={
        "workflow": wf.full_name, "task_uuid": task_uuid, "correlation_id": correlation_id,
        "parent_correlation_id": parent, "initialization_seconds": round(elapsed, 6),
        "publish_error": publish_error})
    return Submission(task_uuid, correlation_id, parent, [u for u, _ in roots], elapsed,
                      publish_error=publish_error)


def _existing(workflow: str, context: dict[str, Any], key: str | None,
              row: dict[str, Any] | None, started: float) -> Submission:
    if row is None:  # the conflicting row vanished (deleted) between the two statements
        raise KeyConflictError(f"idempotency key {key!r} is in use; retry")
    if row["workflow"] != workflow or row["context"] != context:
        raise KeyConflictError(
            f"idempotency key {key!r} already names request {row['uuid']} "
            f"({row['workflow']}) with another workflow or context")
    logger.info("workflow.submit_repeated", extra={"task_uuid": row["uuid"], "key": key})
    return Submission(row["uuid"], row["correlation_id"], row["parent_correlation_id"], [],
                      time.perf_counter() - started, created=False)


@shared_task(name="tasker.run_step", bind=True, acks_late=True, reject_on_worker_lost=True,
             ignore_result=True)
def run_step(self: Any, step_uuid: str) -> str:
    """Run one delivery of a step (see :mod:`tasker.workflows.attempt`); returns its outcome."""
    path = getattr(self.request, DELIVERY_HEADER, None) or "event"

    def on_execution(workflow: str) -> None:
        recorder = _metrics()
        if recorder is not None:
            recorder.child(recorder.metrics.step_executions, workflow, path).inc()

    t0 = time.perf_counter()
    outcome, claim, finalized = attempt.run(step_uuid, path,
                                            functools.partial(_publish, self.app),
                                            retry_delay, on_execution)
    if outcome in ("busy", "unknown", "stale", "raced", "early"):
        logger.info("workflow.step_duplicate", extra={"step_uuid": step_uuid,
                                                      "outcome": outcome})
        return outcome
    assert claim is not None
    _record_outcome(claim.workflow, claim.task_uuid, claim.task_started, finalized,
                    time.perf_counter() - t0)
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


def provably_lost(candidates: list[records.Candidate], held: set[int],
                  waiting: dict[str, int] | None, deadline: float
                  ) -> list[records.Candidate]:
    """The candidates whose message is provably not in flight (pure: unit-testable).

    Args:
        held: lease keys held now (a running step whose lease is held is alive).
        waiting: messages waiting in the step queue by step uuid; None when the
            queue cannot be read, then the n-th re-dispatch of a step waits
            ``deadline * 2**n`` instead.
    """
    out = []
    for c in candidates:
        if c.state == "running" and records.lease_key(c.uuid) in held:
            continue  # alive: its attempt holds the lease
        if waiting is not None:
            if waiting.get(c.uuid, 0):
                continue  # its message waits in the queue: not lost, just late
        else:
            doublings = min(max(c.dispatches - 1, 0), FALLBACK_MAX_DOUBLINGS)
            if c.age_seconds < deadline * 2 ** doublings:
                continue
        out.append(c)
    return out


@shared_task(name="tasker.recover_steps", bind=True, ignore_result=True)
def recover_steps(self: Any) -> int:
    """Beat task: re-publish steps whose message is provably lost (delivered by polling)."""
    settings = get_settings()
    try:
        with db.connection() as conn:
            candidates = records.overdue_candidates(conn, settings.recovery_deadline)
            chosen: list[records.Candidate] = []
            if candidates:
                held = records.held_leases(conn)
                # A running step whose lease is held is alive: no reason to read the queue.
                candidates = [c for c in candidates if c.state != "running"
                              or records.lease_key(c.uuid) not in held]
            if candidates:
                try:
                    waiting = inflight.waiting_steps(settings.step_queue, self.app)
                except Exception as exc:  # noqa: BLE001 - broker down: nothing can be published
                    logger.warning("workflow.recovery_failed", extra={
                        "reason": f"step queue unreadable: {type(exc).__name__}: {exc}"})
                    return 0
                chosen = records.mark_redispatched(conn, provably_lost(
                    candidates, held, waiting, settings.recovery_deadline))
    except db.DatabaseError as exc:
        logger.warning("workflow.recovery_failed", extra={"reason": str(exc)})
        return 0
    for c in chosen:
        try:
            _publish(self.app, c.uuid, c.workflow, c.correlation_id, c.parent_correlation_id,
                     path="poll")
        except Exception:  # noqa: BLE001 - found again next time (no message waits)
            logger.exception("workflow.publish_failed", extra={"step_uuid": c.uuid})
    if chosen:
        logger.warning("workflow.steps_recovered", extra={"count": len(chosen)})
    return len(chosen)
