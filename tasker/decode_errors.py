"""Counts messages whose body cannot be decoded (a consumer bootstep)."""

from __future__ import annotations

from typing import Any

from celery import bootsteps

from tasker.contracts.celery_worker import wrap_decode_error_handler
from tasker.metrics import recording

__all__ = ["DecodeErrorCounter"]


class DecodeErrorCounter(bootsteps.Step):
    """Consumer step: counts messages whose body cannot be decoded.

    Celery has no signal for them: its consumer logs, acknowledges and drops
    the message in ``on_decode_error`` (a Celery internal:
    :mod:`tasker.contracts.celery_worker`). This step wraps that method before the
    task consumer is created (which binds it), so the message is still handled
    exactly as Celery does, and ``tasker_tasks_rejected_total{reason="decode_error"}``
    counts it.
    """

    label = "tasker decode errors"

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)

        def wrap(original: Any) -> Any:
            def on_decode_error(message: Any, exc: BaseException) -> Any:
                recorder = recording.current()
                if recorder is not None:
                    try:
                        recorder.on_rejected("decode_error")
                    except Exception:  # noqa: BLE001 - never in the way of Celery's handling
                        pass
                return original(message, exc)

            return on_decode_error

        # Another Celery version (the start check said so): not counted.
        wrap_decode_error_handler(c, wrap)
