"""The SQL of task requests and their steps (tables ``tasker_tasks``, ``tasker_steps``).

Every function takes the connection of the caller's transaction. Concurrency
rules, in one place:

* an attempt is *claimed* in its own short transaction before the handler runs
  (``running``, ``attempts + 1``), so an attempt that dies is still counted;
  the claim is guarded by the row's ``updated_at`` (optimistic: a concurrent
  claim or re-dispatch makes it match nothing);
* the attempt's *lease* is a session-level advisory lock on the step
  (:func:`lease_key`), taken before the claim and held until the attempt's
  outcome is committed. PostgreSQL drops it the moment the session ends
  (process killed, connection broken), so "running and no lease held" means
  the attempt is dead, with no clock involved;
* every transaction that changes several step rows of a task, or changes a
  step and then the task, locks the task row first (:func:`lock_task`); the
  recovery poller never waits (``SKIP LOCKED``). So no two transactions wait
  for each other in opposite orders;
* finalizing a task closes every open step: ``cancelled`` when it failed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tasker.workflows.definition import Workflow

__all__ = ["Claim", "Candidate", "insert_request", "find_by_key", "lease_key",
           "held_leases", "lease_holder", "claim_step", "still_claimed", "dependency_results",
           "complete_step", "lock_task",
           "dispatch_ready", "record_failed_attempt", "finalize", "overdue_candidates",
           "mark_redispatched", "counts_by_state", "find_tasks", "steps_of",
           "OPEN_TASK_STATES", "OPEN_STEP_STATES", "TERMINAL_STEP_STATES"]

#: States of work not finished yet: what the ``records`` sampler source reports.
OPEN_TASK_STATES = ("pending", "in_progress")
OPEN_STEP_STATES = ("waiting", "dispatched", "running", "waiting_retry")
#: A step in one of these never runs again.
TERMINAL_STEP_STATES = ("complete", "error", "cancelled")
#: Seconds a retry may be claimed before it is due (clocks of the publisher,
#: the worker and PostgreSQL differ a little).
EARLY_SLACK_SECONDS = 1.0
#: States a delivered message may claim ('running': the previous attempt is
#: dead, which the caller proved by taking the lease).
_CLAIMABLE = ("dispatched", "waiting_retry", "running")


@dataclass(frozen=True)
class Claim:
    """What :func:`claim_step` found or did.

    ``outcome``: ``claimed`` (run the handler as attempt ``attempt``),
    ``unknown`` (no such step), ``stale`` (terminal, or its task is
    finalized: a late duplicate), ``early`` (a retry not due yet), ``raced``
    (claimed or re-dispatched by another process meanwhile), ``exhausted``
    (its last attempt was lost: now ``error`` and the task finalized, see
    ``finalized``).
    """

    outcome: str
    uuid: str = ""
    task_uuid: str = ""
    name: str = ""
    state: str = ""
    attempt: int = 0
    max_attempts: int = 0
    workflow: str = ""
    correlation_id: str = ""
    parent_correlation_id: str | None = None
    context: dict[str, Any] | None = None
    depends_on: tuple[str, ...] = ()
    task_started: bool = False
    finalized: tuple[str, float] | None = None


def insert_request(conn: psycopg.Connection, wf: Workflow, context: dict[str, Any],
                   correlation_id: str, parent_correlation_id: str | None,
                   key: str | None = None) -> tuple[str, list[tuple[str, str]]] | None:
    """Record a task and all its steps; roots are recorded as dispatched.

    Returns the task uuid and the (uuid, name) of the root steps to publish, or
    None when a request with idempotency ``key`` already exists (nothing written).
    """
    task_uuid = str(uuid.uuid4())
    row = conn.execute(
        "INSERT INTO tasker_tasks (uuid, namespace, name, version, state, context,"
        " correlation_id, parent_correlation_id, idempotency_key)"
        " VALUES (%s, %s, %s, %s, 'pending', %s, %s, %s, %s)"
        " ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
        " RETURNING uuid",
        [task_uuid, wf.namespace, wf.name, wf.version, Jsonb(context), correlation_id,
         parent_correlation_id, key]).fetchone()
    if row is None:
        return None
    roots: list[tuple[str, str]] = []
    rows = []
    for step in wf.steps:
        step_uuid = str(uuid.uuid4())
        is_root = not step.after
        rows.append((step_uuid, task_uuid, step.name, step.name, list(step.after),
                     "dispatched" if is_root else "waiting", step.max_attempts,
                     "event" if is_root else None, correlation_id, parent_correlation_id,
                     is_root, int(is_root)))
        if is_root:
            roots.append((step_uuid, step.name))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO tasker_steps (uuid, task_uuid, name, handler, depends_on, state,"
            " max_attempts, delivery, correlation_id, parent_correlation_id, dispatched_at,"
            " dispatches) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " CASE WHEN %s THEN now() END, %s)", rows)
    return task_uuid, roots


def find_by_key(conn: psycopg.Connection, key: str) -> dict[str, Any] | None:
    """The request recorded with idempotency ``key``, if any."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT uuid::text, namespace || '.' || name AS workflow, context,"
            " correlation_id::text, parent_correlation_id::text, state"
            " FROM tasker_tasks WHERE idempotency_key = %s", [key]).fetchone()


