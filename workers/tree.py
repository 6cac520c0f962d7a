"""Tree workflow: fan out, fan out again, converge.

root = n; a = root + 1; b = root + 2; a1 = a * 2; a2 = a * 3; b1 = b * 4; b2 = b * 5;
merge = a1 + a2 + b1 + b2.
"""

from tasker.workflows import Step, StepContext, Workflow
from workers._steps import compute, require_n, value_of


def root(ctx: StepContext) -> dict:
    return compute(ctx, "SELECT %s::bigint", ctx.context["n"])


def _child(parent: str, sql: str):  # noqa: ANN202 - a small step factory
    def step(ctx: StepContext) -> dict:
        return compute(ctx, sql, value_of(ctx, parent))
    return step


def merge(ctx: StepContext) -> dict:
    total = sum(value_of(ctx, s) for s in ("a1", "a2", "b1", "b2"))
    return compute(ctx, "SELECT %s::bigint", total)


fan_out_twice = Workflow("tree", "fan_out_twice", validate=require_n, steps=[
    Step("root", root),
    Step("a", _child("root", "SELECT %s::bigint + 1"), after=["root"]),
    Step("b", _child("root", "SELECT %s::bigint + 2"), after=["root"]),
    Step("a1", _child("a", "SELECT %s::bigint * 2"), after=["a"]),
    Step("a2", _child("a", "SELECT %s::bigint * 3"), after=["a"]),
    Step("b1", _child("b", "SELECT %s::bigint * 4"), after=["b"]),
    Step("b2", _child("b", "SELECT %s::bigint * 5"), after=["b"]),
    Step("merge", merge, after=["a1", "a2", "b1", "b2"]),
])


def expected(n: int) -> int:
    return (n + 1) * 5 + (n + 2) * 9
