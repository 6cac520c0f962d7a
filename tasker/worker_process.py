"""What every worker pool process does when it exits.

Its database pool is opened on first use (:func:`tasker.db.connection`), after
the fork, so a process that never touches the database never connects, and
recycling a process (``--max-tasks-per-child``) stays cheap.
"""

from __future__ import annotations

import logging

from celery.signals import worker_process_shutdown

from tasker import db

logger = logging.getLogger("tasker.worker")


@worker_process_shutdown.connect
def _close_process_resources(**_kwargs: object) -> None:
    try:
        db.close_pool()
    except Exception:  # noqa: BLE001 - the process is exiting anyway
        logger.debug("db.pool_close_failed", exc_info=True)
