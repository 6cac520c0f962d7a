"""A Celery ``WorkController`` seen as the plain :class:`~tasker.metrics.node.WorkerView`."""

from __future__ import annotations

from typing import Any

from celery.worker import state as worker_state
from celery.worker.request import Request

from tasker.broker_health import CONNECTED_ATTRIBUTE
from tasker.contracts.kombu_redis import timer_entry_args
from tasker.metrics.node import WorkerView

__all__ = ["worker_view", "most_pool_processes"]


def most_pool_processes(worker: Any) -> int:
    """The node's concurrency, or the autoscaler's maximum if that is higher."""
    # Celery's Pool component sets max_concurrency (None without --autoscale).
    return max(int(worker.concurrency or 1), int(getattr(worker, "max_concurrency", 0) or 0))


def worker_view(worker: Any) -> WorkerView:
    """Callables reading ``worker`` when called (its pool and consumer come later)."""

    def pool_pids() -> list[int]:
        pool = getattr(worker, "pool", None)
        try:
            return [int(p) for p in (pool.info.get("processes") or [])] if pool else []
        except Exception:  # noqa: BLE001 - the pool may be restarting
            return []

    def reserved() -> int:
        active = set(worker_state.active_requests)
        return sum(1 for r in list(worker_state.reserved_requests) if r not in active)

    def scheduled() -> int | None:
        timer = getattr(getattr(worker, "consumer", None), "timer", None)
        if timer is None:
            return None
        entries = timer_entry_args(timer)  # kombu's timer internals: tasker.contracts
        if entries is None:
            return None
        return sum(1 for args in entries if args and isinstance(args[0], Request))

    def broker_connected() -> bool:
        # Kept up to date by the BrokerConnected consumer step (tasker.broker_health).
        consumer = getattr(worker, "consumer", None)
        return bool(getattr(consumer, CONNECTED_ATTRIBUTE, False))

    pool_cls = getattr(worker, "pool_cls", "prefork")
    pool_name = getattr(pool_cls, "__module__", str(pool_cls)).rsplit(".", 1)[-1]
    return WorkerView(pool_name=pool_name, concurrency=int(worker.concurrency or 1),
                      pool_pids=pool_pids, reserved=reserved, scheduled=scheduled,
                      broker_connected=broker_connected)
