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

from tasker.redact import redact_text

__all__ = ["configure_logging", "JsonFormatter", "TextFormatter", "task_context"]

#: Attributes every LogRecord has; anything else was passed with ``extra=``.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def task_context() -> dict[str, Any]:
    """Fields describing the task running in this context (empty outside a task)."""
    from celery import current_task

    from tasker.correlation import current_correlation_id

    fields: dict[str, Any] = {}
    cid = current_correlation_id()
    if cid:
        fields["correlation_id"] = cid
    task = current_task
    if task is not None and not getattr(task.request, "called_directly", True):
        fields["task_id"] = task.request.id
        fields["task"] = task.name
        if task.request.hostname:
            fields["worker"] = task.request.hostname
    return fields


def _record_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = {k: v for k, v in vars(record).items() if k not in _RESERVED}
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
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Celery's task and worker loggers propagate to the root.
    for name in ("celery", "celery.task", "celery.worker", "celery.app.trace"):
        logging.getLogger(name).propagate = True
