"""One worker node's view of itself: node-level gauges and the JSON snapshot.

The MainProcess computes these at scrape time from state it already has (the
pool, Celery's request sets, the shared node statistics, the merged metric
files), so they cost nothing per task.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import psutil
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from tasker.metrics import identity, protobuf
from tasker.metrics.definitions import TaskMetrics
from tasker.metrics.node_state import NodeState
from tasker.metrics.store import MetricStore, StoreReading
from tasker.metrics.trackers import format_uptime, percent, runs_per_hour
from tasker.registry import HandlerRegistry

__all__ = ["Node", "WorkerView", "PROC_MARKER", "EXIT_MARKER", "exit_reason"]

logger = logging.getLogger("tasker.metrics")

#: ``proc_<identity>``: created by each pool process when it starts.
PROC_MARKER = "proc_"
#: ``exit_<identity>``: its exit code, written by a pool process that exits normally.
EXIT_MARKER = "exit_"
#: billiard's exit code for a process that reached ``--max-tasks-per-child``.
_EX_RECYCLE = 0x9B


def exit_reason(exitcode: int | None) -> str:
    """``recycled`` for a clean exit, ``error`` for a failing one, ``lost`` when killed."""
    if exitcode is None:
        return "lost"  # no exit marker: SIGKILL, OOM, hard time limit
    return "recycled" if exitcode in (0, _EX_RECYCLE) else "error"


@dataclass
class WorkerView:
    """What the node needs from Celery's WorkController, as plain callables.

    Kept separate so that tests can build a node without a running worker.
    """

    pool_name: str = "prefork"
    concurrency: int = 1
    pool_pids: Callable[[], list[int]] = lambda: []
    reserved: Callable[[], int | None] = lambda: None
    scheduled: Callable[[], int | None] = lambda: None
    broker_connected: Callable[[], bool] = lambda: True


class Node:
    """Everything the MainProcess reports about its node."""

    def __init__(self, hostname: str, directory: str, metrics: TaskMetrics, state: NodeState,
                 handlers: HandlerRegistry, worker: WorkerView, version: str,
                 started: float | None = None,
                 fleet: Any = None,
                 before_reading: Callable[[], None] = lambda: None) -> None:
        self.hostname = hostname
        self.directory = directory
        self.metrics = metrics
        self.state = state
        self.handlers = handlers
        self.worker = worker
        self.version = version
        self.started = started if started is not None else time.time()
        self.store = MetricStore(directory)
        self.fleet = fleet
        #: Called before the metric files are read: counts kept in memory are
        #: written to them (the MainProcess's received count, see Recorder).
        self.before_reading = before_reading
        self.main_pid = os.getpid()
        self._sweep_lock = threading.Lock()
        # Exited processes whose markers could not be deleted (an unwritable
        # directory): counted once, not again at every sweep.
        self._counted: set[str] = set()

    # -- housekeeping (MainProcess, about once a second) -------------------

    def sweep(self) -> None:
        """Count exited pool processes and fold their metric files away."""
        self.before_reading()
        with self._sweep_lock:
            self._count_exits()
            self.store.compact()

    def _count_exits(self) -> None:
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        for name in names:
            if not name.startswith(PROC_MARKER):
                continue
            owner = name[len(PROC_MARKER):]
            if owner in self._counted or identity.is_alive(owner):
                continue
            exit_path = os.path.join(self.directory, EXIT_MARKER + owner)
            try:
                with open(exit_path) as f:
                    exitcode: int | None = int(f.read().strip() or 0)
            except (OSError, ValueError):
                exitcode = None
            reason = exit_reason(exitcode)
            self.metrics.process_exits.labels(self.hostname, reason).inc()
            if reason != "recycled":
                logger.warning("worker.process_exit", extra={
                    "worker": self.hostname, "reason": reason, "pool_process": owner,
                    "exitcode": exitcode})
            for path in (os.path.join(self.directory, name), exit_path):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    self._counted.add(owner)
                    logger.debug("metrics.marker_delete_failed",
                                 extra={"path": path, "reason": str(exc)})

    # -- readings ------------------------------------------------------------

    def read(self) -> tuple[StoreReading, dict[str, Any]]:
        """The merged metric files plus the node-level values, read once."""
        self.before_reading()
        with self._sweep_lock:
            self._count_exits()
            reading = self.store.read()
        now = time.time()
        stats = self.state.read(now)
        pids = self.worker.pool_pids()
        processes = len(pids) if pids else 1
        # Busy processes: live processes whose tasks_active gauge is above 0.
        busy = reading.processes_where("tasker_worker_tasks_active", lambda v: v > 0)
        active = reading.sum_of("tasker_worker_tasks_active")
        values = {
            "now": now,
            "stats": stats,
            "pool_processes": processes,
            "busy_processes": busy,
            "tasks_active": int(active),
            "pool_utilization": min(1.0, busy / processes) if processes else None,
            "reserved": self.worker.reserved(),
            "scheduled": self.worker.scheduled(),
            "memory_bytes": self._memory_bytes(pids),
            "deployment_mode_score": deployment_mode_score(reading),
            "db_pool": db_pool_summary(reading),
        }
        return reading, values

    def _memory_bytes(self, pids: list[int]) -> int | None:
        total = 0
        for pid in {self.main_pid, *pids}:
            try:
                total += psutil.Process(pid).memory_info().rss
            except (psutil.Error, OSError):
                continue  # a process that just exited
        return total or None

    def families(self) -> list[Metric]:
        """Every metric family of ``/metrics``."""
        reading, v = self.read()
        return reading.families() + self._node_families(v) + self._fleet_families()

    def protobuf(self) -> bytes:
        """``/metrics`` in Prometheus' protobuf format: the same families, native
        histograms attached to the classic ones (see :mod:`tasker.metrics.protobuf`)."""
        reading, v = self.read()
        families = reading.families() + self._node_families(v) + self._fleet_families()
        return protobuf.encode(families, reading.native_histograms())

    def _fleet_families(self) -> list[Metric]:
        return self.fleet.families() if self.fleet is not None else []

    def _node_families(self, v: dict[str, Any]) -> list[Metric]:
        w = [self.hostname]
        stats = v["stats"]

        def gauge(name: str, doc: str, value: float | None, labels: list[str] | None = None,
                  label_values: list[str] | None = None) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels or ["worker"])
            if value is not None:
                family.add_metric(label_values or w, value)
            return family

        info = GaugeMetricFamily("tasker_worker_info", "Worker node facts (always 1).",
                                 labels=["worker", "version", "pool", "concurrency"])
        info.add_metric([self.hostname, self.version, self.worker.pool_name,
                         str(self.worker.concurrency)], 1.0)
        handlers = GaugeMetricFamily("tasker_worker_handlers", "Registered handlers.",
                                     labels=["worker", "namespace"])
        for namespace, count in self.handlers.counts().items():
            handlers.add_metric([self.hostname, namespace], count)
        return [
            info,
            gauge("tasker_worker_start_time_seconds", "Unix time the node started.",
                  self.started),
            gauge("tasker_worker_tasks_reserved", "Tasks prefetched, not started.",
                  v["reserved"]),
            gauge("tasker_worker_tasks_scheduled", "Tasks held for an ETA or countdown.",
                  v["scheduled"]),
            gauge("tasker_worker_pool_processes", "Pool processes now.", v["pool_processes"]),
            gauge("tasker_worker_pool_busy_processes", "Pool processes executing a task.",
                  v["busy_processes"]),
            gauge("tasker_worker_pool_utilization", "Busy pool processes / pool processes.",
                  v["pool_utilization"]),
            gauge("tasker_worker_processing_rate",
                  "Tasks finished per second over the last TASKER_RATE_WINDOW seconds.",
                  stats.processing_rate),
            gauge("tasker_worker_latency_ema_seconds",
                  "Exponential moving average of task runtime (alpha TASKER_EMA_ALPHA).",
                  stats.latency_ema_seconds),
            handlers,
            gauge("tasker_worker_memory_bytes", "Resident memory of the node's processes.",
                  v["memory_bytes"]),
            gauge("tasker_worker_deployment_mode_score",
                  "Executions delivered by the event path / (event + polling recovery).",
                  v["deployment_mode_score"]),
            gauge("tasker_db_pool_utilization",
                  "(size - available) / max of the node's database pools, 0..1.",
                  (v["db_pool"] or {}).get("utilization")),
        ]

    def snapshot(self) -> dict[str, Any]:
        """The node's ``/metrics.json`` document (SPEC §6)."""
        reading, v = self.read()
        stats = v["stats"]
        now = v["now"]
        succeeded = reading.sum_of("tasker_tasks_succeeded_total")
        failed = reading.sum_of("tasker_tasks_failed_total")
        retried = reading.sum_of("tasker_tasks_retried_total")
        total = succeeded + failed
        uptime = max(0.0, now - self.started)
        return {
            "worker": self.hostname,
            "timestamp": _iso(now),
            "worker_start_time": _iso(self.started),
            "uptime_seconds": int(uptime),
            "uptime": format_uptime(uptime),
            "total_runs": int(total),
            "succeeded": int(succeeded),
            "failed": int(failed),
            "retried": int(retried),
            "success_rate": percent(succeeded, total),
            "error_rate": percent(failed, total),
            "runs_per_hour": runs_per_hour(total, uptime),
            "processing_rate": round(stats.processing_rate, 3),
            "average_latency_ms": _ms(stats.latency_ema_seconds),
            "avg_execution_ms": _ms(stats.average_seconds),
            "min_execution_ms": _ms(stats.min_seconds),
            "max_execution_ms": _ms(stats.max_seconds),
            "last_run_time": _iso(stats.last_run_time) if stats.last_run_time else None,
            "handler_count": len(self.handlers),
            "handlers": self.handlers.counts(),
            "active_processors": v["busy_processes"],
            "tasks_active": v["tasks_active"],
            "tasks_reserved": v["reserved"],
            "tasks_scheduled": v["scheduled"],
            "pool_processes": v["pool_processes"],
            "pool_utilization": _round(v["pool_utilization"], 4),
            "deployment_mode_score": _round(v["deployment_mode_score"], 4),
            "memory_bytes": v["memory_bytes"],
            "db_pool": v["db_pool"],
            "queues": self.fleet.queues_summary() if self.fleet is not None else {},
        }


def deployment_mode_score(reading: StoreReading) -> float:
    """Event-driven executions / (event + polling recovery); 1 before any."""
    by_path = reading.by_label("tasker_step_executions_total", "path")
    event, poll = by_path.get("event", 0.0), by_path.get("poll", 0.0)
    return event / (event + poll) if event + poll else 1.0


def db_pool_summary(reading: StoreReading) -> dict[str, Any] | None:
    """The node's database pools summed over live processes; None before any opened one."""
    names = {"size": "tasker_db_pool_size", "available": "tasker_db_pool_available",
             "max": "tasker_db_pool_max", "requests_waiting": "tasker_db_pool_requests_waiting"}
    if not any(s.sample == names["max"] for s in reading.series):
        return None
    summary: dict[str, Any] = {key: int(reading.sum_of(sample)) for key, sample in names.items()}
    summary["utilization"] = pool_utilization(summary["size"], summary["available"],
                                              summary["max"])
    return summary


def pool_utilization(size: float, available: float, maximum: float) -> float | None:
    """(size − available) / max, 0..1; None when no pool is configured."""
    if maximum <= 0:
        return None
    return round(min(1.0, max(0.0, (size - available) / maximum)), 4)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
