"""Pool process start and exit, as the node's MainProcess needs to see them.

Celery's ``worker_process_init`` / ``worker_process_shutdown`` signals are the
only hooks into a pool process's life, so these are signal receivers,
connected when this module is imported (by :mod:`tasker.celery_app`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown

from tasker import db
from tasker.metrics import identity, recording
from tasker.metrics.db_pool import PoolMetrics
from tasker.metrics.node import EXIT_MARKER, PROC_MARKER

__all__: list[str] = []

logger = logging.getLogger("tasker.metrics")


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
