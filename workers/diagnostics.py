"""Diagnostic handlers shipped with tasker: ``tasker load``, the demo and the tests use them."""

from __future__ import annotations

import time

from tasker import db
from tasker.registry import handler

#: Longest sleep or hold a diagnostic task accepts, in seconds.
MAX_SECONDS = 3600.0


class DiagnosticFailure(Exception):
    """Raised on purpose by ``diagnostics.fail``."""


def _seconds(value: object) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"seconds must be a number, got {value!r}") from None
    if not 0 <= seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be between 0 and {MAX_SECONDS:g}, got {seconds:g}")
    return seconds


@handler
def noop() -> None:
    """Do nothing: measures the framework's own cost."""


@handler
def sleep(seconds: float = 0.1) -> float:
    """Sleep ``seconds`` (a stand-in for I/O-bound work)."""
    seconds = _seconds(seconds)
    time.sleep(seconds)
    return seconds


@handler
def fail(message: str = "diagnostics.fail was asked to fail") -> None:
    """Raise :class:`DiagnosticFailure` with ``message``."""
    raise DiagnosticFailure(str(message))


@handler
def hold_db(seconds: float = 1.0) -> float:
    """Hold one pooled database connection busy for ``seconds`` (``pg_sleep``)."""
    seconds = _seconds(seconds)
    with db.connection() as conn:
        conn.execute("SELECT pg_sleep(%s)", [seconds])
    return seconds
