"""Every metric that a worker process records, defined once, here.

Name, help, labels and multiprocess mode sit side by side. The objects are
created by :func:`create_metrics` when a worker node activates metrics (after
it has chosen its multiprocess directory), never at import time: the
multiprocess mode of prometheus_client is fixed when a value is created.

Node-level gauges that the MainProcess computes at scrape time (pool size,
processing rate, latency EMA, memory...) are not here but in
:mod:`tasker.metrics.node`, and fleet samples in :mod:`tasker.sampler.export`.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, fields

from prometheus_client import Counter, Gauge, Histogram

from tasker.contracts.prometheus import renew_label_lock

__all__ = ["TaskMetrics", "create_metrics", "DEFAULT_BUCKETS", "RUNTIME_BUCKETS", "WAIT_BUCKETS",
           "LIVE_GAUGE_MODES", "NATIVE_HISTOGRAMS"]

def _r10(first: int, last: int) -> tuple[float, ...]:
    """Bounds 10**(k/10) for k in first..last, to 4 significant digits (1.259x apart)."""
    return tuple(float(f"{10 ** (k / 10):.4g}") for k in range(first, last + 1))


#: Seconds. Ten buckets per decade (neighbours 1.259x apart) from 1 ms to 63 s:
#: ``histogram_quantile`` interpolates inside one bucket, so for any runtime in
#: that range its p50 is off by at most 13 % and its p95 by at most 24.6 %
#: (the old layout jumped from 50 to 100 ms: a 51 ms task read as 75 ms).
#: Below 1 ms three coarse buckets, above 63 s a coarse tail to an hour.
#: ``TASKER_HISTOGRAM_BUCKETS`` replaces them; native histograms (served to a
#: Prometheus that asks for protobuf) need no layout at all.
DEFAULT_BUCKETS = (0.0001, 0.00025, 0.0005, *_r10(-30, 18), 120.0, 300.0, 600.0, 1800.0,
                   3600.0)
#: Kept for readers of older code: both histograms use DEFAULT_BUCKETS now.
RUNTIME_BUCKETS = WAIT_BUCKETS = DEFAULT_BUCKETS
#: Seconds a caller waited for a pooled database connection.
POOL_WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                     1.0, 2.5, 5.0, 10.0, 30.0)

#: Gauges a process writes must vanish when it dies, so only "live" modes are allowed.
LIVE_GAUGE_MODES = frozenset({"livesum", "liveall", "livemax", "livemin"})


@dataclass(frozen=True)
class TaskMetrics:
    """The metric objects of one process (shared by the MainProcess and its children)."""

    received: Counter
    started: Counter
    succeeded: Counter
    failed: Counter
    retried: Counter
    revoked: Counter
    rejected: Counter
    runtime: Histogram
    queue_wait: Histogram
    tasks_active: Gauge
    process_exits: Counter
    metrics_errors: Counter
    db_pool_size: Gauge
    db_pool_available: Gauge
    db_pool_max: Gauge
    db_pool_waiting: Gauge
    db_pool_wait: Histogram
    db_pool_errors: Counter
    sample_skipped: Counter
    workflow_requests: Counter
    steps_dispatched: Counter
    step_executions: Counter
    workflow_duration: Histogram
    workflow_initialization: Histogram
    workflow_finalization: Histogram
    schedule_last_start: Gauge
    schedule_period: Gauge
    schedule_lateness: Histogram
    schedule_missed: Counter


#: Fields of TaskMetrics whose histograms are also recorded as native
#: histograms, with their label names (see tasker.metrics.native_series).
NATIVE_HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "runtime": ("task", "queue"), "queue_wait": ("task", "queue"),
    "workflow_duration": ("workflow",), "workflow_initialization": ("workflow",),
    "workflow_finalization": ("workflow",)}


def create_metrics(buckets: tuple[float, ...] | None = None) -> TaskMetrics:
    """Create the metric objects (unregistered: the node store reads their files).

    Args:
        buckets: classic bucket bounds of the runtime, queue-wait and workflow
            histograms (default :data:`DEFAULT_BUCKETS`).
    """
    metrics = _create_metrics(buckets or DEFAULT_BUCKETS)
    _renew_label_locks_after_fork(metrics)
    return metrics


def _renew_label_locks_after_fork(metrics: TaskMetrics) -> None:
    """Give a forked pool process fresh locks for its ``labels()`` calls.

    prometheus_client guards each labelled metric's table of children with a
    ``threading.Lock`` (its private ``_lock``: :mod:`tasker.contracts.prometheus`).
    The MainProcess's other threads create children too (exit counts, error
    counts), and billiard may fork a pool process at that very moment: the
    child's copy of the lock would stay taken for good and its first
    ``labels()`` on that metric would hang. The table
    itself is a dict, consistent between bytecodes.
    """
    ref = weakref.ref(metrics)

    def renew() -> None:
        found = ref()
        for field in fields(TaskMetrics) if found is not None else ():
            renew_label_lock(getattr(found, field.name))

    os.register_at_fork(after_in_child=renew)


def _create_metrics(buckets: tuple[float, ...]) -> TaskMetrics:
    task_labels = ("task", "queue")
    return TaskMetrics(
        # Recorded in the MainProcess, at receipt (tasker.receipt).
        received=Counter("tasker_tasks_received", "Messages this node accepted.",
                         task_labels, registry=None),
        # Recorded in the pool process that runs the task (task_prerun...).
        started=Counter("tasker_tasks_started", "Task executions started.",
                        task_labels, registry=None),
        succeeded=Counter("tasker_tasks_succeeded", "Task executions that succeeded.",
                          task_labels, registry=None),
        # Pool process for ordinary exceptions; MainProcess for time limits,
        # lost processes and Reject(requeue=False).
        failed=Counter("tasker_tasks_failed",
                       "Task executions that raised, hit a time limit or lost their process.",
                       (*task_labels, "exception"), registry=None),
        retried=Counter("tasker_tasks_retried", "Task executions that asked to be retried.",
                        task_labels, registry=None),
        revoked=Counter("tasker_tasks_revoked", "Tasks revoked before or while running.",
                        task_labels, registry=None),
        rejected=Counter("tasker_tasks_rejected", "Messages rejected: unknown task, bad body...",
                         ("reason",), registry=None),
        runtime=Histogram("tasker_task_runtime_seconds",
                          "Task runtime from start to finish, every outcome.",
                          task_labels, buckets=buckets, registry=None),
        queue_wait=Histogram("tasker_task_queue_wait_seconds",
                             "Seconds from publish (or ETA) to start.",
                             task_labels, buckets=buckets, registry=None),
        # livesum: a process that dies stops counting at once.
        tasks_active=Gauge("tasker_worker_tasks_active", "Tasks executing now.",
                           ("worker",), multiprocess_mode="livesum", registry=None),
        # Recorded by the MainProcess when it notices a pool process is gone.
        process_exits=Counter("tasker_worker_process_exits",
                              "Pool process exits: recycled, lost (signal, OOM) or error.",
                              ("worker", "reason"), registry=None),
        metrics_errors=Counter("tasker_metrics_errors",
                               "Failures inside tasker's own recording (the task went on).",
                               ("stage",), registry=None),
        db_pool_size=Gauge("tasker_db_pool_size", "Connections the node's pools hold.",
                           ("worker",), multiprocess_mode="livesum", registry=None),
        db_pool_available=Gauge("tasker_db_pool_available", "Idle pooled connections.",
                                ("worker",), multiprocess_mode="livesum", registry=None),
        db_pool_max=Gauge("tasker_db_pool_max", "Configured pool maximum, summed over processes.",
                          ("worker",), multiprocess_mode="livesum", registry=None),
        db_pool_waiting=Gauge("tasker_db_pool_requests_waiting",
                              "Callers waiting for a pooled connection now.",
                              ("worker",), multiprocess_mode="livesum", registry=None),
        db_pool_wait=Histogram("tasker_db_pool_wait_seconds",
                               "Seconds callers waited for a pooled connection.",
                               ("worker",), buckets=POOL_WAIT_BUCKETS, registry=None),
        db_pool_errors=Counter("tasker_db_pool_errors", "Database pool errors by kind.",
                               ("worker", "kind"), registry=None),
        # Recorded by the fleet sampler task when a round would pile up.
        sample_skipped=Counter("tasker_sample_skipped",
                               "Fleet sample rounds skipped: overlap with a running one, or stale.",
                               ("reason",), registry=None),
        # Workflows (tasker.workflows.engine), recorded where the work happens.
        workflow_requests=Counter("tasker_workflow_requests",
                                  "Task requests by outcome: started, complete, error.",
                                  ("workflow", "outcome"), registry=None),
        steps_dispatched=Counter("tasker_workflow_steps_dispatched",
                                 "Steps published by the fleet: event (unblocked, retry) or "
                                 "poll (recovered).", ("workflow", "path"), registry=None),
        step_executions=Counter("tasker_step_executions",
                                "Step handler executions by the path that delivered them.",
                                ("workflow", "path"), registry=None),
        workflow_duration=Histogram("tasker_workflow_duration_seconds",
                                    "Task request end to end: recorded to finalized.",
                                    ("workflow",), buckets=buckets, registry=None),
        workflow_initialization=Histogram("tasker_workflow_initialization_seconds",
                                          "Submit: validate, record, dispatch the first steps.",
                                          ("workflow",), buckets=POOL_WAIT_BUCKETS,
                                          registry=None),
        workflow_finalization=Histogram("tasker_workflow_finalization_seconds",
                                        "Finalizing a task request in its last transaction.",
                                        ("workflow",), buckets=POOL_WAIT_BUCKETS,
                                        registry=None),
        # Beat entries (tasker.schedule_monitor), recorded by the process that
        # starts a stamped run. livemax: the latest start of the node's live
        # processes (a recycled process takes its value along; the alert
        # reads max_over_time). The MainProcess sets each configured period.
        schedule_last_start=Gauge("tasker_schedule_last_start_timestamp_seconds",
                                  "Unix time the beat entry's latest run started on this node.",
                                  ("entry",), multiprocess_mode="livemax", registry=None),
        schedule_period=Gauge("tasker_schedule_period_seconds",
                              "Seconds between two runs of the beat entry.",
                              ("entry",), multiprocess_mode="livemax", registry=None),
        schedule_lateness=Histogram("tasker_schedule_lateness_seconds",
                                    "Start of a beat entry's run minus the time it was due.",
                                    ("entry",), buckets=buckets, registry=None),
        schedule_missed=Counter("tasker_schedule_missed",
                                "Due runs of the beat entry not started within one period "
                                "(started later, or never), counted at the entry's next start.",
                                ("entry",), registry=None),
    )
