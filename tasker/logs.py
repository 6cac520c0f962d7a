"""One logging configuration for Celery's loggers and tasker's own.

``TASKER_LOG_FORMAT=json`` (default) writes one JSON object per line with
``ts``, ``level``, ``logger``, ``event`` and any structured fields; inside a
task also ``correlation_id``, ``task_id``, ``task`` and ``worker``.
``text`` writes the same facts for humans. Every line is passed through
:func:`tasker.redact.redact_text`, so a URL password never reaches a log.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

from celery import current_task
from celery.app import trace

from tasker.correlation import current_correlation_id, current_parent_correlation_id
from tasker.redact import redact_text

__all__ = ["configure_logging", "JsonFormatter", "TextFormatter", "CeleryEventNames",
           "task_context"]

#: Attributes every LogRecord has; anything else was passed with ``extra=``.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"asctime"}


def task_context() -> dict[str, Any]:
    """Fields describing the task running in this context (empty outside a task)."""
    fields: dict[str, Any] = {}
    cid = current_correlation_id()
    if cid:
        fields["correlation_id"] = cid
        parent = current_parent_correlation_id()
        if parent:
            fields["parent_correlation_id"] = parent
    task = current_task
    if task is not None and not getattr(task.request, "called_directly", True):
        fields["task_id"] = task.request.id
        fields["task"] = task.name
        if task.request.hostname:
            fields["worker"] = task.request.hostname
    return fields


#: Celery's own fields worth keeping, renamed to tasker's; the rest of
#: Celery's ``data`` (args, kwargs, return value, traceback text) is dropped:
#: it may hold user data, and the traceback is in ``exception`` already.
_CELERY_FIELDS = {"id": "task_id", "name": "task", "runtime": "runtime_seconds",
                  "exc": "error", "hostname": "worker", "description": "outcome"}


class CeleryEventNames(logging.Filter):
    """Give Celery's task and worker lifecycle lines tasker's dotted event names.

    No extra log lines: Celery's own records are renamed (``task.received``,
    ``task.succeeded``, ``task.failed``, ``task.retried``, ``worker.ready``...)
    and retries are raised to WARNING.
    """

    def __init__(self) -> None:
        super().__init__()
        self._events = {
            trace.LOG_SUCCESS: ("task.succeeded", None),
            # LOG_FAILURE and LOG_INTERNAL_ERROR are the same format string;
            # filter() tells them apart by the record's description.
            trace.LOG_FAILURE: ("task.failed", None),
            trace.LOG_IGNORED: ("task.ignored", None),
            trace.LOG_REJECTED: ("task.rejected", logging.WARNING),
            trace.LOG_RETRY: ("task.retried", logging.WARNING),
        }

    def filter(self, record: logging.LogRecord) -> bool:
        mapped = self._events.get(record.msg) if isinstance(record.msg, str) else None
        if mapped is not None:
            event, level = mapped
            record.message = record.getMessage()
            data = getattr(record, "data", None) or {}
            if event == "task.failed" and data.get("description") == "INTERNAL ERROR":
                event = "task.internal_error"
            for key, name in _CELERY_FIELDS.items():
                if key in data:
                    setattr(record, name, data[key])
            record.msg, record.args = event, ()
            if level is not None and level > record.levelno:
                record.levelno, record.levelname = level, logging.getLevelName(level)
        elif record.name == "celery.apps.worker" and record.msg == "%s ready.":
            record.worker = record.args[0] if record.args else None
            record.msg, record.args = "worker.ready", ()
        if hasattr(record, "data"):
            del record.data
        return True


def _record_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = {k: v for k, v in vars(record).items() if k not in _RESERVED}
    if fields.get("message") == record.getMessage():
        del fields["message"]  # set by logging itself, not a renamed Celery line
    try:
        for key, value in task_context().items():
            fields.setdefault(key, value)
    except Exception:  # noqa: BLE001 - logging must never fail
        pass
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        doc.update(_record_fields(record))
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return redact_text(json.dumps(doc, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """``ts level logger event key=value ...`` for humans."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        fields = " ".join(f"{k}={v}" for k, v in _record_fields(record).items())
        line = f"{ts} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if fields:
            line += f" [{fields}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact_text(line)


def configure_logging(log_format: str = "json", level: str = "INFO") -> None:
    """Send every logger (Celery's included) to stderr in ``log_format``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(CeleryEventNames())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Celery's task and worker loggers propagate to the root.
    for name in ("celery", "celery.task", "celery.worker", "celery.app.trace"):
        logging.getLogger(name).propagate = True
    # Celery logs "received" before the message's correlation id is known;
    # tasker logs task.received itself (tasker.correlation), with the id.
    logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)
