"""Database pool metrics of each pool process (``tasker_db_pool_*``).

Each process reports its own psycopg pool into ``livesum`` gauges, so the
node's values are the sums over live processes and a process that dies stops
counting at once. The gauges are refreshed when a connection is taken or given
back, and once a second by a small thread while the pool is open, so they stay
current while the process is idle too.
"""

from __future__ import annotations

import threading
from typing import Any

from psycopg_pool import ConnectionPool

from tasker.db import PoolObserver
from tasker.metrics.recording import Recorder

__all__ = ["PoolMetrics", "REFRESH_INTERVAL"]

#: Seconds between refreshes of an open pool's gauges.
REFRESH_INTERVAL = 1.0


class PoolMetrics(PoolObserver):
    """Records one process's pool statistics into the node's metrics."""

    def __init__(self, recorder: Recorder, configured_max: int) -> None:
        self.recorder = recorder
        self.configured_max = configured_max
        self._lock = threading.Lock()
        self._seen_connect_errors = 0
        self._refresher: threading.Thread | None = None
        self._stop = threading.Event()

    def _gauge(self, metric: Any) -> Any:
        return self.recorder.child(metric, self.recorder.worker)

    def process_started(self) -> None:
        """A pool process has a pool of ``configured_max`` and no connection yet."""
        m = self.recorder.metrics
        self._gauge(m.db_pool_max).set(self.configured_max)
        for gauge in (m.db_pool_size, m.db_pool_available, m.db_pool_waiting):
            self._gauge(gauge).set(0)

    def on_wait(self, seconds: float) -> None:
        self._gauge(self.recorder.metrics.db_pool_wait).observe(seconds)

    def on_error(self, kind: str) -> None:
        m = self.recorder.metrics
        self.recorder.child(m.db_pool_errors, self.recorder.worker, kind).inc()

    def on_change(self, pool: ConnectionPool) -> None:
        stats = pool.get_stats()
        m = self.recorder.metrics
        with self._lock:
            self._gauge(m.db_pool_size).set(stats.get("pool_size", 0))
            self._gauge(m.db_pool_available).set(stats.get("pool_available", 0))
            self._gauge(m.db_pool_max).set(stats.get("pool_max", self.configured_max))
            self._gauge(m.db_pool_waiting).set(stats.get("requests_waiting", 0))
            # Failed background connection attempts only show in the pool's
            # counters (present once non-zero); count what is new.
            errors = int(stats.get("connections_errors", 0))
            if errors > self._seen_connect_errors:
                self.recorder.child(m.db_pool_errors, self.recorder.worker,
                                    "connect_failed").inc(errors - self._seen_connect_errors)
                self._seen_connect_errors = errors
        if self._refresher is None:
            self._start_refresher(pool)

    def _start_refresher(self, pool: ConnectionPool) -> None:
        def refresh() -> None:
            while not self._stop.wait(REFRESH_INTERVAL) and not pool.closed:
                try:
                    self.on_change(pool)
                except Exception:  # noqa: BLE001 - metrics must not kill the thread
                    pass

        self._refresher = threading.Thread(target=refresh, name="tasker-db-pool-metrics",
                                           daemon=True)
        self._refresher.start()
