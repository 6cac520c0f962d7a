"""Task bodies shared by both variants of a benchmark (bare Celery and tasker).

:func:`register_bench_tasks` defines the tasks on a given app, so the code a
worker runs per task is byte-for-byte the same in both variants. The bare app
registers them on import; a tasker worker loads them with
``--include bench.tasker_tasks``.
"""

from __future__ import annotations

import os
import time
from typing import Any

_client: Any = None
_client_pid: int | None = None


def _redis() -> Any:
    """One Redis client per process (a forked child opens its own)."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        import redis

        _client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
        _client_pid = os.getpid()
    return _client


def register_bench_tasks(app: Any) -> None:
    @app.task(name="bench.latency")
    def latency(published_at: float, results_key: str) -> None:
        """Report publish -> start latency (seconds) by RPUSH to ``results_key``."""
        started = time.time()
        _redis().rpush(results_key, repr(started - published_at))