# -------------------------------------------------------------- leases


def lease_key(step_uuid: str) -> int:
    """The advisory lock key of a step: its uuid's first 64 bits, signed (bigint)."""
    return int.from_bytes(uuid.UUID(step_uuid).bytes[:8], "big", signed=True)


def held_leases(conn: psycopg.Connection) -> set[int]:
    """Lease keys held by any session of this database now (from ``pg_locks``).

    A bigint advisory key shows as classid (high 32 bits) and objid (low 32
    bits) with objsubid 1. Reading the view takes no lock, so the poller never
    makes a worker's lease attempt fail.
    """
    rows = conn.execute(
        "SELECT classid::bigint, objid::bigint FROM pg_locks WHERE locktype = 'advisory'"
        " AND objsubid = 1 AND granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchall()
    out = set()
    for hi, lo in rows:
        unsigned = (hi << 32) | lo
        out.add(unsigned - (1 << 64) if unsigned >= 1 << 63 else unsigned)
    return out


# -------------------------------------------------------------- one attempt


def lease_holder(conn: psycopg.Connection, step_uuid: str) -> tuple[str | None, int] | None:
    """(``claimed_by`` of the step, backend pid holding its lease), or None when free."""
    unsigned = lease_key(step_uuid) & 0xFFFF_FFFF_FFFF_FFFF
    return conn.execute(
        "SELECT s.claimed_by, l.pid FROM pg_locks l JOIN tasker_steps s ON s.uuid = %s"
        " WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted"
        " AND l.classid::bigint = %s AND l.objid::bigint = %s"
        " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        [step_uuid, unsigned >> 32, unsigned & 0xFFFF_FFFF]).fetchone()


def claim_step(conn: psycopg.Connection, step_uuid: str, owner: str = "") -> Claim:
    """Count and start an attempt of the step (call holding its lease; commit at once).

    ``owner`` (``<hostname>:<pid>``) and the session's backend pid are recorded
    as ``claimed_by``.

    A step found ``running`` lost its previous attempt (the caller holds the
    lease, so nobody runs it): that attempt was counted when it was claimed.
    One whose attempts are used up becomes ``error`` and fails its task.
    """
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT s.uuid::text, s.task_uuid::text, s.name, s.state, s.attempts,"
            " s.max_attempts, s.updated_at, t.namespace || '.' || t.name AS workflow,"
            " s.correlation_id::text, s.parent_correlation_id::text, t.state AS task_state,"
            " t.context, s.depends_on, s.next_attempt_at > now() + make_interval(secs => %s)"
            " AS early FROM tasker_steps s"
            " JOIN tasker_tasks t ON t.uuid = s.task_uuid WHERE s.uuid = %s",
            [EARLY_SLACK_SECONDS, step_uuid]).fetchone()
    if row is None:
        return Claim("unknown", uuid=step_uuid)
    common = {"uuid": row["uuid"], "task_uuid": row["task_uuid"], "name": row["name"],
              "state": row["state"], "max_attempts": row["max_attempts"],
              "workflow": row["workflow"], "correlation_id": row["correlation_id"],
              "parent_correlation_id": row["parent_correlation_id"]}
    if row["state"] not in _CLAIMABLE or row["task_state"] not in OPEN_TASK_STATES:
        return Claim("stale", attempt=row["attempts"], **common)
    if row["state"] == "waiting_retry" and row["early"]:
        # An older copy arriving before the retry is due: the retry's own
        # message (or the poller, after the deadline) runs it at its time.
        return Claim("early", attempt=row["attempts"], **common)
    version: datetime = row["updated_at"]
    if row["attempts"] >= row["max_attempts"]:
        # Its last attempt was claimed and never finished: lost for good.
        error = (f"lost: attempt {row['attempts']}/{row['max_attempts']} ended without an"
                 " outcome (its process was killed or its database session ended)")
        lock_task(conn, row["task_uuid"])
        changed = conn.execute(
            "UPDATE tasker_steps SET state = 'error', error = %s, completed_at = clock_timestamp(),"
            " updated_at = clock_timestamp() WHERE uuid = %s AND updated_at = %s",
            [error, step_uuid, version]).rowcount
        if not changed:
            return Claim("raced", attempt=row["attempts"], **common)
        finalized = finalize(conn, row["task_uuid"], error=f"step {row['name']}: {error}")
        return Claim("exhausted", attempt=row["attempts"], finalized=finalized, **common)
    # The task row first (only while pending: a plain UPDATE that matches
    # nothing takes no lock), then the step row: the order every writer uses.
    started = conn.execute(
        "UPDATE tasker_tasks SET state = 'in_progress', updated_at = now()"
        " WHERE uuid = %s AND state = 'pending'", [row["task_uuid"]]).rowcount == 1
    lost = (f"lost: attempt {row['attempts']}/{row['max_attempts']} ended without an outcome"
            if row["state"] == "running" else None)
    claimed = conn.execute(
        "UPDATE tasker_steps SET state = 'running', attempts = attempts + 1,"
        " claimed_at = clock_timestamp(), started_at = COALESCE(started_at, clock_timestamp()),"
        " updated_at = clock_timestamp(), error = COALESCE(%s, error),"
        " claimed_by = %s || ':' || pg_backend_pid()"
        " WHERE uuid = %s AND updated_at = %s RETURNING attempts",
        [lost, owner, step_uuid, version]).fetchone()
    if claimed is None:
        return Claim("raced", attempt=row["attempts"], **common)
    return Claim("claimed", attempt=claimed[0], context=row["context"],
                 depends_on=tuple(row["depends_on"]), task_started=started, **common)


def still_claimed(conn: psycopg.Connection, claim: Claim) -> bool:
    """The step is still ``running`` under this claim's attempt."""
    return conn.execute("SELECT 1 FROM tasker_steps WHERE uuid = %s AND state = 'running'"
                        " AND attempts = %s", [claim.uuid, claim.attempt]).fetchone() is not None


def dependency_results(conn: psycopg.Connection, task_uuid: str,
                       names: Iterable[str]) -> dict[str, Any]:
    names = list(names)
    if not names:
        return {}
    rows = conn.execute("SELECT name, results FROM tasker_steps WHERE task_uuid = %s"
                        " AND name = ANY(%s)", [task_uuid, names]).fetchall()
    return {name: results for name, results in rows}


def complete_step(conn: psycopg.Connection, claim: Claim, encoded_result: str) -> bool:
    """Store the attempt's result (already JSON); False when the step is no longer ours.

    Call with the task row locked. ``encoded_result`` went through
    ``json.dumps(allow_nan=False)`` and the NUL check (see ``attempt.encode_result``).
    """
    return conn.execute(
        "UPDATE tasker_steps SET state = 'complete', results = %s::jsonb,"
        " completed_at = clock_timestamp(), updated_at = clock_timestamp(), error = NULL"
        " WHERE uuid = %s AND state = 'running' AND attempts = %s",
        [encoded_result, claim.uuid, claim.attempt]).rowcount == 1


def lock_task(conn: psycopg.Connection, task_uuid: str) -> str:
    """Serialize writes to one task's steps; returns the task's state."""
    return conn.execute("SELECT state FROM tasker_tasks WHERE uuid = %s FOR UPDATE",
                        [task_uuid]).fetchone()[0]


def dispatch_ready(conn: psycopg.Connection, task_uuid: str) -> list[tuple[str, str]]:
    """Mark waiting steps whose dependencies are all complete as dispatched.

    Call with the task row locked (:func:`lock_task`).
    """
    return conn.execute(
        "UPDATE tasker_steps s SET state = 'dispatched', dispatched_at = clock_timestamp(),"
        " delivery = 'event', updated_at = clock_timestamp(), dispatches = s.dispatches + 1"
        " WHERE s.task_uuid = %s AND s.state = 'waiting' AND NOT EXISTS ("
        "   SELECT 1 FROM tasker_steps d WHERE d.task_uuid = s.task_uuid"
        "   AND d.name = ANY(s.depends_on) AND d.state <> 'complete')"
        " RETURNING s.uuid::text, s.name", [task_uuid]).fetchall()


def record_failed_attempt(conn: psycopg.Connection, claim: Claim, error: str,
                          retry_in: float | None) -> str | None:
    """A failed attempt: ``waiting_retry`` (due in ``retry_in`` s) or ``error``.

    Call with the task row locked. Returns the new state, or None when the
    step is no longer this attempt's (its task was finalized meanwhile).
    """
    state = "waiting_retry" if retry_in is not None else "error"
    changed = conn.execute(
        "UPDATE tasker_steps SET state = %s, error = %s, updated_at = clock_timestamp(),"
        " next_attempt_at = CASE WHEN %s::float8 IS NULL THEN NULL"
        "   ELSE now() + make_interval(secs => %s::float8) END,"
        " dispatched_at = CASE WHEN %s::float8 IS NULL THEN dispatched_at"
        "   ELSE now() + make_interval(secs => %s::float8) END,"
        " dispatches = dispatches + (%s::float8 IS NOT NULL)::int,"
        " completed_at = CASE WHEN %s::float8 IS NULL THEN clock_timestamp() END"
        " WHERE uuid = %s AND state = 'running' AND attempts = %s",
        [state, error[:4000], retry_in, retry_in, retry_in, retry_in, retry_in, retry_in,
         claim.uuid, claim.attempt]).rowcount
    return state if changed else None


def finalize(conn: psycopg.Connection, task_uuid: str, error: str | None = None
             ) -> tuple[str, float] | None:
    """Finish the task if it failed or every step is complete (task row locked).

    A failed task's open steps become ``cancelled`` in the same transaction,
    so a finalized task never leaves work in the backlog. Returns (final
    state, duration in seconds) when this call finalized it.
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
        if row is not None:
            conn.execute(
                "UPDATE tasker_steps SET state = 'cancelled', completed_at = clock_timestamp(),"
                " updated_at = clock_timestamp(), error = %s WHERE task_uuid = %s"
                " AND state IN ('waiting', 'dispatched', 'running', 'waiting_retry')",
                [f"cancelled: the task failed ({error[:200]})", task_uuid])
    return (row[0], row[1] / 1000.0) if row else None


# -------------------------------------------------------------- recovery


@dataclass(frozen=True)
class Candidate:
    """A step the recovery poller may have to re-dispatch."""

    uuid: str
    workflow: str
    correlation_id: str
    parent_correlation_id: str | None
    state: str
    attempts: int
    dispatches: int
    age_seconds: float
    updated_at: datetime


def overdue_candidates(conn: psycopg.Connection, deadline_seconds: float, limit: int = 1000
                       ) -> list[Candidate]:
    """Steps whose message may be lost, oldest first (the caller decides which are).

    Dispatched (or due for retry) and not claimed within the deadline, or
    claimed more than the deadline ago and still ``running`` (dead only if no
    session holds its lease: :func:`held_leases`). Tasks already finalized
    have no open steps, but are excluded all the same.
    """
    with conn.cursor(row_factory=dict_row) as cur:
        # Each branch walks its partial index in order and stops at the limit;
        # the task of each row is then read by primary key in a scalar
        # subquery (a join let the planner hash the whole tasks table).
        cols = ("SELECT uuid, task_uuid, correlation_id, parent_correlation_id, state,"
                " attempts, dispatches, updated_at, {since} AS since FROM tasker_steps")
        rows = cur.execute(
            "SELECT * FROM (SELECT c.uuid::text,"
            "  (SELECT namespace || '.' || name FROM tasker_tasks WHERE uuid = c.task_uuid"
            "   AND state IN ('pending', 'in_progress')) AS workflow,"
            " c.correlation_id::text, c.parent_correlation_id::text, c.state, c.attempts,"
            " c.dispatches, extract(epoch FROM now() - c.since)::float8 AS age_seconds,"
            " c.updated_at, c.since FROM ("
            f"  ({cols.format(since='dispatched_at')}"
            "   WHERE state IN ('dispatched', 'waiting_retry')"
            "   AND dispatched_at < now() - make_interval(secs => %s::float8)"
            "   ORDER BY dispatched_at LIMIT %s)"
            "  UNION ALL"
            f"  ({cols.format(since='claimed_at')} WHERE state = 'running'"
            "   AND claimed_at < now() - make_interval(secs => %s::float8)"
            "   ORDER BY claimed_at LIMIT %s)) c) o"
            " WHERE workflow IS NOT NULL ORDER BY since",
            [deadline_seconds, limit, deadline_seconds, limit]).fetchall()
    return [Candidate(**{k: v for k, v in r.items() if k != "since"}) for r in rows]


def mark_redispatched(conn: psycopg.Connection, chosen: Sequence[Candidate]
                      ) -> list[Candidate]:
    """Record that a new message is published for each chosen step (``delivery = poll``).

    A step changed since it was read (claimed, completed, re-dispatched by
    another poller) or locked right now is left alone: ``SKIP LOCKED`` plus
    the ``updated_at`` check. Returns the steps to publish.
    """
    if not chosen:
        return []
    rows = conn.execute(
        "WITH c AS (SELECT s.uuid FROM tasker_steps s"
        "  JOIN unnest(%s::uuid[], %s::timestamptz[]) AS v(uuid, version)"
        "    ON v.uuid = s.uuid AND s.updated_at = v.version"
        "  WHERE s.state IN ('dispatched', 'waiting_retry', 'running')"
        "  FOR UPDATE OF s SKIP LOCKED)"
        " UPDATE tasker_steps s SET dispatched_at = clock_timestamp(), delivery = 'poll',"
        " dispatches = s.dispatches + 1, updated_at = clock_timestamp(),"
        " error = CASE WHEN s.state = 'running' THEN 'lost: attempt ' || s.attempts || '/'"
        "   || s.max_attempts || ' ended without an outcome' ELSE s.error END,"
        " state = 'dispatched'"
        " FROM c WHERE s.uuid = c.uuid RETURNING s.uuid::text",
        [[c.uuid for c in chosen], [c.updated_at for c in chosen]]).fetchall()
    done = {r[0] for r in rows}
    return [c for c in chosen if c.uuid in done]


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
            "SELECT name, state, attempts, max_attempts, dispatches, delivery, depends_on,"
            " results, error, dispatched_at, started_at, completed_at FROM tasker_steps"
            " WHERE task_uuid = %s"
            " ORDER BY COALESCE(started_at, 'infinity'), name", [task_uuid]).fetchall()

