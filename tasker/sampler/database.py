"""Sample the database server: connections by state and ``max_connections``.

One short-lived psycopg connection per sample, one query round trip.

Every sample ends by its deadline, whatever the server does. A server-side
``statement_timeout`` is no help against a server that accepted the
connection and then stopped answering, and TCP keeps waiting on a peer that
acknowledges but never replies (about 15 minutes). So the caller waits in
:func:`run_with_deadline` for at most the timeout, and the connection made by
:func:`bounded_connection` is shut down at the deadline, which ends the
waiting thread too (libpq sees the connection close).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import quote, unquote

import psycopg
from psycopg.conninfo import conninfo_to_dict

__all__ = ["DatabaseSample", "DatabaseSampleError", "sample_database", "bounded_connection",
           "run_with_deadline"]

T = TypeVar("T")


@dataclass(frozen=True)
class DatabaseSample:
    #: ``pg_stat_activity`` rows of the current database by ``state``; a NULL
    #: state (a session of another role when the sampling role lacks
    #: ``pg_read_all_stats``) is counted as ``"unknown"``. The sampler's own
    #: connection is not counted.
    connections_by_state: dict[str, int]
    max_connections: int


class DatabaseSampleError(Exception):
    """The database could not be sampled; the message never contains a password."""


# SET LOCAL inside the one multi-statement query string: the simple-query
# protocol runs it as one implicit transaction, so the timeout costs no extra
# round trip and never leaks to a pooled server connection (PgBouncer).
# ``datname = current_database()`` also leaves out background workers (no
# database); ``pid <> pg_backend_pid()`` leaves out this sampling connection,
# which would otherwise always add one "active".
_QUERY = """\
SET LOCAL statement_timeout = {timeout_ms};
SELECT current_setting('max_connections')::int,
       coalesce((SELECT json_object_agg(state, n) FROM (
                    SELECT coalesce(state, 'unknown') AS state, count(*) AS n
                    FROM pg_stat_activity
                    WHERE datname = current_database() AND pid <> pg_backend_pid()
                    GROUP BY 1) AS s),
                '{{}}'::json)
"""


def run_with_deadline(fn: Callable[[], T], timeout: float, name: str = "tasker-db") -> T:
    """``fn()`` in a daemon thread; its result, or :class:`TimeoutError` after ``timeout``.

    The caller is free at the deadline even while ``fn`` is stuck in a system
    call; ``fn`` must bound itself too (see :func:`bounded_connection`) so the
    thread it leaves behind ends soon after.
    """
    outcome: dict[str, object] = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    if not done.wait(max(0.0, timeout)):
        raise TimeoutError(f"no answer within {timeout:.1f}s")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def _shut_down(conn: psycopg.Connection) -> None:
    """Make a waiting libpq call on ``conn`` fail now (from another thread).

    ``shutdown`` rather than ``close``: closing a descriptor another thread
    waits on in poll() does not wake it, a shutdown does (it reads EOF).
    """
    with contextlib.suppress(Exception):  # already closed: nothing waits on it
        dup = socket.socket(fileno=os.dup(conn.pgconn.socket))
        try:
            dup.shutdown(socket.SHUT_RDWR)
        finally:
            dup.close()


@contextlib.contextmanager
def bounded_connection(conninfo: str, deadline: float,
                       application_name: str = "tasker-sampler") -> Iterator[psycopg.Connection]:
    """An autocommit connection that stops working at ``deadline`` (``time.monotonic()``).

    The connect is bounded by ``connect_timeout`` (psycopg counts whole seconds,
    at least 2); everything after it by a timer that shuts the socket down at
    the deadline. ``tcp_user_timeout`` also ends the wait on a peer that has
    vanished from the network (data sent and never acknowledged).
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise psycopg.OperationalError("no time left in the sample round")
    conn = psycopg.connect(conninfo, connect_timeout=max(2, math.ceil(remaining)),
                           autocommit=True, application_name=application_name,
                           tcp_user_timeout=max(1, int(remaining * 1000)))
    watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _shut_down, (conn,))
    watchdog.daemon = True
    watchdog.start()
    try:
        yield conn
    finally:
        watchdog.cancel()
        conn.close()


def sample_database(conninfo: str, timeout: float = 5.0) -> DatabaseSample:
    """Count the current database's connections by state, and read ``max_connections``.

    ``conninfo`` is a libpq URL or keyword string. The whole sample (connect
    and query) ends within ``timeout`` seconds, answered or not.
    """
    deadline = time.monotonic() + timeout
    query = _QUERY.format(timeout_ms=max(1, int(timeout * 1000)))

    def sample() -> tuple[int, dict[str, int]]:
        with bounded_connection(conninfo, deadline) as conn:
            cur = conn.execute(query)
            while cur.description is None and cur.nextset():
                pass  # skip the SET's result to the SELECT's
            row = cur.fetchone()
            assert row is not None
            return row[0], row[1]

    try:
        max_connections, by_state = run_with_deadline(sample, timeout, "tasker-db-sample")
    except (psycopg.Error, TimeoutError) as exc:
        # ``from None``: a psycopg message can quote a piece of the conninfo
        # (a parse error); only the redacted text is kept.
        raise DatabaseSampleError(
            f"cannot sample database {_describe(conninfo)}: "
            f"{type(exc).__name__}: {_redact(' '.join(str(exc).split()), conninfo)}"
        ) from None
    return DatabaseSample(
        connections_by_state={str(k): int(v) for k, v in by_state.items()},
        max_connections=int(max_connections),
    )


def _describe(conninfo: str) -> str:
    """``host:port/dbname`` of a conninfo, never its password."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.Error:
        return "(unparsable conninfo)"
    host = params.get("host") or params.get("hostaddr") or "default host"
    port = f":{params['port']}" if params.get("port") else ""
    return f"{host}{port}/{params.get('dbname') or params.get('user') or ''}"


_URL_PASSWORD = re.compile(r"://[^/@:]*:([^/@]*)@")
_KEYWORD_PASSWORD = re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def _redact(text: str, conninfo: str) -> str:
    """Remove every form of the conninfo's password from ``text``."""
    secrets = {m.group(1) for m in _URL_PASSWORD.finditer(conninfo)}
    secrets |= {m.group(1).strip("'") for m in _KEYWORD_PASSWORD.finditer(conninfo)}
    with contextlib.suppress(psycopg.Error):  # unparsable: the regexes above still apply
        secrets.add(conninfo_to_dict(conninfo).get("password") or "")
    secrets |= {unquote(s) for s in secrets} | {quote(s, safe="") for s in secrets}
    # Longest first, so a password containing another form is removed whole.
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "**")
    return text
