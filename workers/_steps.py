"""Shared pieces of the example workflows (not a namespace: the name starts with ``_``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tasker.workflows import StepContext

#: Largest |n| the examples accept (keeps every value inside bigint).
MAX_N = 1000


def require_n(context: Mapping[str, Any]) -> None:
    """The examples' context is ``{"n": <integer>}``."""
    n = context.get("n")
    if isinstance(n, bool) or not isinstance(n, int):
        raise ValueError(f"context needs an integer 'n', got {n!r}")
    if abs(n) > MAX_N:
        raise ValueError(f"'n' must be between -{MAX_N} and {MAX_N}, got {n}")


def value_of(ctx: StepContext, step: str) -> int:
    return int(ctx.results[step]["value"])


def compute(ctx: StepContext, sql: str, *params: int) -> dict[str, int]:
    """Evaluate ``sql`` (one bigint) in the step's transaction and record it in the ledger."""
    (value,) = ctx.conn.execute(sql, params).fetchone()
    ctx.conn.execute("INSERT INTO tasker_workflow_ledger (task_uuid, step, value)"
                     " VALUES (%s, %s, %s)", [ctx.task_uuid, ctx.step_name, value])
    return {"value": int(value)}
