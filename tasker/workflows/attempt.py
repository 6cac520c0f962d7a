"""One delivery of ``tasker.run_step``: lease, claim, handler, outcome.

1. **Lease**: a session-level advisory lock on the step (non-blocking). Held
   by someone else means the step is running now: this delivery is a
   duplicate, acknowledged at once (it never waits for the handler).
2. **Claim** (own transaction, committed before the handler runs): ``running``,
   ``attempts + 1``. An attempt that dies (SIGKILL, OOM, broken connection,
   rollback) is therefore counted; the next delivery finds it ``running``
   with no lease, which proves it dead, and claims the next attempt or, when
   the attempts are used up, fails the step for good.
3. **Handler** in a savepoint of a second transaction, without the task row's
   lock (sibling steps run in parallel). Its result is encoded as
   PostgreSQL's ``jsonb`` accepts it (no NaN/Infinity, no NUL) before anything
   is written: a result that cannot be stored is a failed attempt.
4. **Outcome**: lock the task row, store the result (or the failure), dispatch
   what it unblocked, finalize; commit; publish; release the lease.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
import traceback
import weakref
from collections.abc import Callable
from typing import Any

import psutil
import psycopg
from psycopg.pq import TransactionStatus

from tasker import db
from tasker.workflows import records
from tasker.workflows.definition import StepContext, UnknownWorkflowError, get_workflow

__all__ = ["run", "encode_result", "ResultError", "LEASE_TRIES"]

logger = logging.getLogger("tasker.workflows")

#: Pauses (s) between tries for a lease held by someone else. Short: a lease
#: held longer than this is a running attempt, and a duplicate must not wait
#: for it; the tries only cover a killed attempt's session ending.
LEASE_TRIES = (0.0, 0.05, 0.15)
#: Pauses (s) for the lease after ending the backend of a dead holder.
TAKEOVER_TRIES = (0.05, 0.1, 0.2, 0.4)
#: ``client_connection_check_interval`` of step sessions, in milliseconds.
CLIENT_CHECK_MS = 1000

_watched: weakref.WeakSet[psycopg.Connection] = weakref.WeakSet()

#: ``\u0000`` in JSON text, not preceded by an escaped backslash: PostgreSQL's
#: jsonb rejects it (it cannot store NUL in text).
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

Publish = Callable[..., None]


class ResultError(ValueError):
    """A step handler returned what PostgreSQL's jsonb cannot store."""


def encode_result(result: Any) -> str:
    """The result as JSON that ``jsonb`` accepts.

    Raises:
        ResultError: not JSON, NaN or Infinity, or a NUL character.
    """
    try:
        encoded = json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ResultError(f"result cannot be stored as JSON: {exc}") from None
    if _NUL.search(encoded):
        raise ResultError("result cannot be stored as JSON: it contains a NUL character (\\u0000)")
    return encoded


def run(step_uuid: str, path: str, publish: Publish, retry_delay: Callable[[int], float],
        on_execution: Callable[[str], None]) -> tuple[str, records.Claim | None,
                                                       tuple[str, float] | None]:
    """Run one delivery of a step; returns (outcome, claim, finalized).

    ``publish(step_uuid, workflow, correlation_id, parent, countdown=...)``
    sends a step message; ``on_execution(workflow)`` is called right before
    the handler runs.
    """
    key = records.lease_key(step_uuid)
    with db.connection() as conn:
        if not _take_lease(conn, key, step_uuid):
            return "busy", None, None
        try:
            return _run_leased(conn, step_uuid, publish, retry_delay, on_execution)
        finally:
            _release_lease(conn, key)


