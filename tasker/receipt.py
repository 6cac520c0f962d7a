"""The MainProcess's one ``task_received`` receiver: what happens to each message on receipt.

The MainProcess is what limits a prefork node's throughput, and Celery's
signal dispatch costs every message about 1.9 µs for a first receiver and
0.5 µs for each further one (measured with ``Signal.send`` in a loop); so the correlation check
(:func:`tasker.correlation.ensure_correlation_on_receipt`) and the received
count (:func:`tasker.metrics.recording.record_received`) share this one.
Neither raises into Celery.
"""

from __future__ import annotations

from typing import Any

from celery.signals import task_received

from tasker.correlation import ensure_correlation_on_receipt
from tasker.metrics.recording import record_received

__all__ = ["on_task_received"]


@task_received.connect(weak=False)
def on_task_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    ensure_correlation_on_receipt(request)
    record_received(request)
