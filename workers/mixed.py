"""Mixed DAG with several convergence points.

a = n; b = a + 1; c = a * 2; d = b + c (converge); e = c * 3;
f = d + e (converge); g = b + f (converge).
"""

from tasker.workflows import Step, StepContext, Workflow
from workers._steps import compute, require_n, value_of


def a(ctx: StepContext) -> dict:
    return compute(ctx, "SELECT %s::bigint", ctx.context["n"])


def b(ctx: StepContext) -> dict:
    return compute(ctx, "SELECT %s::bigint + 1", value_of(ctx, "a"))


def c(ctx: StepContext) -> dict:
    return compute(ctx, "SELECT %s::bigint * 2", value_of(ctx, "a"))


def d(ctx: StepContext) -> dict:
    return compute(ctx, "SELECT %s::bigint + %s::bigint", value_of(ctx, "b"), value_of(ctx, "c"))


def e(ctx: StepContext) -> dict:
    return compute(ctx, "SELECT %s::bigint * 3", value_of(ctx, "c"))


def f(ctx: StepContext) -> dict:
    return compute(ctx, "SELECT %s::bigint + %s::bigint", value_of(ctx, "d"), value_of(ctx, "e"))


def g(ctx: StepContext) -> dict:
    return compute(ctx, "SELECT %s::bigint + %s::bigint", value_of(ctx, "b"), value_of(ctx, "f"))


converging = Workflow("mixed", "converging", validate=require_n, steps=[
    Step("a", a),
    Step("b", b, after=["a"]),
    Step("c", c, after=["a"]),
    Step("d", d, after=["b", "c"]),
    Step("e", e, after=["c"]),
    Step("f", f, after=["d", "e"]),
    Step("g", g, after=["b", "f"]),
])


def expected(n: int) -> int:
    b_, c_ = n + 1, n * 2
    return b_ + (b_ + c_) + c_ * 3
