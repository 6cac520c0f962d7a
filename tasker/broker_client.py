"""One redis-py client per kombu Redis channel, instead of one per command.

kombu's Redis transport builds a new ``redis.Redis`` object for every
synchronous command it sends (``Channel.conn_or_acquire`` calls
``_create_client``), and a worker sends two per task: one when a message is
taken (its copy goes into the ``unacked`` hash) and one when it is acked.
Building a ``redis.Redis`` fills its table of about 170 response callbacks:
about 90 µs of the MainProcess's CPU each, measured on this machine with
redis-py 8.1 and kombu 5.7. The MainProcess is what limits a prefork
worker's throughput, so those two objects cost every task about 0.2 ms of
its 1.1-1.4 ms there. (``bench/overhead.py``'s ``bare_client_reuse`` variant
measures bare Celery with this change alone.)

The object holds no connection of its own: each command or pipeline takes one
from the channel's connection pool, exactly as a new object would. So one
object per channel and pool does the same work. A channel whose pool is
replaced (after a connection error) gets a new object with the new pool.

Installed by :mod:`tasker.celeryconfig` unless ``TASKER_REUSE_BROKER_CLIENT``
is false.
"""

from __future__ import annotations

from typing import Any

__all__ = ["install", "uninstall", "installed"]

#: Where the cached client lives on a channel: (the pool it was made for, client).
_CACHE_ATTRIBUTE = "_tasker_sync_client"


def _reusing(original: Any) -> Any:
    def _create_client(self: Any, asynchronous: bool = False) -> Any:
        if asynchronous:
            # The asynchronous client is already one per channel (kombu's
            # ``Channel.client`` is a cached property); kombu sets its
            # ``connection`` attribute, so it must not be shared with this one.
            return original(self, asynchronous)
        pool = self.pool
        cached = self.__dict__.get(_CACHE_ATTRIBUTE)
        if cached is not None and cached[0] is pool:
            return cached[1]
        client = original(self, False)
        self.__dict__[_CACHE_ATTRIBUTE] = (pool, client)
        return client

    _create_client.__wrapped__ = original  # type: ignore[attr-defined]
    _create_client.__doc__ = original.__doc__
    return _create_client


def _channel_class() -> Any:
    try:
        from kombu.transport import redis as kombu_redis
    except ImportError:  # pragma: no cover - kombu without the redis extra
        return None
    return kombu_redis.Channel


def installed() -> bool:
    """Whether kombu's Redis channels reuse their synchronous client."""
    channel = _channel_class()
    return channel is not None and hasattr(channel._create_client, "__wrapped__")


def install() -> bool:
    """Make kombu's Redis channels reuse one synchronous client; idempotent.

    Returns False where kombu's Redis transport is not importable, or where
    its channel has no ``_create_client`` (a kombu this was not written for):
    nothing is changed then.
    """
    channel = _channel_class()
    if channel is None or not callable(getattr(channel, "_create_client", None)):
        return False
    if not installed():
        channel._create_client = _reusing(channel._create_client)
    return True


def uninstall() -> None:
    """Restore kombu's own ``_create_client`` (tests)."""
    channel = _channel_class()
    if channel is not None and installed():
        channel._create_client = channel._create_client.__wrapped__
