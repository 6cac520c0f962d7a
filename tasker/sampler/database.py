"""Sample the database server: connections by state and ``max_connections``.

One short-lived psycopg connection per sample, one query round trip.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

import psycopg
from psycopg.conninfo import conninfo_to_dict

__all__ = ["DatabaseSample", "DatabaseSampleError", "sample_database"]


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


def sample_database(conninfo: str, timeout: float = 5.0) -> DatabaseSample:
    """Count the current database's connections by state, and read ``max_connections``.

    ``conninfo`` is a libpq URL or keyword string. ``timeout`` bounds the
    connect (libpq counts whole seconds, at least 2) and the query.
    """
    query = _QUERY.format(timeout_ms=max(1, int(timeout * 1000)))
    try:
        with psycopg.connect(
            conninfo, connect_timeout=max(2, math.ceil(timeout)), autocommit=True
        ) as conn:
            cur = conn.execute(query)
            while cur.description is None and cur.nextset():
                pass  # skip the SET's result to the SELECT's
            max_connections, by_state = cur.fetchone()
    except psycopg.Error as exc:
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
