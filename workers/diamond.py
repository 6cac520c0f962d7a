"""Diamond workflow: fan out to two branches, converge.

start = n; left = start * 2; right = start + 10; join = left + right.
"""

from tasker.workflows import Step, StepContext, Workflow
from workers._steps import compute, require_n, value_of


def start(ctx: StepContext) -> dict:
    return compute(ctx, "SELECT %s::bigint", ctx.context["n"])


def left(ctx: StepContext) -> dict:
    return compute(ctx, "SELECT %s::bigint * 2", value_of(ctx, "start"))


def right(ctx: StepContext) -> dict:
    return compute(ctx, "SELECT %s::bigint + 10", value_of(ctx, "start"))


def join(ctx: StepContext) -> dict:
    return compute(ctx, "SELECT %s::bigint + %s::bigint", value_of(ctx, "left"),
                   value_of(ctx, "right"))


fan_out_in = Workflow("diamond", "fan_out_in", validate=require_n, steps=[
    Step("start", start),
    Step("left", left, after=["start"]),
    Step("right", right, after=["start"]),
    Step("join", join, after=["left", "right"]),
])


def expected(n: int) -> int:
    return n * 2 + n + 10
