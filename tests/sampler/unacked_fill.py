"""Fill kombu's unacked hash and index the way kombu's Redis QoS does, fast."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

BODY_BYTES = 2048


def held_message(queue: str, tag: str, body_bytes: int = BODY_BYTES) -> str:
    """The unacked-hash value of one message: ``json([message, exchange, routing_key])``.

    The message is the envelope kombu's Redis transport stores (as in
    ``kombu.transport.redis.QoS.append``), with a body of about ``body_bytes``.
    """
    message = {
        "body": "x" * body_bytes, "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": "diagnostics.noop", "id": tag,
                    "tasker_published_at": f"{time.time():.6f}"},
        "properties": {"correlation_id": tag, "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": queue},
                       "priority": 0, "body_encoding": "base64", "delivery_tag": tag},
    }
    return json.dumps([message, "", queue])


def hold(client: Any, queues: list[str], n: int, prefix: str = "",
         body_bytes: int = BODY_BYTES) -> dict[str, int]:
    """Put ``n`` messages (round-robin over ``queues``) in unacked / unacked_index."""
    held = dict.fromkeys(queues, 0)
    now = time.time()
    with client.pipeline(transaction=False) as pipe:
        for i in range(n):
            queue = queues[i % len(queues)]
            tag = str(uuid.uuid4())
            pipe.hset(prefix + "unacked", tag, held_message(queue, tag, body_bytes))
            pipe.zadd(prefix + "unacked_index", {tag: now - n + i})  # delivery times
            held[queue] += 1
            if i % 2000 == 1999:
                pipe.execute()
        pipe.execute()
    return held
