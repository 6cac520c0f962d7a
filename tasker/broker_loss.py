"""Consumer step: a broker connection lost while messages are held must not stop the node.

With Celery 5.7 / kombu 5.7 on Redis, a connection lost while the consumer
waits in BRPOP and holds prefetched (unacknowledged) messages makes Celery's
clean-up close the channel again after the transport was detached; kombu then
raises ``AttributeError`` ("'NoneType' object has no attribute 'hostname'")
while restoring those messages. That is not a connection error, so Celery
stops the whole worker ("Unrecoverable error") instead of reconnecting (the
same family as celery/kombu#582 and celery/celery#4652). The fault suite
(``tests/faults/test_services_restart.py``) hits it on every Redis restart
under load.

This step makes only that close tolerant: the error is logged as
``broker.close_failed`` and Celery goes on to reconnect as it does for any
connection loss. The held messages stay in Redis's unacked set (restored after
the visibility timeout) unless Redis lost them too.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

from tasker.contracts.celery_worker import wrap_connection_error_handler

__all__ = ["SurviveBrokerLoss"]

logger = logging.getLogger("tasker.broker")


class SurviveBrokerLoss(bootsteps.Step):
    """Wraps the consumer's ``on_connection_error_after_connected`` (a Celery internal:
    :mod:`tasker.contracts.celery_worker`)."""

    label = "tasker broker loss"

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)

        def wrap(original: Any) -> Any:
            def on_connection_error_after_connected(exc: BaseException) -> Any:
                connection = c.connection
                if connection is not None:
                    close = connection.close

                    def close_tolerantly(*args: Any, **kw: Any) -> Any:
                        try:
                            return close(*args, **kw)
                        except AttributeError as err:
                            logger.warning("broker.close_failed", extra={"reason": repr(err)})
                            return None

                    connection.close = close_tolerantly  # Celery calls it next
                return original(exc)

            return on_connection_error_after_connected

        # Another Celery version (the start check said so): nothing to wrap.
        wrap_connection_error_handler(c, wrap)
