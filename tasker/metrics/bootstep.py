"""Starts and stops a worker node's metrics: serving and housekeeping.

``TaskerMetricsStep`` is a worker bootstep. When the worker is built (before
its pool forks) it claims the node's multiprocess directory, switches
prometheus_client to multiprocess mode and activates recording; when the
worker starts it serves ``/metrics`` from the MainProcess and runs a
housekeeping thread (exits of pool processes, compaction, the periodic
``worker.metrics_report`` line). Its ``info()`` puts the node snapshot under
``tasker`` in ``celery inspect stats``, which is what Flower shows.

The pieces it assembles each live in a module of their own: the metric files
(:mod:`tasker.metrics.mmap_files`), the worker as the node sees it
(:mod:`tasker.metrics.worker_view`), queue labels
(:mod:`tasker.metrics.queue_names`), zero-valued series
(:mod:`tasker.metrics.zero_series`) and the pool processes' signals
(:mod:`tasker.metrics.pool_processes`).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from celery import bootsteps

from tasker import db
from tasker.metrics import recording
from tasker.metrics.db_pool import PoolMetrics
from tasker.metrics.definitions import create_metrics
from tasker.metrics.directory import NodeDirectory, prepare_directory
from tasker.metrics.mmap_files import _use_multiprocess_values
from tasker.metrics.node import Node
from tasker.metrics.node_state import FILE_NAME as NODE_STATE_FILE
from tasker.metrics.node_state import NodeState
from tasker.metrics.queue_names import queue_resolver
from tasker.metrics.server import MetricsServer, MetricsServerError
from tasker.metrics.worker_view import most_pool_processes, worker_view
from tasker.metrics.zero_series import create_zero_series
from tasker.registry import registry
from tasker.sampler.export import FleetExport
from tasker.settings import Settings, get_settings

__all__ = ["TaskerMetricsStep", "node_of", "HOUSEKEEPING_INTERVAL", "NODE_ATTRIBUTE"]

logger = logging.getLogger("tasker.metrics")

#: Seconds between sweeps for exited pool processes (bounds the file count).
HOUSEKEEPING_INTERVAL = 1.0

#: The worker attribute that holds the node's :class:`Node` while the step runs.
NODE_ATTRIBUTE = "tasker_node"


def node_of(worker: Any) -> Node | None:
    """The node of a WorkController (``consumer.controller``), None before or after its step."""
    return getattr(worker, NODE_ATTRIBUTE, None)


class TaskerMetricsStep(bootsteps.StartStopStep):
    """Metrics for one worker node (MainProcess side)."""

    label = "tasker metrics"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.settings: Settings = get_settings()
        self.server: MetricsServer | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.directory: NodeDirectory = prepare_directory(self.settings.multiproc_dir)
        # Celery does not call a step's shutdown() on every way out (a warm
        # SIGTERM shutdown skips it), so the directory is also released at
        # exit; pool processes leave through os._exit and never run this.
        atexit.register(self.directory.release)
        _use_multiprocess_values(self.directory.path)

        s = self.settings
        started = time.time()
        metrics = create_metrics(s.histogram_buckets)
        state = NodeState.create(os.path.join(self.directory.path, NODE_STATE_FILE),
                                 s.rate_window, s.ema_alpha, started,
                                 pool_processes=most_pool_processes(worker))
        hostname = worker.hostname
        app = worker.app
        recorder = recording.Recorder(
            metrics, state, hostname, known_tasks=lambda: app.tasks,
            queue_names=queue_resolver(app), directory=self.directory.path,
            native_schema=s.native_schema if s.native_histograms else None,
            # Pool processes that stop recording because they cannot write their
            # files are counted here, outside the directory (see recording.py).
            stopped_processes=recording.SharedCount())
        recording.activate(recorder)
        create_zero_series(recorder, app)
        self.node = Node(hostname, self.directory.path, metrics, state, registry,
                         worker_view(worker), _version(), started=started,
                         fleet=FleetExport(self.directory.path, s.sample_interval),
                         before_reading=recorder.flush_received)
        self._stopped_seen = 0
        # Created now so that counting it later never needs space in the file.
        self._stopped_errors = recorder.child(metrics.metrics_errors, recording.DIRECTORY_STAGE)
        self.recorder = recorder
        # Pool processes inherit the observer through fork (see db.py).
        db.set_observer(PoolMetrics(recorder, s.db_pool_max))
        # Read by the FlowerRows consumer step (tasker.flower_rows).
        setattr(worker, NODE_ATTRIBUTE, self.node)

    def start(self, worker: Any) -> None:
        s = self.settings
        self.server = MetricsServer(s.metrics_bind, s.metrics_port, self.node.families,
                                    self.node.snapshot, self._health, s.metrics_token,
                                    protobuf=self.node.protobuf)
        try:
            self.server.start()
            logger.info("metrics.serving", extra={
                "worker": self.node.hostname, "bind": s.metrics_bind, "port": self.server.port,
                "url": f"http://{s.metrics_bind}:{self.server.port}/metrics",
                "directory": self.directory.path})
        except MetricsServerError as exc:
            # The node still processes tasks; only the endpoint is missing.
            logger.error("metrics.server_failed", extra={"reason": str(exc)})
            print(f"tasker: {exc}", file=sys.stderr)
            self.server = None
        self._thread = threading.Thread(target=self._housekeeping, name="tasker-housekeeping",
                                        daemon=True)
        self._thread.start()

    def _health(self) -> tuple[bool, str]:
        if self.node.worker.broker_connected():
            return True, "connected to the broker"
        return False, "not connected to the broker; reconnecting"

    def _housekeeping(self) -> None:
        interval = self.settings.metrics_interval
        next_report = time.monotonic() + interval if interval else None
        while not self._stop.wait(HOUSEKEEPING_INTERVAL):
            try:
                self._count_stopped_processes()
                self.node.sweep()
                if next_report is not None and time.monotonic() >= next_report:
                    next_report += interval
                    self._report()
            except Exception:  # noqa: BLE001 - keep the thread alive
                logger.exception("metrics.housekeeping_failed")

    def _count_stopped_processes(self) -> None:
        # Those pool processes cannot count themselves (their files are what
        # failed); the MainProcess's own file already holds the series.
        stopped = self.recorder.stopped_processes
        seen = stopped.value if stopped is not None else 0
        if seen > self._stopped_seen:
            self._stopped_errors.inc(seen - self._stopped_seen)
            self._stopped_seen = seen

    def _report(self) -> None:
        snap = self.node.snapshot()
        keys = ("worker", "uptime", "total_runs", "succeeded", "failed", "retried",
                "success_rate", "processing_rate", "average_latency_ms", "active_processors",
                "pool_processes", "pool_utilization", "handler_count")
        logger.info("worker.metrics_report", extra={k: snap.get(k) for k in keys})

    def info(self, worker: Any) -> dict[str, Any]:
        try:
            snapshot = self.node.snapshot()
            snapshot["metrics_port"] = self.server.port if self.server else None
            return {"tasker": snapshot}
        except Exception as exc:  # noqa: BLE001 - inspect stats must still answer
            logger.exception("metrics.snapshot_failed")
            return {"tasker": {"error": str(exc)}}

    def stop(self, worker: Any) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.stop()
            self.server = None

    def shutdown(self, worker: Any) -> None:
        self.stop(worker)
        recording.deactivate()
        setattr(worker, NODE_ATTRIBUTE, None)
        self.directory.release()


def _version() -> str:
    try:
        return version("tasker")
    except PackageNotFoundError:
        return "0+unknown"
