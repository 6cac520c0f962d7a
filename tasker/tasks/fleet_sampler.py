"""The beat-scheduled fleet sampler (``tasker.sample_fleet``) and one sample round.

A round samples each source (broker queues, database connections) on its own:
a source that fails is reported with ``tasker_sample_up{source} 0`` and one
``sample.failed`` log line, and the others go on. The task never raises.

The sources themselves are the pure :mod:`tasker.sampler` (no metrics, no
Celery app); this module gives them the app (``self.app``) and records what
they report.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from celery import shared_task
from kombu import Connection

from tasker.correlation import PUBLISHED_AT_HEADER
from tasker.metrics import recording
from tasker.redact import redact_text
from tasker.sampler import export
from tasker.sampler.broker import sample_queues
from tasker.sampler.database import bounded_connection, run_with_deadline, sample_database
from tasker.settings import Settings, get_settings
from tasker.workflows.records import counts_by_state

__all__ = ["sample_fleet", "run_sample_round", "SampleRound", "fleet_queue_names"]

logger = logging.getLogger("tasker.sampler")

#: Seconds between refreshes of the queues live workers consume (one broadcast).
ACTIVE_QUEUES_REFRESH = 300.0
#: Share of the sample interval the database sources may use, counted from the
#: round's start: the round ends before the next one is due.
DATABASE_SHARE = 0.8
#: Longest wait for one database source, whatever the interval.
DATABASE_TIMEOUT = 5.0
#: Backstop time limits of ``tasker.sample_fleet`` (seconds) when a pool
#: process runs it (Celery enforces time limits only there; the MainProcess's
#: periodic consumer, tasker/periodic.py, relies on the bounds inside the round).
#: Each source bounds itself well within the interval; these only catch what
#: nothing else does, and release the round's lock (soft: an exception in the
#: task, hard: the pool process is replaced, and its flock goes with it).
SAMPLE_SOFT_TIME_LIMIT = 60.0
SAMPLE_TIME_LIMIT = 75.0


class _ConsumedQueues:
    """The queues live workers reported at the last discovery, and when (per process)."""

    def __init__(self) -> None:
        self.fetched_at = 0.0
        self.names: set[str] = set()


_consumed = _ConsumedQueues()


@dataclass
class SourceResult:
    up: bool
    duration: float
    values: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class SampleRound:
    """The outcome of one round, per source."""

    started_at: float
    sources: dict[str, SourceResult] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"started_at": self.started_at,
                "sources": {k: asdict(v) for k, v in self.sources.items()}}


def fleet_queue_names(app: Any, settings: Settings) -> list[str]:
    """Declared, routed, configured and consumed queues, plus those live workers
    reported at the last discovery (see :func:`discover_consumed_queues`)."""
    names = set(app.amqp.queues.keys()) | set(settings.sample_queues)
    names.add(app.conf.task_default_queue)
    routes = app.conf.task_routes or {}
    if isinstance(routes, dict):
        for route in routes.values():
            if isinstance(route, dict) and isinstance(route.get("queue"), str):
                names.add(route["queue"])
    consume_from = getattr(app.amqp.queues, "consume_from", None) or {}
    names.update(consume_from.keys())
    names.update(_consumed.names)
    return sorted(n for n in names if n and not n.endswith(".pidbox") and "celeryev" not in n)


def discover_consumed_queues(app: Any) -> set[str]:
    """Ask live workers which queues they consume, at most every 5 minutes.

    One broadcast with a one-second deadline; called only after the broker
    answered a sample, so an unreachable broker never makes a round hang.
    """
    cached = _consumed.names
    if _consumed.fetched_at and time.monotonic() - _consumed.fetched_at < ACTIVE_QUEUES_REFRESH:
        return cached
    try:
        replies = app.control.inspect(timeout=1.0).active_queues() or {}
        cached = {q["name"] for qs in replies.values() for q in qs if q.get("name")}
    except Exception:  # noqa: BLE001 - discovery is best effort; declared queues remain
        logger.debug("sample.active_queues_failed", exc_info=True)
    _consumed.fetched_at, _consumed.names = time.monotonic(), cached
    return cached


def _timed(source: str, fn: Callable[[], dict[str, Any]]) -> SourceResult:
    started = time.perf_counter()
    try:
        values = fn()
        result = SourceResult(True, time.perf_counter() - started, values)
        logger.info("sample.completed", extra={"source": source,
                                               "duration_seconds": round(result.duration, 4)})
    except Exception as exc:  # noqa: BLE001 - a source that fails is reported, not raised
        reason = redact_text(str(exc)) or type(exc).__name__
        result = SourceResult(False, time.perf_counter() - started, None, reason)
        logger.warning("sample.failed", extra={"source": source, "reason": reason})
    return result


def _count_queue_error(queue: str, reason: str) -> None:
    """A queue the sampler could not read (it logged why): counted in the node's errors."""
    recorder = recording.current()
    if recorder is not None:
        recorder.child(recorder.metrics.metrics_errors, "sample_queue").inc()


