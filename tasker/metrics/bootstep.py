"""Wires metrics into a Celery worker node.

``TaskerMetricsStep`` is a worker bootstep. When the worker is built (before
its pool forks) it claims the node's multiprocess directory, switches
prometheus_client to multiprocess mode and activates recording; when the
worker starts it serves ``/metrics`` from the MainProcess and runs a
housekeeping thread (exits of pool processes, compaction, the periodic
``worker.metrics_report`` line). Its ``info()`` puts the node snapshot under
``tasker`` in ``celery inspect stats``, which is what Flower shows.
"""

from __future__ import annotations

import atexit
import logging
import mmap
import os
import sys
import threading
import time
from typing import Any

from celery import bootsteps
from celery.signals import worker_process_init, worker_process_shutdown
from prometheus_client.mmap_dict import MmapedDict

from tasker import db
from tasker.broker_health import CONNECTED_ATTRIBUTE
from tasker.metrics import identity, recording
from tasker.metrics.db_pool import PoolMetrics
from tasker.metrics.directory import NodeDirectory, prepare_directory
from tasker.metrics.node import EXIT_MARKER, PROC_MARKER, Node, WorkerView
from tasker.metrics.node_state import FILE_NAME as NODE_STATE_FILE
from tasker.metrics.node_state import NodeState
from tasker.metrics.server import MetricsServer, MetricsServerError
from tasker.metrics.values import multiprocess_value_class
from tasker.settings import Settings, get_settings

__all__ = ["TaskerMetricsStep", "DecodeErrorCounter", "current_node", "HOUSEKEEPING_INTERVAL"]

logger = logging.getLogger("tasker.metrics")

#: Seconds between sweeps for exited pool processes (bounds the file count).
HOUSEKEEPING_INTERVAL = 1.0

_node: Node | None = None


def current_node() -> Node | None:
    """The node of this worker's MainProcess (None in pool processes and tools)."""
    return _node if _node is not None and _node.main_pid == os.getpid() else None


