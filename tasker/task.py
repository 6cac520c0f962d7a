"""The base class of every tasker task."""

from __future__ import annotations

from celery import Task

__all__ = ["TaskerTask"]


class TaskerTask(Task):
    """A Celery task whose MainProcess request records unfinished runtimes."""

    Request = "tasker.metrics.request:TaskerRequest"