def _sample_broker(app: Any, settings: Settings) -> dict[str, Any]:
    queues = fleet_queue_names(app, settings)
    options = dict(app.conf.broker_transport_options or {})
    with Connection(settings.broker_url, connect_timeout=3, transport_options=options) as conn:
        samples = sample_queues(conn, queues, on_queue_error=_count_queue_error)
    discovered = discover_consumed_queues(app) - set(queues)
    if discovered:
        with Connection(settings.broker_url, connect_timeout=3, transport_options=options) as conn:
            samples.update(sample_queues(conn, sorted(discovered),
                                         on_queue_error=_count_queue_error))
    return {"queues": {name: {"depth": s.depth,
                              "oldest_message_age_seconds": s.oldest_message_age_seconds,
                              "unacked": s.unacked, "consumers": s.consumers}
                       for name, s in samples.items()}}


def _sample_database(settings: Settings, deadline: float) -> dict[str, Any]:
    sample = sample_database(settings.database_url, timeout=deadline - time.monotonic())
    return {"connections_by_state": dict(sample.connections_by_state),
            "max_connections": sample.max_connections}


def _sample_records(settings: Settings, deadline: float) -> dict[str, Any]:
    def count() -> dict[str, Any]:
        with bounded_connection(settings.database_url, deadline) as conn:
            timeout_ms = max(1, int((deadline - time.monotonic()) * 1000))
            conn.execute(f"SET statement_timeout = {timeout_ms}")
            return counts_by_state(conn)

    try:
        return run_with_deadline(count, deadline - time.monotonic(), "tasker-records-sample")
    except (psycopg.Error, TimeoutError) as exc:
        raise RuntimeError(redact_text(f"records unavailable: {exc}")) from None


def run_sample_round(app: Any, settings: Settings | None = None,
                     directory: str | None = None) -> SampleRound:
    """Sample every source once; store the results in ``directory`` if given.

    The broker is sampled (and stored) first, so a database that hangs cannot
    make queue depth stale. The two database sources then share one deadline
    within the sample interval: a database that accepts connections and never
    answers ends the round on time with both down.
    """
    settings = settings or get_settings()
    started = time.monotonic()
    round_ = SampleRound(started_at=time.time())

    def store(source: str, result: SourceResult) -> None:
        round_.sources[source] = result
        if directory:
            export.record_source(directory, source, up=result.up, duration=result.duration,
                                 values=result.values)

    store("broker", _timed("broker", lambda: _sample_broker(app, settings)))
    budget = settings.sample_interval * DATABASE_SHARE - (time.monotonic() - started)
    deadline = time.monotonic() + min(DATABASE_TIMEOUT, max(budget, 0.1))
    # One deadline for both: after a database that did not answer, records are
    # reported down at once rather than waited for again.
    store("database", _timed("database", lambda: _sample_database(settings, deadline)))
    store("records", _timed("records", lambda: _sample_records(settings, deadline)))
    return round_


def _count_skip(reason: str) -> None:
    recorder = recording.current()
    if recorder is not None:
        recorder.child(recorder.metrics.sample_skipped, reason).inc()
    logger.warning("sample.skipped", extra={"reason": reason})


@shared_task(name="tasker.sample_fleet", bind=True, ignore_result=True,
             soft_time_limit=SAMPLE_SOFT_TIME_LIMIT, time_limit=SAMPLE_TIME_LIMIT)
def sample_fleet(self: Any) -> None:
    """Beat task: one sample round into this node's scrape, unless it would pile up."""
    settings = get_settings()
    published = getattr(self.request, PUBLISHED_AT_HEADER, None)
    if published is not None and time.time() - float(published) > settings.sample_interval:
        _count_skip("stale")
        return
    recorder = recording.current()
    directory = recorder.directory if recorder is not None else None
    if directory is None:
        run_sample_round(self.app, settings)
        return
    # One round at a time per node: a round that would overlap is skipped.
    fd = os.open(os.path.join(directory, "sampler.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _count_skip("overlap")
            return
        run_sample_round(self.app, settings, directory)
    finally:
        os.close(fd)
