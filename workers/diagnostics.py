"""Diagnostic handlers shipped with tasker: ``tasker load``, the demo and the tests use them."""

from __future__ import annotations

import time

from tasker import db, handler
from tasker.workflows import Step, StepContext, Workflow

#: Longest sleep or hold a diagnostic task accepts, in seconds.
MAX_SECONDS = 3600.0


class DiagnosticFailure(Exception):
    """Raised on purpose by ``diagnostics.fail``."""


def _seconds(value: object) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"seconds must be a number, got {value!r}") from None
    if not 0 <= seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be between 0 and {MAX_SECONDS:g}, got {seconds:g}")
    return seconds


@handler
def noop() -> None:
    """Do nothing: measures the framework's own cost."""


@handler
def sleep(seconds: float = 0.1) -> float:
    """Sleep ``seconds`` (a stand-in for I/O-bound work)."""
    seconds = _seconds(seconds)
    time.sleep(seconds)
    return seconds


_stamp_clients: dict[int, object] = {}


@handler
def stamp(key: str) -> float:
    """Append this run's finishing time (Unix seconds) to the Redis list ``key``.

    Ground truth for the processing rate: the tests and benchmarks count the
    stamps that fall in a window. Uses the broker's Redis (a Redis broker only).
    """
    now = time.time()
    _stamp_client().rpush(key, repr(now))  # type: ignore[attr-defined]
    return now


@handler(bind=True)
def timed(self, seconds: float, path: str) -> float:
    """Sleep ``seconds``; append this run's runtime, as it measured it, to the file ``path``.

    Ground truth for runtime percentiles: the tests compare Prometheus'
    quantiles with these. Measured from the task's start as tasker records it
    (its ``task_prerun``) to the end of the body, so it is what
    ``tasker_task_runtime_seconds`` observes less Celery's few microseconds
    after the body returns. One line per run, written with ``O_APPEND``.
    """
    import os

    from tasker.metrics import recording

    seconds = _seconds(seconds)
    started = recording.started_at(self.request.id) or time.perf_counter()
    time.sleep(seconds)
    measured = time.perf_counter() - started
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{measured!r}\n".encode())
    finally:
        os.close(fd)
    return measured


def _stamp_client() -> object:
    """One Redis client per pool process (never inherited through a fork)."""
    import os

    import redis

    from tasker.settings import get_settings

    client = _stamp_clients.get(os.getpid())
    if client is None:
        client = _stamp_clients[os.getpid()] = redis.Redis.from_url(get_settings().broker_url)
    return client


@handler
def fail(message: str = "diagnostics.fail was asked to fail") -> None:
    """Raise :class:`DiagnosticFailure` with ``message``."""
    raise DiagnosticFailure(str(message))


@handler
def hold_db(seconds: float = 1.0) -> float:
    """Hold one pooled database connection busy for ``seconds`` (``pg_sleep``)."""
    seconds = _seconds(seconds)
    with db.connection() as conn:
        conn.execute("SELECT pg_sleep(%s)", [seconds])
    return seconds


@handler(bind=True)
def spawn(self, chain_length: int = 3, group_size: int = 2, nested: bool = True) -> dict:
    """Publish a chain, a group and (optionally) a nested piece of work from inside a task.

    Shows correlation at work: the chain and group inherit this task's
    ``tasker_correlation_id``; the nested start gets a new id whose parent is
    this task's id. Returns the ids it used.
    """
    from celery import chain, group

    from tasker.correlation import current_correlation_id, new_correlation

    chain_length, group_size = int(chain_length), int(group_size)
    if not (0 <= chain_length <= 100 and 0 <= group_size <= 100):
        raise ValueError("chain_length and group_size must be between 0 and 100")
    # Everything goes to the queue this task came from (each signature of a
    # chain carries its own routing).
    queue = (self.request.delivery_info or {}).get("routing_key")
    options = {"queue": queue} if queue else {}
    if chain_length:
        chain(*(noop.si().set(**options) for _ in range(chain_length))).apply_async()
    if group_size:
        group(noop.si().set(**options) for _ in range(group_size)).apply_async()
    nested_id = None
    if nested:
        with new_correlation() as nested_id:
            noop.apply_async(**options)
    return {"correlation_id": current_correlation_id(), "nested_correlation_id": nested_id}


# -- diagnostic workflows ----------------------------------------------------

def _slow_step(ctx: StepContext) -> dict:
    """Sleep in the database for ``context["seconds"]``, then record once."""
    seconds = _seconds(ctx.context.get("seconds", 1.0))
    ctx.conn.execute("SELECT pg_sleep(%s)", [seconds])
    ctx.conn.execute("INSERT INTO tasker_workflow_ledger (task_uuid, step, value)"
                     " VALUES (%s, %s, %s)", [ctx.task_uuid, ctx.step_name, ctx.attempt])
    return {"slept": seconds}


def _flaky_step(ctx: StepContext) -> dict:
    """Fail until attempt ``context["succeed_on"]`` (retries with backoff)."""
    if ctx.attempt < int(ctx.context.get("succeed_on", 1)):
        raise DiagnosticFailure(f"attempt {ctx.attempt} fails on purpose")
    return {"attempt": ctx.attempt}


def _done(ctx: StepContext) -> dict:
    return {"done": True}


slow = Workflow("diagnostics", "slow", steps=[
    Step("hold", _slow_step),
    Step("after", _done, after=["hold"]),
])
flaky = Workflow("diagnostics", "flaky", steps=[
    Step("flaky", _flaky_step, max_attempts=3),
    Step("after", _done, after=["flaky"]),
])
