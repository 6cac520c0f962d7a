"""Worker process lifecycle: the MainProcess's heap at start, each pool process's exit.

Its database pool is opened on first use (:func:`tasker.db.connection`), after
the fork, so a process that never touches the database never connects, and
recycling a process (``--max-tasks-per-child``) stays cheap.
"""

from __future__ import annotations

import gc
import logging
import time

from celery.signals import worker_process_shutdown, worker_ready

from tasker import db

logger = logging.getLogger("tasker.worker")


@worker_ready.connect(weak=False)
def _freeze_startup_heap(**_kwargs: object) -> None:
    """MainProcess, once started: move every object alive now out of the collector's sight.

    Why: Celery runs ``gc.collect()`` before it forks each pool process
    (celery#2927), and the cyclic collector's full collections walk the whole
    heap. The MainProcess's startup heap (Celery, kombu, prometheus_client,
    psycopg and the handler modules: about 50,000 objects) lives as long as
    the node, yet every such collection walked it again: 40-50 ms per
    replaced pool process, which is what limited ``--max-tasks-per-child``
    recycling to a few processes per second. ``gc.freeze()`` (the pattern the
    ``gc`` documentation gives for pre-fork servers) leaves those objects
    alone; everything created later is collected as before.
    """
    started = time.perf_counter()
    gc.collect()  # garbage made during start-up is freed, not frozen
    gc.freeze()
    logger.debug("worker.heap_frozen", extra={"objects": gc.get_freeze_count(),
                                               "seconds": round(time.perf_counter() - started,
                                                                4)})


@worker_process_shutdown.connect
def _close_process_resources(**_kwargs: object) -> None:
    try:
        db.close_pool()
    except Exception:  # noqa: BLE001 - the process is exiting anyway
        logger.debug("db.pool_close_failed", exc_info=True)
