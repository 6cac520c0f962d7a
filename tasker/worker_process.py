"""What every worker pool process does when it starts and when it exits."""

from __future__ import annotations

import logging

from celery.signals import worker_process_init, worker_process_shutdown

from tasker import db

logger = logging.getLogger("tasker.worker")


@worker_process_init.connect
def _open_process_resources(**_kwargs: object) -> None:
    # Non-blocking: worker_process_init must return within about 4 seconds,
    # and a database that is down must not stop the process from starting.
    try:
        db.open_pool(wait=False)
    except Exception:  # noqa: BLE001 - a handler needing the DB will report it
        logger.exception("db.pool_open_failed")


@worker_process_shutdown.connect
def _close_process_resources(**_kwargs: object) -> None:
    try:
        db.close_pool()
    except Exception:  # noqa: BLE001 - the process is exiting anyway
        logger.debug("db.pool_close_failed", exc_info=True)
