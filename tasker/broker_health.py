"""Consumer step: whether the node is connected to its broker and consuming, for ``/healthz``.

Celery keeps ``consumer.connection`` set while it reconnects (the old
connection object stays until a new one is made), so "a connection object
exists" says nothing. A consumer bootstep is told both edges through Celery's
public bootstep API instead: its ``start`` runs after the task consumer has
started (on the first connection and after every reconnection), its ``stop``
as soon as Celery restarts the consumer after a connection error, and its
``shutdown`` when the node stops.

How fast ``/healthz`` follows the broker is therefore how fast Celery notices:
at once for a refused or reset connection (Redis or RabbitMQ stopped); after
the broker heartbeat or the socket's timeout for a network that drops
packets silently. Coming back, Celery retries after 2, 4, 6, ... s (kombu's
``ensure_connection``, up to 30 s apart), and ``/healthz`` turns 200 at the
retry that succeeds.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

__all__ = ["BrokerConnected", "CONNECTED_ATTRIBUTE"]

logger = logging.getLogger("tasker.broker")

#: Set on Celery's consumer object: True while connected and consuming.
CONNECTED_ATTRIBUTE = "tasker_broker_connected"


class BrokerConnected(bootsteps.StartStopStep):
    """Marks the consumer connected after the task consumer started; not, once it stops."""

    label = "tasker broker health"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        setattr(c, CONNECTED_ATTRIBUTE, False)

    def start(self, c: Any) -> None:
        setattr(c, CONNECTED_ATTRIBUTE, True)

    def stop(self, c: Any) -> None:
        if getattr(c, CONNECTED_ATTRIBUTE, False):
            logger.warning("broker.disconnected",
                           extra={"effect": "/healthz answers 503 until Celery reconnects"})
        setattr(c, CONNECTED_ATTRIBUTE, False)

    def shutdown(self, c: Any) -> None:
        setattr(c, CONNECTED_ATTRIBUTE, False)
