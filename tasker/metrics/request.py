"""The MainProcess's request class: runtimes of tasks whose pool process never finished.

When a pool process is lost (SIGKILL, OOM) or killed at a hard time limit, it
never reaches ``task_postrun``; only the MainProcess knows when the task
started (``Request.time_start``). Celery's documented extension point for that
is a task's ``Request`` class; tasker's tasks use this one.
"""

from __future__ import annotations

import time
from typing import Any

from billiard.exceptions import WorkerLostError
from celery.worker.request import Request

from tasker.metrics import recording

__all__ = ["TaskerRequest"]


class TaskerRequest(Request):
    """Records the runtime of executions that end in the MainProcess."""

    def on_timeout(self, soft: bool, timeout: float) -> None:
        if not soft:
            self._record_unfinished_runtime()
        super().on_timeout(soft, timeout)

    def on_failure(self, exc_info: Any, send_failed_event: bool = True,
                   return_ok: bool = False) -> None:
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)  # billiard wraps it in ExceptionWithTraceback
        if isinstance(exc, WorkerLostError):
            self._record_unfinished_runtime()
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def _record_unfinished_runtime(self) -> None:
        recorder = recording.current()
        if recorder is None or self.time_start is None:
            return
        try:
            recorder.on_unfinished(self.name, self.delivery_info, time.time() - self.time_start)
        except Exception:  # noqa: BLE001 - never get in the way of Celery's failure handling
            pass