def owner() -> str:
    """What a claim records as ``claimed_by``: this process, ``<hostname>:<pid>``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _watch_client(conn: psycopg.Connection) -> None:
    """Ask the server to notice this client's death even inside a long query.

    Without it, the backend of a SIGKILLed process keeps running a handler's
    query (and holding the lease) until the query ends; with it, within
    ``CLIENT_CHECK_MS``, so the lease of a dead attempt on another host is
    freed for the poller too. Once per connection; PostgreSQL 14 and later.
    """
    if conn in _watched or conn.info.server_version < 140000:
        return
    try:
        conn.execute("SELECT set_config('client_connection_check_interval', %s, false)",
                     [str(CLIENT_CHECK_MS)])
        conn.commit()
    except psycopg.Error:  # a platform where the server cannot check: leave it
        conn.rollback()
    _watched.add(conn)


def _take_lease(conn: psycopg.Connection, key: int, step_uuid: str | None = None) -> bool:
    _watch_client(conn)
    for pause in LEASE_TRIES:
        time.sleep(pause)
        # A session lock outlives the transaction: once taken, the claim's
        # commit ends this transaction (one round trip fewer per step).
        if conn.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()[0]:
            return True
        conn.commit()  # not idle in a transaction while pausing
    if step_uuid is not None and _end_orphaned_holder(conn, step_uuid):
        for pause in TAKEOVER_TRIES:
            time.sleep(pause)
            taken = conn.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()[0]
            conn.commit()
            if taken:
                return True
    return False


def _end_orphaned_holder(conn: psycopg.Connection, step_uuid: str) -> bool:
    """End the backend holding the lease when its process, on this host, is gone.

    A SIGKILLed pool process whose backend is inside a query (a handler's
    ``pg_sleep``) keeps its lease until that query ends: PostgreSQL learns of
    the dead client only when it next talks to it. The requeued delivery
    (``reject_on_worker_lost``) usually lands on the same node, which can tell
    the process is gone. A holder on another host is left alone (the poller
    takes over once its session has ended).
    """
    holder = records.lease_holder(conn, step_uuid)
    conn.commit()
    if holder is None or not holder[0]:
        return False
    # claimed_by = host:pid:backend. The backend must be the lease holder's:
    # a new attempt may hold the lease a moment before its claim is written.
    owner_part, _, backend = holder[0].rpartition(":")
    host, _, pid = owner_part.rpartition(":")
    if (backend != str(holder[1]) or host != socket.gethostname() or not pid.isdigit()
            or _alive(int(pid))):
        return False
    ended = conn.execute("SELECT pg_terminate_backend(%s)", [holder[1]]).fetchone()[0]
    conn.commit()
    if ended:
        logger.warning("workflow.orphaned_attempt_ended", extra={
            "step_uuid": step_uuid, "claimed_by": holder[0], "backend_pid": holder[1]})
    return bool(ended)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # AccessDenied: someone else's process, alive
        return True


def _release_lease(conn: psycopg.Connection, key: int) -> None:
    try:
        if conn.info.transaction_status != TransactionStatus.IDLE:
            conn.rollback()
        conn.execute("SELECT pg_advisory_unlock(%s)", [key])
        conn.commit()
    except psycopg.Error:
        # Closing ends the session, which is what releases the lock; the pool
        # throws a closed connection away.
        conn.close()


def _run_leased(conn: psycopg.Connection, step_uuid: str, publish: Publish,
                retry_delay: Callable[[int], float], on_execution: Callable[[str], None]
                ) -> tuple[str, records.Claim | None, tuple[str, float] | None]:
    claim = records.claim_step(conn, step_uuid, owner())
    conn.commit()  # the attempt is counted before anything can go wrong
    if claim.outcome != "claimed":
        if claim.outcome == "exhausted":  # the others are duplicates, logged by the caller
            logger.error("workflow.step_exhausted", extra={
                "step_uuid": step_uuid, "task_uuid": claim.task_uuid, "step": claim.name,
                "attempt": claim.attempt, "max_attempts": claim.max_attempts})
        return claim.outcome, claim, claim.finalized
    try:
        wf = get_workflow(claim.workflow)
        spec = wf.step(claim.name)
    except (UnknownWorkflowError, KeyError) as exc:
        # Removed or renamed by a deploy: no attempt can succeed, fail it now.
        reason = (f"UnknownWorkflowError: {exc}" if isinstance(exc, UnknownWorkflowError)
                  else f"UnknownStepError: workflow {claim.workflow} has no step {claim.name!r}")
        return _fail(conn, claim, reason, publish, None)
    try:
        # This opens the attempt's transaction, which the handler's savepoint
        # needs: on an idle connection ``conn.transaction()`` would BEGIN and
        # COMMIT by itself, committing a root step's effects before its
        # completion. It also checks the claim stands (the task may have been
        # finalized since).
        if not records.still_claimed(conn, claim):
            conn.rollback()
            return "cancelled", claim, None
        if conn.info.transaction_status != TransactionStatus.INTRANS:
            raise RuntimeError("a step's handler must run inside its attempt's transaction")
        results = records.dependency_results(conn, claim.task_uuid, spec.after)
        on_execution(wf.full_name)
        try:
            with conn.transaction():  # a savepoint: the handler's effects
                result = spec.handler(StepContext(
                    context=claim.context or {}, results=results, conn=conn,
                    task_uuid=claim.task_uuid, step_name=claim.name, attempt=claim.attempt,
                    correlation_id=claim.correlation_id))
                encoded = encode_result(result)
        except Exception as exc:  # noqa: BLE001 - a failing step is recorded, not raised
            if conn.broken or conn.closed:
                raise  # the database is gone under the attempt: handled below
            retry_in = retry_delay(claim.attempt) if claim.attempt < claim.max_attempts else None
            _log_failure(claim, exc, retry_in)
            return _fail(conn, claim, _describe(exc), publish, retry_in)
        return _complete(conn, claim, encoded, publish)
    except Exception as exc:  # noqa: BLE001 - the database failed under the attempt
        retry_in = retry_delay(claim.attempt) if claim.attempt < claim.max_attempts else None
        _log_failure(claim, exc, retry_in)
        if not (conn.broken or conn.closed):
            try:  # the session (and so the lease) is alive: count it here
                conn.rollback()
                return _fail(conn, claim, _describe(exc), publish, retry_in)
            except psycopg.Error:
                pass
        return _fail_on_fresh_connection(claim, _describe(exc), publish, retry_in)


def _describe(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _log_failure(claim: records.Claim, exc: BaseException, retry_in: float | None) -> None:
    (logger.warning if retry_in is not None else logger.error)("workflow.step_failed", extra={
        "workflow": claim.workflow, "task_uuid": claim.task_uuid, "step": claim.name,
        "attempt": claim.attempt, "max_attempts": claim.max_attempts, "error": _describe(exc),
        "retry_in_seconds": retry_in,
        "traceback": "".join(traceback.format_exception(exc))[-2000:]})


def _complete(conn: psycopg.Connection, claim: records.Claim, encoded: str, publish: Publish
              ) -> tuple[str, records.Claim, tuple[str, float] | None]:
    task_state = records.lock_task(conn, claim.task_uuid)
    if task_state not in records.OPEN_TASK_STATES or not records.complete_step(
            conn, claim, encoded):
        # The task was finalized while the handler ran (a sibling failed for
        # good): this step is cancelled, so its effects must not land either.
        conn.rollback()
        logger.info("workflow.step_cancelled", extra={
            "task_uuid": claim.task_uuid, "step": claim.name})
        return "cancelled", claim, None
    ready = records.dispatch_ready(conn, claim.task_uuid)
    finalized = records.finalize(conn, claim.task_uuid)
    conn.commit()
    for ready_uuid, _name in ready:
        _publish_quietly(publish, ready_uuid, claim, None)
    return "complete", claim, finalized


def _fail(conn: psycopg.Connection, claim: records.Claim, error: str, publish: Publish,
          retry_in: float | None) -> tuple[str, records.Claim, tuple[str, float] | None]:
    """Record a failed attempt; the task fails with it when no retry is left."""
    records.lock_task(conn, claim.task_uuid)
    state = records.record_failed_attempt(conn, claim, error, retry_in)
    finalized = None
    if state == "error":
        finalized = records.finalize(conn, claim.task_uuid, error=f"step {claim.name}: {error}")
    conn.commit()
    if state == "waiting_retry":
        _publish_quietly(publish, claim.uuid, claim, retry_in)
        return "retry", claim, None
    return ("error" if state == "error" else "cancelled"), claim, finalized


def _fail_on_fresh_connection(claim: records.Claim, error: str, publish: Publish,
                              retry_in: float | None
                              ) -> tuple[str, records.Claim, tuple[str, float] | None]:
    """Count a failure whose own connection broke (the lease went with its session)."""
    key = records.lease_key(claim.uuid)
    try:
        with db.connection() as conn:
            if not _take_lease(conn, key):
                return "lost", claim, None  # someone else has taken the step over
            try:
                return _fail(conn, claim, error, publish, retry_in)
            finally:
                _release_lease(conn, key)
    except (db.DatabaseError, psycopg.Error) as exc:
        # Nothing more can be written now: the step stays 'running' with no
        # lease, which the recovery poller reads as a lost attempt (counted).
        logger.error("workflow.step_lost", extra={
            "task_uuid": claim.task_uuid, "step": claim.name, "attempt": claim.attempt,
            "reason": _describe(exc)})
        return "lost", claim, None


def _publish_quietly(publish: Publish, step_uuid: str, claim: records.Claim,
                     countdown: float | None) -> None:
    # Committed already: a publish that fails leaves the step dispatched (or
    # waiting_retry) with no message, which the recovery poller proves and repairs.
    try:
        publish(step_uuid, claim.workflow, claim.correlation_id, claim.parent_correlation_id,
                countdown=countdown)
    except Exception:  # noqa: BLE001 - the poller will re-dispatch it
        logger.exception("workflow.publish_failed", extra={"step_uuid": step_uuid})