def _use_multiprocess_values(directory: str) -> None:
    """Point prometheus_client at the node's directory, with pid-reuse-safe names."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from prometheus_client import values

    values.ValueClass = multiprocess_value_class(identity.process_identifier,
                                                 AllocatedMmapedDict)


class AllocatedMmapedDict(MmapedDict):
    """prometheus_client's ``MmapedDict`` with the pages it writes allocated before use.

    prometheus_client sizes its files with ``truncate()``, which leaves them
    sparse. On a full file system (a size-limited tmpfs, the usual home of
    the directory) the first write into an unallocated page of the map then
    kills the process with SIGBUS: a pool process, or the MainProcess and so
    the whole node. ``posix_fallocate`` first turns that into ``OSError``
    (ENOSPC) when a file is opened or an entry added, which the callers
    handle. Only the pages up to the end of the last entry are allocated (a
    file's header page first, then page by page as entries are added), never
    the whole mapped capacity: on a tmpfs every allocated page is memory.
    """

    def __init__(self, filename: str, read_mode: bool = False) -> None:
        if not read_mode:
            fd = os.open(filename, os.O_RDWR | os.O_CREAT, 0o666)
            size = 0
            try:
                size = os.fstat(fd).st_size
                os.posix_fallocate(fd, 0, _PAGE)  # the header's page
            except OSError:
                if size == 0:  # created just now: leave no empty file behind
                    os.unlink(filename)
                raise
            finally:
                os.close(fd)
        super().__init__(filename, read_mode)

    def _init_value(self, key: str) -> None:
        # The entry's size as MmapedDict._init_value computes it.
        length = len(key.encode("utf-8"))
        needed = self._used + 4 + length + (8 - (length + 4) % 8) + 16
        os.posix_fallocate(self._f.fileno(), 0, -(-needed // _PAGE) * _PAGE)
        super()._init_value(key)


#: Allocation unit of the metric files (a tmpfs charges whole pages).
_PAGE = mmap.PAGESIZE


def _most_pool_processes(worker: Any) -> int:
    """The node's concurrency, or the autoscaler's maximum if that is higher."""
    # Celery's Pool component sets max_concurrency (None without --autoscale).
    return max(int(worker.concurrency or 1), int(getattr(worker, "max_concurrency", 0) or 0))


def _worker_view(worker: Any) -> WorkerView:
    from celery.worker import state as worker_state

    def pool_pids() -> list[int]:
        pool = getattr(worker, "pool", None)
        try:
            return [int(p) for p in (pool.info.get("processes") or [])] if pool else []
        except Exception:  # noqa: BLE001 - the pool may be restarting
            return []

    def reserved() -> int:
        active = set(worker_state.active_requests)
        return sum(1 for r in list(worker_state.reserved_requests) if r not in active)

    def scheduled() -> int | None:
        timer = getattr(getattr(worker, "consumer", None), "timer", None)
        if timer is None:
            return None
        from celery.worker.request import Request

        count = 0
        for waiting in list(timer.queue):
            args = getattr(getattr(waiting, "entry", None), "args", None) or ()
            if args and isinstance(args[0], Request):
                count += 1
        return count

    def broker_connected() -> bool:
        # Kept up to date by the BrokerConnected consumer step (tasker.broker_health).
        consumer = getattr(worker, "consumer", None)
        return bool(getattr(consumer, CONNECTED_ATTRIBUTE, False))

    pool_cls = getattr(worker, "pool_cls", "prefork")
    pool_name = getattr(pool_cls, "__module__", str(pool_cls)).rsplit(".", 1)[-1]
    return WorkerView(pool_name=pool_name, concurrency=int(worker.concurrency or 1),
                      pool_pids=pool_pids, reserved=reserved, scheduled=scheduled,
                      broker_connected=broker_connected)


#: Queue label of a message whose (exchange, routing key) matches no queue this node
#: declares. A producer can put any routing key in a message, so the key itself is
#: never used as a label: label values must stay bounded, in every process alike.
UNMATCHED_QUEUE = "other"


def _queue_resolver(app: Any) -> Any:
    """(exchange, routing key) -> the queue name a message was routed to."""
    cache: dict[tuple[str | None, str | None], str] = {}

    def resolve(exchange: str | None, routing_key: str | None) -> str:
        key = (exchange, routing_key)
        found = cache.get(key)
        if found is None:
            found = UNMATCHED_QUEUE
            for queue in app.amqp.queues.values():
                if queue.routing_key == routing_key and (
                        not exchange or queue.exchange is None or queue.exchange.name == exchange):
                    found = queue.name
                    break
            if len(cache) < 1000:  # routing keys are few; never grow without bound
                cache[key] = found
        return found

    return resolve


class TaskerMetricsStep(bootsteps.StartStopStep):
    """Metrics for one worker node (MainProcess side)."""

    label = "tasker metrics"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        global _node
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

        from tasker.metrics.definitions import create_metrics
        from tasker.registry import registry

        started = time.time()
        metrics = create_metrics(self.settings.histogram_buckets)
        state = NodeState.create(os.path.join(self.directory.path, NODE_STATE_FILE),
                                 self.settings.rate_window, self.settings.ema_alpha, started,
                                 pool_processes=_most_pool_processes(worker))
        hostname = worker.hostname
        app = worker.app
        _node = Node(hostname, self.directory.path, metrics, state, registry,
                     WorkerView(), _version(), started=started,
                     fleet=_fleet_view(self.settings, self.directory.path))
        recorder = recording.Recorder(
            metrics, state, hostname, known_tasks=lambda: app.tasks,
            queue_names=_queue_resolver(app), directory=self.directory.path,
            native_schema=self.settings.native_schema if self.settings.native_histograms
            else None)
        recording.activate(recorder)
        _node.before_reading = recorder.flush_received
        _create_zero_series(recorder, app)
        # Pool processes that stop recording because they cannot write their
        # files are counted here, outside the directory (see recording.py).
        recorder.stopped_processes = recording.SharedCount()
        self._stopped_seen = 0
        # Created now so that counting it later never needs space in the file.
        self._stopped_errors = recorder.child(metrics.metrics_errors, recording.DIRECTORY_STAGE)
        self.recorder = recorder
        # Pool processes inherit the observer through fork (see db.py).
        db.set_observer(PoolMetrics(recorder, self.settings.db_pool_max))
        self.node = _node

    def start(self, worker: Any) -> None:
        self.node.worker = _worker_view(worker)
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
        global _node
        self.stop(worker)
        recording.deactivate()
        _node = None
        self.directory.release()


def _create_zero_series(recorder: recording.Recorder, app: Any) -> None:
    """Export every task's counters at 0 before its first run.

    Prometheus' ``rate()`` only sees increases between two scrapes, so a
    series that appears at 1 hides its first runs. Created here, before the
    pool forks, the values are also written into every pool process's file.
    """
    queues = sorted(getattr(app.amqp.queues, "consume_from", None) or app.amqp.queues)
    m = recorder.metrics
    for name in sorted(app.tasks):
        if name.startswith("celery."):
            continue
        for queue in queues:
            for metric in (m.received, m.started, m.succeeded, m.retried):
                recorder.child(metric, name, queue)


class DecodeErrorCounter(bootsteps.Step):
    """Consumer step: counts messages whose body cannot be decoded.

    Celery has no signal for them: its consumer logs, acknowledges and drops
    the message in ``on_decode_error``. This step wraps that method before the
    task consumer is created (which binds it), so the message is still handled
    exactly as Celery does, and ``tasker_tasks_rejected_total{reason="decode_error"}``
    counts it.
    """

    label = "tasker decode errors"

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        original = c.on_decode_error

        def on_decode_error(message: Any, exc: BaseException) -> Any:
            recorder = recording.current()
            if recorder is not None:
                try:
                    recorder.on_rejected("decode_error")
                except Exception:  # noqa: BLE001 - never in the way of Celery's handling
                    pass
            return original(message, exc)

        c.on_decode_error = on_decode_error


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tasker")
    except PackageNotFoundError:
        return "0+unknown"


def _fleet_view(settings: Settings, directory: str) -> Any:
    from tasker.sampler.export import FleetExport

    return FleetExport(directory, settings.sample_interval)


# -- pool processes ----------------------------------------------------------

@worker_process_init.connect(weak=False)
def _pool_process_started(**_: Any) -> None:
    recorder = recording.current()
    if recorder is None:
        return
    try:
        # The first metric write after the fork: prometheus_client creates
        # this process's files in the node's directory here.
        recorder.child(recorder.metrics.tasks_active, recorder.worker).set(0)
    except OSError as exc:  # the directory is unwritable or full
        recording.stop_recording(recorder, exc)
        return
    except Exception:  # noqa: BLE001 - metrics must never stop a process from starting
        logger.exception("metrics.process_init_failed")
    try:
        # The marker tells the MainProcess this process existed, so that its
        # exit is counted even if it dies before a scrape ever saw it.
        with open(os.path.join(recorder.directory, PROC_MARKER + identity.process_identifier()),
                  "w"):
            pass
        observer = db.current_observer()
        if isinstance(observer, PoolMetrics):
            observer.process_started()
    except OSError as exc:  # the directory broke since the files were made
        recording.stop_recording(recorder, exc)
    except Exception:  # noqa: BLE001 - metrics must never stop a process from starting
        logger.exception("metrics.process_init_failed")


@worker_process_shutdown.connect(weak=False)
def _pool_process_exiting(exitcode: int | None = None, **_: Any) -> None:
    recorder = recording.current()
    if recorder is None:
        return
    try:
        path = os.path.join(recorder.directory, EXIT_MARKER + identity.process_identifier())
        with open(path, "w") as f:
            f.write(str(exitcode if exitcode is not None else 0))
    except OSError:
        pass  # the directory is gone: the node is shutting down
