"""Which cause a failed command's exception names: its exit code and its one line.

The codes and the line's shape are in :mod:`tasker.errors` (the bottom layer);
telling a broker from a database from a handler module apart needs the drivers
and tasker's own modules, so it happens here, at the top.
"""

from __future__ import annotations

import psycopg
from kombu.exceptions import OperationalError
from psycopg_pool import PoolTimeout

from tasker.db import DatabaseError
from tasker.errors import EXIT_BROKER, EXIT_DATABASE, EXIT_FAILED, EXIT_HANDLERS, one_line
from tasker.migrate import DatabaseUnreachable
from tasker.registry import describe_import_failure

__all__ = ["describe"]


def _is_broker_error(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError):
        return True
    try:
        # lazy: only after a failure; importing redis costs 75 ms (python -X importtime)
        # and a fleet on RabbitMQ never loads it otherwise.
        import redis.exceptions
    except ImportError:  # pragma: no cover - redis is a dependency
        return False
    return isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError))


def _is_database_error(exc: BaseException) -> bool:
    return isinstance(exc, (psycopg.OperationalError, PoolTimeout, DatabaseError,
                            DatabaseUnreachable))


def describe(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one line (without the command's name) for ``exc``."""
    handler = describe_import_failure(exc)
    if handler is not None:
        return EXIT_HANDLERS, handler
    if _is_broker_error(exc):
        return EXIT_BROKER, f"broker unreachable: {one_line(str(exc))}"
    if _is_database_error(exc):
        return EXIT_DATABASE, f"database unreachable: {one_line(str(exc))}"
    return EXIT_FAILED, f"{type(exc).__name__}: {one_line(str(exc))}"
