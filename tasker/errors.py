"""Exit codes of ``tasker`` commands and the worker, and the one line a failure prints.

A failure an operator can fix (a service that cannot be reached, a handler
module that does not import) is printed as one line naming the cause, with
an exit code of its own so that scripts can tell the causes apart; the
traceback only with ``tasker --debug`` or at DEBUG level.
"""

from __future__ import annotations

__all__ = ["EXIT_FAILED", "EXIT_NODE", "EXIT_CONFIG", "EXIT_BROKER", "EXIT_DATABASE",
           "EXIT_HANDLERS", "describe", "one_line"]

#: Anything else that failed (also: no task request with that id).
EXIT_FAILED = 1
#: ``tasker stats``: no node answered (1 since the command was first documented).
EXIT_NODE = 1
#: A setting is invalid, or the command line is (argparse's own code).
EXIT_CONFIG = 2
#: The broker cannot be reached.
EXIT_BROKER = 3
#: The database cannot be reached.
EXIT_DATABASE = 4
#: A module in ``workers/`` cannot be imported (syntax error, error at import).
EXIT_HANDLERS = 6


def one_line(text: str) -> str:
    """``text`` on one line, its password removed (drivers' messages span lines)."""
    from tasker.redact import redact_text

    return redact_text(" ".join(str(text).split()))


def _is_broker_error(exc: BaseException) -> bool:
    from kombu.exceptions import OperationalError

    if isinstance(exc, OperationalError):
        return True
    try:
        import redis.exceptions
    except ImportError:  # pragma: no cover - redis is a dependency
        return False
    return isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError))


def _is_database_error(exc: BaseException) -> bool:
    import psycopg
    from psycopg_pool import PoolTimeout

    from tasker.db import DatabaseError
    from tasker.migrate import DatabaseUnreachable

    return isinstance(exc, (psycopg.OperationalError, PoolTimeout, DatabaseError,
                            DatabaseUnreachable))


def describe(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one line (without the command's name) for ``exc``."""
    from tasker.registry import describe_import_failure

    handler = describe_import_failure(exc)
    if handler is not None:
        return EXIT_HANDLERS, handler
    if _is_broker_error(exc):
        return EXIT_BROKER, f"broker unreachable: {one_line(str(exc))}"
    if _is_database_error(exc):
        return EXIT_DATABASE, f"database unreachable: {one_line(str(exc))}"
    return EXIT_FAILED, f"{type(exc).__name__}: {one_line(str(exc))}"
