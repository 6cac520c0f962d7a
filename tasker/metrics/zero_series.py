"""Every task's counters exported at 0 before its first run."""

from __future__ import annotations

from typing import Any

from tasker.metrics.recording import Recorder

__all__ = ["create_zero_series"]


def create_zero_series(recorder: Recorder, app: Any) -> None:
    """Create the received/started/succeeded/retried series of every task and queue.

    Prometheus' ``rate()`` only sees increases between two scrapes, so a
    series that appears at 1 hides its first runs. Created by the node before
    the pool forks, the values are also written into every pool process's file.
    """
    queues = sorted(getattr(app.amqp.queues, "consume_from", None) or app.amqp.queues)
    m = recorder.metrics
    for name in sorted(app.tasks):
        if name.startswith("celery."):
            continue
        for queue in queues:
            for metric in (m.received, m.started, m.succeeded, m.retried):
                recorder.child(metric, name, queue)
