"""PostgreSQL access: one psycopg_pool ``ConnectionPool`` per process.

A pool holds sockets, and a socket must never be shared by two processes, so
the pool is tied to the pid that opened it: a forked child that finds its
parent's pool throws the object away (without closing the parent's sockets)
and opens its own. Worker pool processes open theirs in ``worker_process_init``
and close it in ``worker_process_shutdown`` (see :mod:`tasker.worker_process`).
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from tasker.redact import redact_text
from tasker.settings import Settings, get_settings

__all__ = ["connection", "open_pool", "close_pool", "current_pool", "DatabaseError", "PoolObserver",
           "set_observer", "current_observer", "check_reachable"]

#: Seconds a caller waits for a pooled connection before ``PoolTimeout``.
POOL_TIMEOUT = 30.0
#: Seconds a new server connection may take to establish.
CONNECT_TIMEOUT = 5


class DatabaseError(RuntimeError):
    """A database operation failed; the message never contains a password."""


class PoolObserver:
    """Hooks the metrics layer implements to see pool waits and errors.

    The default does nothing, so handlers work the same with metrics off.
    """

    def on_wait(self, seconds: float) -> None:
        """A caller waited ``seconds`` for a connection."""

    def on_error(self, kind: str) -> None:
        """``timeout``, ``connection_lost`` or ``connect_failed``."""

    def on_change(self, pool: ConnectionPool) -> None:
        """The pool's size or checkouts may have changed."""


_lock = threading.Lock()
_pool: ConnectionPool | None = None
_pool_pid: int | None = None
_observer: PoolObserver = PoolObserver()


def set_observer(observer: PoolObserver) -> None:
    global _observer  # one per process; Celery's task signals reach the pool only here
    _observer = observer


def current_observer() -> PoolObserver:
    return _observer


def _check_pooled(conn: psycopg.Connection) -> None:
    """The pool's ``check``: discard a pooled connection the server has already closed.

    Why: after a PostgreSQL restart (or a backend terminated by an admin) every
    idle pooled connection is dead, but psycopg only learns it on first use. So
    each process's first checkouts after a restart failed: steps raised
    DatabaseError and waited ``TASKER_RECOVERY_DEADLINE`` for the recovery
    poller, and ``submit()`` was refused although the server was back. A server
    that closes a session first sends an error (or EOF), which makes the idle
    socket readable: only then is the connection checked with a round trip
    (psycopg_pool's ``check_connection``); a quiet socket costs one ``poll()``.
    Raising makes the pool throw the connection away and hand out another; it is
    counted as ``connection_lost`` in ``tasker_db_pool_errors_total``.
    """
    try:
        if conn.closed or conn.broken:
            raise psycopg.OperationalError("the connection is closed")
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        if poller.poll(0):
            ConnectionPool.check_connection(conn)
    except Exception:
        _observer.on_error("connection_lost")
        raise


def open_pool(settings: Settings | None = None, *, wait: bool = False) -> ConnectionPool:
    """Open this process's pool (idempotent); connections are made in the background."""
    global _pool, _pool_pid  # one pool per process (never across a fork); tasks get no handle
    settings = settings or get_settings()
    with _lock:
        if _pool is not None and _pool_pid == os.getpid():
            return _pool
        # A pool inherited across fork belongs to the parent: drop it unclosed.
        pool = ConnectionPool(
            settings.database_url,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            timeout=POOL_TIMEOUT,
            check=_check_pooled,
            kwargs={"connect_timeout": CONNECT_TIMEOUT, "application_name": "tasker"},
            open=False,
            name=f"tasker-{os.getpid()}",
        )
        pool.open(wait=False)
        _pool, _pool_pid = pool, os.getpid()
    if wait:
        pool.wait(timeout=CONNECT_TIMEOUT)
    _observer.on_change(pool)
    return pool


def check_reachable(settings: Settings | None = None) -> None:
    """One direct connection attempt (``CONNECT_TIMEOUT``): for one-shot commands.

    A command run by hand should say at once why the database cannot be
    reached, not wait out the pool's timeout while the pool retries quietly.

    Raises:
        DatabaseError: the server's or the network's reason, without the password.
    """
    settings = settings or get_settings()
    try:
        psycopg.connect(settings.database_url, connect_timeout=CONNECT_TIMEOUT,
                        application_name="tasker").close()
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())  # libpq's message spans lines
        raise DatabaseError(redact_text(f"database unreachable: {reason}")) from None


def current_pool() -> ConnectionPool | None:
    """This process's pool, if it has opened one."""
    return _pool if _pool_pid == os.getpid() else None


def close_pool() -> None:
    """Close this process's pool, if it owns one."""
    global _pool, _pool_pid  # one pool per process (never across a fork); tasks get no handle
    with _lock:
        pool, owner = _pool, _pool_pid
        _pool, _pool_pid = None, None
    if pool is not None and owner == os.getpid():
        pool.close(timeout=0.5)


@contextmanager
def connection(timeout: float | None = None) -> Iterator[psycopg.Connection]:
    """A pooled connection for the duration of the ``with`` block.

    The transaction is committed when the block exits normally and rolled
    back when it raises (psycopg_pool's semantics).

    Raises:
        DatabaseError: no connection within ``timeout`` or the server is gone.
    """
    pool = current_pool() or open_pool()
    started = time.perf_counter()
    try:
        with pool.connection(timeout=timeout) as conn:
            _observer.on_wait(time.perf_counter() - started)
            _observer.on_change(pool)
            yield conn
    except PoolTimeout as exc:
        _observer.on_error("timeout")
        raise DatabaseError(redact_text(f"no database connection within the pool timeout: {exc}")) \
            from None
    except psycopg.OperationalError as exc:
        _observer.on_error("connection_lost")
        raise DatabaseError(redact_text(f"database connection failed: {exc}")) from None
    finally:
        _observer.on_change(pool)
