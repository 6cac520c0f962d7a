"""The queue label of a message: the declared queue its (exchange, routing key) matches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["queue_resolver", "UNMATCHED_QUEUE"]

#: Queue label of a message whose (exchange, routing key) matches no queue this node
#: declares. A producer can put any routing key in a message, so the key itself is
#: never used as a label: label values must stay bounded, in every process alike.
UNMATCHED_QUEUE = "other"


def queue_resolver(app: Any) -> Callable[[str | None, str | None], str]:
    """(exchange, routing key) -> the queue name a message was routed to."""
    cache: dict[tuple[str | None, str | None], str] = {}

    def resolve(exchange: str | None, routing_key: str | None) -> str:
        key = (exchange, routing_key)
        found = cache.get(key)
        if found is None:
            found = UNMATCHED_QUEUE
            for queue in app.amqp.queues.values():
                if queue.routing_key == routing_key and (
                        not exchange or queue.exchange is None or queue.exchange.name == exchange):
                    found = queue.name
                    break
            if len(cache) < 1000:  # routing keys are few; never grow without bound
                cache[key] = found
        return found

    return resolve
