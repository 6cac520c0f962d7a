"""The MainProcess's request class: runtimes of tasks whose pool process never finished.

When a pool process is lost (SIGKILL, OOM) or killed at a hard time limit, it
never reaches ``task_postrun``; only the MainProcess knows when the task
started (``Request.time_start``). Celery's documented extension point for that
is a task's ``Request`` class; tasker's tasks use this one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from billiard.exceptions import WorkerLostError
from celery.exceptions import Terminated
from celery.worker.request import Request

from tasker.metrics import recording

__all__ = ["TaskerRequest"]


class TaskerRequest(Request):
    """Records the runtime of executions that end in the MainProcess; one failure each.

    A hard time limit reaches this request twice: billiard first reports the
    killed job (``on_failure`` with ``TimeLimitExceeded``, which sends
    ``task_failure``), then calls ``on_timeout``, where Celery 5.7 sends
    ``task_failure`` again (without the request's delivery info). One
    execution is one failure and one runtime observation, whatever the order
    and whatever the Celery version: a ``task_failure`` is counted only if
    none was counted for this request before. The pool process does not
    observe an execution interrupted before Celery gave it a state (see
    ``Recorder.on_postrun``): this request observes its runtime, once.
    """

    _tasker_runtime_recorded = False
    _tasker_failure_counted = False

    def on_timeout(self, soft: bool, timeout: float) -> None:
        if soft:
            super().on_timeout(soft, timeout)
            return
        self._record_unfinished_runtime()
        self._counting_one_failure(super().on_timeout, soft, timeout)

    def on_failure(self, exc_info: Any, send_failed_event: bool = True,
                   return_ok: bool = False) -> None:
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)  # billiard wraps it in ExceptionWithTraceback
        if isinstance(exc, (WorkerLostError, Terminated)):
            self._record_unfinished_runtime()
        self._counting_one_failure(super().on_failure, exc_info,
                                   send_failed_event=send_failed_event, return_ok=return_ok)

    def _counting_one_failure(self, handle: Callable[..., None], *args: Any,
                              **kwargs: Any) -> None:
        """Run Celery's handler; a second ``task_failure`` for this request is not counted."""
        if self._tasker_failure_counted:
            with recording.failures_not_counted():
                handle(*args, **kwargs)
            return
        before = recording.failures_counted()
        try:
            handle(*args, **kwargs)
        finally:
            self._tasker_failure_counted = recording.failures_counted() > before

    def _record_unfinished_runtime(self) -> None:
        recorder = recording.current()
        if recorder is None or self.time_start is None or self._tasker_runtime_recorded:
            return
        self._tasker_runtime_recorded = True
        try:
            recorder.on_unfinished(self.name, self.delivery_info, time.time() - self.time_start)
        except Exception:  # noqa: BLE001 - never get in the way of Celery's failure handling
            pass
