"""Celery signal receivers that record task metrics.

Which process runs what (prefork pool):

* MainProcess: the receipt of each message (:mod:`tasker.receipt`, a wrapper of
  Celery's task handler, not the ``task_received`` signal),
  ``task_revoked``, ``task_rejected``, ``task_unknown``, and ``task_failure``
  for hard time limits, lost processes (``WorkerLostError``) and
  ``Reject(requeue=False)``. The MainProcess is the node's throughput
  bottleneck, so it does one addition in memory per task (see
  :meth:`Recorder.on_received`).
* Pool process: ``task_prerun``, ``task_postrun``, ``task_retry`` and
  ordinary ``task_failure``. A success is counted by the ``task_postrun``
  receiver from the ``state`` Celery passes it (``SUCCESS``), not by a
  ``task_success`` receiver: Celery skips a signal nobody listens to, and
  every dispatch costs the pool process about 2.5 µs per task (BENCHMARKS.md).

Recording is inert until a worker node calls :func:`activate` (see
:mod:`tasker.metrics.bootstep`), so publishers and tools that import tasker
record nothing. Every receiver is wrapped so that a metrics failure is logged
and counted and the task goes on.

A pool process that cannot write its metric files (the node's directory is
unwritable or full: ``OSError``) stops recording altogether
(:func:`stop_recording`): every later update would fail again, once per task.
The node logs that once, whichever process fails first, and counts such
processes in ``tasker_metrics_errors_total{stage="directory"}``.
"""

from __future__ import annotations

import bisect
import functools
import logging
import mmap
import multiprocessing
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from celery.signals import (
    task_failure,
    task_postrun,
    task_prerun,
    task_rejected,
    task_retry,
    task_revoked,
    task_unknown,
)
from celery.states import SUCCESS

from tasker import db
from tasker.contracts.prometheus import child_value, histogram_parts
from tasker.correlation import PUBLISHED_AT_HEADER
from tasker.metrics.definitions import NATIVE_HISTOGRAMS, TaskMetrics
from tasker.metrics.native_series import NativeObserving, NativeSeries
from tasker.metrics.node_state import NodeState
from tasker.metrics.values import add_each, adder_of

__all__ = ["activate", "deactivate", "Recorder", "UNREGISTERED", "MAX_EXCEPTION_LABELS",
           "SharedCount", "stop_recording", "DIRECTORY_STAGE"]

logger = logging.getLogger("tasker.metrics")

#: Label value for a task name this node does not know (keeps labels bounded).
UNREGISTERED = "unregistered"
#: Distinct exception class names per process before the rest become ``other``.
MAX_EXCEPTION_LABELS = 50
#: ``tasker_metrics_errors_total`` stage of processes that stopped recording.
DIRECTORY_STAGE = "directory"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class _HistogramValues:
    """Where one observation of a histogram child goes: one bucket and the sum.

    prometheus_client keeps a multiprocess histogram as one value per bucket
    (not cumulative; the readers add them up) plus the sum: ``observe(x)``
    adds 1 to the first bucket whose bound is >= x and x to the sum; and
    1 to its native bucket when native histograms are on.
    """

    bounds: list[float]
    buckets: list[Any]
    total: Any
    native: NativeSeries | None = None

    def pairs(self, amount: float) -> tuple[tuple[Any, float], ...]:
        classic = (self.buckets[bisect.bisect_left(self.bounds, amount)], 1.0), (self.total,
                                                                                 amount)
        if self.native is None:
            return classic
        return (*classic, self.native.pair(amount))


class _Observing:
    """A histogram child whose values are not reachable: ``observe`` through it, one by one."""

    def __init__(self, child: Any, native: NativeSeries | None = None) -> None:
        # what add_each calls, with the observed amount
        self.inc = NativeObserving(child, native).observe if native else child.observe

    def pairs(self, amount: float) -> tuple[tuple[Any, float]]:
        return ((self, amount),)


