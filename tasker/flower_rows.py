"""The node's snapshot as one ``inspect stats`` key per value, for Flower's worker page.

Flower renders each ``inspect stats`` key it does not know in its "Other" tab
as ``str(value)``, so the nested ``tasker`` snapshot (kept for programs, see
:mod:`tasker.metrics.bootstep`) showed as one raw Python dict. This consumer
bootstep adds the same values flattened: ``tasker.processing_rate``,
``tasker.db_pool.size``, ``tasker.queues.celery.depth``..., one scalar each.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

from tasker.metrics.bootstep import node_of

__all__ = ["FlowerRows", "flatten"]

logger = logging.getLogger("tasker.metrics")

#: Rows beyond this many are left out (a snapshot with very many queues).
MAX_ROWS = 200


def flatten(value: Any, prefix: str = "tasker") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b.c": scalar}``; lists become one comma-separated string."""
    rows: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            rows.update(flatten(item, f"{prefix}.{key}"))
    elif isinstance(value, (list, tuple)):
        rows[prefix] = ", ".join(str(v) for v in value)
    elif value is None or isinstance(value, (str, int, float, bool)):
        rows[prefix] = value
    else:
        rows[prefix] = str(value)
    return rows


class FlowerRows(bootsteps.StartStopStep):
    """Consumer bootstep: adds the flattened snapshot to ``inspect stats``."""

    def info(self, consumer: Any) -> dict[str, Any]:
        node = node_of(consumer.controller)
        if node is None:
            return {}
        try:
            rows = flatten(node.snapshot())
        except Exception:  # noqa: BLE001 - inspect stats must still answer
            logger.debug("metrics.flower_rows_failed", exc_info=True)
            return {}
        return dict(sorted(rows.items())[:MAX_ROWS])