@dataclass(frozen=True)
class _TaskSeries:
    """The values a pool process adds to for one task's executions (one label set).

    The per-task updates go to the values directly, all four of a task's start
    (or end) in one :func:`tasker.metrics.values.adder_of` call: through
    prometheus_client's ``inc``/``observe`` wrappers they cost three times as
    much, on every task.
    """

    add: Callable[[Any], None]
    started_value: Any
    succeeded_value: Any
    active_value: Any
    runtime_values: _HistogramValues | _Observing
    queue_wait_values: _HistogramValues | _Observing

    @classmethod
    def of(cls, started: Any, succeeded: Any, runtime: Any, queue_wait: Any,
           active: Any, native_runtime: NativeSeries | None = None,
           native_wait: NativeSeries | None = None) -> _TaskSeries:
        """From the labelled children of the five metrics (and their native buckets)."""
        try:  # where prometheus_client's children keep their values (checked at start)
            values = (child_value(started), child_value(succeeded), child_value(active),
                      _HistogramValues(*histogram_parts(runtime), native_runtime),
                      _HistogramValues(*histogram_parts(queue_wait), native_wait))
            add = adder_of(values[0])
        except AttributeError:  # another layout: the public methods, one by one
            values = (started, succeeded, active, _Observing(runtime, native_runtime),
                      _Observing(queue_wait, native_wait))
            add = add_each
        return cls(add, *values)


@dataclass(slots=True)
class ReceivedCount:
    """A received counter's series and what the MainProcess counted for it in memory.

    ``counted`` is changed by the event loop's thread alone (:mod:`tasker.receipt`);
    :meth:`Recorder.flush_received` reads it and folds what is new into the counter.
    """

    series: Any
    counted: int = 0  # messages counted received (less those Celery refused)
    folded: int = 0  # how many of them are in the counter already


class Recorder:
    """Per-process recording state: metric objects plus label caches.

    Args:
        metrics: the node's metric objects.
        node_state: the node's shared statistics (rate window, EMA).
        worker: the node name, e.g. ``celery@host``.
        known_tasks: task names this node runs (anything else is ``unregistered``).
        queue_names: maps (exchange, routing key) to the queue a message came from.
        directory: the node's multiprocess directory.
        native_schema: the schema of native histograms, None to record none.
        stopped_processes: counts pool processes that stopped recording (a worker
            node gives one shared by its pool processes; None outside a node).
    """

    def __init__(self, metrics: TaskMetrics, node_state: NodeState, worker: str,
                 known_tasks: Callable[[], Mapping[str, Any]],
                 queue_names: Callable[[str | None, str | None], str],
                 directory: str = "", native_schema: int | None = None,
                 stopped_processes: SharedCount | None = None) -> None:
        self.metrics = metrics
        self.native_schema = native_schema
        #: id() of the histograms also recorded as native histograms.
        self._native_metrics = {id(getattr(metrics, name)): labelnames
                                for name, labelnames in NATIVE_HISTOGRAMS.items()
                                } if native_schema is not None else {}
        self.node_state = node_state
        self.worker = worker
        self.directory = directory
        self._known_tasks = known_tasks
        self._queue_names = queue_names
        self._started: dict[str, tuple[float, _TaskSeries]] = {}
        self._series: dict[tuple[str, str | None, str | None], _TaskSeries] = {}
        # MainProcess: messages received per (task, exchange, routing key), each
        # The in-memory received counts by (task, exchange, routing key); see on_received.
        self._received: dict[tuple[str | None, str | None, str | None], ReceivedCount] = {}
        self._flush_lock = threading.Lock()
        self._exceptions: set[str] = set()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # Bounded as the label values are (task names, queues, workflows).
        self._natives: dict[tuple[int, tuple[str, ...]], NativeSeries] = {}
        #: Pool processes that stopped recording, node-wide (given by the worker node).
        self.stopped_processes = stopped_processes
        self.main_pid = os.getpid()  # the node's MainProcess builds the recorder

    # Label helpers -------------------------------------------------------

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: ``labels()`` costs more than ``inc()``.

        A histogram recorded natively too comes wrapped: its ``observe`` also
        fills the native buckets.
        """
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = metric.labels(*labels)
            native = self.native_of(metric, labels)
            if native is not None:
                found = NativeObserving(found, native)
            self._children[key] = found
        return found

    def native_of(self, metric: Any, labels: tuple[str, ...]) -> NativeSeries | None:
        """The native buckets of one labelled histogram, or None when it has none.

        One object per label set, shared by every caller: two objects for one
        label set would each keep its own copy of a bucket's value and write
        over each other's counts (several routing keys map to one queue label).
        """
        labelnames = self._native_metrics.get(id(metric))
        if labelnames is None or self.native_schema is None:
            return None
        key = (id(metric), tuple(labels))
        found = self._natives.get(key)
        if found is None:
            family = metric.describe()[0]  # public: the family's name and help text
            found = self._natives[key] = NativeSeries(family.name, family.documentation,
                                                      labelnames, labels, self.native_schema)
        return found

    def task_label(self, name: str | None) -> str:
        return name if name and name in self._known_tasks() else UNREGISTERED

    def queue_label(self, delivery_info: Mapping[str, Any] | None) -> str:
        info = delivery_info or {}
        return self._queue_names(info.get("exchange"), info.get("routing_key"))

    def exception_label(self, exc: BaseException | None) -> str:
        name = type(exc).__name__ if exc is not None else "unknown"
        if name in self._exceptions:
            return name
        if len(self._exceptions) < MAX_EXCEPTION_LABELS:
            self._exceptions.add(name)
            return name
        return "other"

    def labels_of(self, task: Any) -> tuple[str, str]:
        request = task.request
        return self.task_label(task.name), self.queue_label(request.delivery_info)

    def series_of(self, task: Any, request: Any = None) -> _TaskSeries:
        """The labelled metric objects of a task's executions, looked up once per
        (task, exchange, routing key): the pool-process hot path does one dict lookup."""
        info = (request if request is not None else task.request).delivery_info or {}
        key = (task.name, info.get("exchange"), info.get("routing_key"))
        found = self._series.get(key)
        if found is None:
            labels = self.labels_of(task)
            m = self.metrics
            found = _TaskSeries.of(*(metric.labels(*labels) for metric in (
                m.started, m.succeeded, m.runtime, m.queue_wait)),
                active=m.tasks_active.labels(self.worker),
                native_runtime=self.native_of(m.runtime, labels),
                native_wait=self.native_of(m.queue_wait, labels))
            if len(self._series) < 10_000:  # task names are bounded; never grow without end
                self._series[key] = found
        return found

    # Pool-process side ----------------------------------------------------

    def on_prerun(self, task_id: str, task: Any) -> None:
        request = task.request  # a property that walks Celery's request stack: once
        series = self.series_of(task, request)
        now = time.time()
        self._started[task_id] = (time.perf_counter(), series)
        published = _published_at(request)
        if published is None:
            series.add(((series.started_value, 1.0), (series.active_value, 1.0)))
            return
        eta = _eta_timestamp(request) if request.eta else None
        start_from = eta if eta is not None and eta > published else published
        series.add(((series.started_value, 1.0), (series.active_value, 1.0),
                    *series.queue_wait_values.pairs(max(0.0, now - start_from))))

    def on_postrun(self, task_id: str, task: Any, state: str | None = None) -> None:
        entry = self._started.pop(task_id, None)
        if entry is None:  # prerun's recording failed: keep the gauge balanced
            self.child(self.metrics.tasks_active, self.worker).dec()
            if state == SUCCESS:
                series = self.series_of(task)
                series.add(((series.succeeded_value, 1.0),))
            return
        started, series = entry
        if state is None:
            # Interrupted by a BaseException before Celery set a state: SIGTERM
            # at a hard time limit or revoke(terminate=True), sys.exit() in a
            # handler. The MainProcess sees how the execution ended and
            # observes its runtime (tasker.metrics.request): once, not twice.
            series.add(((series.active_value, -1.0),))
            return
        runtime = time.perf_counter() - started
        if state == SUCCESS:
            series.add(((series.active_value, -1.0), (series.succeeded_value, 1.0),
                        *series.runtime_values.pairs(runtime)))
        else:
            series.add(((series.active_value, -1.0), *series.runtime_values.pairs(runtime)))
        self.node_state.record_finished(runtime, time.time())

    def on_retry(self, task: Any, request: Any) -> None:
        name = getattr(request, "task", None) or task.name
        info = getattr(request, "delivery_info", None)
        self.child(self.metrics.retried, self.task_label(name), self.queue_label(info)).inc()

    # Either process --------------------------------------------------------

    def on_failure(self, task: Any, exception: BaseException | None) -> None:
        # The pool process for ordinary exceptions; the MainProcess (with the
        # request pushed on task.request) for lost processes and time limits.
        task_name, queue = self.labels_of(task)
        self.child(self.metrics.failed, task_name, queue, self.exception_label(exception)).inc()

    def on_unfinished(self, task_name: str | None, delivery_info: Mapping[str, Any] | None,
                      runtime: float) -> None:
        """MainProcess: an execution whose pool process never reached task_postrun."""
        labels = self.task_label(task_name), self.queue_label(delivery_info)
        self.child(self.metrics.runtime, *labels).observe(max(0.0, runtime))
        self.node_state.record_finished(max(0.0, runtime), time.time())

    # MainProcess side ------------------------------------------------------

    def on_received(self, request: Any) -> None:
        """MainProcess, once per message: one dict lookup and one addition.

        The count is kept in memory and folded into
        ``tasker_tasks_received_total`` by :meth:`flush_received`, which the
        node calls before every reading (scrape, JSON, ``inspect stats``) and
        once a second: a counter update in the metric file costs the node's
        bottleneck about a microsecond per message, an addition a tenth of it.
        Only this thread adds to ``entry.counted``; the flush only reads it, so
        no count is lost to a race.
        """
        entry = self.received_entry(request.name, request.delivery_info)
        if entry is not None:
            entry.counted += 1

    def received_entry(self, task_name: str | None,
                       delivery_info: Mapping[str, Any] | None) -> ReceivedCount | None:
        """The in-memory count of (task, exchange, routing key).

        The caller adds to ``entry.counted`` (from the event loop's thread only;
        :mod:`tasker.receipt` keeps the entries it was given). None once
        10,000 keys are kept (bounded, as the series cache): then this call
        counted the message in the counter itself.
        """
        info = delivery_info or {}
        key = (task_name, info.get("exchange"), info.get("routing_key"))
        entry = self._received.get(key)
        if entry is None:
            series = self.metrics.received.labels(self.task_label(task_name),
                                                  self.queue_label(info))
            if len(self._received) >= 10_000:
                series.inc()
                return None
            entry = self._received[key] = ReceivedCount(series)
        return entry

    def flush_received(self) -> None:
        """Fold the received counts kept in memory into their counter (any thread)."""
        with self._flush_lock:
            for entry in list(self._received.values()):  # a copy: the receiver may add keys
                counted = entry.counted
                # Below what was written: a count taken back (an invalid message)
                # after it was written; the next message makes up for it.
                if counted > entry.folded:
                    try:
                        entry.series.inc(counted - entry.folded)
                    except Exception as exc:  # noqa: BLE001 - a reading must still answer
                        _record_failed(self, "received", exc)
                        continue  # kept in memory: written at the next flush
                    entry.folded = counted

    def on_revoked(self, task: Any, request: Any) -> None:
        name = getattr(request, "task", None) or getattr(task, "name", None)
        info = getattr(request, "delivery_info", None)
        self.child(self.metrics.revoked, self.task_label(name), self.queue_label(info)).inc()

    def on_rejected(self, reason: str) -> None:
        self.child(self.metrics.rejected, reason).inc()


class SharedCount:
    """A counter shared by a MainProcess and every pool process it forks.

    An anonymous shared map made before the pool forks: not a file in the
    metrics directory, which may be the very thing that fails.
    """

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, 8)
        self._lock = multiprocessing.get_context("fork").Lock()

    def add(self) -> int | None:
        """Add one; the new value, or None if the lock could not be had quickly."""
        if not self._lock.acquire(timeout=1.0):  # a holder was killed mid-update
            return None
        try:
            value = struct.unpack_from("<q", self._map)[0] + 1
            # One slice assignment: pack_into zero-fills first, and ``value``
            # is read without the lock (see tasker.metrics.values).
            self._map[0:8] = struct.pack("<q", value)
            return value
        finally:
            self._lock.release()

    @property
    def value(self) -> int:
        return struct.unpack_from("<q", self._map)[0]


_recorder: Recorder | None = None


def activate(recorder: Recorder) -> None:
    """Start recording in this process and, through fork, in its pool processes."""
    # Celery's signal receivers are plain functions called with the signal's
    # arguments only: the recorder they record into can only live here.
    global _recorder
    _recorder = recorder


def deactivate() -> None:
    global _recorder  # see activate()
    _recorder = None


def current() -> Recorder | None:
    return _recorder


def stop_recording(recorder: Recorder, exc: OSError) -> None:
    """This process cannot write its metric files: run its tasks without metrics.

    Every later update would raise again: in each task's receivers (one error
    per task) and in code that is not guarded (the database pool observer,
    workflow steps). So recording stops in this process only; the first
    process of the node to stop logs one error naming the directory.
    """
    if os.getpid() == recorder.main_pid:
        # The MainProcess serves the node's scrape and forks every pool
        # process: it never stops recording; this failure counts as any other.
        _count_own_failure(recorder, DIRECTORY_STAGE, exc)
        return
    try:  # best effort: a task this process counted as running is not left "active"
        recorder.child(recorder.metrics.tasks_active, recorder.worker).set(0)
    except Exception:  # noqa: BLE001 - its gauge file may be the one that failed
        pass
    deactivate()
    db.set_observer(db.PoolObserver())
    stopped = recorder.stopped_processes
    count = stopped.add() if stopped is not None else 1
    (logger.error if count == 1 else logger.debug)("metrics.directory_unwritable", extra={
        "directory": recorder.directory, "reason": str(exc),
        "effect": "pool processes that cannot write their metric files run their tasks "
                  "without recording metrics; counted in "
                  f'tasker_metrics_errors_total{{stage="{DIRECTORY_STAGE}"}}'})


def _published_at(request: Any) -> float | None:
    value = getattr(request, PUBLISHED_AT_HEADER, None)
    if value is None:
        headers = getattr(request, "headers", None) or {}
        value = headers.get(PUBLISHED_AT_HEADER)
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _eta_timestamp(request: Any) -> float | None:
    eta = getattr(request, "eta", None)
    if not eta:
        return None
    try:
        return datetime.fromisoformat(eta).timestamp() if isinstance(eta, str) else eta.timestamp()
    except (TypeError, ValueError, AttributeError):
        return None


def _guarded(stage: str) -> Callable[[F], F]:
    """Run a receiver only while recording is active, and never let it raise."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def receiver(*args: Any, **kwargs: Any) -> None:
            recorder = _recorder
            if recorder is None:
                return
            try:
                fn(recorder, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - metrics must never fail a task
                _record_failed(recorder, stage, exc)

        return receiver  # type: ignore[return-value]

    return decorate


def _record_failed(recorder: Recorder, stage: str, exc: Exception) -> None:
    """A receiver failed: an unwritable directory stops recording, anything else is counted."""
    if isinstance(exc, OSError):
        stop_recording(recorder, exc)
    else:
        _count_own_failure(recorder, stage, exc)


_failures_logged: set[str] = set()  # once-per-process error lines


def _count_own_failure(recorder: Recorder, stage: str, exc: Exception) -> None:
    if stage not in _failures_logged:
        _failures_logged.add(stage)
        logger.error("metrics.record_failed", exc_info=exc, extra={"stage": stage})
    else:
        logger.debug("metrics.record_failed", exc_info=exc, extra={"stage": stage})
    try:
        recorder.child(recorder.metrics.metrics_errors, stage).inc()
    except Exception:  # noqa: BLE001 - e.g. the metrics directory itself is broken
        pass


def started_at(task_id: str) -> float | None:
    """``time.perf_counter()`` when this process's ``task_prerun`` saw ``task_id`` start.

    The start of the runtime tasker observes: a task that measures itself from
    here measures what ``tasker_task_runtime_seconds`` records, less the
    moment between its return and ``task_postrun`` (``diagnostics.timed``).
    """
    recorder = _recorder
    entry = recorder._started.get(task_id) if recorder is not None else None
    return entry[0] if entry is not None else None


def record_received(request: Any) -> None:
    """MainProcess: count one received message (:mod:`tasker.receipt`'s fallback)."""
    recorder = _recorder
    if recorder is not None:
        try:
            recorder.on_received(request)
        except Exception as exc:  # noqa: BLE001 - metrics must never fail a task
            _record_failed(recorder, "received", exc)


# The two receivers every task runs through in its pool process are written
# out rather than wrapped by _guarded: one call layer less per task.


@task_prerun.connect(weak=False)
def _on_prerun(sender: Any = None, task_id: str = "", task: Any = None, **_: Any) -> None:
    recorder = _recorder
    if recorder is not None:
        try:
            recorder.on_prerun(task_id, task or sender)
        except Exception as exc:  # noqa: BLE001 - metrics must never fail a task
            _record_failed(recorder, "prerun", exc)


@task_postrun.connect(weak=False)
def _on_postrun(sender: Any = None, task_id: str = "", task: Any = None,
                state: str | None = None, **_: Any) -> None:
    recorder = _recorder
    if recorder is not None:
        try:
            recorder.on_postrun(task_id, task or sender, state)
        except Exception as exc:  # noqa: BLE001 - metrics must never fail a task
            _record_failed(recorder, "postrun", exc)


#: task_failure signals counted by this thread, and whether counting is paused
#: in it (see tasker.metrics.request: one failure per execution). Per thread:
#: a thread pool's other threads fail their own tasks meanwhile.
_failures = threading.local()


def failures_counted() -> int:
    """How many ``task_failure`` signals this thread has counted."""
    return getattr(_failures, "counted", 0)


@contextmanager
def failures_not_counted() -> Iterator[None]:
    """``task_failure`` signals sent inside (in this thread) are not counted."""
    _failures.paused = True
    try:
        yield
    finally:
        _failures.paused = False


@task_failure.connect(weak=False)
@_guarded("failure")
def _on_failure(recorder: Recorder, sender: Any = None,
                exception: BaseException | None = None, **_: Any) -> None:
    if getattr(_failures, "paused", False):
        return
    _failures.counted = getattr(_failures, "counted", 0) + 1
    recorder.on_failure(sender, exception)


@task_retry.connect(weak=False)
@_guarded("retry")
def _on_retry(recorder: Recorder, sender: Any = None, request: Any = None, **_: Any) -> None:
    recorder.on_retry(sender, request)


@task_revoked.connect(weak=False)
@_guarded("revoked")
def _on_revoked(recorder: Recorder, sender: Any = None, request: Any = None, **_: Any) -> None:
    recorder.on_revoked(sender, request)


@task_rejected.connect(weak=False)
@_guarded("rejected")
def _on_rejected(recorder: Recorder, sender: Any = None, message: Any = None,
                 exc: BaseException | None = None, **_: Any) -> None:
    recorder.on_rejected("invalid_message" if exc is not None else "unknown_message")


@task_unknown.connect(weak=False)
@_guarded("unknown")
def _on_unknown(recorder: Recorder, sender: Any = None, **_: Any) -> None:
    recorder.on_rejected("unknown_task")
